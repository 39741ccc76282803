/** Helpers for tests of the capture SQL: migrate the file's database, read the queue. */
import { migrate } from '../../src/capture/migrate.ts';
import type { Sql, TestDatabase } from '../helpers.ts';

/** Migrates the file's database; call it from a `before` hook. */
export async function migrated(db: TestDatabase): Promise<void> {
  await db.ready;
  await migrate({ databaseUrl: db.url });
}

/** The triggers setup() installs on a table, in name order (sql/20_setup.sql). */
export const CAPTURE_TRIGGERS = [
  '_pg2kafka_delete',
  '_pg2kafka_insert',
  '_pg2kafka_truncate',
  '_pg2kafka_update',
  '_pg2kafka_wake',
];

/** The user triggers on `table`, in name order. */
export async function triggersOn(sql: Sql, table: string): Promise<string[]> {
  const rows = await sql<{ name: string }[]>`
    select tgname as name from pg_trigger
    where tgrelid = ${table}::regclass and not tgisinternal order by 1`;
  return rows.map((r) => r.name);
}

/** How `table` is tracked (pg2kafka.tracked_tables), or undefined. */
export async function trackedAs(
  sql: Sql,
  table: string,
): Promise<{ column: string; fullRow: boolean; capturing: boolean } | undefined> {
  const [row] = await sql<{ column: string; full_row: boolean; capturing: boolean }[]>`
    select external_id_column as column, full_row, capturing from pg2kafka.tracked_tables
    where table_oid = ${table}::regclass`;
  return row && { column: row.column, fullRow: row.full_row, capturing: row.capturing };
}

export interface QueuedEvent {
  id: string;
  part: number;
  uuid: string;
  external_id: string | null;
  schema_name: string;
  table_name: string;
  statement: string;
  data: Record<string, unknown>;
  /** `data` as PostgreSQL prints it, for exact comparisons of numbers. */
  data_text: string;
  created_at: Date;
}

/** The queued events of one table (or all), in shipping order. */
export async function queuedEvents(sql: Sql, table?: string): Promise<QueuedEvent[]> {
  const rows = await sql<QueuedEvent[]>`
    select id::text, part, uuid::text, external_id, schema_name, table_name, statement, data,
           data::text as data_text, created_at
    from pg2kafka.outbound_event_queue
    where ${table === undefined ? sql`true` : sql`table_oid = ${table}::regclass`}
    order by outbound_event_queue.id, part`;
  return rows.map((r) => ({ ...r }));
}

/** The (statement, external_id, data) triples of the queue: what most tests assert. */
export async function queuedChanges(
  sql: Sql,
  table?: string,
): Promise<Array<[string, string | null, Record<string, unknown>]>> {
  return (await queuedEvents(sql, table)).map((e) => [e.statement, e.external_id, e.data]);
}

export async function clearQueue(sql: Sql): Promise<void> {
  await sql`delete from pg2kafka.captured_changes`;
}

/** Collects the NOTICE/WARNING messages a statement raises. */
export function collectNotices(): {
  notices: Array<{ severity: string; message: string; hint?: string }>;
  onnotice: (notice: { severity?: string; message?: string; hint?: string }) => void;
} {
  const notices: Array<{ severity: string; message: string; hint?: string }> = [];
  return {
    notices,
    onnotice: (notice) => {
      notices.push({
        severity: notice.severity ?? '',
        message: notice.message ?? '',
        ...(notice.hint === undefined ? {} : { hint: notice.hint }),
      });
    },
  };
}

/** An event as the version oracle reads it: from the queue or from a consumer. */
export interface KeyedEvent {
  key: string | null;
  statement: string;
  data: Record<string, unknown>;
}

/**
 * The version oracle of online snapshots, for a table (k int primary key, v int) whose
 * rows start at v = 1 and whose writers only raise v by one or insert new keys at v = 1.
 * Per key, in shipping order: a SNAPSHOT carries exactly the version of the changes
 * already sent (never older, never newer); an UPDATE raises it by one (one for a row not
 * copied yet comes first, carrying only what changed); an INSERT starts at 1. Returns
 * every violation (empty when the history is right), the SNAPSHOT count and the last
 * version per key.
 */
export function snapshotViolations(events: readonly KeyedEvent[]): {
  violations: string[];
  snapshots: Map<string, number>;
  state: Map<string, number>;
} {
  const state = new Map<string, number>();
  const snapshots = new Map<string, number>();
  const violations: string[] = [];
  for (const e of events) {
    const key = e.key ?? '(null)';
    const v = Number(e.data.v);
    const known = state.get(key);
    const at = `key ${key} ${e.statement} v=${v}`;
    if (e.statement === 'SNAPSHOT') {
      snapshots.set(key, (snapshots.get(key) ?? 0) + 1);
      if (known !== undefined && v !== known) {
        violations.push(`${at}: ${v < known ? 'older' : 'newer'} than v=${known} already sent`);
      }
    } else if (e.statement === 'INSERT') {
      if (known !== undefined) violations.push(`${at}: inserted after v=${known}`);
      else if (v !== 1) violations.push(`${at}: a new key starts at v=1`);
    } else if (e.statement === 'UPDATE') {
      if (known !== undefined && v !== known + 1) {
        violations.push(`${at}: out of order after v=${known}`);
      }
    } else {
      violations.push(`${at}: unexpected statement`);
    }
    state.set(key, v);
  }
  return { violations, snapshots, state };
}
