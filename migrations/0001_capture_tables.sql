-- Up Migration
--
-- pg2kafka's tables. Versioned migrations never change once released; the functions,
-- triggers and views that evolve live in sql/ and are re-applied by every migrate
-- (see src/capture/migrate.ts for the rule).

CREATE SCHEMA IF NOT EXISTS pg2kafka;
REVOKE ALL ON SCHEMA pg2kafka FROM PUBLIC;

-- Install-time facts. event_namespace seeds the deterministic event uuids: a new install
-- (after DROP SCHEMA pg2kafka CASCADE) gets a new one, so reused ids never collide.
CREATE TABLE pg2kafka.settings (
  name text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO pg2kafka.settings (name, value)
SELECT 'event_namespace',
       -- random, shaped as a version 4 uuid (gen_random_uuid() needs PostgreSQL 13)
       overlay(overlay(md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text)
                       placing '4' from 13) placing '8' from 17)::uuid::text;

-- One row per table ever set up, kept after teardown so that events still queued for it
-- can be shipped. Current schema and table names are read from pg_class by oid, so a
-- renamed table keeps working; the names here are the fallback once it is dropped.
CREATE TABLE pg2kafka.tracked_tables (
  table_oid oid PRIMARY KEY,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  external_id_column text NOT NULL,
  full_row boolean NOT NULL DEFAULT false,
  capturing boolean NOT NULL DEFAULT true,
  snapshot_rows bigint,
  set_up_at timestamptz NOT NULL DEFAULT now(),
  torn_down_at timestamptz
);

-- The outbox. Writers' triggers append raw row images here, in the writer's own
-- transaction; the outbound_event_queue view (sql/) turns them into events; the relay
-- deletes rows once Kafka acknowledged them.
--
-- id: bigint identity with CACHE 1, so that for one key (whose writers serialize on the
-- row lock) id order is commit order. It is NOT commit order across keys: never read
-- with a "WHERE id > last shipped" cursor.
-- No foreign key to tracked_tables: it would cost every writer an index probe and a
-- KEY SHARE row lock on one shared row.
CREATE TABLE pg2kafka.captured_changes (
  id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
  table_oid oid NOT NULL,
  statement text NOT NULL,
  -- json, not jsonb: the writer only prints the row; parsing it into jsonb is left to
  -- the reader (measured: a fifth to a third less trigger time per row).
  new_row json,
  old_row json,
  created_at timestamptz NOT NULL DEFAULT now()
) WITH (
  -- A queue with constant insert/delete churn: vacuum by row count, not by a fraction of
  -- a table size that swings between zero and millions, and without cost-based pauses.
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 10000,
  autovacuum_vacuum_cost_delay = 0,
  autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 10000
);
