-- Up Migration
--
-- Online snapshots: the rows a table had when it was set up are copied in chunks, each
-- one short transaction, instead of in setup's own transaction under a lock that stops
-- writers for the whole copy. One row per table whose copy is pending, running or done
-- (sql/20_setup.sql and sql/25_snapshots.sql say how a chunk keeps per-key order).
--
-- after_key: the upper bound of the last chunk copied, as the key column's text (NULL:
-- nothing copied yet). A chunk copies the keys above it, up to a bound taken before
-- reading, and records exactly that bound in the same transaction: a crash resumes at
-- the next key, and no range is skipped or copied twice.
CREATE TABLE pg2kafka.snapshots (
  table_oid oid PRIMARY KEY,
  -- The column walked in order: the external id column, unique and NOT NULL.
  key_column text NOT NULL,
  -- Only rows matching this condition are copied (pg2kafka.resnapshot); NULL: all.
  condition text,
  after_key text,
  rows_done bigint NOT NULL DEFAULT 0,
  chunks_done bigint NOT NULL DEFAULT 0,
  -- pg_class.reltuples when it was started (an estimate); NULL before the first ANALYZE.
  rows_estimated bigint,
  started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  -- 'done' or 'cancelled' once finished.
  outcome text CHECK (outcome IN ('done', 'cancelled'))
);

-- The version of the capture triggers a table got (pg2kafka.capture_triggers_version()
-- when setup or migrate installed them); NULL for tables set up before it was recorded.
-- migrate reinstalls the triggers of every captured table whose version is not current.
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN triggers_version int;
