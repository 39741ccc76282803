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

export class BatchLedger {
  private readonly fates: Fate[];

  constructor(
    readonly events: QueuedEvent[],
    readonly topics: string[],
  ) {
    this.fates = events.map(() => ({ status: 'unsent' }));
  }

  record(index: number, fate: Fate): void {
    this.fates[index] = fate;
  }

  /** Indexes of the events of each change, in batch order. */
  private changes(): Map<string, number[]> {
    const byId = new Map<string, number[]>();
    for (const [i, e] of this.events.entries()) {
      const list = byId.get(e.id);
      if (list) list.push(i);
      else byId.set(e.id, [i]);
    }
    return byId;
  }

  /** Every key the change of event `index` carries (two for a key change). */
  keysOf(index: number): Array<string | null> {
    const id = this.events[index]?.id;
    return this.events.filter((e) => e.id === id).map((e) => e.externalId);
  }

  outcome(messages: OutboundMessage[], parkKeys: boolean, now: string): BatchOutcome {
    const deleteIds: string[] = [];
    const deadLetters: DeadLetterEntry[] = [];
    const ackedTopics = new Set<string>();
    let acked = 0;
    for (const [id, indexes] of this.changes()) {
      const fates = indexes.map((i) => this.fates[i] as Fate);
      for (const [n, fate] of fates.entries()) {
        if (fate.status === 'acked') {
          acked += 1;
          ackedTopics.add(this.topics[indexes[n] as number] as string);
        }
      }
      if (fates.every((f) => f.status === 'acked')) {
        deleteIds.push(id);
        continue;
      }
      const refusedAt = fates.findIndex((f) => f.status === 'refused' && !f.retriable);
      const followerAt = fates.findIndex((f) => f.status === 'follower');
      const at = refusedAt >= 0 ? refusedAt : followerAt;
      if (at < 0) continue;
      const index = indexes[at] as number;
      const event = this.events[index] as QueuedEvent;
      const fate = fates[at] as Refusal | { status: 'follower' };
      const refusal =
        fate.status === 'refused'
          ? fate
          : {
              code: KEY_PARKED,
              reason:
                'an earlier event of this key is a dead letter: retry or discard it (pg2kafka dead-letters)',
            };
      deadLetters.push({
        id,
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
      });
    }
    return { deleteIds, deadLetters, ackedTopics, acked };
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
