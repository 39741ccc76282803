/**
 * The relay loop: ships queued events to Kafka in order and deletes them once acked.
 *
 * States, one `while (!stopping)` loop:
 *   standby   no lease: try to take it every STANDBY_POLL_MS; another relay is active.
 *   active    holding the lease (renewed by a heartbeat timer):
 *               fetch a batch (lowest ids first, lease-fenced)
 *               -> empty: sleep, doubling from MIN_POLL_MS up to POLL_INTERVAL_MS;
 *                         a wake-up (NOTIFY, or a caller) cuts the sleep short, and a
 *                         wake-up that came while fetching skips the next sleep
 *               -> events: make sure topics exist, then send in produce requests of at
 *                         most MAX_REQUEST_BYTES, checking before each that the lease is
 *                         still trusted; the sink says per message acked, refused
 *                         (retriable or not) or unsent. Then, per change (batch.ts):
 *                         all acked -> delete (lease-fenced); refused for good ->
 *                         dead letter (DEAD_LETTER_POLICY); anything else stays queued,
 *                         and a retriable refusal holds its topic back (holds.ts) while
 *                         other topics flow. Fetch again at once.
 *             A topic whose event was not acked sends nothing more in that batch, and a
 *             batch that did not leave the queue whole drops the batch read ahead: both
 *             keep a key's later event from overtaking one that stayed queued.
 *   backoff   any error: one log line, sleep backoffDelay(attempt) (longer for what only
 *             a person can fix: a refused login, a missing schema), back to the loop.
 *             Nothing ends the process but stop(): events stay queued meanwhile. A
 *             leader that has failed for LEADER_YIELD_AFTER_MS gives the lease up and
 *             stays standby for YIELD_STAND_BACK_MS, so a relay that can ship takes over.
 *   stopping  stop(): the sleep is cut short, the batch in flight finishes (or is
 *             abandoned unacked by the caller's deadline), the lease is released so a
 *             standby takes over at once.
 * DRY_RUN needs no lease (it deletes nothing) and reads forward from the last printed id.
 *
 * The loop emits typed lifecycle events (`RelayEvent`); logs and metrics subscribe to
 * them, the loop does not know about either.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import type { DeadLetterPolicy, TopicNamingStyle } from '../config.ts';
import { RECORD_REFUSALS } from '../kafka/errors.ts';
import type { EventSink, Transactions } from '../kafka/sink.ts';
import { backoffDelay } from './backoff.ts';
import { within } from './within.ts';
import { BatchLedger, toMessage, type BatchOutcome } from './batch.ts';
import { DeadLetterStore, ParkedKeys, type DeadLetterEntry } from './dead-letters.ts';
import { FLOOR_INTERVAL_MS, FloorKeeper } from './floor.ts';
import { HoldList } from './holds.ts';
import { sendInRequests } from './send.ts';
import { DEFAULT_LEASE_TIMING, LeaseKeeper, type LeaseTiming } from './lease.ts';
import type { IdleFlag } from './listener.ts';
import type { EventQueue, Lease, QueuedEvent } from './queue.ts';
import { topicName, topicNameProblem, type TopicNaming } from './topics.ts';

const STANDBY_POLL_MS = 1_000;
/** A leader that failed to ship for LEADER_YIELD_AFTER_MS stays out of the race this long. */
export const YIELD_STAND_BACK_MS = 10_000;
/** Longest wait for the database while stopping (lowering the idle flag, releasing the lease). */
const STOP_DATABASE_WAIT_MS = 2_000;
/** First wait after an empty poll; doubles up to POLL_INTERVAL_MS. */
export const MIN_POLL_MS = 5;
/** Sleeps at least this long raise the idle flag, so that writers notify. */
const IDLE_FLAG_MIN_WAIT_MS = 40;
/**
 * Most bytes (keys, values, headers, framing) in one produce request: every partition's
 * record batch stays well under the broker's default max.message.bytes (1 MiB), whatever
 * BATCH_SIZE; the lease is checked before each request.
 */
