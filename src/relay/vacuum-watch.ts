/**
 * A WARNING line when a transaction elsewhere holds vacuum back for long: while it stays
 * open the rows the relay deletes cannot be removed, so the queue table and its index
 * grow, and whoever runs it (a forgotten `BEGIN` in a console, a report, `pg_dump`)
 * should know. Checked every VACUUM_CHECK_MS by the active relay only (standbys would
 * repeat it), off the loop; one line per holder, repeated every VACUUM_REPEAT_MS while
 * it stays.
 *
 * A role without pg_read_all_stats cannot see when another role's transaction began: the
 * age is then counted from the first check that saw the same pid with the same xmin (a
 * lower bound, said as "at least"), and the line says which privilege shows more.
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

/**
 * What the warning says about `holder`; `seenForS` is how long the watch has seen it, for
 * a holder whose start this role cannot see.
 */
export function describeVacuumHolder(holder: VacuumHolder, seenForS?: number): string {
  const age =
    holder.transactionSeconds !== undefined
      ? `${Math.round(holder.transactionSeconds)} s`
      : seenForS !== undefined
        ? `at least ${Math.round(seenForS)} s`
        : `${holder.xidAge} transactions`;
  const parts = [
    `pid ${holder.pid}`,
    `application "${holder.applicationName}"`,
    holder.userName === undefined ? undefined : `user "${holder.userName}"`,
    holder.state === undefined ? undefined : `state "${holder.state}"`,
  ].filter((p) => p !== undefined);
  const hidden =
    holder.transactionSeconds === undefined && holder.state === undefined
      ? '; its start, state and query are hidden from this role (grant it pg_read_all_stats to see them)'
      : '';
  return `a transaction open for ${age} (${parts.join(', ')}) holds vacuum back: the rows the relay deletes cannot be removed until it ends${hidden}`;
}

export class VacuumWatch {
  private timer: NodeJS.Timeout | undefined;
  private active = false;
  private warned = new Map<number, number>();
  /** When a holder whose start is hidden was first seen, by pid and xmin; only the latest. */
  private firstSeen: { key: string; at: number } | undefined;
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
      const seenForS = holder && this.seenFor(holder);
      const warnAfterS = (this.options.warnAfterMs ?? VACUUM_WARN_AFTER_MS) / 1000;
      if (!holder || (holder.transactionSeconds ?? seenForS ?? 0) < warnAfterS) return;
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
          ...(seenForS === undefined ? {} : { seenForSeconds: Math.round(seenForS) }),
          query: holder.query,
        },
        describeVacuumHolder(holder, seenForS),
      );
    } catch {
      // The database is unreachable: the loop says so already.
    } finally {
      this.checking = false;
    }
  }

  /** Seconds since this watch first saw `holder`, when its own start is hidden. */
  private seenFor(holder: VacuumHolder): number | undefined {
    if (holder.transactionSeconds !== undefined) return undefined;
    const key = `${holder.pid}/${holder.xmin}`;
    if (this.firstSeen?.key !== key) this.firstSeen = { key, at: Date.now() };
    return (Date.now() - this.firstSeen.at) / 1000;
  }
}
