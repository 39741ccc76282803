/**
 * The queue while another transaction holds vacuum back: pgbench inserts single rows at
 * 2,000/s for 5 minutes (--quick: 5 s) with a relay child process at default settings,
 * once with a REPEATABLE READ transaction held open in the same database for the whole
 * run (after one query, as an idle-in-transaction report or pg_dump would), once with
 * nothing held. Reported for the last fifth of each run (at least 3 s): the median time of
 * the relay's fetches (its own fetchMs, from its debug log; batches read ahead during the
 * previous send report 0 and are left out), and the end-to-end latency
 * p50/p99 (created_at to a Kafka consumer's arrival), plus the queue's primary key size at
 * the end (the dead entries the held snapshot keeps).
 *
 * Without a floor every fetch walks the dead entries from the start of the index
 * (measured: 167 ms per fetch after 180 s); with one, fetch and latency should stay
 * within 2x of the run with nothing held.
 */
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { socketFactory } from '../../src/kafka/kafkajs-sink.ts';
import type { BenchContext, Measure } from '../report.ts';
import { benchDatabase, median, percentile, pgbench, sleep, spawnRelay } from '../support.ts';

const RATE = 2000;
const VARIANTS = ['snapshot held', 'nothing held'] as const;
type Variant = (typeof VARIANTS)[number];

interface HeldRun {
  fetchMedianMs: number;
  fetches: number;
  p50: number;
  p99: number;
  events: number;
  indexMb: number;
}

/** created_at "2026-11-22T01:24:44.327679Z" in epoch milliseconds (fractional). */
function createdAtMs(createdAt: string): number {
  return Date.parse(`${createdAt.slice(0, 19)}Z`) + Number(createdAt.slice(20, 26)) / 1000;
}