export const MAX_REQUEST_BYTES = 512 * 1024;

/**
 * The loop is stuck when one turn takes this long (a turn is one batch: its statements
 * time out after 60 s, its Kafka requests after 30 s each).
 */
export const STUCK_AFTER_MS = 90_000;

export type RelayEvent =
  | { type: 'leadership'; active: boolean; epoch?: string; reason: string }
  | {
      type: 'batch';
      events: number;
      changes: number;
      topics: number;
      ms: number;
      /** Age of the batch's oldest event when Kafka acknowledged it (created_at to ack). */
      oldestAgeMs: number;
      /** Time spent reading the batch (0 when it was read during the previous send). */
      fetchMs: number;
      /** The events Kafka acknowledged, by table (schema.table) and statement. */
      published: Array<{ table: string; statement: string; events: number }>;
      /** Each acknowledged event's age when Kafka acknowledged it (created_at to ack), ms. */
      lagsMs: number[];
    }
  | { type: 'error'; stage: string; error: unknown; attempt: number; retryInMs: number }
  | {
      /** Gave the lease up: nothing shipped for failingForMs; back in the race after standBackMs. */
      type: 'yielded';
      failingForMs: number;
      standBackMs: number;
      error: unknown;
    }
  | {
      type: 'topic-held';
      topic: string;
      tables: string[];
      reason: string;
      retriable: boolean;
      retryInMs: number;
    }
  | { type: 'topic-released'; topic: string; tables: string[] }
  | { type: 'dead-letter'; entry: DeadLetterEntry }
  /** Exactly-once: changes the last committed transaction delivered, deleted at takeover. */
  | { type: 'delivered-before'; deleted: number }
  | { type: 'stopped' };

export interface RelayOptions {
  queue: EventQueue;
  deadLetters: DeadLetterStore;
  sink: EventSink;
  batchSize: number;
  /** Most bytes of row data per batch (one larger row still ships alone). */
  batchBytes: number;
  deadLetterPolicy: DeadLetterPolicy;
  pollIntervalMs: number;
  topicPrefix: string;
  topicNamespace: string | undefined;
  /** TOPIC_NAMING: pg2kafka's names (the default) or Debezium's. */
  topicNaming?: TopicNamingStyle;
  dryRun: boolean;
  /** Identifies this relay in the lease row. */
  holder?: string;
  /** Lets writers wake this relay while it sleeps (see listener.ts). */
  idleFlag?: IdleFlag;
  leaseTiming?: LeaseTiming;
  /** How long a topic with a retriable problem is held back (default: the common backoff). */
  holdBackoff?: (attempt: number) => number;
  /** Most bytes per produce request (MAX_REQUEST_BYTES). */
  maxRequestBytes?: number;
  /** A leader failing this long gives the lease up for YIELD_STAND_BACK_MS (default 60 s). */
  yieldAfterMs?: number;
  /**
   * A loop that has neither turned nor slept for this long is stuck: its lease is not
   * renewed any more, so a standby takes over (default STUCK_AFTER_MS).
   */
  stuckAfterMs?: number;
  /**
   * Turns a loop error into what the user must read, and how long to wait before the
   * next attempt when that is not the common backoff (a refused login, a missing schema).
   */
  diagnose?: (error: unknown) => Promise<{ error: unknown; retryInMs?: number }>;
}

/** A batch as read; `full`: the read stopped at BATCH_SIZE or BATCH_BYTES, more is likely waiting. */
type Batch = Awaited<ReturnType<EventQueue['fetch']>>;

