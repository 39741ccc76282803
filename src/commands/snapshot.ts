/**
 * `pg2kafka snapshot [<table>...] [--cancel] [--background]` and `pg2kafka resnapshot
 * <table> [--where <condition>] [--background]`, and the copier `pg2kafka setup` uses too:
 * the online snapshots of pg2kafka.snapshots (sql/25_snapshots.sql), copied from the
 * command line chunk by chunk with pg2kafka.snapshot_chunk(), each chunk its own
 * transaction, as fast as PostgreSQL goes (the relay's background copier,
 * src/relay/snapshots.ts, waits for its backlog instead).
 *
 * Progress goes to stderr: on a terminal one line redrawn at most every REDRAW_MS, else
 * one line every PROGRESS_EVERY_MS; then a summary line per table. SIGINT or SIGTERM
 * stops after the chunk in flight (which commits or rolls back whole), keeps the progress
 * and exits 128 + the signal's number (130, 143): the next `pg2kafka snapshot`, or the
 * active relay, resumes after the last chunk committed.
 */
import type postgres from 'postgres';
import type { Config } from '../config.ts';
import { UsageError } from '../errors.ts';
import {
  copyChunk,
  pendingSnapshots,
  queueAttachedPartitions,
  PROGRESS_EVERY_MS,
  snapshotProgress,
  type SnapshotProgress,
} from '../relay/snapshots.ts';
import { connect, describeTable, serverError, shellWord, sortError } from './setup.ts';

export const snapshotHelp = `Usage: pg2kafka snapshot [<table>...] [--background]
       pg2kafka snapshot --cancel <table>...

Copies the pending online snapshots (all of them, or those of the tables named) into the
queue now, as SNAPSHOT events, chunk by chunk: each chunk of 5,000 keys is one short
transaction, so the table's writers go on. A snapshot is pending after pg2kafka setup
(or pg2kafka resnapshot) of a table of more than 5,000 rows, until it is copied: by this
command, by pg2kafka setup itself, or by the active relay in the background.

Progress is shown on stderr (one line redrawn on a terminal, else a line every 5 s).
Ctrl-C (SIGINT) or SIGTERM stops after the chunk in flight: the progress is kept, and
pg2kafka snapshot (or the active relay) resumes where it stopped; the exit code is then
130 (SIGINT) or 143 (SIGTERM).

  --background  copy nothing: list the pending snapshots, left to the active relay
  --cancel      stop the snapshots of the tables named where they are; the SNAPSHOT
                events already queued stay (pg2kafka resnapshot starts a new one)

Same as: CALL pg2kafka.run_snapshots(); SELECT pg2kafka.cancel_snapshot('<table>');
`;

export const resnapshotHelp = `Usage: pg2kafka resnapshot <table> [--where <condition>] [--background]

Queues the rows of <table>, which must be set up, again as SNAPSHOT events, for example
for a consumer that lost its copy: registers a new online snapshot (a snapshot of it
still running starts over; with --where, wait for it or cancel it first) and copies it
now, chunk by chunk, with the progress on
stderr as pg2kafka snapshot shows it. --where copies only the rows matching a SQL
condition on the table's columns, such as "id <= 100" or "updated_at > now() - interval
'1 day'". --background leaves the copy to the active relay.

Same as: SELECT pg2kafka.resnapshot('<table>'[, '<condition>']);
`;

/** How often a terminal's progress line is redrawn, at most. */
export const REDRAW_MS = 100;
/** The exit code of a copy stopped by a signal: 128 + its number, as shells report it. */
export const SIGNAL_EXIT_CODES: Partial<Record<NodeJS.Signals, number>> = {
  SIGINT: 130,
  SIGTERM: 143,
};
const BAR_WIDTH = 20;

/** Where a command writes: stdout for results, stderr for progress and problems. */
export interface Output {
  out(text: string): void;
  err: { write(text: string): unknown; isTTY?: boolean; columns?: number };
}

