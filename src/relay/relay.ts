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
 *               -> events: make sure topics exist, send with acks = all, then delete
 *                         exactly the acked ids (lease-fenced), and fetch again at once
 *   backoff   any error: one log line, sleep backoffDelay(attempt), back to the loop.
 *             Nothing ends the process but stop(): events stay queued meanwhile.
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
import type { EventSink, OutboundMessage } from '../kafka/sink.ts';
import { backoffDelay } from './backoff.ts';
import type { IdleFlag } from './listener.ts';
import type { EventQueue, Lease, QueuedEvent } from './queue.ts';
import { topicName, topicNameProblem, type TopicNaming } from './topics.ts';

/** Lease duration; a standby takes over this long after an active relay died. */
export const LEASE_TTL_MS = 10_000;
/** The heartbeat renews the lease this often. */
export const LEASE_RENEW_MS = 2_000;
/** A lease not renewed for TTL minus this margin is treated as lost, before it expires. */
const LEASE_SAFETY_MS = 2_000;
const STANDBY_POLL_MS = 1_000;
/** First wait after an empty poll; doubles up to POLL_INTERVAL_MS. */
export const MIN_POLL_MS = 5;
/** Sleeps at least this long raise the idle flag, so that writers notify. */
const IDLE_FLAG_MIN_WAIT_MS = 40;
/** A table whose topic cannot be used is retried after this long. */
const BLOCKED_RETRY_MS = { retriable: 5_000, permanent: 60_000 };

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
    }
  | { type: 'error'; stage: string; error: unknown; attempt: number; retryInMs: number }
  | { type: 'table-blocked'; table: string; topic: string; reason: string; retryInMs: number }
  | { type: 'table-unblocked'; table: string }
  | { type: 'stopped' };

export interface RelayOptions {
  queue: EventQueue;
  sink: EventSink;
  batchSize: number;
  pollIntervalMs: number;
  topicPrefix: string;
  topicNamespace: string | undefined;
  dryRun: boolean;
  /** Identifies this relay in the lease row. */
  holder?: string;
  /** Lets writers wake this relay while it sleeps (see listener.ts). */
  idleFlag?: IdleFlag;
}

interface BlockedTable {
  table: string;
  retryAt: number;
}

export class Relay {
  readonly holder: string;
  private readonly events = new EventEmitter();
  private stopping = false;
  private running: Promise<void> | undefined;
  private wakeRequested = false;
  private cancelSleep: (() => void) | undefined;
  private lease: Lease | undefined;
  /** Local clock (performance.now) until which the lease is trusted. */
  private leaseTrustedUntil = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private naming: TopicNaming | undefined;
  private readonly blocked = new Map<string, BlockedTable>();
  private dryRunAfterId: string | undefined;
  /**
   * The next batch, read while the current one is sent (only after a full batch, when
   * more is likely waiting). Dropped on any error or change of lease: after a failed
   * send it would skip the unsent batch.
   */
  private prefetched: { lease: Lease | undefined; batch: Promise<QueuedEvent[]> } | undefined;

