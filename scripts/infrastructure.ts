/**
 * Checks that the infrastructure tests and the demo need is reachable, and says what to
 * start when it is not. Used by `npm test` before any test runs, so a missing database or
 * broker fails the run loudly instead of skipping tests.
 */
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { redactUrl } from '../src/config.ts';

export const DEFAULT_ADMIN_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

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

/**
 * Makes a fresh broker ready for consumer groups: the first group join creates the
 * __consumer_offsets topic, and until it has leaders kafkajs consumers answer "group
 * coordinator not available" and can burn a test's whole timeout. One throwaway group
 * absorbs that once, before any test runs.
 */
export async function warmUpConsumerGroups(brokers: string[], timeoutMs = 90_000): Promise<void> {
  const kafka = new Kafka({ clientId: 'pg2kafka-warm-up', brokers, logLevel: logLevel.NOTHING });
  const topic = `pg2kafka-warm-up-${Date.now()}`;
  const admin = kafka.admin();
  await admin.connect();
  try {
    await admin.createTopics({ topics: [{ topic }], waitForLeaders: true });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const consumer = kafka.consumer({ groupId: `${topic}-group` });
      try {
        await consumer.connect();
        await consumer.subscribe({ topics: [topic], fromBeginning: true });
        const joined = new Promise<void>((resolve) => {
          consumer.on(consumer.events.GROUP_JOIN, () => {
            resolve();
          });
        });
        await consumer.run({ eachMessage: () => Promise.resolve() });
        await Promise.race([
          joined,
          new Promise((_, reject) =>
            setTimeout(() => {
              reject(new Error('no group join yet'));
            }, 20_000),
          ),
        ]);
        return;
      } catch (error) {
        if (Date.now() > deadline) {
          throw new Error(
            `Kafka consumer groups are not ready after ${timeoutMs} ms: ${(error as Error).message}`,
          );
        }
      } finally {
        await consumer.disconnect();
      }
    }
  } finally {
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await admin.disconnect();
  }
}
