/**
 * `pg2kafka setup <table> [<column>] [--full-row] [--snapshot=online|locked|none]` and
 * `pg2kafka teardown <table>`: the SQL functions, with the topic name checked first (the
 * SQL side does not know TOPIC_PREFIX or TOPIC_NAMESPACE) and the database's warnings
 * passed on. `setup 'schema.*'` sets up every table of a schema with its primary key.
 * The online copy setup() registers for a larger table is run afterwards by the command
 * line (src/commands/snapshot.ts), not here.
 *
 * Errors of the SQL functions are sorted by SQLSTATE (ARGUMENT_SQLSTATES), never by
 * message text: a bad argument is a UsageError (exit 2); anything else, such as a lock
 * that could not be taken or events of an old key still queued, is a runtime failure
 * (exit 1: retry later). Either way the message keeps PostgreSQL's DETAIL and HINT.
 */
import type postgres from 'postgres';
import { checkSchema } from '../capture/schema.ts';
import type { Config } from '../config.ts';
import { checkConnection, openPool } from '../database.ts';
import { UsageError } from '../errors.ts';
import { topicName, topicNameProblem } from '../relay/topics.ts';

export const setupHelp = `Usage: pg2kafka setup <table> [<external-id-column>] [--full-row]
                      [--snapshot=online|locked|none] [--background]
                      [--exclude=<column>,... | --include=<column>,...]
                      [--filter=<condition>] [--tombstones] [--format=<format>]
       pg2kafka setup <table> <table>... [--full-row] [--snapshot=...] [--background]
       pg2kafka setup '<schema>.*' [--full-row] [--snapshot=...] [--background]

Starts capturing <table> (schema-qualified or found on the search_path; quote mixed-case
names as in SQL: '"Sales"."Order Items"'): installs the capture triggers and queues one
SNAPSHOT event per existing row. Events are keyed by <external-id-column> (default: the
table's primary key; of several columns, the key is the JSON array of their values,
["eu",42]). --full-row makes UPDATE carry the whole new row and DELETE the old row.

--snapshot=online (the default) copies a table of more than 5,000 rows in chunks of
5,000, each its own short transaction, while its writers go on; a smaller table, or one
whose key is not unique and NOT NULL, is copied at once under the table lock.
--snapshot=locked copies every row at once under the lock (writers wait for the whole
copy); --snapshot=none copies nothing (only later changes are captured).

An online copy is run by this command, with a progress line on stderr; Ctrl-C (or
SIGTERM) stops it after the chunk in flight and keeps the progress: pg2kafka snapshot
<table> resumes it, and so does the active relay by itself. --background leaves the
copy to the active relay.

Several tables, or '<schema>.*' (every table of the schema, not its partitions), are
each set up with its primary key (one already captured keeps its key), and reported one
by one; a table of the schema without a primary key is skipped. The exit code is 1 if
one of them failed. With two arguments, the second is the key column when the first
table has a column of that name, else a table.

Payload control (see pg2kafka alter --help to change it later):
  --exclude=a,b    events never carry these columns (nor does the queue); an UPDATE of
                   only them sends nothing. Key columns cannot be excluded.
  --include=a,b    events carry only these columns and the key columns.
  --filter=<cond>  only rows where the condition holds (SQL on the row's columns, as in
                   --filter="status <> 'draft'"): a row leaving it sends a DELETE, one
                   entering it an INSERT. Only the owner of schema pg2kafka may give one.
  --tombstones     a message with a null value after each DELETE (compacted topics).
  --format=<f>     this table's message format, instead of the relay's MESSAGE_FORMAT:
                   pg2kafka, debezium (Debezium's change events with Kafka Connect's
                   schema) or debezium-schemaless.
A table already set up keeps its settings; setup with other ones fails and says so.

Same as: SELECT pg2kafka.setup('<table>'[, '<external-id-column>'[, <full-row>[, '<snapshot>']]]
                               [, exclude_columns => '{a,b}'] [, include_columns => '{a,b}']
                               [, row_filter => '<condition>'] [, tombstones => true]
                               [, message_format => 'debezium']);
`;

