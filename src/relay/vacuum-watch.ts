/**
 * A WARNING line when a transaction elsewhere holds vacuum back for long: while it stays
 * open the rows the relay deletes cannot be removed, so the queue table and its index
 * grow, and whoever runs it (a forgotten `BEGIN` in a console, a report, `pg_dump`)
 * should know. Checked every VACUUM_CHECK_MS by the active relay only (standbys would
 * repeat it), off the loop; one line per holder, repeated every VACUUM_REPEAT_MS while
 * it stays.
 */
import type postgres from 'postgres';
import type { Logger } from '../logger.ts';
import { vacuumHolder, type VacuumHolder } from './vacuum.ts';

export const VACUUM_CHECK_MS = 30_000;
/** A transaction older than this is worth a warning. */
export const VACUUM_WARN_AFTER_MS = 5 * 60_000;
const VACUUM_REPEAT_MS = 10 * 60_000;

export interface VacuumWatchOptions {
  checkMs?: number;
  warnAfterMs?: number;
}

/** What the warning says about `holder`. */
export function describeVacuumHolder(holder: VacuumHolder): string {
  const age =
    holder.transactionSeconds === undefined
      ? `${holder.xidAge} transactions`
      : `${Math.round(holder.transactionSeconds)} s`;
  const parts = [
    `pid ${holder.pid}`,
    `application "${holder.applicationName}"`,
    holder.userName === undefined ? undefined : `user "${holder.userName}"`,
    holder.state === undefined ? undefined : `state "${holder.state}"`,
  ].filter((p) => p !== undefined);
  return `a transaction open for ${age} (${parts.join(', ')}) holds vacuum back: the rows the relay deletes cannot be removed until it ends`;
}

export class VacuumWatch {
  private timer: NodeJS.Timeout | undefined;
  private active = false;
  private warned = new Map<number, number>();
  private checking = false;

  constructor(
    private readonly sql: postgres.Sql,
    private readonly logger: Logger,
    private readonly options: VacuumWatchOptions = {},
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.check(), this.options.checkMs ?? VACUUM_CHECK_MS);
    this.timer.unref();
  }

  /** Only the active relay warns. */
  setActive(active: boolean): void {
    this.active = active;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async check(): Promise<void> {
    if (!this.active || this.checking) return;
    this.checking = true;
    try {
      const holder = await vacuumHolder(this.sql);
      const warnAfterS = (this.options.warnAfterMs ?? VACUUM_WARN_AFTER_MS) / 1000;
      if (!holder || (holder.transactionSeconds ?? 0) < warnAfterS) return;
      const last = this.warned.get(holder.pid);
      if (last !== undefined && Date.now() - last < VACUUM_REPEAT_MS) return;
      this.warned.clear();
      this.warned.set(holder.pid, Date.now());
      this.logger.warn(
        {
          pid: holder.pid,
          applicationName: holder.applicationName,
          state: holder.state,
          transactionSeconds: holder.transactionSeconds,
          query: holder.query,
        },
        describeVacuumHolder(holder),
      );
    } catch {
      // The database is unreachable: the loop says so already.
    } finally {
      this.checking = false;
    }
  }
}
