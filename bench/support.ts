/**
 * What every benchmark needs: a database of its own (created through the admin
 * DATABASE_URL, migrated, dropped afterwards) and Kafka (KAFKA_BROKERS, or the local test
 * broker started for the run).
 */
import postgres from 'postgres';
import { DEFAULT_ADMIN_DATABASE_URL } from '../scripts/infrastructure.ts';
import { KafkaBroker } from '../scripts/kafka-broker.ts';
import { migrate } from '../src/capture/migrate.ts';

export interface BenchDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

/** Creates and migrates `pg2kafka_bench_<kind>_<pid>`. */
export async function benchDatabase(kind: string): Promise<BenchDatabase> {
  const adminUrl = process.env.DATABASE_URL ?? DEFAULT_ADMIN_DATABASE_URL;
  const name = `pg2kafka_bench_${kind}_${process.pid}`;
  const url = Object.assign(new URL(adminUrl), { pathname: `/${name}` }).toString();
  const admin = postgres(adminUrl, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`create database "${name}"`);
  await migrate({ databaseUrl: url });
  return {
    name,
    url,
    async drop() {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
      await admin.end({ timeout: 2 });
    },
  };
}

/** KAFKA_BROKERS if set, else a local broker that stop() removes. */
export async function benchKafka(): Promise<{ brokers: string; stop(): Promise<void> }> {
  const configured = process.env.KAFKA_BROKERS;
  if (configured) return { brokers: configured, stop: () => Promise.resolve() };
  const broker = await KafkaBroker.start();
  return { brokers: broker.brokers, stop: () => broker.destroy() };
}
