/**
 * The relay's SQL: read a batch of queued events, delete the ones Kafka acknowledged,
 * and hold the leadership lease. Every statement is one short autocommit transaction:
 * no transaction stays open while Kafka is waited on (a long one would also stop vacuum
 * from cleaning the churning queue).
 *
 * Delivery reasoning:
 * - Read what is visible, lowest ids first, and delete exactly the ids that were acked.
 *   Never a "WHERE id > last shipped" cursor: ids are assigned before commit, so a lower
 *   id can become visible after a higher one, and a cursor would skip it forever. For one
 *   key this cannot happen (its writers serialize on the row lock, and the id is taken
 *   after the lock), so per-key order is id order.
 * - A batch is chosen by raw change ids, so both halves of a key-changing UPDATE (same
 *   id, parts 0 and 1) travel and are deleted together.
 * - Fetch and delete require a valid lease (holder and epoch, not expired on the database
 *   clock): a relay that lost leadership can neither read a batch nor delete one.
 * - Tables whose topic cannot be used are skipped by oid, so their events wait in the
 *   queue while other tables keep flowing.
 * - The fetch starts at the queue floor (floor.ts): every id below it is final and gone,
 *   so it does not walk the index entries of deleted rows that a long transaction
 *   elsewhere keeps from being vacuumed. The floor is read in the same statement as the
 *   rows, so a retry that put rows back and lowered it is seen whole or not at all.
 */
import type postgres from 'postgres';
import { ColumnCatalog, DebeziumWriter, type MessageFormat } from './debezium.ts';
import { EventBuilder, type CapturedChange, type QueuedEvent } from './events.ts';
import { QueueFloor } from './floor.ts';

export type { QueuedEvent };

export interface Lease {
  holder: string;
  epoch: string;
}

export interface EventFormat {
  /** The format of tables that name none (MESSAGE_FORMAT). */
  messageFormat: MessageFormat;
  /** Debezium's source.name and record names' first part (TOPIC_PREFIX). */
  topicPrefix: string;
}

export class EventQueue {
  private readonly events: EventBuilder;
  private readonly catalog: ColumnCatalog;
  private readonly messageFormat: MessageFormat;
  /** The floor the fetch starts at, and how the relay raises it. */
  readonly floor: QueueFloor;

  constructor(
    private readonly sql: postgres.Sql,
    format: EventFormat = { messageFormat: 'pg2kafka', topicPrefix: 'pg2kafka' },
  ) {
    this.floor = new QueueFloor(sql);
    this.catalog = new ColumnCatalog(sql);
    this.messageFormat = format.messageFormat;
    this.events = new EventBuilder(new DebeziumWriter(this.catalog, format.topicPrefix));
  }

  /**
   * The next batch of visible events in shipping order (id, part). With a lease, returns
   * nothing unless the lease is still valid. Reading the next batch while the previous
   * one is sent keeps per-key order only if the previous one then leaves the queue whole:
   * for one key, a visible id means every lower id of that key was visible before, so it
   * was in the previous (lowest-ids) batch. The relay drops the read-ahead batch whenever
   * part of the previous one stays queued. `afterId` is only for DRY_RUN, which deletes
   * nothing and must not print an event twice.
   */
  async fetch(options: {
    limit: number;
    /** Most bytes of row images: rows stop being added once reached (the first always is). */
    maxBytes: number;
    lease: Lease | undefined;
    skipTables: string[];
    /** Changes of the batch still being sent: the next batch is read while it is. */
    excludeIds?: string[];
    afterId?: string;
  }): Promise<{ events: QueuedEvent[]; full: boolean }> {
    const { sql } = this;
    const { limit, maxBytes, lease, skipTables, excludeIds = [], afterId } = options;
    // The key's text and an UPDATE's changed columns are the only per-event JSON work
    // left to PostgreSQL; the rest (uuid, message value) is built by eventsOf().
    const changes = await sql<CapturedChange[]>`
      select c.id::text as id, c.table_oid::int8::text as table_oid,
             coalesce(ns.nspname::text, t.schema_name) as schema_name,
             coalesce(cl.relname::text, t.table_name) as table_name,
             c.statement, t.full_row, t.tombstones, to_json(t.key_columns)::text as key_columns,
             c.new_row::text as new_row, c.old_row::text as old_row,
             k.new_key, k.old_key,
             case when c.statement = 'UPDATE' and not t.full_row and k.new_key is not distinct from k.old_key
                  then pg2kafka.changed_columns(c.old_row::jsonb, c.new_row::jsonb)::text end as changed_columns,
             (extract(epoch from c.created_at) * 1000000)::int8::text as created_at_us,
             (select s.value::uuid::text from pg2kafka.settings s where s.name = 'event_namespace') as namespace,
             coalesce(t.message_format, ${this.messageFormat}) as message_format,
             c.tx_id::text as tx_id, current_database()::text as database
      from (
        -- The byte budget: a running sum of the row images' sizes in id order, streamed
        -- under the limit. octet_length reads a TOASTed value's size from its header,
        -- without decompressing it.
        select c.*, sum(c.bytes) over (order by c.id rows unbounded preceding) - c.bytes as bytes_before
        from (
          select c.*, coalesce(octet_length(c.new_row::text), 0) + coalesce(octet_length(c.old_row::text), 0) as bytes
          from pg2kafka.captured_changes c
          where c.table_oid <> all(${skipTables}::oid[])
            -- A hashed subplan: one lookup per row. "<> all(array)" compares each row with
            -- the whole array under a generic plan (a read-ahead excludes a batch of ids).
            and c.id not in (select unnest(${excludeIds}::int8[]))
            -- An index range scan from the floor (an InitPlan parameter), not from the
            -- lowest entry: what lies below it is gone.
            and c.id >= (select l.queue_floor from pg2kafka.relay_lease l)
            ${afterId === undefined ? sql`` : sql`and c.id > ${afterId}::int8`}
        ) c
        order by c.id
        limit ${limit}
      ) c
      join pg2kafka.tracked_tables t on t.table_oid = c.table_oid
      -- The key's text as the view prints it (jsonb ->>): only the key goes through jsonb,
      -- so arrays, floats and json keys print the same as in the view. A key of several
      -- columns is the JSON array of their values (pg2kafka.composite_key).
      cross join lateral (
        select case when cardinality(t.key_columns) = 1
                    then (c.new_row -> t.key_columns[1])::jsonb #>> '{}'
                    else pg2kafka.composite_key(c.new_row, t.key_columns) end as new_key,
               case when cardinality(t.key_columns) = 1
                    then (c.old_row -> t.key_columns[1])::jsonb #>> '{}'
                    else pg2kafka.composite_key(c.old_row, t.key_columns) end as old_key
      ) k
      left join pg_catalog.pg_class cl on cl.oid = c.table_oid
      left join pg_catalog.pg_namespace ns on ns.oid = cl.relnamespace
      where c.bytes_before < ${maxBytes}
        ${lease === undefined ? sql`` : sql`and ${leaseHeld(sql, lease)}`}
      order by c.id`;
    const bytes = changes.reduce(
      (sum, c) => sum + (c.newRow?.length ?? 0) + (c.oldRow?.length ?? 0),
      0,
    );
    // A Debezium format needs the tables' column types, read with each batch (one query).
    const typed = changes.filter((c) => c.messageFormat !== 'pg2kafka');
    if (typed.length > 0) await this.catalog.ensure(typed.map((c) => c.tableOid));

    const events: QueuedEvent[] = [];
    for (const change of changes) this.events.eventsOf(change, events);
    return { events, full: changes.length >= limit || bytes >= maxBytes };
  }

