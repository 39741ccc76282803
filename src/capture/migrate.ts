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
    return { migrations: applied.map((m) => m.name), functionsUpdated };
  } catch (error) {
    throw explainConnectionError(error, databaseUrl);
  } finally {
    await sql.end({ timeout: 5 });
  }
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
