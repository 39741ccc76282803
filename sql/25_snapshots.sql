-- Online snapshots: copying the rows a table already had, in chunks, while its writers go
-- on. setup() (sql/20_setup.sql) installs the capture triggers and registers the copy in
-- pg2kafka.snapshots; each call of snapshot_chunk() then copies the next chunk of keys
-- in the caller's transaction, which should commit at once. Who calls it: the active
-- relay in the background (src/relay/snapshots.ts), `pg2kafka setup` and `pg2kafka
-- snapshot` on the command line, or CALL pg2kafka.run_snapshots() from SQL.
--
-- Why a chunk keeps per-key order (../DESIGN-NOTES §2): the triggers were committed
-- before the first chunk, and a chunk reads its rows with FOR SHARE. A writer of a row in
-- the chunk either committed before the chunk read it (its event was inserted before its
-- commit, so it has a lower id than the SNAPSHOT event, and the SNAPSHOT carries its
-- change), or had not: then it holds the row lock and the chunk waits for it (and reads
-- its committed row), or it waits for the chunk to commit (its event gets a higher id).
-- Not FOR KEY SHARE: a non-key UPDATE would not wait, and could queue its event before a
-- SNAPSHOT that carries the older row. Not unlocked, for the same reason.
--
-- The chunk's upper bound is read first, without locks, and exactly that bound is
-- recorded as progress with the copy, never the largest key the copy returned: a key
-- inserted inside the range meanwhile is copied if it committed before the read, and has
-- its own INSERT event anyway; no range is skipped and none copied twice outside the
-- chunk in flight. The progress row is locked for the chunk, so runners (a relay, a CLI)
-- take turns chunk by chunk.

-- The number of rows a chunk copies unless asked otherwise, and the most setup() copies
-- in its own transaction (under the lock it takes to install the triggers): a table that
-- fits in one chunk makes its writers wait no longer than a chunk would.
CREATE OR REPLACE FUNCTION pg2kafka.snapshot_chunk_rows() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 5000 $$;

