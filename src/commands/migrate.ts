/**
 * `pg2kafka migrate`: installs or upgrades the pg2kafka schema (capture/migrate.ts).
 *
 * node-pg-migrate connects with node-postgres, which has no deadline of its own here and
 * reports an unreachable host after about 20 s as "Connection terminated unexpectedly".
 * So the command first makes one bounded round trip with the connection every other
 * command uses (checkConnection): an unreachable host, a wrong role or database fails in
 * CONNECT_TIMEOUT_MS at most, with the same message as everywhere else. node-pg-migrate
 * is loaded only then, so `pg2kafka migrate --help` stays quick.
 */
import type { MigrateResult } from '../capture/migrate.ts';
import { checkConnection, openPool } from '../database.ts';
import type { Logger } from '../logger.ts';

export const migrateHelp = `Usage: pg2kafka migrate

Installs or upgrades the pg2kafka schema in the database at DATABASE_URL: the
outbound_event_queue, setup()/teardown() and the capture triggers. Safe to run again
and from several processes at once. Remove everything with DROP SCHEMA pg2kafka CASCADE.
`;

/** One warning per captured table whose triggers migrate could not bring up to date. */
export function warnStaleTriggers(result: MigrateResult, log: Logger): void {
  for (const { table, error } of result.triggersStale) {
    log.warn(
      { table, err: error },
      `the capture triggers of ${table} are still those of an older pg2kafka (they keep capturing): ${error}; run pg2kafka migrate again once that transaction has ended`,
    );
  }
}

export async function migrateCommand(databaseUrl: string, logger: Logger): Promise<MigrateResult> {
  const log = logger.child({ component: 'migrate' });
  const sql = openPool(databaseUrl, { connection: { application_name: 'pg2kafka migrate' } });
  try {
    await checkConnection(sql, databaseUrl);
  } finally {
    await sql.end({ timeout: 2 });
  }
  const { migrate } = await import('../capture/migrate.ts');
  const result = await migrate({
    databaseUrl,
    log: (message) => {
      log.debug(message);
    },
  });
  log.info(
    {
      migrations: result.migrations,
      functionsUpdated: result.functionsUpdated,
      triggersRefreshed: result.triggersRefreshed,
    },
    result.migrations.length === 0 &&
      !result.functionsUpdated &&
      result.triggersRefreshed.length === 0
      ? 'schema pg2kafka is up to date'
      : 'schema pg2kafka migrated',
  );
  warnStaleTriggers(result, log);
  return result;
}
