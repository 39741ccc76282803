/**
 * Memory: the relay's resident memory (the real CLI, default settings) while 1M events
 * are queued and the broker is down, then while it drains them once the broker is back.
 * The broker is the run's own, stopped and restarted on the same port.
 */
import postgres from 'postgres';
import type { BenchContext, Measure } from '../report.ts';
import {
  benchDatabase,
  createItems,
  fillItems,
  messagesInTopic,
  procStats,
  queued,
  sleep,
  spawnRelay,
} from '../support.ts';

/** Samples the process's RSS every 100 ms while `work` runs; returns the peak. */
async function peakRssDuring(pid: number, work: Promise<unknown>): Promise<number> {
  const state = { done: false };
  let peak = procStats(pid).rssMb;
  const finished = work.finally(() => {
    state.done = true;
  });
  while (!state.done) {
    await Promise.race([sleep(100), finished]);
    peak = Math.max(peak, procStats(pid).rssMb);
  }
  await finished;
  return peak;
}

export async function memory(ctx: BenchContext): Promise<Measure[]> {
  const events = ctx.quick ? 200_000 : 1_000_000;
  const db = await benchDatabase('memory');
  const sql = postgres(db.url, { max: 1, onnotice: () => undefined });
  const relay = spawnRelay({ databaseUrl: db.url, brokers: ctx.broker.brokers, quiet: true });
  let brokerStopped = false;
  try {
    await createItems(sql, 'items', 0);
    await sql`select pg2kafka.setup('items', 'sku')`;
    await relay.active;
    await ctx.broker.stop();
    brokerStopped = true;
    const down = await peakRssDuring(
      relay.pid,
      (async () => {
        await fillItems(sql, 'items', 1, events);
        await sleep(ctx.quick ? 5_000 : 15_000);
      })(),
    );
    ctx.log(`memory: ${events} events queued, broker down: peak RSS ${Math.round(down)} MB`);
    await ctx.broker.start();
    brokerStopped = false;
    const draining = await peakRssDuring(
      relay.pid,
      (async () => {
        while ((await queued(sql)) > 0) await sleep(200);
      })(),
    );
    const inKafka = await messagesInTopic(ctx.broker.brokers, `pg2kafka.${db.name}.items`);
    if (inKafka < events) throw new Error(`memory: Kafka holds ${inKafka} of ${events} events`);
    ctx.log(`memory: drained ${events} events: peak RSS ${Math.round(draining)} MB`);
    const label = `${events / 1000}k events queued`;
    return [
      {
        case: 'memory',
        measure: `${label}, broker down: relay RSS`,
        unit: 'MB',
        samples: [down],
        target: { op: '<=', value: 200 },
      },
      {
        case: 'memory',
        measure: `${label}, draining: relay peak RSS`,
        unit: 'MB',
        samples: [draining],
        target: { op: '<=', value: 200 },
      },
    ];
  } finally {
    if (brokerStopped) await ctx.broker.start();
    await relay.stop();
    await sql.end({ timeout: 2 });
    await db.drop();
  }
}
