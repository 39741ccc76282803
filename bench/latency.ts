/**
 * End-to-end latency: single-row inserts at a steady rate, shipped by `pg2kafka relay`
 * (child process, default settings) and stamped on arrival by a Kafka consumer; latency =
 * arrival - created_at (the writer's transaction start, from the message value). Two
 * phases: a steady load (default 1,000 inserts/s for 20 s, the relay stays busy) and a
 * trickle (one insert every 400 ms, the relay goes idle between them and must be woken).
 *
 *   npm run bench:latency [-- --rate 1000 --seconds 20]
 *
 * Uses KAFKA_BROKERS if set, else starts the local test broker. DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/postgres) is an admin connection.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { benchDatabase, benchKafka } from './support.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} needs a positive number`);
  return value;
}

const RATE = arg('rate', 1000);
const SECONDS = arg('seconds', 20);
const TRICKLE = arg('trickle', 25);

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

function summary(phase: string, latencies: number[], expected: number): Record<string, unknown> {
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    phase,
    events: `${latencies.length}/${expected}`,
    p50ms: percentile(sorted, 50),
    p95ms: percentile(sorted, 95),
    p99ms: percentile(sorted, 99),
    maxMs: sorted.at(-1),
  };
}

/** created_at "2026-11-22T01:24:44.327679Z" in epoch milliseconds (fractional). */
function createdAtMs(value: string): number {
  const createdAt = (JSON.parse(value) as { created_at: string }).created_at;
  const micros = Number(createdAt.slice(20, 26));
  return Date.parse(`${createdAt.slice(0, 19)}Z`) + micros / 1000;
}

async function main(): Promise<void> {
  const kafkaForBench = await benchKafka();
  const { brokers } = kafkaForBench;
  const db = await benchDatabase('latency');
  const { url, name: dbName } = db;
  const sql = postgres(url, { max: 4, onnotice: () => undefined });
  const relay = { process: undefined as ReturnType<typeof spawn> | undefined };
  const kafka = new Kafka({
    clientId: 'bench-latency',
    brokers: brokers.split(','),
    logLevel: logLevel.NOTHING,
  });
  const consumer = kafka.consumer({ groupId: `bench-latency-${process.pid}` });
  try {
    await sql`create table readings (id bigserial primary key, sensor text not null, value float8 not null)`;
    await sql`select pg2kafka.setup('readings', 'id')`;
    await sql`insert into readings (sensor, value) values ('seed', 0)`;
    relay.process = spawn(process.execPath, ['dist/src/cli.js', 'relay'], {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: url,
        KAFKA_BROKERS: brokers,
        LOG_LEVEL: process.env.BENCH_RELAY_LOG_LEVEL ?? 'warn',
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    });

    const topic = `pg2kafka.${dbName}.readings`;
    const kAdmin = kafka.admin();
    await kAdmin.connect();
    while (!(await kAdmin.listTopics()).includes(topic))
      await new Promise((r) => setTimeout(r, 100));
    await kAdmin.disconnect();
    let phase: 'warm-up' | 'steady' | 'trickle' = 'warm-up';
    const latencies: Record<string, number[]> = { steady: [], trickle: [] };
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: false });
    const joined = new Promise<void>((resolve) =>
      consumer.on(consumer.events.GROUP_JOIN, () => {
        resolve();
      }),
    );
    await consumer.run({
      eachMessage: ({ message }) => {
        const arrival = Date.now();
        const value = message.value?.toString() ?? '';
        const sensor = (JSON.parse(value) as { data: { sensor?: string } }).data.sensor;
        if (sensor === 'steady' || sensor === 'trickle')
          latencies[sensor]?.push(arrival - createdAtMs(value));
        return Promise.resolve();
      },
    });
    await joined;
    await new Promise((r) => setTimeout(r, 2000));

    phase = 'steady';
    const total = RATE * SECONDS;
    const started = performance.now();
    let sent = 0;
    const inflight: Array<Promise<unknown>> = [];
    while (sent < total) {
      const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * RATE));
      for (; sent < due; sent += 1) {
        inflight.push(
          sql`insert into readings (sensor, value) values (${phase}, ${Math.random()})`,
        );
      }
      if (inflight.length > 200) await Promise.all(inflight.splice(0));
      await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(inflight);
    await new Promise((r) => setTimeout(r, 3000));

    phase = 'trickle';
    for (let i = 0; i < TRICKLE; i += 1) {
      await new Promise((r) => setTimeout(r, 400));
      await sql`insert into readings (sensor, value) values (${phase}, ${Math.random()})`;
    }
    await new Promise((r) => setTimeout(r, 2000));
    console.table([
      summary(`${RATE}/s for ${SECONDS} s`, latencies.steady ?? [], total),
      summary('1 every 400 ms (idle relay)', latencies.trickle ?? [], TRICKLE),
    ]);
  } finally {
    await consumer.disconnect().catch(() => undefined);
    relay.process?.kill('SIGTERM');
    if (relay.process) await new Promise((r) => relay.process?.once('exit', r));
    await sql.end({ timeout: 2 });
    await db.drop();
    await kafkaForBench.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