export const alterHelp = `Usage: pg2kafka alter <table> [--exclude=<column>,... | --include=<column>,...]
                      [--filter=<condition>] [--tombstones | --no-tombstones]
                      [--format=pg2kafka|debezium|debezium-schemaless]

Changes the payload settings of a captured table (those of pg2kafka setup --help); a
setting not given stays as it is. --exclude= or --include= with nothing after the "="
lifts the column list, --filter= the row filter, --format= the table's own format. It takes the table's lock as setup does, so every change is captured
once, with the settings before or after. Queued events keep what they were captured
with. Letting more out (a column, rows the filter kept back) sends nothing for the rows
as they are: pg2kafka resnapshot <table> sends them.

Same as: SELECT pg2kafka.alter('<table>', exclude_columns => '{a,b}', row_filter => '...', ...);
`;

/** What of a table's rows leaves the database (pg2kafka.setup's and alter's settings). */
export interface PayloadOptions {
  exclude?: string[] | undefined;
  include?: string[] | undefined;
  filter?: string | undefined;
  tombstones?: boolean | undefined;
  /** The table's message format; '' (alter): follow the relay's MESSAGE_FORMAT. */
  format?: string | undefined;
}

export const teardownHelp = `Usage: pg2kafka teardown <table>

Stops capturing <table>. Events already queued stay and are still shipped.
Same as: SELECT pg2kafka.teardown('<table>');
`;

/** The `snapshot` argument of pg2kafka.setup(). */
export type SnapshotMode = 'online' | 'locked' | 'none';

export interface SetupResult {
  table: string;
  /** pg_class.oid of the table, as text. */
  tableOid: string;
  topic: string;
  /** The external id column and mode the table is captured with. */
  externalIdColumn: string;
  fullRow: boolean;
  /** False when the table was already captured with these settings: nothing was done. */
  changed: boolean;
  /** SNAPSHOT events this call queued (0 when nothing changed, or the copy is online). */
  snapshotRows: number;
  /**
   * What happened to the existing rows: copied in setup's transaction, registered to be
   * copied online (or still pending from before, when nothing changed), or left alone
   * (--snapshot=none, or already captured with no copy pending).
   */
  snapshot: 'copied' | 'pending' | 'none';
  /** The estimate of the rows a pending copy will queue (pg_class.reltuples), if known. */
  rowsEstimated: number | undefined;
  warnings: string[];
}

/**
 * SQLSTATEs that mean the arguments are wrong (exit 2), as setup(), teardown() and the
 * `regclass` input of the table name raise them. Every other error is a runtime failure.
 */
export const ARGUMENT_SQLSTATES = new Set([
  '42P01', // undefined_table: no such table
  '3F000', // invalid_schema_name: no such schema
  '42602', // invalid_name: '"unclosed'
  '42601', // syntax_error: 'a.b.c.d' (too many dotted names)
  '0A000', // feature_not_supported: a cross-database reference
  '42703', // undefined_column: no such key column
  '42809', // wrong_object_type: a view, a sequence, a partition, a temporary table
  '42710', // duplicate_object: already set up with another external id column
  '42501', // insufficient_privilege: the role may not read or capture the table
  '22023', // invalid_parameter_value: a bad snapshot mode, a resnapshot condition that does not compile
  '55000', // object_not_in_prerequisite_state: resnapshot of a table not set up, or keyed by a column it cannot walk
]);

/** A PostgreSQL error as postgres.js reports it. */
interface ServerError {
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

export function serverError(error: unknown): ServerError | undefined {
  if (!(error instanceof Error)) return undefined;
  const { code } = error as Error & { code?: unknown };
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)
    ? (error as Error & ServerError)
    : undefined;
}

/** The message, then PostgreSQL's DETAIL and HINT (or `hint` instead) on lines of their own. */
export function describe(error: ServerError, hint = error.hint): string {
  return [
    error.message,
    ...(error.detail ? [`  detail: ${error.detail}`] : []),
    ...(hint ? [`  hint: ${hint}`] : []),
  ].join('\n');
}