export class Relay {
  readonly holder: string;
  private readonly events = new EventEmitter();
  private stopping = false;
  private running: Promise<void> | undefined;
  private wakeRequested = false;
  private cancelSleep: (() => void) | undefined;
  private readonly leases: LeaseKeeper;
  private naming: TopicNaming | undefined;
  private readonly holds: HoldList;
  private readonly parked = new ParkedKeys();
  private readonly floor: FloorKeeper;
  private dryRunAfterId: string | undefined;
  /** When this leader's current run of failures began (performance.now()). */
  private failingSince: number | undefined;
  /** performance.now() until which this relay does not take the lease (after yielding). */
  private standBackUntil = 0;
  /** performance.now() of the loop's last turn, and until when it sleeps on purpose. */
  private tickedAt = performance.now();
  private sleepingUntil = 0;
  /**
   * The next batch, read while the current one is sent (only after a full batch, when
   * more is likely waiting). Valid only if the current batch leaves the queue whole
   * (deleted or dead-lettered): dropped otherwise, on any error, and on a change of lease.
   */
  private prefetched: { lease: Lease | undefined; batch: Promise<Batch> } | undefined;
  /**
   * Exactly-once: the queue ids of a committed transaction not deleted yet (the delete
   * failed): deleted before the next fetch, so that they are not sent again.
   */
  private committedUndeleted: string[] | undefined;

  constructor(private readonly options: RelayOptions) {
    this.holder = options.holder ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
    this.holds = new HoldList(options.holdBackoff);
    // Raises the queue floor behind the fetches, in the background (floor.ts).
    this.floor = new FloorKeeper(options.queue.floor, (error) => {
      this.emit({ type: 'error', stage: 'floor', error, attempt: 1, retryInMs: FLOOR_INTERVAL_MS });
    });
    this.leases = new LeaseKeeper(
      options.queue,
      this.holder,
      options.leaseTiming ?? DEFAULT_LEASE_TIMING,
      (lease, reason) => {
        this.lostLease(lease, reason);
      },
      () => {
        const loop = this.liveness();
        return loop.sleepLeftMs > 0 || loop.sinceTickMs < (options.stuckAfterMs ?? STUCK_AFTER_MS);
      },
    );
  }

  on(listener: (event: RelayEvent) => void): void {
    this.events.on('event', listener);
  }

  private emit(event: RelayEvent): void {
    this.events.emit('event', event);
  }

  /** Starts the loop; the promise settles when the relay has stopped. */
  start(): Promise<void> {
    this.running ??= this.run().finally(() => {
      this.emit({ type: 'stopped' });
    });
    return this.running;
  }

  /** Asks the loop to stop; returns the same promise to every caller. */
  stop(): Promise<void> {
    this.stopping = true;
    this.cancelSleep?.();
    return this.running ?? Promise.resolve();
  }

  /** Cuts the current sleep short: there may be new events. */
  wake(): void {
    this.wakeRequested = true;
    this.cancelSleep?.();
  }

  /**
   * How the loop is doing, for a liveness probe: how long since its last turn, and how
   * much longer it means to sleep (0 when it is not sleeping).
   */
  liveness(): {
    sinceTickMs: number;
    sleepLeftMs: number;
    active: boolean;
    epoch: string | undefined;
  } {
    const now = performance.now();
    return {
      sinceTickMs: Math.round(now - this.tickedAt),
      sleepLeftMs: Math.max(0, Math.round(this.sleepingUntil - now)),
      active: this.options.dryRun || this.leases.current !== undefined,
      epoch: this.leases.current?.epoch,
    };
  }

  /** Whether wake() was called since the loop last cleared the flag (set while fetching too). */
  private woken(): boolean {
    return this.wakeRequested;
  }

