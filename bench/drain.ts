/**
 * Drain rate: N queued events (default 200k, ~200-byte rows) shipped by `pg2kafka relay`
 * (a child process, default settings, acks = all) to the local broker; events/s from the
 * relay's start to an empty queue, the count verified in Kafka, the relay's CPU seconds
 * per 10k events and its peak RSS, read from /proc.
 *
 *   npm run bench:drain [-- --events N]
 *
 * Uses KAFKA_BROKERS if set, else starts the local test broker. DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/postgres) is an admin connection.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { benchDatabase, benchKafka } from './support.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const i = process.argv.indexOf('--events');
const EVENTS = i >= 0 ? Number(process.argv[i + 1]) : 200_000;
const TICKS_PER_SECOND = 100;

function procStats(pid: number): { rssMb: number; cpuSeconds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  const ticks = Number(stat[11] ?? 0) + Number(stat[12] ?? 0);
  return { rssMb: rssKb / 1024, cpuSeconds: ticks / TICKS_PER_SECOND };
}

async function main(): Promise<void> {
  const kafkaForBench = await benchKafka();
  const { brokers } = kafkaForBench;
  const db = await benchDatabase('drain');
  const { url, name: dbName } = db;
  const sql = postgres(url, { max: 1, onnotice: () => undefined });
  try {
    await sql`create table items (id bigserial primary key, sku text not null, name text not null, description text, price numeric(12, 2), qty int, updated_at timestamptz default now())`;
    await sql`select pg2kafka.setup('items', 'sku')`;
    await sql`
      insert into items (sku, name, description, price, qty)
      select 'SKU-' || g, 'Product ' || g, repeat('lorem ipsum ', 8), g % 1000 + 0.99, g % 50
      from generate_series(1, ${EVENTS}) g`;
    const [avg] = await sql<{ bytes: number }[]>`
      select avg(length(new_row::text))::int as bytes from pg2kafka.captured_changes`;
    process.stderr.write(`queued ${EVENTS} events of ~${avg?.bytes ?? 0} bytes of row JSON\n`);

    const started = performance.now();
    const relay = spawn(process.execPath, ['dist/src/cli.js', 'relay'], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: url, KAFKA_BROKERS: brokers, LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const pid = relay.pid ?? 0;
    let peakRss = 0;
    let cpu = 0;
    for (;;) {
      await new Promise((r) => setTimeout(r, 100));
      const stats = procStats(pid);
      peakRss = Math.max(peakRss, stats.rssMb);
      cpu = stats.cpuSeconds;
      const [row] = await sql<
        { n: number }[]
      >`select count(*)::int as n from pg2kafka.captured_changes`;
      if (row?.n === 0) break;
    }
    const seconds = (performance.now() - started) / 1000;
    relay.kill('SIGTERM');
    await new Promise((r) => relay.once('exit', r));

    const kafka = new Kafka({
      clientId: 'bench',
      brokers: brokers.split(','),
      logLevel: logLevel.NOTHING,
    });
    const kAdmin = kafka.admin();
    await kAdmin.connect();
    const offsets = await kAdmin.fetchTopicOffsets(`pg2kafka.${dbName}.items`);
    await kAdmin.disconnect();
    const inKafka = offsets.reduce((n, o) => n + Number(o.high), 0);
    console.table([
      {
        events: EVENTS,
        inKafka,
        seconds: Number(seconds.toFixed(2)),
        eventsPerSecond: Math.round(EVENTS / seconds),
        relayCpuSecondsPer10k: Number(((cpu * 10_000) / EVENTS).toFixed(3)),
        peakRssMb: Math.round(peakRss),
      },
    ]);
  } finally {
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
