/**
 * `pg2kafka setup <table> <column> [--full-row]` and `pg2kafka teardown <table>`: the SQL
 * functions, with the topic name checked first (the SQL side does not know TOPIC_PREFIX
 * or TOPIC_NAMESPACE) and the database's warnings passed on.
 */
import postgres from 'postgres';
import type { Config } from '../config.ts';
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
  snapshotRows: number;
  warnings: string[];
}

function connect(config: Config, warnings: string[]): postgres.Sql {
  return postgres(config.databaseUrl, {
    max: 1,
    connect_timeout: 10,
    onnotice: (notice) => {
      if (notice.severity === 'WARNING') warnings.push(String(notice.message));
    },
  });
}

async function describeTable(
  sql: postgres.Sql,
  table: string,
): Promise<{ schema: string; name: string; database: string; qualified: string }> {
  try {
    const [row] = await sql<
      { schema: string; name: string; database: string; qualified: string }[]
    >`
      select n.nspname as schema, c.relname as name, current_database() as database,
             format('%I.%I', n.nspname, c.relname) as qualified
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = ${table}::regclass`;
    if (!row) throw new Error(`relation "${table}" does not exist`);
    return row;
  } catch (error) {
    throw new UsageError(`${(error as Error).message} (table argument: ${table})`);
  }
}

export async function setupCommand(
  config: Config,
  table: string,
  column: string,
  fullRow: boolean,
): Promise<SetupResult> {
  const warnings: string[] = [];
  const sql = connect(config, warnings);
  try {
    const described = await describeTable(sql, table);
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
    await sql`select pg2kafka.setup(${table}::regclass, ${column}, ${fullRow})`;
    const [row] = await sql<{ rows: string | null }[]>`
      select snapshot_rows::text as rows from pg2kafka.tracked_tables where table_oid = ${table}::regclass`;
    return { table: described.qualified, topic, snapshotRows: Number(row?.rows ?? 0), warnings };
  } finally {
    await sql.end({ timeout: 2 });
  }
}

export async function teardownCommand(
  config: Config,
  table: string,
): Promise<{ table: string; warnings: string[] }> {
  const warnings: string[] = [];
  const sql = connect(config, warnings);
  try {
    const described = await describeTable(sql, table);
    await sql`select pg2kafka.teardown(${table}::regclass)`;
    return { table: described.qualified, warnings };
  } finally {
    await sql.end({ timeout: 2 });
  }
}