  private async run(): Promise<void> {
    let idleWait = MIN_POLL_MS;
    let errorAttempt = 0;
    try {
      while (!this.stopping) {
        this.tickedAt = performance.now();
        try {
          if (!(await this.ensureLeadership())) {
            await this.sleep(STANDBY_POLL_MS, false);
            continue;
          }
          this.wakeRequested = false;
          let shipped = await this.shipBatch();
          errorAttempt = 0;
          this.failingSince = undefined;
          if (shipped !== 'empty') {
            // Events are flowing: fetch again at once; the next empty poll starts the backoff.
            idleWait = MIN_POLL_MS;
            continue;
          }
          idleWait = Math.min(idleWait * 2, this.options.pollIntervalMs);
          const { idleFlag } = this.options;
          if (
            idleFlag &&
            this.leases.current &&
            idleWait >= IDLE_FLAG_MIN_WAIT_MS &&
            (await idleFlag.raise())
          ) {
            // Writers notify from now on. A change committed between the empty fetch and
            // the flag did not: poll once more before sleeping. Rows found: lower the flag
            // before shipping them, so writers stop notifying while the relay is busy.
            try {
              shipped = await this.shipBatch(() => idleFlag.lower());
              if (shipped === 'empty' && !this.woken()) await this.sleep(idleWait, true);
            } finally {
              await idleFlag.lower();
            }
            if (shipped !== 'empty') idleWait = MIN_POLL_MS;
            continue;
          }
          if (!this.woken()) await this.sleep(idleWait, true);
        } catch (caught) {
          this.prefetched = undefined;
          errorAttempt += 1;
          const diagnosed = (await this.options.diagnose?.(caught).catch(() => undefined)) ?? {
            error: caught,
          };
          const { error } = diagnosed;
          const retryInMs = diagnosed.retryInMs ?? backoffDelay(errorAttempt);
          this.emit({ type: 'error', stage: 'ship', error, attempt: errorAttempt, retryInMs });
          await this.yieldIfFailingTooLong(error);
          await this.sleep(retryInMs, false);
        }
      }
    } finally {
      // The database may be the thing that is down: stopping waits for it only briefly.
      await within(STOP_DATABASE_WAIT_MS, this.options.idleFlag?.lower());
      await within(STOP_DATABASE_WAIT_MS, this.resign('stopped'));
      await within(STOP_DATABASE_WAIT_MS, this.floor.settled());
    }
  }

  /**
   * A leader that cannot ship (a wrong KAFKA_BROKERS, a network split on its side) must not
   * sit on the lease while a standby could: after yieldAfterMs of failures it gives the
   * lease up and stays out for YIELD_STAND_BACK_MS. Alone, it simply takes it back then.
   */
  private async yieldIfFailingTooLong(error: unknown): Promise<void> {
    if (!this.leases.current) {
      this.failingSince = undefined;
      return;
    }
    const now = performance.now();
    this.failingSince ??= now;
    const failingForMs = Math.round(now - this.failingSince);
    if (failingForMs < (this.options.yieldAfterMs ?? 60_000)) return;
    this.failingSince = undefined;
    this.standBackUntil = now + YIELD_STAND_BACK_MS;
    this.emit({ type: 'yielded', failingForMs, standBackMs: YIELD_STAND_BACK_MS, error });
    await within(STOP_DATABASE_WAIT_MS, this.resign('gave the lease up after failing to ship'));
  }

  /** True when this relay may ship: it holds a lease it trusts (or runs dry). */
  private async ensureLeadership(): Promise<boolean> {
    if (this.options.dryRun) return true;
    const current = this.leases.current;
    if (current && !this.leases.trusted(current)) {
      await this.resign('lease not renewed in time (database unreachable?)', false);
    }
    if (this.leases.current) return true;
    if (performance.now() < this.standBackUntil) return false;
    const lease = await this.leases.acquire();
    if (!lease) return false;
    this.floor.reset();
    try {
      // Keys parked by an earlier leader: their later changes follow them.
      this.parked.replace(await this.options.deadLetters.parkedKeys());
    } catch (error) {
      await this.resign('could not read the parked keys', true);
      throw error;
    }
    this.emit({ type: 'leadership', active: true, epoch: lease.epoch, reason: 'lease acquired' });
    return true;
  }

  private lostLease(lease: Lease, reason: string): void {
    this.prefetched = undefined;
    this.emit({ type: 'leadership', active: false, epoch: lease.epoch, reason });
    this.releaseHolds();
  }

