/**
 * One batch's accounting: what became of each event, and from that what becomes of each
 * captured change (a key-changing UPDATE is one change with two events).
 *
 *   every event acked                       -> delete the change
 *   an event refused for good (record-level) -> dead letter (unless DEAD_LETTER_POLICY=hold-table)
 *   a key parked before the batch            -> dead letter as a follower (never sent)
 *   anything else (unsent, held, retriable)  -> stays queued, ships in a later batch
 *
 * A batch whose changes are not all deleted or dead-lettered is *incomplete*: the batch
 * read ahead while it was sent must be dropped, since it was read assuming this one
 * leaves the queue whole, and shipping it could put a key's later event ahead of one
 * that stayed queued.
 */
import type { OutboundMessage, SendResult } from '../kafka/sink.ts';
import { KEY_PARKED, type DeadLetterEntry } from './dead-letters.ts';
import type { QueuedEvent } from './queue.ts';

type Refusal = Extract<SendResult, { status: 'refused' }>;
type Fate = SendResult | { status: 'follower' };

export interface BatchOutcome {
  /** Changes to delete: Kafka acknowledged all their events. */
  deleteIds: string[];
  deadLetters: DeadLetterEntry[];
  /** Topics with at least one acknowledged event. */
  ackedTopics: Set<string>;
  acked: number;
}

const UNSENT: Fate = { status: 'unsent' };

export class BatchLedger {
  private readonly fates: Fate[];

  constructor(
    /** In shipping order (id, part): the events of one change are next to each other. */
    readonly events: QueuedEvent[],
    readonly topics: string[],
  ) {
    this.fates = new Array<Fate>(events.length).fill(UNSENT);
  }

  record(index: number, fate: Fate): void {
    this.fates[index] = fate;
  }

  /** Exactly-once, aborted: nothing acknowledged in the batch counts as delivered. */
  forgetAcknowledged(): void {
    for (const [i, fate] of this.fates.entries()) {
      if (fate.status === 'acked') this.fates[i] = UNSENT;
    }
  }

  /** The indexes [start, end) of the events of the change of event `index`. */
  private changeAt(index: number): [number, number] {
    const id = this.events[index]?.id;
    let start = index;
    let end = index + 1;
    while (start > 0 && this.events[start - 1]?.id === id) start -= 1;
    while (end < this.events.length && this.events[end]?.id === id) end += 1;
    return [start, end];
  }

  /** Every key the change of event `index` carries (two for a key change). */
  keysOf(index: number): Array<string | null> {
    const [start, end] = this.changeAt(index);
    return this.events.slice(start, end).map((e) => e.externalId);
  }

  /** How many changes the batch holds. */
  get changes(): number {
    let count = 0;
    for (let i = 0; i < this.events.length; i += 1) {
      if (this.events[i]?.id !== this.events[i - 1]?.id) count += 1;
    }
    return count;
  }

  outcome(messages: OutboundMessage[], parkKeys: boolean, now: string): BatchOutcome {
    const deleteIds: string[] = [];
    const deadLetters: DeadLetterEntry[] = [];
    const ackedTopics = new Set<string>();
    let acked = 0;
    for (let start = 0; start < this.events.length;) {
      const [, end] = this.changeAt(start);
      let allAcked = true;
      let refusedAt = -1;
      let followerAt = -1;
      for (let i = start; i < end; i += 1) {
        const fate = this.fates[i] as Fate;
        if (fate.status === 'acked') {
          acked += 1;
          ackedTopics.add(this.topics[i] as string);
          continue;
        }
        allAcked = false;
        if (fate.status === 'refused' && !fate.retriable && refusedAt < 0) refusedAt = i;
        if (fate.status === 'follower' && followerAt < 0) followerAt = i;
      }
      const at = refusedAt >= 0 ? refusedAt : followerAt;
      const event = this.events[start] as QueuedEvent;
      if (allAcked) deleteIds.push(event.id);
      else if (at >= 0) deadLetters.push(this.deadLetter(at, messages, parkKeys, now));
      start = end;
    }
    return { deleteIds, deadLetters, ackedTopics, acked };
  }

  private deadLetter(
    index: number,
    messages: OutboundMessage[],
    parkKeys: boolean,
    now: string,
  ): DeadLetterEntry {
    const event = this.events[index] as QueuedEvent;
    const fate = this.fates[index] as Refusal | { status: 'follower' };
    const refusal =
      fate.status === 'refused'
        ? fate
        : {
            code: KEY_PARKED,
            reason:
              'an earlier event of this key is a dead letter: retry or discard it (pg2kafka dead-letters)',
          };
    return {
      id: event.id,
      tableOid: event.tableOid,
      schemaName: event.schemaName,
      tableName: event.tableName,
      topic: this.topics[index] as string,
      externalId: event.externalId,
      payload: (messages[index] as OutboundMessage).value,
      errorCode: refusal.code,
      reason: refusal.reason,
      attempts: fate.status === 'refused' ? 1 : 0,
      firstFailedAt: now,
      parked: parkKeys,
      keys: this.keysOf(index),
      follower: fate.status === 'follower',
    };
  }
}

/**
 * Splits the events to send into produce requests of at most `maxBytes` (keys, values,
 * headers and framing), in order; a message larger than that goes alone.
 */
export function splitRequests(
  indexes: number[],
  messages: OutboundMessage[],
  sizeOf: (m: OutboundMessage) => number,
  maxBytes: number,
): number[][] {
  const requests: number[][] = [];
  let current: number[] = [];
  let bytes = 0;
  for (const i of indexes) {
    const size = sizeOf(messages[i] as OutboundMessage);
    if (current.length > 0 && bytes + size > maxBytes) {
      requests.push(current);
      current = [];
      bytes = 0;
    }
    current.push(i);
    bytes += size;
  }
  if (current.length > 0) requests.push(current);
  return requests;
}

/**
 * The Kafka message of an event: keyed by the external id (or Debezium's key struct), with
 * the four headers.
 */
export function toMessage(e: QueuedEvent, topic: string, database: string): OutboundMessage {
  return {
    topic,
    key: e.key === undefined ? e.externalId : e.key,
    value: e.value,
    timestamp: e.timestampMs,
    headers: {
      uuid: e.uuid,
      statement: e.statement,
      table: `${e.schemaName}.${e.tableName}`,
      database,
    },
  };
}
