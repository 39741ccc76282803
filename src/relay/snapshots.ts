/**
 * Online snapshots, run by the active relay in the background: every pending snapshot
 * (pg2kafka.snapshots, registered by setup() or resnapshot()) is copied chunk by chunk
 * with pg2kafka.snapshot_chunk(), each chunk its own short transaction (sql/25_snapshots.sql
 * says why that keeps per-key order).
 *
 * Interleaved with shipping: SNAPSHOT events queue ahead of every live change that comes
 * after them, so the next chunk is copied only once the queue's backlog is under one
 * chunk. A live change then waits behind at most about one chunk (5,000 events, a few
 * hundred ms of shipping), and the snapshot goes as fast as the relay ships. The
 * command line (`pg2kafka snapshot`) copies without that brake.
 *
 * Rows a partition brings when it is attached to a captured table after setup are copied
 * the same way: the runner looks for such partitions whenever it looks for snapshots.
 *
 * Only the active relay copies (standbys would only take turns on the progress row);
 * a relay that dies mid-snapshot leaves the progress of its last committed chunk, and
 * the next active relay resumes there. A progress line at info every PROGRESS_EVERY_MS.
 */
import type postgres from 'postgres';
import type { Logger } from '../logger.ts';
import { backoffDelay } from './backoff.ts';

/** How often an idle runner looks for a new pending snapshot. */
export const SNAPSHOT_CHECK_MS = 2_000;
/** How often the backlog is looked at while it is over one chunk. */
const BACKLOG_CHECK_MS = 100;
export const PROGRESS_EVERY_MS = 5_000;

export interface SnapshotRunnerOptions {
  /** Rows per chunk; pg2kafka.snapshot_chunk_rows() when unset. */
  chunkRows?: number;
  /** Copy the next chunk only while fewer events than this are queued (default: a chunk). */
  backlogRows?: number;
  checkMs?: number;
  progressEveryMs?: number;
}

/** A snapshot's row of pg2kafka.snapshots, with its table's names from pg_class. */
export interface SnapshotProgress {
  tableOid: string;
  /** The table as regclass prints it (schema-qualified only off the search_path). */
  table: string;
  /** schema.table, quoted as SQL needs; the oid once the table is gone. */
  qualified: string;
  rowsDone: number;
  /** pg_class.reltuples when it started; null when unknown (never analyzed). */
  rowsEstimated: number | null;
  startedAt: Date;
  updatedAt: Date;
  /** Only rows matching it are copied (resnapshot's condition); null: all. */
  condition: string | null;
  /** The partition walked now, one attached after setup (as regclass prints it); null: the table. */
  partition: string | null;
  finished: boolean;
  /** 'done' or 'cancelled' once finished; null while pending. */
  outcome: string | null;
}

/** Rows every column name is one lowercase word of: the caller's pool may transform names. */
interface ProgressRow {
  oid: string;
  name: string;
  qualified: string;
  done: string;
  estimated: string | null;
  started: Date;
  updated: Date;
  condition: string | null;
  partition: string | null;
  finished: boolean;
  outcome: string | null;
}

/**
 * Rows of pg2kafka.snapshots, oldest first: the snapshots not finished yet, or with
 * `tableOid` that table's, whether finished or not.
 */
export async function snapshotProgress(
  sql: postgres.Sql | postgres.TransactionSql,
  tableOid?: string,
): Promise<SnapshotProgress[]> {
  const rows = await sql<ProgressRow[]>`
    select p.table_oid::text as oid, p.table_oid::regclass::text as name,
           coalesce(format('%I.%I', n.nspname, c.relname), p.table_oid::text) as qualified,
           p.rows_done::text as done, p.rows_estimated::text as estimated,
           p.started_at as started, p.updated_at as updated, p.condition,
           p.source_oid::regclass::text as partition,
           p.finished_at is not null as finished, p.outcome
    from pg2kafka.snapshots p
    left join pg_class c on c.oid = p.table_oid
    left join pg_namespace n on n.oid = c.relnamespace
    where ${tableOid === undefined ? sql`p.finished_at is null` : sql`p.table_oid = ${tableOid}::oid`}
    order by p.started_at, p.table_oid`;
  return rows.map((r) => ({
    tableOid: r.oid,
    table: r.name,
    qualified: r.qualified,
    rowsDone: Number(r.done),
    rowsEstimated: r.estimated === null ? null : Number(r.estimated),
    startedAt: r.started,
    updatedAt: r.updated,
    condition: r.condition,
    partition: r.partition,
    finished: r.finished,
    outcome: r.outcome,
  }));
}