  /** Stops leading; releases the lease in the database unless it is already gone. */
  private async resign(reason: string, release = true): Promise<void> {
    this.prefetched = undefined;
    const lease = await this.leases.drop(release);
    if (lease) {
      this.emit({ type: 'leadership', active: false, epoch: lease.epoch, reason });
      this.releaseHolds();
    }
  }

  /** A standby holds nothing back: as leader again, it finds what still fails anew. */
  private releaseHolds(): void {
    for (const released of this.holds.releaseDue(Infinity)) {
      this.emit({ type: 'topic-released', ...released });
    }
  }

  private async topicNaming(): Promise<TopicNaming> {
    this.naming ??= {
      prefix: this.options.topicPrefix,
      namespace: this.options.topicNamespace,
      database: await this.options.queue.databaseName(),
      style: this.options.topicNaming ?? 'pg2kafka',
    };
    return this.naming;
  }

  private hold(ledger: BatchLedger, topic: string, reason: string, retriable: boolean): void {
    const tables = ledger.events
      .filter((_, i) => ledger.topics[i] === topic)
      .map((e) => ({ oid: e.tableOid, name: `${e.schemaName}.${e.tableName}` }));
    const notice = this.holds.hold(topic, tables, reason, retriable);
    if (notice) this.emit({ type: 'topic-held', ...notice });
  }

  private read(lease: Lease | undefined, excludeIds: string[] = []): Promise<Batch> {
    const { queue, batchSize, batchBytes, dryRun } = this.options;
    return queue.fetch({
      limit: batchSize,
      maxBytes: batchBytes,
      lease,
      skipTables: this.holds.tableOids(),
      excludeIds,
      ...(dryRun && this.dryRunAfterId !== undefined ? { afterId: this.dryRunAfterId } : {}),
    });
  }

