/**
 * Drain rate: N queued events (~200-byte rows) shipped by a relay child process with
 * default settings (acks = all), from the moment it holds the lease to an empty queue,
 * the count verified in Kafka; the relay's CPU seconds per 10k events and peak RSS, read
 * from /proc. Beside it, alternated in the same run, the same relay with the Kafka send
 * replaced by nothing (fetch + delete only): the difference is what Kafka costs; and the
 * librdkafka relay scraped (/metrics and /status) every second, far more often than
 * Prometheus would: the difference is what the endpoints cost.
 */
import postgres from 'postgres';
import type { BenchContext, Measure } from '../report.ts';
import {
  benchDatabase,
  createItems,
  fillItems,
  machineCpu,
  messagesInTopic,
  procStats,
  queued,
  rotated,
  sleep,
  spawnRelay,
  type Sink,
} from '../support.ts';

/**
 * `scraped`: librdkafka (the default) with /metrics and /status read every second during
 * the drain; `debezium`: librdkafka writing Debezium's format with Connect's schemas
 * (MESSAGE_FORMAT=debezium).
 */
type Variant = Sink | 'scraped' | 'debezium';
const VARIANTS: Variant[] = ['kafkajs', 'scraped', 'rdkafka', 'debezium', 'rdkafka-eos', 'discard'];

/** How often the scraped variant reads /metrics and /status (Prometheus' default is 60 s). */
const SCRAPE_EVERY_MS = 1_000;

/**
 * Reads /metrics and /status of the relay on `port` every SCRAPE_EVERY_MS until stopped;
 * resolves to the number of scrapes. A failed scrape fails the run.
 */
function scrapeEvery(port: Promise<number>): { stop: () => Promise<number> } {
  const state = { stopped: false };
  const loop = (async () => {
    const at = await port;
    let scrapes = 0;
    while (!state.stopped) {
      for (const path of ['/metrics', '/status']) {
        const response = await fetch(`http://127.0.0.1:${at}${path}`);
        await response.text();
        if (response.status !== 200) throw new Error(`scrape of ${path}: HTTP ${response.status}`);
      }
      scrapes += 1;
      await sleep(SCRAPE_EVERY_MS);
    }
    return scrapes;
  })();
  loop.catch(() => undefined);
  return {
    stop: async () => {
      state.stopped = true;
      return loop;
    },
  };
}

interface DrainRun {
  eventsPerSecond: number;
  cpuPer10k: number;
  peakRssMb: number;
  /** Share of the machine's CPU (all cores) in use during the drain, in percent. */
  machineBusy: number;
}

export async function drainOnce(
  ctx: BenchContext,
  variant: Variant,
  events: number,
): Promise<DrainRun> {
  const sink: Sink = variant === 'scraped' || variant === 'debezium' ? 'rdkafka' : variant;
  let reportPort: (port: number) => void = () => undefined;
  const port = new Promise<number>((resolve) => {
    reportPort = resolve;
  });
  const db = await benchDatabase('drain');
  const sql = postgres(db.url, { max: 1, onnotice: () => undefined });
  try {
    await createItems(sql, 'items', 0);
    await sql`select pg2kafka.setup('items', 'sku')`;
    await fillItems(sql, 'items', 1, events);
    await sql`analyze pg2kafka.captured_changes`;
    const relay = spawnRelay({
      databaseUrl: db.url,
      brokers: ctx.broker.brokers,
      sink,
      ...(variant === 'debezium' ? { env: { MESSAGE_FORMAT: 'debezium' } } : {}),
      onLog: (entry) => {
        if (typeof entry.port === 'number') reportPort(entry.port);
      },
    });
    try {
      await relay.active;
      const scraper = variant === 'scraped' ? scrapeEvery(port) : undefined;
      const started = performance.now();
      const cpuAtStart = procStats(relay.pid).cpuSeconds;
      const machineAtStart = machineCpu();
      let peakRssMb = 0;
      let cpuSeconds = 0;
      for (;;) {
        await sleep(50);
        const stats = procStats(relay.pid);
        peakRssMb = Math.max(peakRssMb, stats.rssMb);
        cpuSeconds = stats.cpuSeconds - cpuAtStart;
        if ((await queued(sql)) === 0) break;
      }
      const seconds = (performance.now() - started) / 1000;
      const machineAtEnd = machineCpu();
      const scrapes = await scraper?.stop();
      if (scraper && !scrapes) throw new Error('drain, scraped: no scrape completed');
      if (variant !== 'discard') {
        const inKafka = await messagesInTopic(ctx.broker.brokers, `pg2kafka.${db.name}.items`);
        if (inKafka < events) {
          throw new Error(
            `drain: the queue is empty but Kafka holds ${inKafka} of ${events} events`,
          );
        }
      }
      return {
        eventsPerSecond: events / seconds,
        cpuPer10k: (cpuSeconds * 10_000) / events,
        peakRssMb,
        machineBusy:
          (100 * (machineAtEnd.busy - machineAtStart.busy)) /
          (machineAtEnd.total - machineAtStart.total),
      };
    } finally {
      await relay.stop();
    }
  } finally {
    await sql.end({ timeout: 2 });
    await db.drop();
  }
}