/** Snapshots not finished yet, oldest first. */
export function pendingSnapshots(
  sql: postgres.Sql | postgres.TransactionSql,
): Promise<SnapshotProgress[]> {
  return snapshotProgress(sql);
}

/**
 * Queues the rows of partitions attached to captured tables since setup, to be copied as
 * snapshots (sql/25_snapshots.sql); returns how many partitions. The runners call it
 * before they look for pending snapshots.
 */
export async function queueAttachedPartitions(
  sql: postgres.Sql | postgres.TransactionSql,
): Promise<number> {
  const [row] = await sql<{ queued: number }[]>`
    select pg2kafka.snapshot_attached_partitions() as queued`;
  return row?.queued ?? 0;
}

/** One chunk of `tableOid`'s snapshot, in a transaction of its own. */
export async function copyChunk(
  sql: postgres.Sql,
  tableOid: string,
  chunkRows?: number,
): Promise<{ rows: number; done: boolean }> {
  const [row] = await sql<{ copied: string; finished: boolean }[]>`
    select rows_copied::text as copied, done as finished
    from pg2kafka.snapshot_chunk(${tableOid}::oid::regclass,
                                 coalesce(${chunkRows ?? null}::int, pg2kafka.snapshot_chunk_rows()))`;
  return { rows: Number(row?.copied ?? 0), done: row?.finished ?? true };
}

/** Rate and remaining time of a snapshot, as status and the progress lines say them. */
export function describeProgress(p: SnapshotProgress, now = Date.now()): string {
  const seconds = Math.max(0.001, (now - p.startedAt.getTime()) / 1000);
  const rate = p.rowsDone / seconds;
  const parts = [
    p.rowsEstimated
      ? `${p.rowsDone} of about ${p.rowsEstimated} rows (${Math.min(100, Math.floor((100 * p.rowsDone) / p.rowsEstimated))}%)`
      : `${p.rowsDone} rows`,
    `${Math.round(rate)} rows/s`,
  ];
  if (p.rowsEstimated && rate > 0 && p.rowsEstimated > p.rowsDone) {
    parts.push(`about ${Math.ceil((p.rowsEstimated - p.rowsDone) / rate)} s left`);
  }
  return parts.join(', ');
}

/**
 * An error as a warning says it: PostgreSQL's hint too, which says what to do (for one
 * that snapshot_chunk raises, such as a missing grant, what to grant).
 */
function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const { hint } = error as { hint?: unknown };
  return typeof hint === 'string' && hint !== ''
    ? `${error.message} (hint: ${hint})`
    : error.message;
}

export class SnapshotRunner {
  private active = false;
  private stopped = false;
  private running: Promise<void> | undefined;
  private wakeUp: (() => void) | undefined;
  /** The table whose snapshot copyPending() is at, for what a failure says. */
  private copying: { oid: string; table: string } | undefined;
  /** The snapshot whose chunk failed last: the next try starts with another, if any. */
  private lastFailed: string | undefined;

  constructor(
    private readonly sql: postgres.Sql,
    private readonly logger: Logger,
    /** Called after each chunk: the relay ships what it queued. */
    private readonly onChunk: () => void,
    private readonly options: SnapshotRunnerOptions = {},
  ) {}

  start(): void {
    this.running ??= this.run();
  }

  /** Only the active relay copies. */
  setActive(active: boolean): void {
    this.active = active;
    this.wakeUp?.();
  }

