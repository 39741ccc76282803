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
 *   a table with tombstones: after each DELETE (of either kind) part 2, a TOMBSTONE: the
 *                      same key with a null value, for compacted topics (none for a
 *                      NULL key, which a compacted topic refuses)
 *
 * Row data stays text from the database to Kafka: never parsed, so big integers and
 * exact numerics keep every digit. The event uuid is the view's: RFC 4122 version 3 of
 * the install's namespace and "<id>" (or "<id>:old-key" for the DELETE half).
 */
import { hash } from 'node:crypto';
import { parse as parseUuid } from 'uuid';
import type { DebeziumEvent, DebeziumWriter, MessageFormat } from './debezium.ts';

/** One captured change as the relay's fetch reads it (see queue.ts). */
export interface CapturedChange {
  id: string;
  tableOid: string;
  schemaName: string;
  tableName: string;
  statement: 'SNAPSHOT' | 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE';
  fullRow: boolean;
  /** The table sends a tombstone after each DELETE. */
  tombstones: boolean;
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
  /** The table's message format, or the relay's MESSAGE_FORMAT when it has none. */
  messageFormat: MessageFormat;
  /** The writer's transaction id (null for changes queued before it was captured). */
  txId: string | null;
  /** The database name (Debezium's source.db). */
  database: string;
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
  /**
   * The message value: the original pg2kafka's JSON (or Debezium's, see debezium.ts), row
   * data passed through as text; null for a tombstone.
   */
  value: string | null;
  /** The message key when it is not the external id (Debezium's key struct). */
  key?: string | null;
  /**
   * Key columns its row image does not have (renamed or dropped since setup): such an
   * event has no key, and must not ship. Absent when the key is there (even if NULL).
   */
  keyMissing?: string[];
}

/** The variant nibble of RFC 4122 (10xx) for each hex digit of the hash there. */
const VARIANT_DIGITS = '89ab89ab89ab89ab';
/**
 * RFC 4122 version 3 (MD5) uuids of names in one namespace: the same as uuid's v3, at a
 * third of its cost (one hash call on a reused buffer, hex formatted once); the relay
 * makes one per event.
 */
class NameUuids {
  /** The namespace's 16 bytes, then room for a name (a change id, ":old-key" added). */
  private scratch = Buffer.alloc(16 + 32);
  private namespace = '';

