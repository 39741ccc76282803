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
import { parse as parseUuid, v3 as nameUuid } from 'uuid';

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
  /** The table's key columns, as a JSON array of their names. */
  keyColumns: string;
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
  /**
   * Key columns its row image does not have (renamed or dropped since setup): such an
   * event has no key, and must not ship. Absent when the key is there (even if NULL).
   */
  keyMissing?: string[];
}

/**
 * The key columns a row image lacks. Only asked when a key came out NULL (or, for a key
 * of several columns, holds a null), which is rare: a nullable key column's NULL, or a
 * column gone. So the row is parsed only then.
 */
function missingKeyColumns(row: string | null, keyColumns: string): string[] {
  if (row === null) return [];
  const image = JSON.parse(row) as Record<string, unknown>;
  return (JSON.parse(keyColumns) as string[]).filter((column) => !Object.hasOwn(image, column));
}

/**
 * Turns captured changes into events. Keeps two small caches, because a batch's events
 * share them: the namespace's bytes and the ISO text of the current second.
 */
export class EventBuilder {
  private namespace = { text: '', bytes: new Uint8Array(16) };
  private second = { epoch: NaN, iso: '' };

  /** created_at as the original printed it: ISO 8601, microseconds, UTC ("…T16:14:36.709116Z"). */
  private isoMicros(micros: number): string {
    const epochSecond = Math.floor(micros / 1_000_000);
    if (epochSecond !== this.second.epoch) {
      this.second = {
        epoch: epochSecond,
        iso: new Date(epochSecond * 1000).toISOString().slice(0, 19),
      };
    }
    const fraction = String(micros - epochSecond * 1_000_000).padStart(6, '0');
    return `${this.second.iso}.${fraction}Z`;
  }

  private namespaceBytes(text: string): Uint8Array {
    if (text !== this.namespace.text) this.namespace = { text, bytes: parseUuid(text) };
    return this.namespace.bytes;
  }

  eventsOf(change: CapturedChange): QueuedEvent[] {
    const { statement, fullRow, newRow, oldRow, newKey, oldKey } = change;
    // Epoch microseconds stay exact in a double until the year 2255.
    const micros = Number(change.createdAtUs);
    const createdAt = this.isoMicros(micros);
    const timestampMs = String(Math.floor(micros / 1000));
    const namespace = this.namespaceBytes(change.namespace);
    const event = (
      part: number,
      eventStatement: string,
      externalId: string | null,
      data: string | null,
    ): QueuedEvent => {
      const uuid = nameUuid(part === 0 ? `${change.id}:old-key` : change.id, namespace);
      const missing =
        (externalId === null || externalId.includes('null')) && statement !== 'TRUNCATE'
          ? missingKeyColumns(
              part === 0 || eventStatement === 'DELETE' ? oldRow : newRow,
              change.keyColumns,
            )
          : [];
      return {
        ...(missing.length > 0 ? { keyMissing: missing } : {}),
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
}