/** A failure of setup() or teardown() that retrying later may cure: exit 1. */
export class CaptureCommandError extends Error {
  override readonly name = 'CaptureCommandError';
  constructor(
    message: string,
    readonly code: string,
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/** `error` sorted by ARGUMENT_SQLSTATES, its message with DETAIL and HINT; `hint` replaces the server's. */
export function sortError(error: unknown, hint?: string): unknown {
  const e = serverError(error);
  if (e === undefined) return error;
  const message = describe(e, hint);
  if (ARGUMENT_SQLSTATES.has(e.code)) {
    return Object.assign(new UsageError(message), { code: e.code, cause: error });
  }
  return new CaptureCommandError(message, e.code, { cause: error });
}

/** `arg` as a POSIX shell word: as it is when safe, else single-quoted. */
export function shellWord(arg: string): string {
  return /^[A-Za-z0-9_.,:=@%+/-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export async function connect(
  config: Config,
  command: string,
  warnings: string[],
): Promise<postgres.Sql> {
  const sql = openPool(config.databaseUrl, {
    connection: { application_name: `pg2kafka ${command}` },
    onnotice: (notice) => {
      if (notice.severity === 'WARNING') warnings.push(String(notice.message));
    },
  });
  try {
    await checkConnection(sql, config.databaseUrl);
    warnings.push(...(await checkSchema(sql)).warnings);
    return sql;
  } catch (error) {
    await sql.end({ timeout: 2 });
    throw error;
  }
}

export interface DescribedTable {
  oid: string;
  schema: string;
  name: string;
  database: string;
  qualified: string;
}

/**
 * Tables (or views) whose name differs from `table` only in case, or that sit in a schema
 * off the search_path: what a user who typed `Mixed` or `orders` probably meant.
 */
async function nearNames(
  sql: postgres.Sql,
  table: string,
): Promise<Array<{ name: string; onPath: boolean }>> {
  try {
    return await sql<Array<{ name: string; onPath: boolean }>>`
      with typed as (select parse_ident(${table}, false) as parts)
      select case when cardinality(parts) = 1 and n.nspname = any (current_schemas(false))
                  then format('%I', c.relname)
                  else format('%I.%I', n.nspname, c.relname) end as name,
             n.nspname = any (current_schemas(false)) as "onPath"
      from typed, pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r', 'p', 'v', 'm', 'f')
        and n.nspname not in ('pg_catalog', 'information_schema', 'pg2kafka')
        and n.nspname !~ '^pg_(toast|temp)'
        and lower(c.relname) = lower(parts[cardinality(parts)])
        and case cardinality(parts)
              when 1 then true
              when 2 then lower(n.nspname) = lower(parts[1])
              else false end
      order by 2 desc, 1
      limit 3`;
  } catch {
    return [];
  }
}

/** The hint for a table name that does not resolve, when a near name exists. */
async function tableHint(
  sql: postgres.Sql,
  table: string,
  commandLine: (table: string) => string,
): Promise<string | undefined> {
  const near = await nearNames(sql, table);
  const [first] = near;
  if (first === undefined) return undefined;
  const names = near.map((n) => n.name).join(' or ');
  const why = first.onPath
    ? 'Unquoted names are folded to lower case, as in SQL: quote it'
    : 'Its schema is not on the search_path';
  return `did you mean ${names}? ${why}: ${commandLine(shellWord(first.name))}`;
}

export async function describeTable(
  sql: postgres.Sql,
  table: string,
  commandLine: (table: string) => string,
): Promise<DescribedTable> {
  try {
    const [row] = await sql<DescribedTable[]>`
      select c.oid::text as oid, n.nspname as schema, c.relname as name, current_database() as database,
             format('%I.%I', n.nspname, c.relname) as qualified
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = ${table}::regclass`;
    if (!row) throw new Error(`relation "${table}" does not exist`);
    return row;
  } catch (error) {
    const e = serverError(error);
    if (e === undefined || !ARGUMENT_SQLSTATES.has(e.code)) throw error;
    const hint =
      e.code === '42P01' || e.code === '3F000'
        ? await tableHint(sql, table, commandLine)
        : undefined;
    throw Object.assign(
      new UsageError(describe({ ...e, message: `${e.message} (table argument: ${table})` }, hint)),
      { code: e.code, cause: error },
    );
  }
}

/** How to change the settings of a captured table: tear it down, then set it up again. */
function changeHint(qualified: string, column: string | undefined, fullRow: boolean): string {
  return `to change it: pg2kafka teardown ${shellWord(qualified)}, then, once its queued events have been shipped (pg2kafka status), ${setupLine(qualified, column === undefined ? undefined : shellWord(column), fullRow)}`;
}

/** The command line that sets up `table`; `columnWord` goes in as it is (a shell word). */
function setupLine(table: string, columnWord: string | undefined, fullRow: boolean): string {
  return `pg2kafka setup ${shellWord(table)}${columnWord === undefined ? '' : ` ${columnWord}`}${fullRow ? ' --full-row' : ''}`;
}

export interface SetupOptions {
  /** The external id column; undefined: the table's primary key (of one column or several). */
  column?: string | undefined;
  fullRow?: boolean;
  snapshot?: SnapshotMode;
  payload?: PayloadOptions;
}

export async function setupCommand(
  config: Config,
  table: string,
  options: SetupOptions = {},
): Promise<SetupResult> {
  const warnings: string[] = [];
  const sql = await connect(config, 'setup', warnings);
  try {
    const schemaWarnings = warnings.splice(0);
    const result = await setupOne(sql, config, table, options, warnings);
    return { ...result, warnings: [...schemaWarnings, ...result.warnings] };
  } finally {
    await sql.end({ timeout: 2 });
  }
}

/** One setup() on `sql`; `warnings` is the pool's notice list, emptied into the result. */
async function setupOne(
  sql: postgres.Sql,
  config: Config,
  table: string,
  options: SetupOptions,
  warnings: string[],
): Promise<SetupResult> {
  const { column, fullRow = false, snapshot = 'online', payload = {} } = options;
  warnings.length = 0;
  const described = await describeTable(
    sql,
    table,
    (t) =>
      `pg2kafka setup ${t}${column === undefined ? '' : ` ${shellWord(column)}`}${fullRow ? ' --full-row' : ''}`,
  );
  const topic = topicName(
    {
      prefix: config.topicPrefix,
      namespace: config.topicNamespace,
      database: described.database,
      style: config.topicNaming,
    },
    described.schema,
    described.name,
  );
  const problem = topicNameProblem(topic);
  if (problem !== undefined)
    throw new UsageError(`cannot set up ${described.qualified}: ${problem}`);
  // setup() returns nothing (as the original's did): the registry row, read in the same
  // transaction, says whether this call did the work (set_up_at is the transaction's now()),
  // and pg2kafka.snapshots whether it left a copy to run online.
  const outcome = await sql
    .begin(async (tx) => {
      await tx`
        select pg2kafka.setup(${described.oid}::oid::regclass, ${column ?? null}, ${fullRow}, ${snapshot},
          exclude_columns => ${payload.exclude ?? null}::text[], include_columns => ${payload.include ?? null}::text[],
          row_filter => ${payload.filter ?? null}, tombstones => ${payload.tombstones ?? null},
          message_format => ${payload.format ?? null})`;
      const [row] = await tx<
        {
          column: string;
          full_row: boolean;
          rows: string | null;
          changed: boolean;
          pending: boolean;
          estimated: string | null;
        }[]
      >`
        select t.external_id_column as column, t.full_row, t.snapshot_rows::text as rows,
               t.set_up_at = now() as changed, p.table_oid is not null as pending,
               p.rows_estimated::text as estimated
        from pg2kafka.tracked_tables t
        left join pg2kafka.snapshots p on p.table_oid = t.table_oid and p.finished_at is null
        where t.table_oid = ${described.oid}::oid`;
      if (!row) throw new Error(`pg2kafka.setup() left no registry row for ${described.qualified}`);
      return row;
    })
    .catch((error: unknown) => {
      const e = serverError(error);
      throw sortError(
        error,
        e?.code === '42710' && e.message.includes('payload settings')
          ? `change them with pg2kafka alter ${shellWord(described.qualified)} (see pg2kafka alter --help): no change is lost or sent twice`
          : e?.code === '42710'
            ? changeHint(described.qualified, column, fullRow)
            : e?.code === '42703' && column === undefined && e.message.includes('no primary key')
              ? `name its key column: ${setupLine(described.qualified, '<column>', fullRow)} (a unique NOT NULL column; its value becomes the Kafka message key)`
              : undefined,
      );
    });
  if (!outcome.changed) {
    // The only warning setup() gives then is "already set up": the result says it better.
    warnings.length = 0;
    if (outcome.full_row !== fullRow) {
      throw new UsageError(
        `${described.qualified} is already set up ${outcome.full_row ? 'with' : 'without'} --full-row; nothing was changed\n` +
          `  hint: ${changeHint(described.qualified, column, fullRow)}`,
      );
    }
  }
  return {
    table: described.qualified,
    tableOid: described.oid,
    topic,
    externalIdColumn: outcome.column,
    fullRow: outcome.full_row,
    changed: outcome.changed,
    snapshotRows: outcome.changed && !outcome.pending ? Number(outcome.rows ?? 0) : 0,
    snapshot: outcome.pending
      ? 'pending'
      : outcome.changed && snapshot !== 'none'
        ? 'copied'
        : 'none',
    rowsEstimated: outcome.estimated === null ? undefined : Number(outcome.estimated),
    warnings: warnings.splice(0),
  };
}

/** What `setup '<schema>.*'` did with one table of the schema. */
export type SchemaSetupEntry =
  | { table: string; outcome: 'set up'; result: SetupResult }
  | { table: string; outcome: 'skipped'; reason: string }
  | { table: string; outcome: 'failed'; error: unknown };

/** A table argument that names every table of a schema: `sales.*`, `"Sales".*`. */
export function schemaPattern(table: string): string | undefined {
  return table.endsWith('.*') && table.length > 2 ? table.slice(0, -2) : undefined;
}

/**
 * `setup '<schema>.*'`: every plain or partitioned table of the schema that is not a
 * partition (nor temporary), in name order, each keyed by its primary key (a table
 * already captured keeps its key). A table without a primary key is skipped;
 * an error of one table does not stop the others.
 */
export async function setupSchemaCommand(
  config: Config,
  schema: string,
  options: Omit<SetupOptions, 'column'> = {},
): Promise<{ schema: string; entries: SchemaSetupEntry[]; warnings: string[] }> {
  const warnings: string[] = [];
  const sql = await connect(config, 'setup', warnings);
  try {
    const schemaWarnings = warnings.splice(0);
    const [found] = await sql<{ name: string | null; shown: string }[]>`
      select n.nspname as name, format('%I', parts[1]) as shown
      from (select parse_ident(${schema}) as parts) p
      left join pg_namespace n on n.nspname = p.parts[1]
      where cardinality(parts) = 1`.catch((error: unknown) => {
      throw sortError(error);
    });
    if (!found)
      throw new UsageError(`"${schema}.*" is not a schema pattern: name one schema, as in sales.*`);
    if (found.name === null)
      throw new UsageError(`schema ${found.shown} does not exist (table argument: ${schema}.*)`);
    const tables = await sql<{ qualified: string; column: string | null; keyed: boolean }[]>`
      -- column: the key column a captured table keeps; NULL lets setup() take the primary
      -- key (of one column or several).
      select format('%I.%I', n.nspname, c.relname) as qualified,
             case when cardinality(t.key_columns) = 1 then t.external_id_column end as column,
             i.indexrelid is not null or t.table_oid is not null as keyed
      from pg_class c
      join pg_namespace n on n.oid = c.relnamespace
      left join pg_index i on i.indrelid = c.oid and i.indisprimary
      left join pg2kafka.tracked_tables t on t.table_oid = c.oid and t.capturing
      where n.nspname = ${found.name} and c.relkind in ('r', 'p') and not c.relispartition
        and c.relpersistence <> 't'
      order by c.relname`;
    const entries: SchemaSetupEntry[] = [];
    for (const t of tables) {
      if (!t.keyed) {
        entries.push({
          table: t.qualified,
          outcome: 'skipped',
          reason: `no primary key; set it up with its key column: ${setupLine(t.qualified, '<column>', options.fullRow ?? false)}`,
        });
        continue;
      }
      entries.push(await setupEntry(sql, config, t.qualified, t.column, options, warnings));
    }
    return { schema: found.shown, entries, warnings: schemaWarnings };
  } finally {
    await sql.end({ timeout: 2 });
  }
}

/** One table of several: set up with `column` (null: its primary key), or why not. */
async function setupEntry(
  sql: postgres.Sql,
  config: Config,
  table: string,
  column: string | null,
  options: Omit<SetupOptions, 'column'>,
  warnings: string[],
): Promise<SchemaSetupEntry> {
  try {
    const result = await setupOne(
      sql,
      config,
      table,
      { ...options, column: column ?? undefined },
      warnings,
    );
    return { table: result.table, outcome: 'set up', result };
  } catch (error) {
    return { table, outcome: 'failed', error };
  }
}

/**
 * Whether `second` in `setup <table> <second>` is the external id column, as in the
 * original's setup(table, column), or another table to set up: a table only when
 * `table` has no column of that name and a table of that name exists (so a mistyped
 * column still says that the column does not exist).
 */
export async function secondArgumentIs(
  config: Config,
  table: string,
  second: string,
): Promise<'column' | 'table'> {
  const sql = await connect(config, 'setup', []);
  try {
    const [row] = await sql<{ table: boolean }[]>`
      select to_regclass(${second}) is not null
             and not exists (select 1 from pg_attribute a
                             where a.attrelid = to_regclass(${table}) and a.attname = ${second}
                               and a.attnum > 0 and not a.attisdropped) as table`.catch(
      (error: unknown) => {
        // A name that does not even parse as a table is a column name (or a mistake).
        if (serverError(error) !== undefined) return [{ table: false }];
        throw error;
      },
    );
    return row?.table ? 'table' : 'column';
  } finally {
    await sql.end({ timeout: 2 });
  }
}

/**
 * `setup <table>...`: several tables, each keyed by its primary key (a table already
 * captured keeps its key); an error of one table does not stop the others.
 */
export async function setupTablesCommand(
  config: Config,
  tables: string[],
  options: Omit<SetupOptions, 'column'> = {},
): Promise<{ entries: SchemaSetupEntry[]; warnings: string[] }> {
  const warnings: string[] = [];
  const sql = await connect(config, 'setup', warnings);
  try {
    const connectWarnings = warnings.splice(0);
    // A name that is no table is a mistake in the command: nothing is set up then.
    for (const table of tables) await describeTable(sql, table, (t) => `pg2kafka setup ${t}`);
    const entries: SchemaSetupEntry[] = [];
    for (const table of tables) {
      const [captured] = await sql<{ column: string | null }[]>`
        select case when cardinality(t.key_columns) = 1 then t.external_id_column end as column
        from pg2kafka.tracked_tables t
        where t.table_oid = to_regclass(${table}) and t.capturing`.catch(() => []);
      entries.push(
        await setupEntry(sql, config, table, captured?.column ?? null, options, warnings),
      );
    }
    return { entries, warnings: connectWarnings };
  } finally {
    await sql.end({ timeout: 2 });
  }
}

export interface TeardownResult {
  table: string;
  /** False when the table was not being captured: nothing was done (a warning says so). */
  changed: boolean;
  warnings: string[];
}

export async function teardownCommand(config: Config, table: string): Promise<TeardownResult> {
  const warnings: string[] = [];
  const sql = await connect(config, 'teardown', warnings);
  try {
    const described = await describeTable(sql, table, (t) => `pg2kafka teardown ${t}`);
    const changed = await sql
      .begin(async (tx) => {
        await tx`select pg2kafka.teardown(${table}::regclass)`;
        const [row] = await tx<{ changed: boolean }[]>`
          select coalesce(torn_down_at = now(), false) as changed
          from pg2kafka.tracked_tables where table_oid = ${table}::regclass`;
        return row?.changed ?? false;
      })
      .catch((error: unknown) => {
        throw sortError(error);
      });
    return { table: described.qualified, changed, warnings };
  } finally {
    await sql.end({ timeout: 2 });
  }
}

export interface AlterResult {
  table: string;
  /** The settings now, as PostgreSQL says them (' (without the columns "secret")'), or ''. */
  settings: string;
  /** PostgreSQL's hint: what to do for rows as they are (resnapshot), if anything. */
  hint: string | undefined;
  warnings: string[];
}

/** `pg2kafka alter <table> ...`: pg2kafka.alter() with the settings given. */
export async function alterCommand(
  config: Config,
  table: string,
  payload: PayloadOptions,
): Promise<AlterResult> {
  const warnings: string[] = [];
  let hint: string | undefined;
  const sql = openPool(config.databaseUrl, {
    connection: { application_name: 'pg2kafka alter' },
    onnotice: (notice) => {
      if (notice.severity === 'WARNING') warnings.push(String(notice.message));
      else if (String(notice.message).startsWith('pg2kafka:') && notice.hint) hint = notice.hint;
    },
  });
  try {
    await checkConnection(sql, config.databaseUrl);
    warnings.push(...(await checkSchema(sql)).warnings);
    const described = await describeTable(sql, table, (t) => `pg2kafka alter ${t}`);
    const [row] = await sql
      .begin(async (tx) => {
        await tx`
          select pg2kafka.alter(${described.oid}::oid::regclass,
            exclude_columns => ${payload.exclude ?? null}::text[], include_columns => ${payload.include ?? null}::text[],
            row_filter => ${payload.filter ?? null}, tombstones => ${payload.tombstones ?? null},
            message_format => ${payload.format ?? null})`;
        return tx<{ settings: string }[]>`
          select pg2kafka.payload_phrase(t) as settings
          from pg2kafka.tracked_tables t where t.table_oid = ${described.oid}::oid`;
      })
      .catch((error: unknown) => {
        throw sortError(error);
      });
    return {
      table: described.qualified,
      settings: row?.settings ?? '',
      hint: hint?.startsWith('Events carry more')
        ? `events carry more from now on; to send the rows as they are: pg2kafka resnapshot ${shellWord(described.qualified)}`
        : undefined,
      warnings,
    };
  } finally {
    await sql.end({ timeout: 2 });
  }
}