export const processOutput = (): Output => ({
  out: (text) => process.stdout.write(text),
  err: process.stderr,
});

/**
 * A pending snapshot, as `pg2kafka status` and this command show it: `table` is
 * schema.table, quoted as SQL needs, and `rowsEstimated` the best estimate known
 * (estimateRows()), null when there is none.
 */
export type PendingSnapshot = Omit<SnapshotProgress, 'qualified' | 'finished' | 'outcome'>;

/**
 * About how many rows a snapshot copies: pg_class.reltuples as recorded when it started,
 * or, when that is unknown (a table never analyzed) or a condition filters the copy, the
 * planner's estimate. Null when neither is known (the table is gone, or may not be read).
 */
async function estimateRows(sql: postgres.Sql, row: SnapshotProgress): Promise<number | null> {
  if (row.condition === null && row.rowsEstimated !== null) return row.rowsEstimated;
  try {
    // Only planned, never run; the extended protocol takes one statement only.
    const plan = await sql.begin('read only', async (tx) => {
      const [table] = await tx<{ name: string; analyzed: boolean }[]>`
        select c.oid::regclass::text as name,
               exists (select 1 from pg_stats s where s.schemaname = n.nspname
                       and s.tablename = c.relname) as analyzed
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.oid = ${row.tableOid}::oid`;
      // Without statistics the planner guesses a third of the table for a condition.
      if (!table || (row.condition !== null && !table.analyzed)) return undefined;
      return tx.unsafe<{ 'QUERY PLAN': Array<{ Plan: { 'Plan Rows': number } }> }[]>(
        `explain (format json) select 1 from ${table.name} t where (${row.condition ?? 'true'})`,
      );
    });
    const rows = plan?.[0]?.['QUERY PLAN'][0]?.Plan['Plan Rows'];
    return rows === undefined ? null : Math.max(1, Math.round(rows));
  } catch {
    return null;
  }
}

async function pending(sql: postgres.Sql, row: SnapshotProgress): Promise<PendingSnapshot> {
  return {
    tableOid: row.tableOid,
    table: row.qualified,
    rowsDone: row.rowsDone,
    rowsEstimated: await estimateRows(sql, row),
    startedAt: row.startedAt,
    updatedAt: row.updatedAt,
    condition: row.condition,
    partition: row.partition,
  };
}

/** Every snapshot not finished yet, oldest first, with the best estimate of its size. */
export async function pendingSnapshotList(sql: postgres.Sql): Promise<PendingSnapshot[]> {
  const rows = await pendingSnapshots(sql);
  const list: PendingSnapshot[] = [];
  for (const row of rows) list.push(await pending(sql, row));
  return list;
}

/** What part of the table a snapshot copies: "", " (rows where …)", " (partition …, attached since setup)". */
export function describeScope(p: Pick<PendingSnapshot, 'condition' | 'partition'>): string {
  if (p.partition !== null) return ` (partition ${p.partition}, attached since setup)`;
  return p.condition === null ? '' : ` (rows where ${p.condition})`;
}