export async function drain(ctx: BenchContext): Promise<Measure[]> {
  const rounds = ctx.quick ? 1 : 3;
  const events = ctx.quick ? 50_000 : 200_000;
  const runs = new Map<Variant, DrainRun[]>(VARIANTS.map((v) => [v, []]));
  for (let round = 0; round < rounds; round += 1) {
    for (const variant of rotated(VARIANTS, round)) {
      const run = await drainOnce(ctx, variant, events);
      runs.get(variant)?.push(run);
      ctx.log(
        `drain ${events} events, ${variant}, round ${round + 1}/${rounds}: ${Math.round(run.eventsPerSecond)} events/s, ${run.cpuPer10k.toFixed(2)} CPU s/10k, peak RSS ${Math.round(run.peakRssMb)} MB, machine CPU ${Math.round(run.machineBusy)}% busy`,
      );
    }
  }
  const label: Record<Variant, string> = {
    kafkajs: `${events / 1000}k events to Kafka (kafkajs)`,
    scraped: `${events / 1000}k events to Kafka (librdkafka), /metrics and /status read every ${SCRAPE_EVERY_MS / 1000} s`,
    rdkafka: `${events / 1000}k events to Kafka (librdkafka)`,
    debezium: `${events / 1000}k events to Kafka (librdkafka), MESSAGE_FORMAT=debezium`,
    'rdkafka-eos': `${events / 1000}k events to Kafka (librdkafka, exactly-once)`,
    discard: `${events / 1000}k events, Kafka send replaced by nothing`,
  };
  return VARIANTS.flatMap((variant) => {
    const list = runs.get(variant) ?? [];
    return [
      {
        case: 'drain',
        measure: `${label[variant]}: rate`,
        unit: 'events/s',
        samples: list.map((r) => r.eventsPerSecond),
        ...(variant === 'rdkafka' ? { target: { op: '>=' as const, value: 50_000 } } : {}),
      },
      {
        case: 'drain',
        measure: `${label[variant]}: relay CPU`,
        unit: 's/10k events',
        samples: list.map((r) => r.cpuPer10k),
      },
      {
        case: 'drain',
        measure: `${label[variant]}: machine CPU busy (relay, PostgreSQL, broker)`,
        unit: '%',
        samples: list.map((r) => r.machineBusy),
      },
      {
        case: 'drain',
        measure: `${label[variant]}: relay peak RSS`,
        unit: 'MB',
        samples: list.map((r) => r.peakRssMb),
        ...(variant === 'rdkafka' ? { target: { op: '<=' as const, value: 200 } } : {}),
      },
    ];
  });
}