  /** Ships one batch; says whether it was empty, partial or full. */
  private async shipBatch(onRows?: () => Promise<void>): Promise<'empty' | 'partial' | 'full'> {
    const { sink, dryRun } = this.options;
    for (const released of this.holds.releaseDue()) {
      this.emit({ type: 'topic-released', ...released });
    }
    const lease = this.leases.current;
    const transactions = dryRun ? undefined : sink.transactions;
    if (transactions && lease && !(await this.recoverDelivered(transactions, lease))) {
      return 'empty';
    }
    const prefetched = this.prefetched;
    this.prefetched = undefined;
    const fetchStarted = performance.now();
    const batch =
      prefetched && prefetched.lease === lease ? await prefetched.batch : await this.read(lease);
    const { events } = batch;
    this.floor.observe(lease, events.at(-1)?.id);
    if (events.length === 0) return 'empty';
    const fetchMs = Math.round(performance.now() - fetchStarted);
    if (!dryRun && batch.full) {
      const next = this.read(lease, [...new Set(events.map((e) => e.id))]);
      next.catch(() => undefined); // a failure surfaces when the next batch awaits it
      this.prefetched = { lease, batch: next };
    }
    await onRows?.();
    const started = performance.now();
    const naming = await this.topicNaming();
    // One name per table (a batch reads each table's current name once).
    const topicOf = new Map<string, string>();
    const topics = events.map((e) => {
      let topic = topicOf.get(e.tableOid);
      if (topic === undefined) {
        topic = topicName(naming, e.schemaName, e.tableName);
        topicOf.set(e.tableOid, topic);
      }
      return topic;
    });
    const ledger = new BatchLedger(events, topics);

    const distinctTopics = [...new Set(topics)];
    for (const topic of distinctTopics) {
      const problem = topicNameProblem(topic);
      if (problem !== undefined) this.hold(ledger, topic, problem, false);
    }
    const usable = distinctTopics.filter((t) => topicNameProblem(t) === undefined);
    for (const problem of await sink.prepareTopics(usable)) {
      this.hold(ledger, problem.topic, problem.reason, problem.retriable);
    }
    this.tickedAt = performance.now();

    const messages = events.map((e, i) => toMessage(e, topics[i] as string, naming.database));
    const sendable: number[] = [];
    const parkedChanges = this.parked.followers(events);
    for (const [i, e] of events.entries()) {
      if (this.holds.isHeld(topics[i] as string, e.tableOid)) continue;
      if (parkedChanges.has(e.id)) {
        ledger.record(i, { status: 'follower' });
        continue;
      }
      if (e.keyMissing) {
        // Keyless events would scatter over the partitions and lose per-key order: the
        // table waits, from this event on, for a person to say what its key is now.
        this.hold(ledger, topics[i] as string, keyMissingReason(e, e.keyMissing), false);
        continue;
      }
      sendable.push(i);
    }
    const parkKeys = this.options.deadLetterPolicy === 'park-key';
    const inTransaction = transactions !== undefined && sendable.length > 0;
    if (inTransaction) await transactions.begin();
    const report = await sendInRequests({
      sink,
      ledger,
      messages,
      sendable,
      maxRequestBytes: this.options.maxRequestBytes ?? MAX_REQUEST_BYTES,
      // A pause (GC, a frozen VM, an unreachable database) may have outlived the lease.
      // Each request is progress: a batch of many slow requests is not a stuck loop.
      trusted: () => {
        this.tickedAt = performance.now();
        return dryRun || this.leases.trusted(lease);
      },
    });
    if (report.untrusted) {
      await this.resign('lease not trusted any more before sending; the rest stays queued', false);
    }
    for (const { index, refusal } of report.refusals) {
      const topic = topics[index] as string;
      const recordLevel = !refusal.retriable && RECORD_REFUSALS.has(refusal.code);
      if (recordLevel && this.options.deadLetterPolicy !== 'hold-table') {
        ledger.record(index, refusal);
        const event = events[index] as QueuedEvent;
        if (parkKeys) for (const key of ledger.keysOf(index)) this.parked.add(event.tableOid, key);
      } else {
        const reason = `topic "${topic}" refused events: ${refusal.reason} (${refusal.code})`;
        this.hold(ledger, topic, reason, refusal.retriable);
      }
    }

    let outcome = ledger.outcome(messages, parkKeys, new Date().toISOString());
    if (inTransaction) {
      // Exactly-once: what was acknowledged counts only once the transaction committed.
      const commit =
        !report.error && !report.untrusted && lease !== undefined && this.leases.trusted(lease);
      const committed = commit
        ? await transactions.commit(outcome.deleteIds)
        : await transactions.abort().then(() => false);
      // Delivered for good: if the delete below fails, they are deleted before the next
      // fetch rather than sent again.
      if (committed) this.committedUndeleted = outcome.deleteIds;
      if (!committed) {
        ledger.forgetAcknowledged();
        outcome = ledger.outcome(messages, parkKeys, new Date().toISOString());
        this.prefetched = undefined;
      }
    }
    for (const topic of outcome.ackedTopics) this.holds.succeeded(topic);
    let complete = outcome.deleteIds.length + outcome.deadLetters.length === ledger.changes;
    if (dryRun) {
      this.dryRunAfterId = events.at(-1)?.id;
    } else if (lease) {
      if (outcome.deleteIds.length > 0) {
        const deleted = await this.options.queue.delete(outcome.deleteIds, lease);
        this.committedUndeleted = undefined;
        if (deleted === 0) {
          await this.resign(
            'lease lost: the shipped events were not deleted and will be sent again',
            false,
          );
          return 'empty';
        }
      }
      if (outcome.deadLetters.length > 0) {
        const moved = await this.options.deadLetters.move(outcome.deadLetters, lease);
        for (const entry of outcome.deadLetters) {
          if (moved.has(entry.id)) this.emit({ type: 'dead-letter', entry });
        }
        if (moved.size < outcome.deadLetters.length) {
          // A key was unparked meanwhile (retry or discard): its change stays queued.
          complete = false;
          this.parked.replace(await this.options.deadLetters.parkedKeys());
        }
      }
    }
    if (!complete) this.prefetched = undefined;
    // What left the queue is counted even when Kafka was lost midway (then back off).
    this.emitBatch(events, outcome, started, fetchMs);
    // Kafka unreachable: what it acknowledged before is deleted; now back off.
    if (report.error) throw report.error;
    return batch.full ? 'full' : 'partial';
  }