  /** Deletes acked changes; returns how many went. 0 for a non-empty list: the lease is lost. */
  async delete(ids: string[], lease: Lease): Promise<number> {
    const { sql } = this;
    const result = await sql`
      delete from pg2kafka.captured_changes
      where id = any(${ids}::int8[]) and ${leaseHeld(sql, lease)}`;
    return result.count;
  }

  /**
   * Deletes the changes of the last committed Kafka transaction (exactly-once recovery):
   * some or all may be gone already. Undefined: the lease is not held.
   */
  async deleteDelivered(ids: string[], lease: Lease): Promise<number | undefined> {
    const { sql } = this;
    const [row] = await sql<{ held: boolean; deleted: number }[]>`
      with gone as (
        delete from pg2kafka.captured_changes
        where id = any(${ids}::int8[]) and ${leaseHeld(sql, lease)}
        returning 1)
      select ${leaseHeld(sql, lease)} as held, (select count(*)::int from gone) as deleted`;
    return row?.held ? row.deleted : undefined;
  }

  /** Takes the lease if it is free or expired; returns it, or undefined if another relay holds it. */
  async acquireLease(holder: string, ttlMs: number): Promise<Lease | undefined> {
    const [row] = await this.sql<{ epoch: string }[]>`
      update pg2kafka.relay_lease
      set holder = ${holder}, epoch = epoch + 1, acquired_at = clock_timestamp(),
          renewed_at = clock_timestamp(), expires_at = clock_timestamp() + ${ttlMs} * interval '1 ms'
      where expires_at < clock_timestamp()
      returning epoch::text as epoch`;
    return row && { holder, epoch: row.epoch };
  }

  /** Extends a held lease; false when it was lost (expired or taken). */
  async renewLease(lease: Lease, ttlMs: number): Promise<boolean> {
    const rows = await this.sql`
      update pg2kafka.relay_lease
      set renewed_at = clock_timestamp(), expires_at = clock_timestamp() + ${ttlMs} * interval '1 ms'
      where holder = ${lease.holder} and epoch = ${lease.epoch}::int8 and expires_at > clock_timestamp()`;
    return rows.count === 1;
  }

  /** Gives the lease up at once, so a standby takes over without waiting for expiry. */
  async releaseLease(lease: Lease): Promise<void> {
    await this.sql`
      update pg2kafka.relay_lease set expires_at = '-infinity'
      where holder = ${lease.holder} and epoch = ${lease.epoch}::int8`;
  }

  /** The database name, the third part of topic names. */
  async databaseName(): Promise<string> {
    const [row] = await this.sql<{ name: string }[]>`select current_database() as name`;
    return row?.name ?? '';
  }
}

function leaseHeld(sql: postgres.Sql, lease: Lease): postgres.PendingQuery<postgres.Row[]> {
  return sql`exists (
    select 1 from pg2kafka.relay_lease l
    where l.holder = ${lease.holder} and l.epoch = ${lease.epoch}::int8 and l.expires_at > clock_timestamp())`;
}