  constructor(private readonly options: RelayOptions) {
    this.holder = options.holder ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
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

  /** Whether wake() was called since the loop last cleared the flag (set while fetching too). */
  private woken(): boolean {
    return this.wakeRequested;
  }

  private async run(): Promise<void> {
    let idleWait = MIN_POLL_MS;
    let errorAttempt = 0;
    try {
      while (!this.stopping) {
        try {
          if (!(await this.ensureLeadership())) {
            await this.sleep(STANDBY_POLL_MS, false);
            continue;
          }
          this.wakeRequested = false;
          let shipped = await this.shipBatch();
          errorAttempt = 0;
          if (shipped === 'full') {
            idleWait = MIN_POLL_MS;
            continue;
          }
          if (shipped === 'partial') {
            // Events are flowing: fetch again at once; the next empty poll starts the backoff.
            idleWait = MIN_POLL_MS;
            continue;
          }
          idleWait = Math.min(idleWait * 2, this.options.pollIntervalMs);
          const { idleFlag } = this.options;
          if (
            idleFlag &&
            this.lease &&
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
        } catch (error) {
          this.prefetched = undefined;
          errorAttempt += 1;
          const retryInMs = backoffDelay(errorAttempt);
          this.emit({ type: 'error', stage: 'ship', error, attempt: errorAttempt, retryInMs });
          await this.sleep(retryInMs, false);
        }
      }
    } finally {
      await this.options.idleFlag?.lower();
      await this.resign('stopped');
    }
  }

  /** True when this relay may ship: it holds a lease it trusts (or runs dry). */
  private async ensureLeadership(): Promise<boolean> {
    if (this.options.dryRun) return true;
    if (this.lease && performance.now() > this.leaseTrustedUntil) {
      await this.resign('lease not renewed in time (database unreachable?)', false);
    }
    if (this.lease) return true;
    const lease = await this.options.queue.acquireLease(this.holder, LEASE_TTL_MS);
    if (!lease) return false;
    this.lease = lease;
    this.leaseTrustedUntil = performance.now() + LEASE_TTL_MS - LEASE_SAFETY_MS;
    this.heartbeat = setInterval(() => void this.renew(), LEASE_RENEW_MS);
    this.heartbeat.unref();
    this.emit({ type: 'leadership', active: true, epoch: lease.epoch, reason: 'lease acquired' });
    return true;
  }

  private async renew(): Promise<void> {
    const lease = this.lease;
    if (!lease) return;
    try {
      const renewedAt = performance.now();
      if (await this.options.queue.renewLease(lease, LEASE_TTL_MS)) {
        if (this.lease === lease)
          this.leaseTrustedUntil = renewedAt + LEASE_TTL_MS - LEASE_SAFETY_MS;
      } else if (this.lease === lease) {
        await this.resign('lease lost to another relay', false);
      }
    } catch {
      // The database is unreachable: the lease is trusted until leaseTrustedUntil, then dropped.
    }
  }

  /** Stops leading; releases the lease in the database unless it is already gone. */
  private async resign(reason: string, release = true): Promise<void> {
    const lease = this.lease;
    this.prefetched = undefined;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    if (!lease) return;
    this.lease = undefined;
    if (release) {
      await this.options.queue.releaseLease(lease).catch(() => undefined);
    }
    this.emit({ type: 'leadership', active: false, epoch: lease.epoch, reason });
  }

  private async topicNaming(): Promise<TopicNaming> {
    this.naming ??= {
      prefix: this.options.topicPrefix,
      namespace: this.options.topicNamespace,
      database: await this.options.queue.databaseName(),
    };
    return this.naming;
  }

  private unblockDueTables(): void {
    const now = performance.now();
    for (const [oid, entry] of this.blocked) {
      if (entry.retryAt <= now) {
        this.blocked.delete(oid);
        this.emit({ type: 'table-unblocked', table: entry.table });
      }
    }
  }

  private block(event: QueuedEvent, topic: string, reason: string, retryInMs: number): void {
    if (this.blocked.has(event.tableOid)) return;
    const table = `${event.schemaName}.${event.tableName}`;
    this.blocked.set(event.tableOid, { table, retryAt: performance.now() + retryInMs });
    this.emit({ type: 'table-blocked', table, topic, reason, retryInMs });
  }

  /** Ships one batch; says whether it was empty, partial or full. */
  private async shipBatch(onRows?: () => Promise<void>): Promise<'empty' | 'partial' | 'full'> {
    const { queue, sink, batchSize, dryRun } = this.options;
    this.unblockDueTables();
    const lease = this.lease;
    const prefetched = this.prefetched;
    this.prefetched = undefined;
    const fetchStarted = performance.now();
    const batch =
      prefetched && prefetched.lease === lease
        ? await prefetched.batch
        : await queue.fetch({
            limit: batchSize,
            lease,
            skipTables: [...this.blocked.keys()],
            ...(dryRun && this.dryRunAfterId !== undefined ? { afterId: this.dryRunAfterId } : {}),
          });
    if (batch.length === 0) return 'empty';
    const fetchMs = Math.round(performance.now() - fetchStarted);
    const batchIds = [...new Set(batch.map((e) => e.id))];
    if (!dryRun && batchIds.length >= batchSize) {
      const next = queue.fetch({
        limit: batchSize,
        lease,
        skipTables: [...this.blocked.keys()],
        excludeIds: batchIds,
      });
      next.catch(() => undefined); // a failure surfaces when the next batch awaits it
      this.prefetched = { lease, batch: next };
    }
    await onRows?.();
    const started = performance.now();
    const naming = await this.topicNaming();

    const topicOf = new Map<string, string>();
    for (const event of batch) {
      if (topicOf.has(event.tableOid)) continue;
      const topic = topicName(naming, event.schemaName, event.tableName);
      topicOf.set(event.tableOid, topic);
      const problem = topicNameProblem(topic);
      if (problem !== undefined) this.block(event, topic, problem, BLOCKED_RETRY_MS.permanent);
    }
    const usableTopics = [
      ...new Set([...topicOf].filter(([oid]) => !this.blocked.has(oid)).map(([, t]) => t)),
    ];
    const problems = await sink.prepareTopics(usableTopics);
    for (const problem of problems) {
      for (const event of batch) {
        if (topicOf.get(event.tableOid) === problem.topic) {
          this.block(
            event,
            problem.topic,
            problem.reason,
            problem.retriable ? BLOCKED_RETRY_MS.retriable : BLOCKED_RETRY_MS.permanent,
          );
          break;
        }
      }
    }

    const shippable = batch.filter((e) => !this.blocked.has(e.tableOid));
    const messages: OutboundMessage[] = shippable.map((e) => ({
      topic: topicOf.get(e.tableOid) ?? '',
      key: e.externalId,
      value: e.value,
      timestamp: e.timestampMs,
      headers: {
        uuid: e.uuid,
        statement: e.statement,
        table: `${e.schemaName}.${e.tableName}`,
        database: naming.database,
      },
    }));
    // A pause (GC, a frozen VM, an unreachable database) may have outlived the lease:
    // then a standby may be shipping this very batch, so do not send it as well.
    if (!dryRun && (this.lease !== lease || performance.now() > this.leaseTrustedUntil)) {
      await this.resign('lease not trusted any more before sending; the batch stays queued', false);
      return 'empty';
    }
    const refused = await sink.send(messages);
    for (const problem of refused) {
      const event = shippable.find((e) => topicOf.get(e.tableOid) === problem.topic);
      if (event) this.block(event, problem.topic, problem.reason, BLOCKED_RETRY_MS.permanent);
    }

    const ids = [
      ...new Set(shippable.filter((e) => !this.blocked.has(e.tableOid)).map((e) => e.id)),
    ];
    if (dryRun) {
      this.dryRunAfterId = batch.at(-1)?.id;
    } else if (ids.length > 0 && lease) {
      const deleted = await queue.delete(ids, lease);
      if (deleted === 0) {
        await this.resign(
          'lease lost: the shipped batch was not deleted and will be sent again',
          false,
        );
      }
    }
    this.emit({
      type: 'batch',
      events: messages.length,
      changes: ids.length,
      topics: new Set(messages.map((m) => m.topic)).size,
      ms: Math.round(performance.now() - started),
      oldestAgeMs: Date.now() - Number(batch[0]?.timestampMs ?? Date.now()),
      fetchMs,
    });
    return batchIds.length >= batchSize ? 'full' : 'partial';
  }

  /** Waits `ms`, or less if stop() (or, when wakeable, wake()) comes first. */
  private sleep(ms: number, wakeable: boolean): Promise<void> {
    if (this.stopping) return Promise.resolve();
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
    });
  }
}
