/**
 * Installs or upgrades the pg2kafka schema.
 *
 * Two kinds of SQL, applied in this order, each safe when several processes migrate at
 * once and a no-op when nothing changed:
 * 1. `migrations/NNNN_*.sql`: versioned, applied once each by node-pg-migrate (history in
 *    `pg2kafka.migrations`), never edited once released. Tables and data changes go here.
 * 2. `sql/NN_*.sql`: repeatable `CREATE OR REPLACE` scripts for functions, triggers
 *    functions and views, applied in file order in one transaction whenever their
 *    combined sha256 differs from the one recorded in `pg2kafka.settings`. Edit them in
 *    place; they must stay re-runnable and must only depend on what migrations created.
 *
 * 3. The capture triggers of every captured table whose triggers are older than
 *    pg2kafka.capture_triggers_version() are reinstalled (setup() leaves a table it
 *    already captures alone), each under setup's short, retried lock. A table whose lock
 *    cannot be taken (a long transaction on it) is reported, not fatal: its old triggers
 *    keep capturing, and the next migrate tries again.
 *
 * Concurrency: node-pg-migrate holds a session advisory lock (waiting, not failing)
 * while it migrates; the repeatable step runs under a transaction advisory lock.
 *
 * Connections: node-pg-migrate needs node-postgres; everything else uses postgres.js.
 * Both get the same TLS settings from DATABASE_URL (database-tls.ts).
 */
import { join } from 'node:path';
import { runner } from 'node-pg-migrate';
import type { ClientConfig } from 'pg';
import { CONNECT_TIMEOUT_MS, explainConnectionError, openPool } from '../database.ts';
import { databaseTls, nodePostgresSsl } from '../database-tls.ts';
import { packageRoot } from '../package-root.ts';
import { MIGRATION_LOCK, REPEATABLE_SQL_LOCK } from './locks.ts';
import { readRepeatableScripts } from './schema.ts';

/** What pg_stat_activity shows for both of migrate's connections (DATABASE_URL's own wins). */
const APPLICATION_NAME = 'pg2kafka migrate';

export interface MigrateResult {
  /** Versioned migrations applied by this run. */
  migrations: string[];
  /** Whether the repeatable scripts were (re)applied. */
  functionsUpdated: boolean;
  /** Captured tables whose triggers this run brought to the current version. */
  triggersRefreshed: string[];
  /** Captured tables whose triggers are still old, and why (their lock could not be taken). */
  triggersStale: Array<{ table: string; error: string }>;
}

export interface MigrateOptions {
  databaseUrl: string;
  log?: (message: string) => void;
}

export async function migrate({
  databaseUrl,
  log = () => undefined,
}: MigrateOptions): Promise<MigrateResult> {
  const sql = openPool(databaseUrl, { connection: { application_name: APPLICATION_NAME } });
  try {
    // The first round trip goes through postgres.js, so connection problems read as for
    // every other command; it also tells node-postgres whether sslmode=prefer got TLS.
    const [session] = await sql<{ ssl: boolean }[]>`
      select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false) as ssl`;
    const applied = await runner({
      databaseUrl: nodePostgresConfig(databaseUrl, session?.ssl ?? false),
      dir: join(packageRoot, 'migrations'),
      direction: 'up',
      count: Infinity,
      migrationsTable: 'migrations',
      migrationsSchema: 'pg2kafka',
      createMigrationsSchema: true,
      singleTransaction: true,
      checkOrder: true,
      lockValue: MIGRATION_LOCK,
      advisoryLockMode: 'wait',
      log,
    });

    const scripts = readRepeatableScripts();
    const functionsUpdated = await sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(${REPEATABLE_SQL_LOCK})`;
      const [current] = await tx<{ value: string }[]>`
        select value from pg2kafka.settings where name = 'sql_sha256'`;
      if (current?.value === scripts.sha256) return false;
      for (const file of scripts.files) {
        log(`applying sql/${file.name}`);
        await tx.unsafe(file.text);
      }
      await tx`
        insert into pg2kafka.settings (name, value) values ('sql_sha256', ${scripts.sha256})
        on conflict (name) do update set value = excluded.value`;
      return true;
    });
    return {
      migrations: applied.map((m) => m.name),
      functionsUpdated,
      ...(await refreshTriggers(sql)),
    };
  } catch (error) {
    throw explainConnectionError(error, databaseUrl);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Step 3: reinstalls the capture triggers that are older than this version's. */
async function refreshTriggers(
  sql: ReturnType<typeof openPool>,
): Promise<Pick<MigrateResult, 'triggersRefreshed' | 'triggersStale'>> {
  const stale = await sql<{ oid: string; name: string }[]>`
    select t.table_oid::text as oid, t.table_oid::regclass::text as name
    from pg2kafka.tracked_tables t
    join pg_catalog.pg_class c on c.oid = t.table_oid
    where t.capturing
      and t.triggers_version is distinct from pg2kafka.capture_triggers_version()
    order by 2`;
  const result: Pick<MigrateResult, 'triggersRefreshed' | 'triggersStale'> = {
    triggersRefreshed: [],
    triggersStale: [],
  };
  for (const table of stale) {
    try {
      await sql`select pg2kafka.refresh_capture_triggers(${table.oid}::oid::regclass)`;
      result.triggersRefreshed.push(table.name);
    } catch (error) {
      const detail = (error as { detail?: unknown }).detail;
      result.triggersStale.push({
        table: table.name,
        error: `${error instanceof Error ? error.message : String(error)}${typeof detail === 'string' ? `: ${detail}` : ''}`,
      });
    }
  }
  return result;
}

/**
 * node-pg-migrate's connection: node-postgres with the TLS settings postgres.js gets
 * (database-tls.ts) and the same connect deadline. `serverUsesTls`: whether the server
 * took TLS on postgres.js's connection, which decides sslmode=prefer (node-postgres cannot
 * fall back to plain text itself).
 */
export function nodePostgresConfig(databaseUrl: string, serverUsesTls: boolean): ClientConfig {
  const tls = databaseTls(databaseUrl);
  return {
    connectionString: tls.url,
    ssl: nodePostgresSsl(tls, serverUsesTls),
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    application_name: APPLICATION_NAME,
  };
}