-- Registers the online snapshot of `tbl`, walking `key_columns` (together, in row order),
-- from its first key; a snapshot of it already registered starts over. setup() and
-- resnapshot() call it.
DROP FUNCTION IF EXISTS pg2kafka.register_snapshot(regclass, text, text);
CREATE OR REPLACE FUNCTION pg2kafka.register_snapshot(tbl regclass, key_columns text[], condition text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO pg2kafka.snapshots AS p (table_oid, key_columns, condition, rows_estimated)
  -- pg_class.reltuples: an estimate, -1 (or 0) before the first ANALYZE.
  SELECT tbl, key_columns, condition, CASE WHEN c.reltuples > 0 THEN c.reltuples::bigint END
  FROM pg_class c WHERE c.oid = tbl
  ON CONFLICT (table_oid) DO UPDATE SET
    key_columns = excluded.key_columns, condition = excluded.condition, after_keys = NULL,
    rows_done = 0, chunks_done = 0, rows_estimated = excluded.rows_estimated,
    started_at = now(), updated_at = now(), finished_at = NULL, outcome = NULL
$$;
REVOKE ALL ON FUNCTION pg2kafka.register_snapshot(regclass, text[], text) FROM PUBLIC;

-- Ends `tbl`'s running snapshot where it is, as cancelled; false when none was running.
CREATE OR REPLACE FUNCTION pg2kafka.end_snapshot(tbl regclass)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  WITH ended AS (
    UPDATE pg2kafka.snapshots p
    SET finished_at = clock_timestamp(), updated_at = clock_timestamp(), outcome = 'cancelled'
    WHERE p.table_oid = tbl AND p.finished_at IS NULL
    RETURNING 1)
  SELECT count(*) > 0 FROM ended
$$;
REVOKE ALL ON FUNCTION pg2kafka.end_snapshot(regclass) FROM PUBLIC;

-- Copies the next chunk of `tbl`'s pending snapshot; done once nothing is left (also
-- when no snapshot of it is pending). Commit right after it: its rows stay locked FOR
-- SHARE, and its writers wait, until the transaction ends.
CREATE OR REPLACE FUNCTION pg2kafka.snapshot_chunk(tbl regclass, chunk_rows int DEFAULT pg2kafka.snapshot_chunk_rows())
RETURNS TABLE (rows_copied bigint, done boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The rows print exactly as the capture triggers print them.
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
-- Every row or an error, never a copy that row-level security filtered silently.
SET row_security = off
AS $$
#variable_conflict use_variable
DECLARE
  s pg2kafka.snapshots;
  -- The key columns as SQL: t.a, t.b / t.a::text, t.b::text / $1[1]::int, $1[2]::text
  key_list text;
  key_texts text;
  key_after text;
  key_upto text;
  missing text;
  bound text[];
  copied bigint;
BEGIN
  IF tbl IS NULL OR chunk_rows IS NULL OR chunk_rows < 1 THEN
    RAISE EXCEPTION 'pg2kafka.snapshot_chunk(table [, chunk_rows]) needs a table and a positive number of rows'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO s FROM pg2kafka.snapshots p WHERE p.table_oid = tbl AND p.finished_at IS NULL FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;
  -- Torn down (teardown cancels its snapshot; this catches one registered meanwhile).
  IF NOT EXISTS (SELECT 1 FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl AND t.capturing) THEN
    PERFORM pg2kafka.end_snapshot(tbl);
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;
  SELECT string_agg(format('t.%I', k.name), ', ' ORDER BY k.position),
         string_agg(format('t.%I::text', k.name), ', ' ORDER BY k.position),
         string_agg(format('$1[%s]::%s', k.position, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY k.position),
         string_agg(format('$2[%s]::%s', k.position, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY k.position),
         string_agg(format('"%s"', k.name), ', ' ORDER BY k.position) FILTER (WHERE a.attnum IS NULL)
  INTO key_list, key_texts, key_after, key_upto, missing
  FROM unnest(s.key_columns) WITH ORDINALITY AS k(name, position)
  LEFT JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped;
  IF missing IS NOT NULL THEN
    PERFORM pg2kafka.end_snapshot(tbl);
    RAISE WARNING 'pg2kafka: the snapshot of % stopped after % row(s): its key column % is gone', tbl, s.rows_done, missing
      USING HINT = format('Set the table up again: SELECT pg2kafka.teardown(%L); SELECT pg2kafka.setup(%L, <key column>);', tbl::text, tbl::text);
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;

  -- The bound: the chunk_rows-th key above the last one, read without locks, over all
  -- rows (a condition filters what is copied, not how the keys are walked). Several key
  -- columns compare as a row, (a, b) > (x, y), which the primary key's index serves.
  EXECUTE format(
    'SELECT ARRAY[%1$s] FROM %2$s t WHERE $1::text[] IS NULL OR (%3$s) > (%4$s) ORDER BY %3$s OFFSET $2 LIMIT 1',
    key_texts, tbl, key_list, key_after)
  INTO bound USING s.after_keys, chunk_rows - 1;

  BEGIN
    EXECUTE format(
      'INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row)
       SELECT %1$L, %2$L, to_json(r) FROM (
         SELECT * FROM %3$s t
         WHERE ($1::text[] IS NULL OR (%4$s) > (%5$s)) AND ($2::text[] IS NULL OR (%4$s) <= (%6$s)) AND (%7$s)
         ORDER BY %4$s
         FOR SHARE) r',
      tbl::oid, 'SNAPSHOT', tbl, key_list, key_after, key_upto, coalesce(s.condition, 'true'))
    USING s.after_keys, bound;
  EXCEPTION WHEN insufficient_privilege THEN
    PERFORM pg2kafka.raise_snapshot_denied(tbl, SQLERRM);
  END;
  GET DIAGNOSTICS copied = ROW_COUNT;

  UPDATE pg2kafka.snapshots p
  SET after_keys = coalesce(bound, p.after_keys),
      rows_done = p.rows_done + copied,
      chunks_done = p.chunks_done + 1,
      updated_at = clock_timestamp(),
      finished_at = CASE WHEN bound IS NULL THEN clock_timestamp() END,
      outcome = CASE WHEN bound IS NULL THEN 'done' END
  WHERE p.table_oid = tbl;
  IF bound IS NULL THEN
    UPDATE pg2kafka.tracked_tables t SET snapshot_rows = s.rows_done + copied WHERE t.table_oid = tbl;
  END IF;
  -- An idle relay sleeps until notified (sql/15_wake.sql): wake it, as a writer would.
  IF copied > 0 AND NOT pg_try_advisory_xact_lock_shared(pg2kafka.wake_lock_key()) THEN
    PERFORM pg_notify('pg2kafka_events', '');
  END IF;
  RETURN QUERY SELECT copied, bound IS NULL;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.snapshot_chunk(regclass, int) FROM PUBLIC;

-- Registers a snapshot of `tbl` (which must be set up), to be copied online; with a
-- condition, only the rows matching it. A snapshot of it still running starts over.
CREATE OR REPLACE FUNCTION pg2kafka.resnapshot(tbl regclass, condition text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
  registered pg2kafka.tracked_tables;
BEGIN
  IF tbl IS NULL THEN
    RAISE EXCEPTION 'pg2kafka.resnapshot(table [, condition]) needs a table' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  -- It runs as pg2kafka's owner: the caller must be able to read the table itself, and
  -- a condition (SQL run as that owner) is taken only from a member of the owner role.
  IF NOT has_table_privilege(session_user, tbl, 'SELECT') THEN
    RAISE EXCEPTION 'permission denied: % may not read %, so it may not snapshot it', session_user, tbl
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF condition IS NOT NULL AND NOT pg_has_role(session_user, current_user, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied: only the owner of schema pg2kafka (%) may give resnapshot a condition', current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'The condition runs as that role, which can read what the caller may not. Ask its owner, or snapshot the whole table.';
  END IF;
  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl AND t.capturing;
  IF NOT FOUND THEN
    RAISE EXCEPTION '% is not set up', tbl
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = format('Set it up first: SELECT pg2kafka.setup(%L, <key column>);', tbl::text);
  END IF;
  IF cardinality(registered.key_columns) = 1 AND pg2kafka.key_column_problem(tbl, (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = registered.external_id_column AND NOT a.attisdropped)) IS NOT NULL THEN
    RAISE EXCEPTION 'the external id column "%" of % is not a unique NOT NULL column: it cannot be walked in chunks', registered.external_id_column, tbl
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Add a unique index on it, or copy the rows yourself.';
  END IF;
  IF condition IS NOT NULL THEN
    -- A condition that does not compile fails here, not in the middle of the copy.
    BEGIN
      EXECUTE format('SELECT 1 FROM %s t WHERE (%s) LIMIT 0', tbl, condition);
    EXCEPTION WHEN OTHERS THEN
      RAISE EXCEPTION 'the condition % is not a valid condition on %: %', quote_literal(condition), tbl, SQLERRM
        USING ERRCODE = 'invalid_parameter_value';
    END;
  END IF;
  PERFORM pg2kafka.register_snapshot(tbl, registered.key_columns, condition);
  RAISE NOTICE '%', format('pg2kafka: snapshot of %s%s registered; the active relay copies it in chunks',
    tbl, CASE WHEN condition IS NULL THEN '' ELSE ' (rows where ' || condition || ')' END);
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.resnapshot(regclass, text) FROM PUBLIC;

-- Stops `tbl`'s running snapshot where it is; its events already queued stay.
CREATE OR REPLACE FUNCTION pg2kafka.cancel_snapshot(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT pg2kafka.end_snapshot(tbl) THEN
    RAISE WARNING 'pg2kafka: no snapshot of % is running; nothing was changed', tbl;
    RETURN false;
  END IF;
  RAISE NOTICE 'pg2kafka: snapshot of % cancelled', tbl;
  RETURN true;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.cancel_snapshot(regclass) FROM PUBLIC;

-- For SQL users: copies every pending snapshot, one chunk per transaction, oldest first.
-- CALL it outside a transaction block (it commits after each chunk). A procedure cannot
-- be SECURITY DEFINER and commit, so it runs as the caller, who needs EXECUTE on
-- snapshot_chunk (the owner of schema pg2kafka has it).
CREATE OR REPLACE PROCEDURE pg2kafka.run_snapshots(chunk_rows int DEFAULT pg2kafka.snapshot_chunk_rows())
LANGUAGE plpgsql
AS $$
DECLARE
  tbl oid;
  finished boolean;
BEGIN
  LOOP
    SELECT p.table_oid INTO tbl FROM pg2kafka.snapshots p WHERE p.finished_at IS NULL ORDER BY p.started_at, p.table_oid LIMIT 1;
    EXIT WHEN NOT FOUND;
    LOOP
      SELECT c.done INTO finished FROM pg2kafka.snapshot_chunk(tbl::regclass, chunk_rows) c;
      COMMIT;
      EXIT WHEN finished;
    END LOOP;
  END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE pg2kafka.run_snapshots(int) FROM PUBLIC;
