/**
 * The relay's Prometheus metrics (prom-client): Node's default metrics, what the relay's
 * lifecycle events say (counted as they happen), and what only the database knows (read
 * when scraped). The relay loop knows nothing of this: it emits its typed events, and
 * RelayMetrics subscribes to them.
 *
 * Names follow Prometheus conventions (a pg2kafka_ prefix, _total for counters, base
 * units: _seconds); labels are tables, statements and reasons, never keys.
 */
import type postgres from 'postgres';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Relay, RelayEvent } from '../relay/relay.ts';
import { pendingSnapshots } from '../relay/snapshots.ts';
import { settleWithin, TIMED_OUT } from '../relay/within.ts';

/** Buckets of the end-to-end lag, seconds: from a few ms to an hour behind. */
const LAG_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
];
const BATCH_SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const BATCH_EVENTS_BUCKETS = [1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/** The queue's depth and the age of its oldest event, as a scrape and the flow log read them. */
export async function readQueue(
  sql: postgres.Sql,
): Promise<{ events: number; oldestSeconds: number }> {
  // From the queue floor, lowest id first: the oldest event is the first one, so no sort
  // of the whole queue; the count is exact (a backlog of millions costs a scan here, so
  // scrape every 15 s or more).
  const [row] = await sql<{ events: string; oldest: number | null }[]>`
    select (select count(*) from pg2kafka.captured_changes c
            where c.id >= (select l.queue_floor from pg2kafka.relay_lease l))::text as events,
           (select extract(epoch from clock_timestamp() - c.created_at)::float8
            from pg2kafka.captured_changes c
            where c.id >= (select l.queue_floor from pg2kafka.relay_lease l)
            order by c.id limit 1) as oldest`;
  return { events: Number(row?.events ?? 0), oldestSeconds: row?.oldest ?? 0 };
}

/** How long a scrape waits for the database; then the database gauges are left out. */
const SCRAPE_READ_MS = 2_000;

type SnapshotRow = Awaited<ReturnType<typeof pendingSnapshots>>[number];

interface ScrapeReads {
  ok: boolean;
  queue?: { events: number; oldestSeconds: number };
  snapshots?: SnapshotRow[];
}

/**
 * One read of the database per scrape, shared by the gauges that need it, bounded in
 * time: a database that is down or slow leaves those gauges at the last value read (and
 * pg2kafka_database_read_ok at 0) instead of failing or stalling the whole scrape.
 */
function scrapeReader(sql: postgres.Sql): () => Promise<ScrapeReads> {
  let last: { at: number; reads: Promise<ScrapeReads> } | undefined;
  return () => {
    const now = performance.now();
    if (last && now - last.at < 1_000) return last.reads;
    const reads = settleWithin(
      Promise.all([readQueue(sql), pendingSnapshots(sql)]).then(
        ([queue, snapshots]): ScrapeReads => ({ ok: true, queue, snapshots }),
        (): ScrapeReads => ({ ok: false }),
      ),
      SCRAPE_READ_MS,
    ).then((reads) => (reads === TIMED_OUT ? { ok: false } : reads));
    last = { at: now, reads };
    return reads;
  };
}

export class RelayMetrics {
  readonly registry = new Registry();
  /** Topics held back now, with why and for which tables (from the relay's events). */
  private readonly heldTopics = new Map<string, { tables: string[]; reason: string }>();

  /** `sql`: a pool of its own (the relay's connections are for shipping). */
  constructor(relay: Relay, sql: postgres.Sql) {
    const registers = [this.registry];
    const read = scrapeReader(sql);
    collectDefaultMetrics({ register: this.registry });
    const published = new Counter({
      name: 'pg2kafka_events_published_total',
      help: 'Events Kafka acknowledged (with DRY_RUN: printed), by table (schema.table) and statement.',
      labelNames: ['table', 'statement'],
      registers,
    });
    const errors = new Counter({
      name: 'pg2kafka_publish_errors_total',
      help: 'Failed attempts (the relay retries), by stage (ship: a batch; floor: the queue floor kept in the background) and reason.',
      labelNames: ['stage', 'reason'],
      registers,
    });
    const deadLetters = new Counter({
      name: 'pg2kafka_dead_letters_total',
      help: 'Events Kafka refused for good and set aside as dead letters.',
      registers,
    });
    const lag = new Histogram({
      name: 'pg2kafka_event_lag_seconds',
      help: 'From an event being captured (created_at) to Kafka acknowledging it.',
      buckets: LAG_BUCKETS,
      registers,
    });
    const batchSeconds = new Histogram({
      name: 'pg2kafka_batch_duration_seconds',
      help: 'Time to ship one batch, from read to delete.',
      buckets: BATCH_SECONDS_BUCKETS,
      registers,
    });
    const batchEvents = new Histogram({
      name: 'pg2kafka_batch_events',
      help: 'Events acknowledged per batch.',
      buckets: BATCH_EVENTS_BUCKETS,
      registers,
    });
    const active = new Gauge({
      name: 'pg2kafka_relay_active',
      help: '1 while this relay holds the lease and ships, 0 as a standby.',
      registers,
    });
    const leadershipChanges = new Counter({
      name: 'pg2kafka_leadership_changes_total',
      help: 'Times this relay became active or stopped being active.',
      registers,
    });
    const held = new Gauge({
      name: 'pg2kafka_held_topics',
      help: 'Topics whose events stay queued for now (refused, missing, or no leader).',
      registers,
      collect: () => {
        held.set(this.heldTopics.size);
      },
    });
    const readOk = new Gauge({
      name: 'pg2kafka_database_read_ok',
      help: '1 when this scrape read the queue and snapshot gauges from PostgreSQL, 0 when it could not (they keep the last value read).',
      registers,
      collect: async () => {
        readOk.set((await read()).ok ? 1 : 0);
      },
    });
    const queued = new Gauge({
      name: 'pg2kafka_queued_events',
      help: 'Events waiting in the queue (read from the database at each scrape).',
      registers,
      collect: async () => {
        const { queue } = await read();
        if (queue) queued.set(queue.events);
      },
    });
    const oldest = new Gauge({
      name: 'pg2kafka_oldest_event_age_seconds',
      help: 'Age of the oldest queued event, 0 when none: the number to alert on.',
      registers,
      collect: async () => {
        const { queue } = await read();
        if (queue) oldest.set(queue.oldestSeconds);
      },
    });
    const snapshotGauge = (
      name: string,
      help: string,
      value: (p: SnapshotRow) => number | null,
    ): void => {
      const gauge: Gauge = new Gauge({
        name,
        help,
        labelNames: ['table'],
        registers,
        collect: async () => {
          const { snapshots } = await read();
          if (!snapshots) return;
          gauge.reset();
          for (const p of snapshots) {
            const v = value(p);
            if (v !== null) gauge.set({ table: p.qualified }, v);
          }
        },
      });
    };
    snapshotGauge(
      'pg2kafka_snapshot_rows_done',
      'Rows a running online snapshot has copied, by table.',
      (p) => p.rowsDone,
    );
    snapshotGauge(
      'pg2kafka_snapshot_rows_estimated',
      'Rows a running online snapshot is estimated to copy in all, by table.',
      (p) => p.rowsEstimated,
    );
    active.set(0);
    relay.on((event: RelayEvent) => {
      switch (event.type) {
        case 'batch':
          for (const p of event.published) {
            published.inc({ table: p.table, statement: p.statement }, p.events);
          }
          for (const ms of event.lagsMs) lag.observe(ms / 1000);
          batchSeconds.observe(event.ms / 1000);
          batchEvents.observe(event.events);
          break;
        case 'error':
          errors.inc({ stage: event.stage, reason: reasonOf(event.error) });
          break;
        case 'dead-letter':
          deadLetters.inc();
          break;
        case 'leadership':
          active.set(event.active ? 1 : 0);
          leadershipChanges.inc();
          break;
        case 'topic-held':
          this.heldTopics.set(event.topic, { tables: event.tables, reason: event.reason });
          break;
        case 'topic-released':
          this.heldTopics.delete(event.topic);
          break;
        case 'yielded':
        case 'stopped':
          break;
      }
    });
  }

  /** The topics held back now, and why. */
  heldTopicList(): Array<{ topic: string; tables: string[]; reason: string }> {
    return [...this.heldTopics].map(([topic, held]) => ({ topic, ...held }));
  }

  /** The Prometheus text of every metric. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** A bounded label for an error: its code (SQLSTATE, Kafka's, Node's) or its class. */
function reasonOf(error: unknown): string {
  if (error instanceof Error) {
    const { code, type } = error as { code?: unknown; type?: unknown };
    if (typeof type === 'string' && /^[A-Z_]+$/.test(type)) return type;
    if (typeof code === 'string' && /^[A-Z0-9_]{2,40}$/.test(code)) return code;
    return error.name;
  }
  return 'unknown';
}
