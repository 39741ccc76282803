-- Capture: the trigger functions that run inside every writer's transaction.
--
-- Cost is the design constraint here: every expression below is paid per written row,
-- by the application, at its commit rate. So the triggers store raw row images only:
--   (registered table oid, statement, to_json(NEW) and/or to_json(OLD)), and the
--   identity id and now() defaults of the queue table. json rather than jsonb: printing
--   a row is cheaper than building jsonb from it, and the reader converts.
-- Everything else is derived when the relay reads (sql/30_events.sql): the external id
-- (a key lookup in the jsonb), the UPDATE diff, the key-change split, the schema and
-- table names, the event uuid. Unchanged UPDATEs never reach plpgsql: the trigger's
-- WHEN (OLD.* *<> NEW.*) is evaluated in C. It compares stored bytes, not values through
-- each type's equality: that works for types without one (json, xml, point) and sees
-- changes that equality hides (numeric 1.5 -> 1.50, a citext case change).
--
-- One function per operation, so no function branches on TG_OP. TG_ARGV[0] is the oid of
-- the table that was set up: for a partitioned table, row triggers are cloned onto every
-- partition (also ones attached later) and TG_RELID would name the partition.
--
-- Why row triggers even for INSERT and DELETE: a statement trigger reading the
-- transition table measured +60% for 10k-row INSERT ... SELECT (ratio 0.35 -> 0.6) and
-- +5% for single-row writers, but it fires after every row trigger of the statement, so
-- a user's AFTER ROW trigger that updates the new row would queue its UPDATE before our
-- INSERT (with the row as first inserted), and a statement on an inheritance parent
-- fires only the parent's statement triggers (a child set up on its own would miss
-- those rows). Row triggers keep per-key order for every writer.
--
-- Wake-ups: there is deliberately no NOTIFY here. NOTIFY takes a cluster-wide lock from
-- commit until after the WAL flush, so any NOTIFY in a writer's transaction (even one per
-- statement) serializes all committing writers: measured 19k -> 4.5k inserts/s at 16
-- writers. The relay polls adaptively instead (at once again while batches come back
-- full, backing off when idle); a NOTIFY that writers pay only while the relay is idle
-- belongs with the relay's loop, where its cost can be measured end to end.
--
-- Security: SECURITY DEFINER, owned by the role that ran `pg2kafka migrate`, so writers
-- need no privilege on schema pg2kafka and cannot write the queue themselves. The
-- search_path is pinned (a function named like a built-in in a schema on the writer's
-- path is never called), and so are the settings that change how values print as JSON:
-- the same row gives the same event text (and external id) whatever the writer's session
-- set for TimeZone, DateStyle, IntervalStyle, extra_float_digits or bytea_output.

CREATE OR REPLACE FUNCTION pg2kafka.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $$
BEGIN
  INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row)
  VALUES (TG_ARGV[0]::oid, 'INSERT', to_json(NEW));
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pg2kafka.capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $$
BEGIN
  INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row, old_row)
  VALUES (TG_ARGV[0]::oid, 'UPDATE', to_json(NEW), to_json(OLD));
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pg2kafka.capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $$
BEGIN
  INSERT INTO pg2kafka.captured_changes (table_oid, statement, old_row)
  VALUES (TG_ARGV[0]::oid, 'DELETE', to_json(OLD));
  RETURN NULL;
END
$$;

-- Statement level: one event per TRUNCATE, with no key.
CREATE OR REPLACE FUNCTION pg2kafka.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO pg2kafka.captured_changes (table_oid, statement)
  VALUES (TG_ARGV[0]::oid, 'TRUNCATE');
  RETURN NULL;
END
$$;

-- Tables set up with a column list (include or exclude, sql/20_setup.sql): the same
-- three captures, storing only the columns events may carry, so a column left out never
-- reaches the queue. TG_ARGV[1] is 'include' or 'exclude', TG_ARGV[2] the column names and
-- TG_ARGV[3] the key columns, as array literals. Each value keeps its JSON text as to_json
-- printed it (json_each, not jsonb, which would rewrite 1e+20 and reorder a json value's
-- keys); the row prints in to_json's compact form, in column order. An UPDATE whose kept
-- columns print the same (only left-out columns changed) stores nothing. Only these
-- tables pay for it.
-- Names are what the lists hold, and a rename is not followed: a row that lacks one of
-- its excluded columns (renamed, or dropped) keeps only its key columns, so a renamed
-- secret is never sent under its new name; pg2kafka status names the column, and alter()
-- with the new names sets it right.
DROP FUNCTION IF EXISTS pg2kafka.project_row(json, text, text[]);
CREATE OR REPLACE FUNCTION pg2kafka.project_row(r json, mode text, columns text[], key_columns text[])
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT ('{' OPERATOR(pg_catalog.||)
          coalesce(CASE
            WHEN mode = 'exclude' AND pg_catalog.count(*) FILTER (WHERE j.key OPERATOR(pg_catalog.=) ANY (columns))
                                      OPERATOR(pg_catalog.<) pg_catalog.cardinality(columns)
            THEN pg_catalog.string_agg(j.entry, ',' ORDER BY j.n) FILTER (WHERE j.key OPERATOR(pg_catalog.=) ANY (key_columns))
            ELSE pg_catalog.string_agg(j.entry, ',' ORDER BY j.n)
                   FILTER (WHERE CASE WHEN mode = 'include' THEN j.key OPERATOR(pg_catalog.=) ANY (columns)
                                      ELSE j.key OPERATOR(pg_catalog.<>) ALL (columns) END)
          END, '')
          OPERATOR(pg_catalog.||) '}')::json
  FROM (
    SELECT e.key, e.n, pg_catalog.to_json(e.key)::text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) e.value::text AS entry
    FROM pg_catalog.json_each(r) WITH ORDINALITY AS e(key, value, n)
  ) AS j
$$;

CREATE OR REPLACE FUNCTION pg2kafka.capture_insert_projected() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $$
BEGIN
  INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row)
  VALUES (TG_ARGV[0]::oid, 'INSERT', pg2kafka.project_row(to_json(NEW), TG_ARGV[1], TG_ARGV[2]::text[], TG_ARGV[3]::text[]));
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pg2kafka.capture_update_projected() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $$
DECLARE
  columns text[] := TG_ARGV[2]::text[];
  key_columns text[] := TG_ARGV[3]::text[];
  new_row json := pg2kafka.project_row(to_json(NEW), TG_ARGV[1], columns, key_columns);
  old_row json := pg2kafka.project_row(to_json(OLD), TG_ARGV[1], columns, key_columns);
BEGIN
  IF new_row::text <> old_row::text THEN
    INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row, old_row)
    VALUES (TG_ARGV[0]::oid, 'UPDATE', new_row, old_row);
  END IF;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pg2kafka.capture_delete_projected() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $$
BEGIN
  INSERT INTO pg2kafka.captured_changes (table_oid, statement, old_row)
  VALUES (TG_ARGV[0]::oid, 'DELETE', pg2kafka.project_row(to_json(OLD), TG_ARGV[1], TG_ARGV[2]::text[], TG_ARGV[3]::text[]));
  RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION pg2kafka.capture_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.capture_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.capture_delete() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.capture_truncate() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.capture_insert_projected() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.capture_update_projected() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.capture_delete_projected() FROM PUBLIC;
