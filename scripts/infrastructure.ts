/**
 * Checks that the infrastructure tests and the demo need is reachable, and says what to
 * start when it is not. Used by `npm test` before any test runs, so a missing database or
 * broker fails the run loudly instead of skipping tests.
 */
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';

export const DEFAULT_ADMIN_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

/** The URL with any password replaced, for messages. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparseable URL)';
  }
}

export async function checkPostgres(url: string): Promise<string> {
  const sql = postgres(url, { max: 1, connect_timeout: 5, onnotice: () => undefined });
  try {
    const [row] = await sql<
      { version: string }[]
    >`select current_setting('server_version') as version`;
    return row?.version ?? 'unknown';
  } catch (error) {
    throw new Error(
      `PostgreSQL is not reachable at ${redactUrl(url)}: ${(error as Error).message}. ` +
        'Start it (for example: pg_ctlcluster --skip-systemctl-redirect 15 main start) ' +
        'or point DATABASE_URL at a server where this user may create databases.',
      { cause: error },
    );
  } finally {
    await sql.end({ timeout: 1 });
  }
}

export async function checkKafka(brokers: string[]): Promise<void> {
  const admin = new Kafka({
    clientId: 'pg2kafka-preflight',
    brokers,
    connectionTimeout: 5000,
    retry: { retries: 2 },
    logLevel: logLevel.NOTHING,
  }).admin();
  try {
    await admin.connect();
    await admin.describeCluster();
  } catch (error) {
    throw new Error(
      `Kafka is not reachable at ${brokers.join(',')}: ${(error as Error).message}. ` +
        'Start that broker, or unset KAFKA_BROKERS so that npm test starts a local one.',
      { cause: error },
    );
  } finally {
    await admin.disconnect();
  }
}
