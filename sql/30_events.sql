-- Events: what a captured change means, derived when it is read rather than when it is
-- written (the writer paid only for the raw row images, see sql/10_capture_triggers.sql).
--
-- pg2kafka.outbound_event_queue keeps the original pg2kafka's name and columns (uuid,
-- external_id, table_name, statement, data, created_at, processed), so queries written
-- for it keep working; its rows live in pg2kafka.captured_changes. It is the reference
-- for what an event means. The relay builds the same events from the raw rows itself
-- (src/relay/events.ts: 10x cheaper per event than reading this view), and a test
-- (test/relay/relay.test.ts) ships every kind of event and compares each message with
-- this view: change both together.
--   SNAPSHOT, INSERT   data = the full row
--   UPDATE             data = only the columns whose value changed (the full new row
--                      for a table set up in full-row mode)
--   DELETE             data = {} (the full old row in full-row mode)
--   TRUNCATE           data = {}, external_id NULL
-- An UPDATE that changed the external id becomes two events with the same id: part 0, a
-- DELETE of the old key, and part 1, an INSERT of the full row under the new key, so
-- each key's history stays on its own partition. Order events by (id, part).
-- A table set up with tombstones also gets, after each DELETE, a message of the same key
-- with a null value (src/relay/events.ts, part 2): a Kafka message, not an event, so not
-- a row here. Columns and rows left out by a table's payload settings never reach the
-- queue (sql/10_capture_triggers.sql), so they are not here either.
--
-- external_id is the key column's JSON value as text (->>: strings unquoted), printed with
-- the settings pinned by the triggers: strings and numbers exactly, timestamps as ISO 8601
-- in UTC. For a key of several columns (a composite primary key) it is the JSON array of
-- their values in the key's column order, joined by "," with no space: each value's JSON
-- text exactly as the row's JSON has it (the triggers' to_json), e.g. ["eu",42]
-- (composite_key()).
-- uuid is a name-based (version 3, RFC 4122) uuid of the install's event_namespace and
-- "<id>" (or "<id>:old-key" for a DELETE half): stable across re-reads and re-sends,
-- so consumers can drop duplicates, and unique across reinstalls.

-- RFC 4122 version 3 uuid of `name` in `namespace`: md5(namespace bytes || name bytes),
-- with the version and variant bits set. No SET clause and every name qualified: these
-- helpers run for every row read through the view (changed_columns also for the relay's
-- UPDATEs), and a SET clause costs a settings
-- save/restore per call and keeps PostgreSQL from inlining them.
CREATE OR REPLACE FUNCTION pg2kafka.uuid_v3_from_md5(h text)
RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  -- overlay(... PLACING ...) is SQL-standard syntax that always means pg_catalog.overlay.
  SELECT overlay(
           overlay(h PLACING '3' FROM 13)
           PLACING pg_catalog.substr('89ab', (('x' OPERATOR(pg_catalog.||) pg_catalog.substr(h, 17, 1))::bit(4)::int OPERATOR(pg_catalog.&) 3) OPERATOR(pg_catalog.+) 1, 1)
           FROM 17)::uuid
$$;

CREATE OR REPLACE FUNCTION pg2kafka.name_uuid(namespace uuid, name text)
RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT pg2kafka.uuid_v3_from_md5(
    pg_catalog.md5(pg_catalog.uuid_send(namespace) OPERATOR(pg_catalog.||) pg_catalog.convert_to(name, 'UTF8')))
$$;

