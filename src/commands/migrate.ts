import { migrate, type MigrateResult } from '../capture/migrate.ts';
import type { Logger } from '../logger.ts';

export const migrateHelp = `Usage: pg2kafka migrate

Installs or upgrades the pg2kafka schema in the database at DATABASE_URL: the
outbound_event_queue, setup()/teardown() and the capture triggers. Safe to run again
and from several processes at once. Remove everything with DROP SCHEMA pg2kafka CASCADE.
`;

export async function migrateCommand(databaseUrl: string, logger: Logger): Promise<MigrateResult> {
  const log = logger.child({ component: 'migrate' });
  const result = await migrate({
    databaseUrl,
    log: (message) => {
      log.debug(message);
    },
  });
  log.info(
    { migrations: result.migrations, functionsUpdated: result.functionsUpdated },
    result.migrations.length === 0 && !result.functionsUpdated
      ? 'schema pg2kafka is up to date'
      : 'schema pg2kafka migrated',
  );
  return result;
}
