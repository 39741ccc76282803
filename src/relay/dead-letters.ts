/**
 * Dead letters on the relay's side: which keys are parked, and moving refused changes
 * out of the queue (the SQL is pg2kafka.move_to_dead_letters, sql/40_dead_letters.sql).
 *
 * Parking keeps per-key order when an event can never be delivered: under
 * DEAD_LETTER_POLICY=park-key the key's later changes follow it into dead letters until
 * an operator retries (back in the queue under their original ids, so in order) or
 * discards them. Only the active relay parks keys, so its in-memory set is complete once
 * loaded at lease acquisition. It can only be stale the other way (an operator unparked a
 * key): the move then re-checks each follower under the dead_letters lock, leaves it
 * queued if its key is free, and the relay reloads the set.
 */
import type postgres from 'postgres';
import type { Lease, QueuedEvent } from './queue.ts';

/** Error code of a change set aside only because one of its keys is parked. */
export const KEY_PARKED = 'KEY_PARKED';

export interface DeadLetterEntry {
  id: string;
  tableOid: string;
  schemaName: string;
  tableName: string;
  topic: string;
  externalId: string | null;
  payload: string | null;
  errorCode: string;
  reason: string;
  attempts: number;
  firstFailedAt: string;
  parked: boolean;
  /** Every key the change's events carry. */
  keys: Array<string | null>;
  follower: boolean;
}

function parkedKey(tableOid: string, key: string | null): string {
  return key === null ? `${tableOid}\u0000null` : `${tableOid}\u0000=${key}`;
}

export class ParkedKeys {
  private readonly keys = new Set<string>();

  replace(rows: Array<{ tableOid: string; key: string | null }>): void {
    this.keys.clear();
    for (const row of rows) this.add(row.tableOid, row.key);
  }

  add(tableOid: string, key: string | null): void {
    this.keys.add(parkedKey(tableOid, key));
  }

  /**
   * Changes to set aside because a key of theirs is parked, in id order: a follower that
   * changes its key parks the new key too, for the changes after it.
   */
  followers(events: QueuedEvent[]): Set<string> {
    const ids = new Set<string>();
    if (this.keys.size === 0) return ids;
    for (const [i, e] of events.entries()) {
      if (!ids.has(e.id) && this.has(e)) {
        ids.add(e.id);
        for (const other of events.slice(Math.max(0, i - 1), i + 2)) {
          if (other.id === e.id) this.add(other.tableOid, other.externalId);
        }
      }
    }
    return ids;
  }

  has(event: QueuedEvent): boolean {
    return this.keys.size > 0 && this.keys.has(parkedKey(event.tableOid, event.externalId));
  }
}

export class DeadLetterStore {
  constructor(private readonly sql: postgres.Sql) {}

  /** Every parked (table, key). */
  async parkedKeys(): Promise<Array<{ tableOid: string; key: string | null }>> {
    return this.sql<Array<{ tableOid: string; key: string | null }>>`
      select distinct d.table_oid::int8::text as table_oid, k.key
      from pg2kafka.dead_letters d, unnest(d.keys) as k(key)
      where d.parked`;
  }

  /** Moves changes from the queue to dead letters (lease-fenced); returns the ids moved. */
  async move(entries: DeadLetterEntry[], lease: Lease): Promise<Set<string>> {
    const rows = await this.sql<Array<{ id: string }>>`
      select id::text as id from pg2kafka.move_to_dead_letters(
        ${JSON.stringify(entries.map(toSqlEntry))}::text::jsonb, ${lease.holder}, ${lease.epoch}::int8) as m(id)`;
    return new Set(rows.map((r) => r.id));
  }
}

function toSqlEntry(e: DeadLetterEntry): Record<string, unknown> {
  return {
    id: e.id,
    table_oid: e.tableOid,
    schema_name: e.schemaName,
    table_name: e.tableName,
    topic: e.topic,
    external_id: e.externalId,
    payload: e.payload,
    error_code: e.errorCode,
    reason: e.reason,
    attempts: e.attempts,
    first_failed_at: e.firstFailedAt,
    parked: e.parked,
    keys: e.keys,
    follower: e.follower,
  };
}