  of(namespace: string, name: string): string {
    const length = Buffer.byteLength(name);
    if (namespace !== this.namespace || 16 + length > this.scratch.length) {
      this.scratch = Buffer.alloc(16 + Math.max(32, length));
      Buffer.from(parseUuid(namespace)).copy(this.scratch, 0);
      this.namespace = namespace;
    }
    this.scratch.write(name, 16);
    const hex = hash('md5', this.scratch.subarray(0, 16 + length), 'hex');
    const variant = VARIANT_DIGITS[parseInt(hex.charAt(16), 16)] ?? '8';
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-3${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20)}`;
  }
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
  private readonly uuids = new NameUuids();
  private second = { epoch: NaN, iso: '' };

  /** `debezium` writes the tables in a Debezium format (their column types loaded). */
  constructor(private readonly debezium: DebeziumWriter) {}

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

  /** Appends the events of `change` to `out` (one, or two for a change of its key). */
  eventsOf(change: CapturedChange, out: QueuedEvent[]): void {
    const { statement, fullRow, newRow, oldRow, newKey, oldKey } = change;
    // Epoch microseconds stay exact in a double until the year 2255.
    const micros = Number(change.createdAtUs);
    const at = {
      createdAt: this.isoMicros(micros),
      timestampMs: String(Math.floor(micros / 1000)),
    };
    const image = (op: DebeziumEvent['op'], before: string | null, after: string | null) => ({
      op,
      before,
      after,
      keyImage: op === 't' ? null : (after ?? before),
    });
    switch (statement) {
      case 'SNAPSHOT':
      case 'INSERT':
        out.push(
          this.event(
            change,
            at,
            1,
            statement,
            newKey,
            newRow,
            image(statement === 'SNAPSHOT' ? 'r' : 'c', null, newRow),
          ),
        );
        return;
      case 'DELETE':
        out.push(
          this.event(
            change,
            at,
            1,
            statement,
            oldKey,
            fullRow ? oldRow : null,
            image('d', oldRow, null),
          ),
        );
        this.tombstone(change, at, oldKey, oldRow, out);
        return;
      case 'TRUNCATE':
        out.push(this.event(change, at, 1, statement, null, null, image('t', null, null)));
        return;
      case 'UPDATE':
        if (oldKey !== newKey) {
          out.push(
            this.event(
              change,
              at,
              0,
              'DELETE',
              oldKey,
              fullRow ? oldRow : null,
              image('d', oldRow, null),
            ),
            this.event(change, at, 1, 'INSERT', newKey, newRow, image('c', null, newRow)),
          );
          this.tombstone(change, at, oldKey, oldRow, out);
          return;
        }
        out.push(
          this.event(
            change,
            at,
            1,
            statement,
            newKey,
            fullRow ? newRow : change.changedColumns,
            image('u', oldRow, newRow),
          ),
        );
    }
  }

  /** The tombstone after a DELETE of `key`, for a table that sends them. */
  private tombstone(
    change: CapturedChange,
    at: { createdAt: string; timestampMs: string },
    key: string | null,
    oldRow: string | null,
    out: QueuedEvent[],
  ): void {
    if (!change.tombstones || key === null) return;
    const event = this.event(change, at, 2, 'TOMBSTONE', key, null, {
      op: 'tombstone',
      before: oldRow,
      after: null,
      keyImage: oldRow,
    });
    // Its key is the DELETE's: a missing key column holds that one back already.
    delete event.keyMissing;
    out.push(event);
  }

  private event(
    change: CapturedChange,
    at: { createdAt: string; timestampMs: string },
    part: number,
    statement: string,
    externalId: string | null,
    data: string | null,
    debezium: DebeziumEvent,
  ): QueuedEvent {
    const uuid = this.uuids.of(
      change.namespace,
      part === 0 ? `${change.id}:old-key` : part === 2 ? `${change.id}:tombstone` : change.id,
    );
    const event: QueuedEvent = {
      id: change.id,
      part,
      tableOid: change.tableOid,
      schemaName: change.schemaName,
      tableName: change.tableName,
      externalId,
      statement,
      uuid,
      timestampMs: at.timestampMs,
      value: null,
    };
    if (change.messageFormat === 'pg2kafka') {
      // A tombstone's value is null; it is keyed by the external id.
      if (statement !== 'TOMBSTONE')
        event.value = `{"uuid":"${uuid}","external_id":${externalId === null ? 'null' : JSON.stringify(externalId)},"statement":"${statement}","data":${data ?? '{}'},"created_at":"${at.createdAt}"}`;
    } else {
      const written = this.debezium.write(
        change.messageFormat,
        {
          tableOid: change.tableOid,
          schemaName: change.schemaName,
          tableName: change.tableName,
          database: change.database,
          keyColumns: this.keyColumnsOf(change.keyColumns),
          createdAtUs: change.createdAtUs,
          txId: change.txId,
        },
        debezium,
        statement === 'SNAPSHOT',
      );
      event.key = written.key;
      event.value = written.value;
    }
    if ((externalId === null || externalId.includes('null')) && statement !== 'TRUNCATE') {
      const image = part === 0 || statement === 'DELETE' ? change.oldRow : change.newRow;
      const missing = missingKeyColumns(image, change.keyColumns);
      if (missing.length > 0) event.keyMissing = missing;
    }
    return event;
  }

  /** The key columns' JSON array, parsed once per distinct text (a batch shares a few). */
  private keyColumnsOf(json: string): string[] {
    let columns = this.keyColumns.get(json);
    if (columns === undefined) {
      columns = JSON.parse(json) as string[];
      if (this.keyColumns.size > 1000) this.keyColumns.clear();
      this.keyColumns.set(json, columns);
    }
    return columns;
  }

  private readonly keyColumns = new Map<string, string[]>();
}