  /** Stops after the chunk in flight, if any (it commits or rolls back as a whole). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeUp?.();
    await this.running;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        const copied = this.active ? await this.copyPending() : false;
        failures = 0;
        if (!copied) await this.pause(this.options.checkMs ?? SNAPSHOT_CHECK_MS);
      } catch (error) {
        failures += 1;
        const retryInMs = backoffDelay(failures);
        const table = this.copying?.table;
        this.lastFailed = this.copying?.oid;
        this.logger.warn(
          { err: error, retryInMs, table },
          `cannot copy ${table === undefined ? 'snapshot chunks' : `the snapshot of ${table}`} now, retrying in ${retryInMs} ms: ${describeError(error)}`,
        );
        await this.pause(retryInMs);
      } finally {
        this.copying = undefined;
      }
    }
  }

  /** Copies pending snapshots while active; false when there was none. */
  private async queueAttached(): Promise<void> {
    const attached = await queueAttachedPartitions(this.sql);
    if (attached > 0) {
      this.logger.info(
        { partitions: attached },
        `queued the rows of ${attached} partition(s) attached since setup, to be copied online`,
      );
    }
  }

  private async copyPending(): Promise<boolean> {
    await this.queueAttached();
    // Oldest first, but not the one that just failed while others wait: one table whose
    // chunks keep failing (a policy, a bad condition) must not stop the rest.
    const pending = await pendingSnapshots(this.sql);
    const next = pending.find((p) => p.tableOid !== this.lastFailed) ?? pending[0];
    if (!next) return false;
    this.copying = { oid: next.tableOid, table: next.table };
    this.logger.info(
      {
        table: next.table,
        rowsDone: next.rowsDone,
        rowsEstimated: next.rowsEstimated ?? undefined,
      },
      next.rowsDone === 0
        ? `copying the ${next.partition === null ? 'existing rows' : `rows of partition ${next.partition}, attached since setup,`} of ${next.table} online${next.rowsEstimated ? ` (about ${next.rowsEstimated})` : ''}`
        : `resuming the snapshot of ${next.table} after ${next.rowsDone} rows`,
    );
    let progressAt = Date.now();
    while (!this.stopped && this.active) {
      if (!(await this.backlogBelowChunk())) {
        await this.pause(BACKLOG_CHECK_MS);
        continue;
      }
      const { done } = await copyChunk(this.sql, next.tableOid, this.options.chunkRows);
      this.onChunk();
      const everyMs = this.options.progressEveryMs ?? PROGRESS_EVERY_MS;
      if (done || Date.now() - progressAt >= everyMs) {
        progressAt = Date.now();
        // A partition attached meanwhile, to this table or another, waits no longer.
        await this.queueAttached();
        const [now] = await snapshotProgress(this.sql, next.tableOid);
        const progress = { ...next, rowsDone: now?.rowsDone ?? 0 };
        if (done) {
          const seconds = Math.round((Date.now() - next.startedAt.getTime()) / 1000);
          this.logger.info(
            { table: next.table, rows: progress.rowsDone, outcome: now?.outcome ?? 'gone' },
            now?.outcome === 'done'
              ? `snapshot of ${next.table} done: ${progress.rowsDone} rows in ${seconds} s`
              : `snapshot of ${next.table} stopped (${now?.outcome ?? 'no longer registered'}) after ${progress.rowsDone} rows`,
          );
          return true;
        }
        this.logger.info(
          {
            table: next.table,
            rowsDone: progress.rowsDone,
            rowsEstimated: next.rowsEstimated ?? undefined,
          },
          `snapshot of ${next.table}: ${describeProgress(progress)}`,
        );
      }
    }
    return true;
  }

  /** Fewer events queued than one chunk (counted from the queue floor, at most that many). */
  private async backlogBelowChunk(): Promise<boolean> {
    const limit = this.options.backlogRows ?? this.options.chunkRows ?? null;
    const [row] = await this.sql<{ below: boolean }[]>`
      with chunk as (select coalesce(${limit}::int, pg2kafka.snapshot_chunk_rows()) as rows)
      select (select count(*) from (
                select 1 from pg2kafka.captured_changes c
                where c.id >= (select l.queue_floor from pg2kafka.relay_lease l)
                limit (select rows from chunk)) q) < (select rows from chunk) as below`;
    return row?.below ?? true;
  }

  private pause(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      const wakeUp = (): void => {
        done();
      };
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = wakeUp;
    });
  }
}