  /**
   * Exactly-once: before a batch, the sink fences earlier producers (under a new lease, or
   * after a commit whose outcome is unknown) and names the queue ids of the last committed
   * transaction, which are deleted now so that they are not sent again. False: the lease
   * was lost meanwhile.
   */
  private async recoverDelivered(transactions: Transactions, lease: Lease): Promise<boolean> {
    const naming = await this.topicNaming();
    const recovered = await transactions.recover(
      // The markers keep pg2kafka's naming: changing TOPIC_NAMING must not lose them.
      topicName({ ...naming, style: 'pg2kafka' }, 'pg2kafka', 'commits'),
      lease.epoch,
      () => this.leases.trusted(lease),
    );
    // A committed batch whose delete failed (the database, not Kafka): its ids go first.
    const delivered = [...new Set([...(this.committedUndeleted ?? []), ...recovered])];
    if (delivered.length === 0) return true;
    this.prefetched = undefined;
    const deleted = await this.options.queue.deleteDelivered(delivered, lease);
    if (deleted === undefined) {
      await this.resign('lease lost while deleting what the last transaction delivered', false);
      return false;
    }
    this.committedUndeleted = undefined;
    if (deleted > 0) {
      this.emit({ type: 'delivered-before', deleted });
    }
    return true;
  }

  /**
   * The batch's lifecycle event: the events of the changes that left the queue (both
   * halves of a key change, or neither), by table and statement, and their lag.
   */
  private emitBatch(
    events: QueuedEvent[],
    outcome: BatchOutcome,
    started: number,
    fetchMs: number,
  ): void {
    const ackedAt = Date.now();
    const deleted = new Set(outcome.deleteIds);
    const published = new Map<string, { table: string; statement: string; events: number }>();
    const lagsMs: number[] = [];
    for (const e of events) {
      if (!deleted.has(e.id)) continue;
      const table = `${e.schemaName}.${e.tableName}`;
      const key = `${table}\u0000${e.statement}`;
      const count = published.get(key);
      if (count) count.events += 1;
      else published.set(key, { table, statement: e.statement, events: 1 });
      lagsMs.push(ackedAt - Number(e.timestampMs));
    }
    this.emit({
      type: 'batch',
      events: lagsMs.length,
      changes: outcome.deleteIds.length,
      topics: outcome.ackedTopics.size,
      ms: Math.round(performance.now() - started),
      oldestAgeMs: ackedAt - Number(events[0]?.timestampMs ?? ackedAt),
      fetchMs,
      published: [...published.values()],
      lagsMs,
    });
  }

  /** Waits `ms`, or less if stop() (or, when wakeable, wake()) comes first. */
  private sleep(ms: number, wakeable: boolean): Promise<void> {
    if (this.stopping) return Promise.resolve();
    this.sleepingUntil = performance.now() + ms;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.cancelSleep = () => {
        if (wakeable || this.stopping) done();
      };
    }).finally(() => {
      this.cancelSleep = undefined;
      this.sleepingUntil = 0;
      this.tickedAt = performance.now();
    });
  }
}

/** Why a table's events wait when its rows lack the key columns, and what to do. */
function keyMissingReason(e: QueuedEvent, columns: string[]): string {
  const table = `${e.schemaName}.${e.tableName}`;
  const names = columns.map((c) => JSON.stringify(c)).join(', ');
  return (
    `its rows have no key column ${names} since change #${e.id} (renamed or dropped after setup), ` +
    `and events without a key would lose their order: set the table up again keyed by a column ` +
    `it has (pg2kafka teardown ${table}, then pg2kafka setup ${table} <column>); the queued events ` +
    `then ship keyed by that column`
  );
}