-- The top-level keys of `new_row` whose values print differently from `old_row`.
-- Compared as text, like the trigger's byte-wise WHEN: jsonb equality would call
-- 1.5 and 1.50 equal and drop a change the trigger saw.
CREATE OR REPLACE FUNCTION pg2kafka.changed_columns(old_row jsonb, new_row jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT coalesce(pg_catalog.jsonb_object_agg(n.key, n.value), '{}'::jsonb)
  FROM pg_catalog.jsonb_each(new_row) AS n
  WHERE (old_row OPERATOR(pg_catalog.->) n.key)::text IS DISTINCT FROM n.value::text
$$;

-- The external id of a key of several columns: '["eu",42]'; NULL for a NULL row. Each
-- element is the value's text in `r` as it is (json, not jsonb: 1e+20 stays 1e+20). A
-- missing column (dropped) gives null in its place. Only such tables call it: a key of one
-- column is a plain ->> that PostgreSQL evaluates inline.
CREATE OR REPLACE FUNCTION pg2kafka.composite_key(r json, key_columns text[])
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT '[' OPERATOR(pg_catalog.||)
         pg_catalog.string_agg(coalesce((r OPERATOR(pg_catalog.->) u.name)::text, 'null'), ',' ORDER BY u.position)
         OPERATOR(pg_catalog.||) ']'
  FROM pg_catalog.unnest(key_columns) WITH ORDINALITY AS u(name, position)
  WHERE r IS NOT NULL
$$;

CREATE OR REPLACE VIEW pg2kafka.outbound_event_queue AS
SELECT
  c.id,
  pg2kafka.name_uuid(s.namespace, c.id::text || e.name_suffix) AS uuid,
  e.external_id,
  coalesce(cl.relname::text, t.table_name) AS table_name,
  e.statement,
  e.data,
  c.created_at,
  false AS processed,
  coalesce(ns.nspname::text, t.schema_name) AS schema_name,
  c.table_oid,
  e.part
FROM pg2kafka.captured_changes AS c
JOIN pg2kafka.tracked_tables AS t ON t.table_oid = c.table_oid
LEFT JOIN pg_catalog.pg_class AS cl ON cl.oid = c.table_oid
LEFT JOIN pg_catalog.pg_namespace AS ns ON ns.oid = cl.relnamespace
CROSS JOIN (
  SELECT value::uuid AS namespace FROM pg2kafka.settings WHERE name = 'event_namespace'
) AS s
CROSS JOIN LATERAL (
  SELECT c.old_row::jsonb AS old_row, c.new_row::jsonb AS new_row
) AS r
CROSS JOIN LATERAL (
  SELECT CASE WHEN cardinality(t.key_columns) = 1 THEN r.old_row ->> t.key_columns[1]
              ELSE pg2kafka.composite_key(c.old_row, t.key_columns) END AS old_key,
         CASE WHEN cardinality(t.key_columns) = 1 THEN r.new_row ->> t.key_columns[1]
              ELSE pg2kafka.composite_key(c.new_row, t.key_columns) END AS new_key
) AS k
CROSS JOIN LATERAL (
  SELECT 0 AS part, ':old-key' AS name_suffix, k.old_key AS external_id, 'DELETE' AS statement,
         CASE WHEN t.full_row THEN r.old_row ELSE '{}'::jsonb END AS data
  WHERE c.statement = 'UPDATE' AND k.old_key IS DISTINCT FROM k.new_key
  UNION ALL
  SELECT 1, '',
         CASE c.statement WHEN 'DELETE' THEN k.old_key WHEN 'TRUNCATE' THEN NULL ELSE k.new_key END,
         CASE WHEN c.statement = 'UPDATE' AND k.old_key IS DISTINCT FROM k.new_key THEN 'INSERT'
              ELSE c.statement END,
         CASE
           WHEN c.statement IN ('SNAPSHOT', 'INSERT') THEN r.new_row
           WHEN c.statement = 'UPDATE' AND (t.full_row OR k.old_key IS DISTINCT FROM k.new_key) THEN r.new_row
           WHEN c.statement = 'UPDATE' THEN pg2kafka.changed_columns(r.old_row, r.new_row)
           WHEN c.statement = 'DELETE' AND t.full_row THEN r.old_row
           ELSE '{}'::jsonb
         END
) AS e;

COMMENT ON VIEW pg2kafka.outbound_event_queue IS
  'Queued events in the original pg2kafka''s columns; rows live in pg2kafka.captured_changes and are deleted once shipped. Order by (id, part).';
