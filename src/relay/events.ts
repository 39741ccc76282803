/**
 * From a captured change (raw row images, as the triggers stored them) to the events
 * that ship: the same meaning as the `pg2kafka.outbound_event_queue` view
 * (sql/30_events.sql), computed here so that PostgreSQL does no per-event JSON work
 * beyond what only it can do (a key's text, an UPDATE's changed columns):
 *
 *   SNAPSHOT, INSERT   data = the full row (the trigger's JSON text, passed through)
 *   UPDATE             data = the changed columns (the full new row in full-row mode)
 *   DELETE             data = {} (the full old row in full-row mode)
 *   TRUNCATE           data = {}, external_id null
 *   UPDATE of the key  part 0: DELETE of the old key; part 1: INSERT of the new row
 *
 * Row data stays text from the database to Kafka: never parsed, so big integers and
 * exact numerics keep every digit. The event uuid is the view's: RFC 4122 version 3 of
 * the install's namespace and "<id>" (or "<id>:old-key" for the DELETE half).
 */
import { v3 as nameUuid } from 'uuid';

/** One captured change as the relay's fetch reads it (see queue.ts). */
export interface CapturedChange {
  id: string;
  tableOid: string;
  schemaName: string;
  tableName: string;
  statement: 'SNAPSHOT' | 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE';
  fullRow: boolean;
  newRow: string | null;
  oldRow: string | null;
  newKey: string | null;
  oldKey: string | null;
  /** An UPDATE's changed columns as JSON text; null when not needed. */
  changedColumns: string | null;
  /** created_at in epoch microseconds, as a decimal string. */
  createdAtUs: string;
  /** The install's event namespace (a uuid). */
  namespace: string;
}

export interface QueuedEvent {
  /** Raw change id; both parts of a key change share it. */
  id: string;
  part: number;
  tableOid: string;
  schemaName: string;
  tableName: string;
  externalId: string | null;
  statement: string;
  uuid: string;
  /** created_at in epoch milliseconds, as Kafka wants timestamps. */
  timestampMs: string;
  /** The message value: the original pg2kafka's JSON, row data passed through as text. */
  value: string;
}

/** created_at as the original printed it: ISO 8601, microseconds, UTC ("…T16:14:36.709116Z"). */
function isoMicros(micros: bigint): string {
  const millis = micros / 1000n;
  const fraction = (((micros % 1_000_000n) + 1_000_000n) % 1_000_000n).toString().padStart(6, '0');
  return `${new Date(Number(millis)).toISOString().slice(0, 19)}.${fraction}Z`;
}

export function eventsOf(change: CapturedChange): QueuedEvent[] {
  const { statement, fullRow, newRow, oldRow, newKey, oldKey } = change;
  const micros = BigInt(change.createdAtUs);
  const createdAt = isoMicros(micros);
  const timestampMs = (
    micros / 1000n -
    (micros < 0n && micros % 1000n !== 0n ? 1n : 0n)
  ).toString();
  const event = (
    part: number,
    eventStatement: string,
    externalId: string | null,
    data: string | null,
  ): QueuedEvent => {
    const uuid = nameUuid(part === 0 ? `${change.id}:old-key` : change.id, change.namespace);
    return {
      id: change.id,
      part,
      tableOid: change.tableOid,
      schemaName: change.schemaName,
      tableName: change.tableName,
      externalId,
      statement: eventStatement,
      uuid,
      timestampMs,
      value: `{"uuid":"${uuid}","external_id":${externalId === null ? 'null' : JSON.stringify(externalId)},"statement":"${eventStatement}","data":${data ?? '{}'},"created_at":"${createdAt}"}`,
    };
  };
  switch (statement) {
    case 'SNAPSHOT':
    case 'INSERT':
      return [event(1, statement, newKey, newRow)];
    case 'DELETE':
      return [event(1, statement, oldKey, fullRow ? oldRow : null)];
    case 'TRUNCATE':
      return [event(1, statement, null, null)];
    case 'UPDATE':
      if (oldKey !== newKey) {
        return [
          event(0, 'DELETE', oldKey, fullRow ? oldRow : null),
          event(1, 'INSERT', newKey, newRow),
        ];
      }
      return [event(1, statement, newKey, fullRow ? newRow : change.changedColumns)];
  }
}
