-- Up Migration
--
-- Dead letters: events Kafka refused for good because of the record itself (too large
-- for the topic, an invalid record such as a null key on a compacted topic), set aside
-- by the relay in the same transaction that removes their change from the queue, so
-- nothing is lost and nothing else waits. With DEAD_LETTER_POLICY=park-key (the
-- default) a dead letter parks its key: the key's later changes follow it here until an
-- operator retries or discards them (pg2kafka dead-letters), so per-key order holds.
--
-- A row keeps the raw change as it was queued (id, table, statement, row images,
-- created_at): retry puts it back under its original id, ahead of the key's later events.
CREATE TABLE pg2kafka.dead_letters (
  id bigint PRIMARY KEY,
  table_oid oid NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  statement text NOT NULL,
  new_row json,
  old_row json,
  created_at timestamptz NOT NULL,
  -- The refused event: where it went, its key, its message value, why Kafka refused it.
  topic text NOT NULL,
  external_id text,
  payload text,
  error_code text NOT NULL,
  reason text NOT NULL,
  -- Sends of this change that Kafka refused before it was set aside.
  attempts integer NOT NULL,
  -- Whether it parks its keys (every key its events carry: two for a key change; NULL
  -- for TRUNCATE or a NULL external id).
  parked boolean NOT NULL,
  keys text[] NOT NULL,
  first_failed_at timestamptz NOT NULL,
  dead_lettered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_table_oid ON pg2kafka.dead_letters (table_oid);
