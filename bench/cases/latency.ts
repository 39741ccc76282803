/**
 * End-to-end latency: pgbench (its own process) inserts single rows at a steady rate
 * (1,000/s for 20 s), a relay child process with default settings ships them, and a
 * Kafka consumer in this process (kafkajs, TCP_NODELAY) stamps each message on arrival: latency = arrival -
 * created_at (the writer's transaction start, read from the message). Then a trickle, one
 * insert every 400 ms, to an idle relay that must be woken.
 */
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { socketFactory } from '../../src/kafka/kafkajs-sink.ts';
import type { BenchContext, Measure } from '../report.ts';
import {
  benchDatabase,
  percentile,
  pgbench,
  rotated,
  sleep,
  spawnRelay,
  type Sink,
} from '../support.ts';

const SINKS: Sink[] = ['kafkajs', 'rdkafka', 'rdkafka-eos'];

const RATE = 1000;
const TRICKLE = 25;

/** created_at "2026-11-22T01:24:44.327679Z" in epoch milliseconds (fractional). */
function createdAtMs(createdAt: string): number {
  return Date.parse(`${createdAt.slice(0, 19)}Z`) + Number(createdAt.slice(20, 26)) / 1000;
}

interface LatencyRun {
  steady: number[];
  trickle: number[];
  expected: number;
}

async function latencyOnce(ctx: BenchContext, sink: Sink, seconds: number): Promise<LatencyRun> {
  const db = await benchDatabase('latency');
  const sql = postgres(db.url, { max: 1, onnotice: () => undefined });
  // TCP_NODELAY, like Java consumers: kafkajs's default sockets let Nagle's algorithm hold
  // a fetch back behind the previous request's offset commit.
  const kafka = new Kafka({
    clientId: 'pg2kafka-bench',
    brokers: [ctx.broker.brokers],
    logLevel: logLevel.NOTHING,
    socketFactory,
  });
  const consumer = kafka.consumer({ groupId: `bench-latency-${db.name}` });
  const relay = spawnRelay({ databaseUrl: db.url, brokers: ctx.broker.brokers, sink });
  try {
    await sql`create table readings (id bigserial primary key, sensor text not null, value float8 not null)`;
    await sql`select pg2kafka.setup('readings', 'id')`;
    await relay.active;

    const topic = `pg2kafka.${db.name}.readings`;
    const latencies = { steady: [] as number[], trickle: [] as number[], seed: [] as number[] };
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
          data: { sensor: 'steady' | 'trickle' | 'seed' };
        };
        latencies[value.data.sensor].push(arrival - createdAtMs(value.created_at));
        return Promise.resolve();
      },
    });
    while (latencies.seed.length === 0) await sleep(50);

    await pgbench({
      url: db.url,
      script: `insert into readings (sensor, value) values ('steady', random());\n`,
      clients: 4,
      seconds,
      rate: RATE,
    });
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from readings where sensor = 'steady'`;
    const expected = row?.n ?? 0;
    for (let waited = 0; latencies.steady.length < expected && waited < 10_000; waited += 50) {
      await sleep(50);
    }
    for (let i = 0; i < TRICKLE; i += 1) {
      await sleep(400);
      await sql`insert into readings (sensor, value) values ('trickle', ${Math.random()})`;
    }
    await sleep(1000);
    if (latencies.steady.length < expected || latencies.trickle.length < TRICKLE) {
      throw new Error(
        `latency: ${latencies.steady.length}/${expected} steady and ${latencies.trickle.length}/${TRICKLE} trickle events arrived`,
      );
    }
    return { steady: latencies.steady, trickle: latencies.trickle, expected };
  } finally {
    await consumer.disconnect().catch(() => undefined);
    await relay.stop();
    await sql.end({ timeout: 2 });
    await db.drop();
  }
}

export async function latency(ctx: BenchContext): Promise<Measure[]> {
  const rounds = ctx.quick ? 1 : 2;
  const seconds = ctx.quick ? 5 : 20;
  const runs = new Map<Sink, LatencyRun[]>(SINKS.map((s) => [s, []]));
  for (let round = 0; round < rounds; round += 1) {
    for (const sink of rotated(SINKS, round)) {
      const run = await latencyOnce(ctx, sink, seconds);
      runs.get(sink)?.push(run);
      const sorted = [...run.steady].sort((a, b) => a - b);
      ctx.log(
        `latency ${RATE}/s for ${seconds} s, ${sink}, round ${round + 1}/${rounds}: ${run.steady.length} events, p50 ${percentile(sorted, 50).toFixed(1)} ms, p99 ${percentile(sorted, 99).toFixed(1)} ms, max ${(sorted.at(-1) ?? NaN).toFixed(1)} ms`,
      );
    }
  }
  return SINKS.flatMap((sink) => {
    const list = runs.get(sink) ?? [];
    const pick = (phase: 'steady' | 'trickle', p: number): number[] =>
      list.map((r) =>
        percentile(
          [...r[phase]].sort((a, b) => a - b),
          p,
        ),
      );
    const client = {
      kafkajs: 'kafkajs',
      rdkafka: 'librdkafka',
      'rdkafka-eos': 'librdkafka, exactly-once',
      discard: 'no Kafka',
    }[sink];
    const steady = `${RATE} inserts/s for ${seconds} s (${client})`;
    const trickle = `1 insert every 400 ms, idle relay woken (${client})`;
    // The targets are the default client's (librdkafka).
    const targets = sink === 'rdkafka';
    const measures: Measure[] = [
      {
        case: 'latency',
        measure: `${steady}: p50`,
        unit: 'ms',
        samples: pick('steady', 50),
        ...(targets ? { target: { op: '<=' as const, value: 15 } } : {}),
      },
      { case: 'latency', measure: `${steady}: p95`, unit: 'ms', samples: pick('steady', 95) },
      {
        case: 'latency',
        measure: `${steady}: p99`,
        unit: 'ms',
        samples: pick('steady', 99),
        ...(targets ? { target: { op: '<=' as const, value: 50 } } : {}),
      },
      { case: 'latency', measure: `${steady}: max`, unit: 'ms', samples: pick('steady', 100) },
      { case: 'latency', measure: `${trickle}: p50`, unit: 'ms', samples: pick('trickle', 50) },
      { case: 'latency', measure: `${trickle}: max`, unit: 'ms', samples: pick('trickle', 100) },
    ];
    return measures;
  });
}