/** "12 s", "4 min", "2.5 h". */
export function formatDuration(seconds: number): string {
  if (seconds < 120) return `${Math.max(1, Math.ceil(seconds))} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** Percent done, below 100 until the copy is done (an estimate can be low). */
function percent(done: number, estimate: number): number {
  return Math.min(99, Math.floor((100 * done) / estimate));
}

/** "45000 of about 300000 rows (15%), 9000 rows/s, about 28 s left", as much as is known. */
export function progressFigures(done: number, estimate: number | null, rate: number): string {
  const parts = [
    estimate ? `${done} of about ${estimate} rows (${percent(done, estimate)}%)` : `${done} rows`,
    `${Math.round(rate)} rows/s`,
  ];
  if (estimate && rate > 0 && estimate > done) {
    parts.push(`about ${formatDuration((estimate - done) / rate)} left`);
  }
  return parts.join(', ');
}

/** Figures of a pending snapshot for status: its rate since it started. */
export function snapshotRate(p: PendingSnapshot, now = Date.now()): number {
  return p.rowsDone / Math.max(0.001, (now - p.startedAt.getTime()) / 1000);
}

/**
 * The progress of one table's copy on stderr: on a terminal a bar redrawn in place at
 * most every REDRAW_MS; elsewhere (a log, a pipe) a line every PROGRESS_EVERY_MS.
 */
export class ProgressDisplay {
  private table = '';
  private estimate: number | null = null;
  private startRows = 0;
  private startedAt = 0;
  private shownAt = 0;
  private drawn = false;

  constructor(
    private readonly err: Output['err'],
    private readonly now: () => number = Date.now,
    private readonly everyMs = PROGRESS_EVERY_MS,
  ) {}

  start(table: string, rowsDone: number, estimate: number | null): void {
    this.table = table;
    this.estimate = estimate;
    this.startRows = rowsDone;
    this.startedAt = this.now();
    this.shownAt = this.startedAt;
    if (this.err.isTTY) this.draw(rowsDone);
  }

  /** Rows per second since start(). */
  rate(rowsDone: number): number {
    return (rowsDone - this.startRows) / Math.max(0.001, (this.now() - this.startedAt) / 1000);
  }

  seconds(): number {
    return (this.now() - this.startedAt) / 1000;
  }

  update(rowsDone: number): void {
    const now = this.now();
    if (this.err.isTTY) {
      if (now - this.shownAt >= REDRAW_MS) this.draw(rowsDone);
      return;
    }
    if (now - this.shownAt < this.everyMs) return;
    this.shownAt = now;
    this.err.write(
      `snapshot of ${this.table}: ${progressFigures(rowsDone, this.estimate, this.rate(rowsDone))}\n`,
    );
  }

  /** Clears the terminal's progress line, for what is printed next. */
  clear(): void {
    if (!this.drawn) return;
    this.err.write('\r\x1b[K');
    this.drawn = false;
  }

  private draw(rowsDone: number): void {
    this.shownAt = this.now();
    const figures = progressFigures(rowsDone, this.estimate, this.rate(rowsDone));
    const width = (this.err.columns ?? 80) - 1;
    let line = `${this.table} ${figures}`;
    if (this.estimate) {
      const filled = Math.round((BAR_WIDTH * percent(rowsDone, this.estimate)) / 100);
      const bar = `${this.table} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${figures}`;
      // The bar goes first when the line is too long for the terminal.
      if (bar.length <= width) line = bar;
    }
    this.err.write(`\r\x1b[K${line.length > width ? line.slice(0, width) : line}`);
    this.drawn = true;
  }
}

/** A table whose pending snapshot is to be copied. */
export interface CopyTarget {
  oid: string;
  table: string;
}

/**
 * Copies the pending snapshots of `targets`, in order, each to its end (chunks of the
 * default size); resolves to the exit code: 0 all done, 1 one was cancelled meanwhile,
 * 130 / 143 stopped by SIGINT / SIGTERM with work left.
 */
export async function copySnapshots(
  sql: postgres.Sql,
  targets: CopyTarget[],
  output: Output,
  display = new ProgressDisplay(output.err),
): Promise<number> {
  const err = (text: string): void => {
    display.clear();
    output.err.write(text);
  };
  // An object: the handler sets it while the loop below awaits.
  const stop: { signal?: NodeJS.Signals } = {};
  const onSignal = (signal: NodeJS.Signals): void => {
    const code = SIGNAL_EXIT_CODES[signal] ?? 1;
    if (stop.signal !== undefined) {
      err(
        `pg2kafka: ${signal} again: exiting at once; the chunk in flight commits or rolls back whole, and the progress of the chunks before it is kept\n`,
      );
      process.exit(code);
    }
    stop.signal = signal;
    if (!output.err.isTTY) {
      output.err.write(`pg2kafka: ${signal}: stopping after the chunk in flight\n`);
    }
  };
  // Read through a function: TypeScript would narrow the property across the awaits.
  const signalled = (): NodeJS.Signals | undefined => stop.signal;
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const [size] = await sql<{ rows: number }[]>`select pg2kafka.snapshot_chunk_rows() as rows`;
    let code = 0;
    for (const [index, target] of targets.entries()) {
      const [row] = await snapshotProgress(sql, target.oid);
      if (!row || row.finished) {
        // Done by another runner meanwhile, or cancelled: then not copied, as mid-copy.
        if (row?.outcome !== 'done') code = 1;
        err(`the snapshot of ${target.table} is no longer pending: ${describeEnd(row)}\n`);
        continue;
      }
      if (stop.signal !== undefined)
        return await interrupted(sql, stop.signal, targets.slice(index), err);
      const start = await pending(sql, row);
      const estimate = start.rowsEstimated;
      const rows =
        start.partition !== null
          ? `the rows of partition ${start.partition}, attached since setup,`
          : start.condition === null
            ? 'the existing rows'
            : 'the rows';
      const where = start.condition === null ? '' : ` where ${start.condition}`;
      err(
        start.rowsDone === 0
          ? `copying ${rows} of ${target.table}${where} online${estimate ? `: about ${estimate}` : ''}, in chunks of ${size?.rows ?? 'default size'}\n`
          : `resuming the snapshot of ${target.table}${where} after ${start.rowsDone} rows${estimate ? ` (about ${estimate} in all)` : ''}, in chunks of ${size?.rows ?? 'default size'}\n`,
      );
      display.start(target.table, start.rowsDone, estimate);
      let rowsDone = start.rowsDone;
      let done = false;
      try {
        while (!done && signalled() === undefined) {
          const chunk = await copyChunk(sql, target.oid);
          rowsDone += chunk.rows;
          done = chunk.done;
          if (!done) display.update(rowsDone);
        }
      } catch (error) {
        err(
          `pg2kafka: the snapshot of ${target.table} stopped after ${rowsDone} rows; the progress is kept: pg2kafka snapshot ${shellWord(target.table)} resumes it\n`,
        );
        throw sortError(error);
      }
      display.clear();
      if (!done) return await interrupted(sql, signalled() ?? 'SIGTERM', targets.slice(index), err);
      const [end] = await snapshotProgress(sql, target.oid);
      const total = end?.rowsDone ?? rowsDone;
      const seconds = display.seconds().toFixed(1);
      if (end?.outcome === 'done') {
        const byThisRun = rowsDone - start.rowsDone;
        err(
          total === byThisRun
            ? `snapshot of ${target.table} done: ${total} rows queued as SNAPSHOT events in ${seconds} s\n`
            : `snapshot of ${target.table} done: ${total} rows queued as SNAPSHOT events, ${byThisRun} of them by this run in ${seconds} s\n`,
        );
      } else {
        code = 1;
        err(
          `pg2kafka: the snapshot of ${target.table} stopped after ${total} rows: ${describeEnd(end)}\n`,
        );
      }
    }
    // A signal after the last chunk of the last table stopped nothing.
    return code;
  } finally {
    display.clear();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function describeEnd(row: SnapshotProgress | undefined): string {
  if (!row) return 'it is no longer registered';
  if (row.outcome === 'done') return `done, ${row.rowsDone} rows`;
  return `${row.outcome ?? 'stopped'} after ${row.rowsDone} rows (pg2kafka resnapshot ${shellWord(row.qualified)} starts a new one)`;
}

/** The message and exit code of a copy stopped by `signal` before `left` were all done. */
async function interrupted(
  sql: postgres.Sql,
  signal: NodeJS.Signals,
  left: CopyTarget[],
  err: (text: string) => void,
): Promise<number> {
  const [first] = left;
  const [row] = first ? await snapshotProgress(sql, first.oid) : [];
  const where = row ? await pending(sql, row) : undefined;
  const figures = where
    ? `${where.rowsDone}${where.rowsEstimated ? ` of about ${where.rowsEstimated}` : ''} rows of ${where.table} are queued as SNAPSHOT events`
    : 'the chunks copied are queued as SNAPSHOT events';
  err(
    `pg2kafka: stopped by ${signal} after the chunk in flight: ${figures}, and that progress is kept\n` +
      `  to resume: pg2kafka snapshot ${left.map((t) => shellWord(t.table)).join(' ')} (the active relay also resumes ${left.length === 1 ? 'it' : 'them'} by itself)\n`,
  );
  return SIGNAL_EXIT_CODES[signal] ?? 1;
}

/** Whether a relay holds the lease now: it copies pending snapshots by itself. */
async function relayActive(sql: postgres.Sql): Promise<boolean> {
  const [lease] = await sql<{ active: boolean }[]>`
    select coalesce(bool_or(expires_at > clock_timestamp()), false) as active from pg2kafka.relay_lease`;
  return lease?.active ?? false;
}

/** What --background says about the copies it leaves pending. */
async function backgroundNote(sql: postgres.Sql, tables: string[]): Promise<string> {
  const now = `pg2kafka snapshot ${tables.map(shellWord).join(' ')}`;
  const them = tables.length === 1 ? 'it' : 'them';
  return (await relayActive(sql))
    ? `the active relay copies ${them} in the background (pg2kafka status shows the progress); to copy ${them} now: ${now}\n`
    : `no relay is active now: the next one to start copies ${them} in the background; to copy ${them} now: ${now}\n`;
}

/**
 * Runs `body` on a connection of `pg2kafka <command>`; the database's warnings gathered
 * (and not printed by `body`) go to stderr at the end, before the connection is closed.
 */
async function withConnection(
  config: Config,
  command: string,
  output: Output,
  body: (sql: postgres.Sql, warnings: string[]) => Promise<number>,
): Promise<number> {
  const warnings: string[] = [];
  const sql = await connect(config, command, warnings);
  try {
    return await body(sql, warnings);
  } finally {
    printWarnings(output, warnings);
    await sql.end({ timeout: 2 });
  }
}

/** Copies the pending snapshots of `targets` now or, with `background`, leaves them to the relay. */
async function copyOrLeave(
  sql: postgres.Sql,
  targets: CopyTarget[],
  background: boolean,
  output: Output,
  warnings: string[],
): Promise<number> {
  if (!background) return copySnapshots(sql, targets, withWarnings(output, warnings));
  output.out(
    await backgroundNote(
      sql,
      targets.map((t) => t.table),
    ),
  );
  return 0;
}

/** Copies (or, with `background`, leaves to the relay) the pending snapshots of `targets`. */
export async function copyPendingCommand(
  config: Config,
  targets: CopyTarget[],
  background: boolean,
  output: Output = processOutput(),
): Promise<number> {
  if (targets.length === 0) return 0;
  return withConnection(config, background ? 'setup' : 'snapshot', output, (sql, warnings) =>
    copyOrLeave(sql, targets, background, output, warnings),
  );
}

/** `output` that prints the database's warnings gathered so far before each stderr line. */
function withWarnings(output: Output, warnings: string[]): Output {
  return {
    out: (text) => {
      output.out(text);
    },
    err: {
      get isTTY() {
        return output.err.isTTY;
      },
      get columns() {
        return output.err.columns;
      },
      write(text: string) {
        printWarnings(output, warnings);
        return output.err.write(text);
      },
    },
  };
}

function printWarnings(output: Output, warnings: string[]): void {
  for (const warning of warnings.splice(0)) output.err.write(`warning: ${warning}\n`);
}

export interface SnapshotOptions {
  tables: string[];
  cancel: boolean;
  background: boolean;
}

/** A set-up table named on the command line. */
async function setUpTable(sql: postgres.Sql, table: string, command: string): Promise<CopyTarget> {
  const described = await describeTable(sql, table, (t) => `pg2kafka ${command} ${t}`);
  const [tracked] = await sql<{ capturing: boolean }[]>`
    select capturing from pg2kafka.tracked_tables where table_oid = ${described.oid}::oid`;
  if (!tracked?.capturing) {
    throw new UsageError(
      `${described.qualified} is not set up${tracked ? ' (it was torn down)' : ''}: pg2kafka ${command} works on the tables pg2kafka captures\n` +
        `  hint: set it up first: pg2kafka setup ${shellWord(described.qualified)}`,
    );
  }
  return { oid: described.oid, table: described.qualified };
}

export async function snapshotCommand(
  config: Config,
  options: SnapshotOptions,
  output: Output = processOutput(),
): Promise<number> {
  const command = options.cancel ? 'snapshot --cancel' : 'snapshot';
  return withConnection(config, 'snapshot', output, async (sql, warnings) => {
    printWarnings(output, warnings);
    const named: CopyTarget[] = [];
    for (const table of options.tables) named.push(await setUpTable(sql, table, command));

    if (options.cancel) {
      for (const target of named) {
        const [before] = await snapshotProgress(sql, target.oid);
        const [row] = await sql<{ cancelled: boolean }[]>`
          select pg2kafka.cancel_snapshot(${target.oid}::oid::regclass) as cancelled`.catch(
          (error: unknown) => {
            throw sortError(error);
          },
        );
        printWarnings(output, warnings);
        if (row?.cancelled) {
          output.out(
            `cancelled the snapshot of ${target.table} after ${before?.rowsDone ?? 0} rows; the SNAPSHOT events already queued stay (to copy it again: pg2kafka resnapshot ${shellWord(target.table)})\n`,
          );
        }
      }
      return 0;
    }

    // Rows of partitions attached since setup are pending too, once noticed.
    await queueAttachedPartitions(sql).catch((error: unknown) => {
      throw sortError(error);
    });
    printWarnings(output, warnings);
    const rows = await pendingSnapshots(sql);
    const wanted = new Set(named.map((t) => t.oid));
    const targets: CopyTarget[] = rows
      .filter((r) => named.length === 0 || wanted.has(r.tableOid))
      .map((r) => ({
        oid: r.tableOid,
        table: named.find((t) => t.oid === r.tableOid)?.table ?? r.qualified,
      }));
    for (const target of named) {
      if (!targets.some((t) => t.oid === target.oid)) {
        output.out(
          `no snapshot of ${target.table} is pending (to copy its rows again: pg2kafka resnapshot ${shellWord(target.table)})\n`,
        );
      }
    }
    if (named.length === 0 && targets.length === 0) {
      output.out('no snapshot is pending\n');
      return 0;
    }
    if (targets.length === 0) return 0;
    if (options.background) {
      for (const row of rows.filter((r) => targets.some((t) => t.oid === r.tableOid))) {
        const p = await pending(sql, row);
        output.out(
          `pending: ${p.table}${describeScope(p)}: ${progressFigures(p.rowsDone, p.rowsEstimated, snapshotRate(p))}\n`,
        );
      }
    }
    return copyOrLeave(sql, targets, options.background, output, warnings);
  });
}

export async function resnapshotCommand(
  config: Config,
  table: string,
  options: { where?: string | undefined; background: boolean },
  output: Output = processOutput(),
): Promise<number> {
  return withConnection(config, 'resnapshot', output, async (sql, warnings) => {
    printWarnings(output, warnings);
    const target = await setUpTable(sql, table, 'resnapshot');
    await sql`select pg2kafka.resnapshot(${target.oid}::oid::regclass, ${options.where ?? null})`.catch(
      (error: unknown) => {
        const e = serverError(error);
        throw sortError(
          error,
          e?.code === '22023'
            ? `--where takes a SQL condition on the columns of ${target.table}, as in --where "id <= 100"`
            : undefined,
        );
      },
    );
    printWarnings(output, warnings);
    output.out(
      `snapshot of ${target.table}${options.where === undefined ? '' : ` (rows where ${options.where})`} registered\n`,
    );
    return copyOrLeave(sql, [target], options.background, output, warnings);
  });
}
