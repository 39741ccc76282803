/**
 * Which pg2kafka schema this version expects, and whether the database has it.
 *
 * `migrate` (capture/migrate.ts) installs it; everything else checks it first, so that a
 * user who forgot to migrate (or a schema dropped under a running relay) reads what to do
 * instead of `relation "pg2kafka.relay_lease" does not exist`. Light on purpose: no
 * node-pg-migrate here, so commands that only check stay quick to start.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type postgres from 'postgres';
import { UsageError } from '../errors.ts';
import { packageRoot } from '../package-root.ts';

export const MIGRATE_HINT =
  'run "pg2kafka migrate" (or start the relay with PERFORM_MIGRATIONS=true)';

export interface RepeatableScripts {
  files: Array<{ name: string; text: string }>;
  sha256: string;
}

/** The sql/ scripts in file order and their combined sha256 (recorded by migrate). */
export function readRepeatableScripts(): RepeatableScripts {
  const dir = join(packageRoot, 'sql');
  const names = readdirSync(dir)
    .filter((n) => n.endsWith('.sql'))
    .sort();
  const hash = createHash('sha256');
  const files = names.map((name) => {
    const text = readFileSync(join(dir, name), 'utf8');
    hash.update(name).update('\0').update(text).update('\0');
    return { name, text };
  });
  return { files, sha256: hash.digest('hex') };
}

/** Versioned migrations this version ships, as node-pg-migrate records them (no extension). */
export function expectedMigrations(): string[] {
  return readdirSync(join(packageRoot, 'migrations'))
    .filter((n) => n.endsWith('.sql'))
    .sort()
    .map((n) => n.replace(/\.sql$/, ''));
}

/** The schema is missing or older than this version: configuration, exit 2. */
export class SchemaError extends UsageError {}

export interface SchemaCheck {
  /** Said but not fatal: a newer schema than this version knows (a rolling upgrade). */
  warnings: string[];
}

/** SQLSTATEs of a missing relation, schema or function: the schema may have been dropped. */
const MISSING_OBJECT_SQLSTATES = new Set(['42P01', '3F000', '42883', '42703']);

export function isMissingObjectError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && MISSING_OBJECT_SQLSTATES.has(code);
}

/**
 * Throws SchemaError when the pg2kafka schema is missing, half installed, or lacks a
 * migration or function version this pg2kafka needs; warns when it is newer.
 */
export async function checkSchema(sql: postgres.Sql): Promise<SchemaCheck> {
  const [state] = await sql<
    { database: string; has_schema: boolean; has_migrations: boolean; has_settings: boolean }[]
  >`
    select current_database() as database,
           to_regnamespace('pg2kafka') is not null as has_schema,
           to_regclass('pg2kafka.migrations') is not null as has_migrations,
           to_regclass('pg2kafka.settings') is not null as has_settings`;
  const database = state?.database ?? '';
  if (!state?.has_schema) {
    throw new SchemaError(
      `the pg2kafka schema is not installed in database "${database}": ${MIGRATE_HINT}`,
    );
  }
  if (!state.has_migrations || !state.has_settings) {
    throw new SchemaError(
      `the pg2kafka schema in database "${database}" is incomplete (no migration history): ${MIGRATE_HINT}`,
    );
  }
  const applied = (await sql<{ name: string }[]>`select name from pg2kafka.migrations`).map(
    (r) => r.name,
  );
  const expected = expectedMigrations();
  const missing = expected.filter((m) => !applied.includes(m));
  if (missing.length > 0) {
    throw new SchemaError(
      `the pg2kafka schema in database "${database}" is older than this pg2kafka (missing ${missing.join(', ')}): ${MIGRATE_HINT}`,
    );
  }
  const warnings: string[] = [];
  const unknown = applied.filter((m) => !expected.includes(m));
  if (unknown.length > 0) {
    warnings.push(
      `the pg2kafka schema in database "${database}" is newer than this pg2kafka (${unknown.join(', ')}): upgrade pg2kafka`,
    );
  } else {
    const [sha] = await sql<{ value: string }[]>`
      select value from pg2kafka.settings where name = 'sql_sha256'`;
    if (sha?.value !== readRepeatableScripts().sha256) {
      throw new SchemaError(
        `the pg2kafka functions in database "${database}" differ from this version's (installed by an older or a newer pg2kafka): ${MIGRATE_HINT}`,
      );
    }
  }
  return { warnings };
}