async function heldOnce(ctx: BenchContext, variant: Variant, seconds: number): Promise<HeldRun> {
  const db = await benchDatabase('held');
  const sql = postgres(db.url, { max: 2, onnotice: () => undefined });
  const kafka = new Kafka({
    clientId: 'pg2kafka-bench',
    brokers: [ctx.broker.brokers],
    logLevel: logLevel.NOTHING,
    socketFactory,
  });
  const consumer = kafka.consumer({ groupId: `bench-held-${db.name}` });
  /** [time the fetch ended, fetchMs] of every batch the relay read itself (not read ahead). */
  const fetches: Array<[number, number]> = [];
  const relay = spawnRelay({
    databaseUrl: db.url,
    brokers: ctx.broker.brokers,
    env: { LOG_LEVEL: 'debug' },
    onLog: (entry) => {
      if (entry.msg !== 'batch shipped') return;
      const { time, fetchMs } = entry as { time?: number; fetchMs?: number };
      if (typeof time === 'number' && typeof fetchMs === 'number' && fetchMs > 0) {
        fetches.push([time, fetchMs]);
      }
    },
  });
  const holder = await sql.reserve();
  try {
    await sql`create table readings (id bigserial primary key, sensor text not null, value float8 not null)`;
    await sql`select pg2kafka.setup('readings', 'id')`;
    await relay.active;
    const topic = `pg2kafka.${db.name}.readings`;
    /** [created_at, latency] of every steady event. */
    const arrivals: Array<[number, number]> = [];
    const seed = { arrived: false };
    await sql`insert into readings (sensor, value) values ('seed', 0)`;
    const admin = kafka.admin();
    await admin.connect();
    while (!(await admin.listTopics()).includes(topic)) await sleep(50);
    await admin.disconnect();
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachMessage: ({ message }) => {
        const arrival = Date.now();
        const value = JSON.parse(message.value?.toString() ?? '{}') as {
          created_at: string;
          data: { sensor: string };
        };
        if (value.data.sensor === 'seed') seed.arrived = true;
        else {
          const created = createdAtMs(value.created_at);
          arrivals.push([created, arrival - created]);
        }
        return Promise.resolve();
      },
    });
    while (!seed.arrived) await sleep(50);

    if (variant === 'snapshot held') {
      await holder`begin isolation level repeatable read`;
      await holder`select 1`;
    }
    const started = Date.now();
    await pgbench({
      url: db.url,
      script: `insert into readings (sensor, value) values ('steady', random());\n`,
      clients: 4,
      seconds,
      rate: RATE,
    });
    const ended = Date.now();
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from readings where sensor = 'steady'`;
    const expected = row?.n ?? 0;
    for (let waited = 0; arrivals.length < expected && waited < 60_000; waited += 100) {
      await sleep(100);
    }
    if (arrivals.length < expected) {
      throw new Error(`held-snapshot (${variant}): ${arrivals.length}/${expected} events arrived`);
    }
    const [index] = await sql<{ bytes: string }[]>`
      select pg_relation_size('pg2kafka.captured_changes_pkey')::text as bytes`;
    if (variant === 'snapshot held') await holder`rollback`;

    const windowStart = ended - Math.max(3_000, ((ended - started) * 1) / 5);
    const fetchTimes = fetches.filter(([t]) => t >= windowStart && t <= ended).map(([, ms]) => ms);
    const latencies = arrivals
      .filter(([created]) => created >= windowStart && created <= ended)
      .map(([, ms]) => ms)
      .sort((a, b) => a - b);
    return {
      fetchMedianMs: median(fetchTimes),
      fetches: fetchTimes.length,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      events: expected,
      indexMb: Number(index?.bytes ?? 0) / 2 ** 20,
    };
  } finally {
    holder.release();
    await consumer.disconnect().catch(() => undefined);
    await relay.stop();
    await sql.end({ timeout: 2 });
    await db.drop();
  }
}

export async function heldSnapshot(ctx: BenchContext): Promise<Measure[]> {
  const seconds = ctx.quick ? 5 : 300;
  const runs = new Map<Variant, HeldRun>();
  for (const variant of VARIANTS) {
    const run = await heldOnce(ctx, variant, seconds);
    runs.set(variant, run);
    ctx.log(
      `held-snapshot ${RATE}/s for ${seconds} s, ${variant}: ${run.events} events; last part: fetch median ${run.fetchMedianMs.toFixed(1)} ms over ${run.fetches} fetches, p50 ${run.p50.toFixed(1)} ms, p99 ${run.p99.toFixed(1)} ms; primary key ${run.indexMb.toFixed(1)} MB`,
    );
  }
  const none = runs.get('nothing held');
  return VARIANTS.flatMap((variant) => {
    const run = runs.get(variant);
    if (!run) return [];
    const label = `${RATE} inserts/s for ${seconds} s, ${variant}, last part`;
    // With the snapshot held, the target is 2x the same figure with nothing held.
    const within = (value: number | undefined): Pick<Measure, 'target'> =>
      variant === 'snapshot held' && value !== undefined && Number.isFinite(value)
        ? { target: { op: '<=', value: 2 * Math.max(value, 1) } }
        : {};
    const measures: Measure[] = [
      {
        case: 'held-snapshot',
        measure: `${label}: fetch median`,
        unit: 'ms',
        samples: [run.fetchMedianMs],
        ...within(none?.fetchMedianMs),
      },
      {
        case: 'held-snapshot',
        measure: `${label}: end-to-end p50`,
        unit: 'ms',
        samples: [run.p50],
        ...within(none?.p50),
      },
      {
        case: 'held-snapshot',
        measure: `${label}: end-to-end p99`,
        unit: 'ms',
        samples: [run.p99],
        ...within(none?.p99),
      },
      {
        case: 'held-snapshot',
        measure: `${RATE} inserts/s for ${seconds} s, ${variant}: queue primary key at the end`,
        unit: 'MB',
        samples: [run.indexMb],
      },
    ];
    return measures;
  });
}
