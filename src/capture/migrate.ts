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
 */
import { join } from 'node:path';
import { runner } from 'node-pg-migrate';
import postgres from 'postgres';
import { packageRoot } from '../package-root.ts';
import { MIGRATION_LOCK, REPEATABLE_SQL_LOCK } from './locks.ts';
import { readRepeatableScripts } from './schema.ts';

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
  const applied = await runner({
    databaseUrl,
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
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => undefined });
  try {
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
  } finally {
    await sql.end({ timeout: 5 });
  }
}
