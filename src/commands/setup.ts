/**
 * `pg2kafka setup <table> <column> [--full-row]` and `pg2kafka teardown <table>`: the SQL
 * functions, with the topic name checked first (the SQL side does not know TOPIC_PREFIX
 * or TOPIC_NAMESPACE) and the database's warnings passed on.
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

export const setupHelp = `Usage: pg2kafka setup <table> <external-id-column> [--full-row]

Starts capturing <table> (schema-qualified or found on the search_path; quote mixed-case
names as in SQL: '"Sales"."Order Items"'): queues one SNAPSHOT event per existing row and
installs the capture triggers. Events are keyed by <external-id-column>, ideally the
primary key. --full-row makes UPDATE carry the whole new row and DELETE the old row.
Same as: SELECT pg2kafka.setup('<table>', '<external-id-column>'[, true]);
`;

export const teardownHelp = `Usage: pg2kafka teardown <table>

Stops capturing <table>. Events already queued stay and are still shipped.
Same as: SELECT pg2kafka.teardown('<table>');
`;

export interface SetupResult {
  table: string;
  topic: string;
  /** The external id column and mode the table is captured with. */
  externalIdColumn: string;
  fullRow: boolean;
  /** False when the table was already captured with these settings: nothing was done. */
  changed: boolean;
  /** SNAPSHOT events this call queued (0 when nothing changed). */
  snapshotRows: number;
  warnings: string[];
}

/**
 * SQLSTATEs that mean the arguments are wrong (exit 2), as setup(), teardown() and the
 * `regclass` input of the table name raise them. Every other error is a runtime failure.
 */
const ARGUMENT_SQLSTATES = new Set([
  '42P01', // undefined_table: no such table
  '3F000', // invalid_schema_name: no such schema
  '42602', // invalid_name: '"unclosed'
  '42601', // syntax_error: 'a.b.c.d' (too many dotted names)
  '0A000', // feature_not_supported: a cross-database reference
  '42703', // undefined_column: no such key column
  '42809', // wrong_object_type: a view, a sequence, a partition, a temporary table
  '42710', // duplicate_object: already set up with another external id column
  '42501', // insufficient_privilege: the role may not read or capture the table
]);

/** A PostgreSQL error as postgres.js reports it. */
interface ServerError {
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

function serverError(error: unknown): ServerError | undefined {
  if (!(error instanceof Error)) return undefined;
  const { code } = error as Error & { code?: unknown };
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)
    ? (error as Error & ServerError)
    : undefined;
}

/** The message, then PostgreSQL's DETAIL and HINT (or `hint` instead) on lines of their own. */
function describe(error: ServerError, hint = error.hint): string {
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
function sortError(error: unknown, hint?: string): unknown {
  const e = serverError(error);
  if (e === undefined) return error;
  const message = describe(e, hint);
  if (ARGUMENT_SQLSTATES.has(e.code)) {
    return Object.assign(new UsageError(message), { code: e.code, cause: error });
  }
  return new CaptureCommandError(message, e.code, { cause: error });
}

/** `arg` as a POSIX shell word: as it is when safe, else single-quoted. */
function shellWord(arg: string): string {
  return /^[A-Za-z0-9_.,:=@%+/-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

async function connect(config: Config, command: string, warnings: string[]): Promise<postgres.Sql> {
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

interface DescribedTable {
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

async function describeTable(
  sql: postgres.Sql,
  table: string,
  commandLine: (table: string) => string,
): Promise<DescribedTable> {
  try {
    const [row] = await sql<DescribedTable[]>`
      select n.nspname as schema, c.relname as name, current_database() as database,
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
function changeHint(qualified: string, column: string, fullRow: boolean): string {
  const table = shellWord(qualified);
  return `to change it: pg2kafka teardown ${table}, then, once its queued events have been shipped (pg2kafka status), pg2kafka setup ${table} ${shellWord(column)}${fullRow ? ' --full-row' : ''}`;
}

export async function setupCommand(
  config: Config,
  table: string,
  column: string,
  fullRow: boolean,
): Promise<SetupResult> {
  const warnings: string[] = [];
  const sql = await connect(config, 'setup', warnings);
  try {
    const schemaWarnings = warnings.splice(0);
    const described = await describeTable(
      sql,
      table,
      (t) => `pg2kafka setup ${t} ${shellWord(column)}${fullRow ? ' --full-row' : ''}`,
    );
    const topic = topicName(
      {
        prefix: config.topicPrefix,
        namespace: config.topicNamespace,
        database: described.database,
      },
      described.schema,
      described.name,
    );
    const problem = topicNameProblem(topic);
    if (problem !== undefined)
      throw new UsageError(`cannot set up ${described.qualified}: ${problem}`);
    // setup() returns nothing (as the original's did): the registry row, read in the same
    // transaction, says whether this call did the work (set_up_at is the transaction's now()).
    const outcome = await sql
      .begin(async (tx) => {
        await tx`select pg2kafka.setup(${table}::regclass, ${column}, ${fullRow})`;
        const [row] = await tx<
          { column: string; full_row: boolean; rows: string | null; changed: boolean }[]
        >`
          select external_id_column as column, full_row, snapshot_rows::text as rows,
                 set_up_at = now() as changed
          from pg2kafka.tracked_tables where table_oid = ${table}::regclass`;
        if (!row)
          throw new Error(`pg2kafka.setup() left no registry row for ${described.qualified}`);
        return row;
      })
      .catch((error: unknown) => {
        const e = serverError(error);
        throw sortError(
          error,
          e?.code === '42710' ? changeHint(described.qualified, column, fullRow) : undefined,
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
      topic,
      externalIdColumn: outcome.column,
      fullRow: outcome.full_row,
      changed: outcome.changed,
      snapshotRows: outcome.changed ? Number(outcome.rows ?? 0) : 0,
      warnings: [...schemaWarnings, ...warnings],
    };
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
