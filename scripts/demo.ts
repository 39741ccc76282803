/**
 * `npm run demo`: the main job end to end on this machine, in about a minute.
 *
 * Starts the local Kafka broker (or uses KAFKA_BROKERS), creates a demo database with a
 * products table, runs `pg2kafka migrate` and `pg2kafka setup products sku`, starts
 * `pg2kafka relay`, makes inserts, updates and deletes, prints every event as a Kafka
 * consumer reads it back, then stops everything and drops the demo database.
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) is the admin
 * connection used to create the demo database.
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { checkPostgres, DEFAULT_ADMIN_DATABASE_URL } from './infrastructure.ts';
import { KafkaBroker } from './kafka-broker.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = 'dist/src/cli.js';
const DEMO_DB = 'pg2kafka_demo';

function say(text: string): void {
  process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
}

function pg2kafka(args: string[], env: NodeJS.ProcessEnv): void {
  process.stdout.write(`$ pg2kafka ${args.join(' ')}\n`);
  const result = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, env, stdio: 'inherit' });
  if (result.status !== 0)
    throw new Error(`pg2kafka ${args.join(' ')} failed (exit ${String(result.status)})`);
}

async function main(): Promise<void> {
  const adminUrl = process.env.DATABASE_URL ?? DEFAULT_ADMIN_DATABASE_URL;
  await checkPostgres(adminUrl);
  let broker: KafkaBroker | undefined;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => undefined });
  const demoUrl = Object.assign(new URL(adminUrl), { pathname: `/${DEMO_DB}` }).toString();
  const cleanups: Array<() => Promise<unknown>> = [];
  try {
    let brokers = process.env.KAFKA_BROKERS;
    if (!brokers) {
      say('starting a local Kafka broker (the first run fetches it with Maven)');
      broker = await KafkaBroker.start();
      brokers = broker.brokers;
      process.stdout.write(`Kafka ${broker.runtime.version} at ${brokers}\n`);
    }

    say(`creating database ${DEMO_DB} with a products table`);
    await admin.unsafe(`drop database if exists ${DEMO_DB} with (force)`);
    await admin.unsafe(`create database ${DEMO_DB}`);
    cleanups.push(() => admin.unsafe(`drop database if exists ${DEMO_DB} with (force)`));
    const shop = postgres(demoUrl, { max: 1, onnotice: () => undefined });
    cleanups.unshift(() => shop.end({ timeout: 2 }));
    await shop`create table products (id serial, sku text primary key, name text not null, price numeric(10, 2))`;
    await shop`insert into products (sku, name, price) values ('CM01-B', 'Blue Coffee Mug', 7.50), ('CM01-R', 'Red Coffee Mug', 7.50)`;

    const env = {
      ...process.env,
      DATABASE_URL: demoUrl,
      KAFKA_BROKERS: brokers,
      LOG_LEVEL: 'warn',
      // Any free port: the demo must not collide with what else runs here.
      HTTP_PORT: '0',
    };
    say('installing pg2kafka and capturing products');
    pg2kafka(['migrate'], env);
    pg2kafka(['setup', 'products', 'sku'], env);

    say('starting the relay: pg2kafka relay');
    const relay = spawn(process.execPath, [CLI, 'relay'], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const relayExited = new Promise((resolve) => relay.once('exit', resolve));
    cleanups.unshift(async () => {
      relay.kill('SIGTERM');
      await relayExited;
    });

    const topic = `pg2kafka.${DEMO_DB}.products`;
    const kafka = new Kafka({
      clientId: 'pg2kafka-demo',
      brokers: brokers.split(','),
      logLevel: logLevel.NOTHING,
    });
    const kafkaAdmin = kafka.admin();
    await kafkaAdmin.connect();
    for (let i = 0; i < 300 && !(await kafkaAdmin.listTopics()).includes(topic); i += 1) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await kafkaAdmin.disconnect();
    const consumer = kafka.consumer({ groupId: `pg2kafka-demo-${Date.now()}` });
    cleanups.unshift(() => consumer.disconnect());
    let received = 0;
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    say(`events read back from Kafka topic ${topic} (key, value):`);
    await consumer.run({
      eachMessage: ({ message }) => {
        received += 1;
        process.stdout.write(
          `${message.key?.toString() ?? 'null'}  ${message.value?.toString() ?? ''}\n`,
        );
        return Promise.resolve();
      },
    });

    const changes: Array<[string, () => Promise<unknown>]> = [
      [
        "INSERT INTO products ... ('CM02-G', 'Green Teapot', 19.90)",
        () =>
          shop`insert into products (sku, name, price) values ('CM02-G', 'Green Teapot', 19.90)`,
      ],
      [
        "UPDATE products SET name = 'Big Red Coffee Mug' WHERE sku = 'CM01-R'",
        () => shop`update products set name = 'Big Red Coffee Mug' where sku = 'CM01-R'`,
      ],
      [
        'UPDATE products SET price = price * 0.9 (all rows)',
        () => shop`update products set price = price * 0.9`,
      ],
      [
        "DELETE FROM products WHERE sku = 'CM01-B'",
        () => shop`delete from products where sku = 'CM01-B'`,
      ],
    ];
    for (const [text, run] of changes) {
      await new Promise((r) => setTimeout(r, 1500));
      process.stdout.write(`\x1b[2m-- ${text}\x1b[0m\n`);
      await run();
    }
    const expected = 2 + 1 + 1 + 3 + 1;
    for (let i = 0; i < 200 && received < expected; i += 1)
      await new Promise((r) => setTimeout(r, 100));
    say(`${received} of ${expected} events arrived; cleaning up`);
    if (received < expected) process.exitCode = 1;
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => undefined);
    await admin.end({ timeout: 2 });
    await broker?.destroy();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
