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
--
-- A partition attached after setup brings rows no trigger saw. Its copy is one more walk
-- of the table's snapshot, over that partition's keys (queue_attached_partitions says
-- which keys, and why no row is copied twice); the walks of a snapshot run one after the
-- other, and it is done when the last one is.

-- The number of rows a chunk copies unless asked otherwise, and the most setup() copies
-- in its own transaction (under the lock it takes to install the triggers): a table that
-- fits in one chunk makes its writers wait no longer than a chunk would.
CREATE OR REPLACE FUNCTION pg2kafka.snapshot_chunk_rows() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 5000 $$;

-- The leaf partitions of `tbl` (those that hold rows), in oid order; NULL when `tbl` is
-- not a partitioned table.
CREATE OR REPLACE FUNCTION pg2kafka.leaf_partitions(tbl regclass)
RETURNS oid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN c.relkind = 'p' THEN
    ARRAY(SELECT p.relid::oid FROM pg_partition_tree(tbl) p WHERE p.isleaf ORDER BY p.relid::oid) END
  FROM pg_class c WHERE c.oid = tbl
$$;
REVOKE ALL ON FUNCTION pg2kafka.leaf_partitions(regclass) FROM PUBLIC;

-- The key columns of `tbl` as a row in SQL, for the walks' dynamic queries: of the row
-- `t` ("t.a, t.b"; as text, "t.a::text, t.b::text"), or of the text array parameter
-- `param`, cast back to the columns' types ("$1[1]::integer, $1[2]::text"). NULL when
-- one of the columns is gone.
DROP FUNCTION IF EXISTS pg2kafka.key_row(regclass, text[], text);
CREATE OR REPLACE FUNCTION pg2kafka.key_row(tbl regclass, key_columns text[], param text DEFAULT NULL,
                                            as_text boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN count(a.attnum) = cardinality(key_columns) THEN
    string_agg(CASE WHEN param IS NOT NULL
                      THEN format('%s[%s]::%s', param, k.position, format_type(a.atttypid, a.atttypmod))
                    WHEN as_text THEN format('t.%I::text', k.name)
                    ELSE format('t.%I', k.name) END,
               ', ' ORDER BY k.position) END
  FROM unnest(key_columns) WITH ORDINALITY AS k(name, position)
  LEFT JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped
$$;
REVOKE ALL ON FUNCTION pg2kafka.key_row(regclass, text[], text, boolean) FROM PUBLIC;

-- The rows of `tbl` a walk over `source` reads, as a condition on `tbl t`: all of them
-- for `tbl` itself; for one of its partitions, that partition's rows, read through `tbl`
-- (privileges are those on `tbl`, which a partition attached later may not have granted)
-- with the partition's bounds as well, so that the planner scans that partition alone.
CREATE OR REPLACE FUNCTION pg2kafka.walk_scope(tbl regclass, source regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN source = tbl THEN 'true'
    ELSE format('t.tableoid = %s AND %s', source::oid, coalesce(pg_get_partition_constraintdef(source), 'true')) END
$$;
REVOKE ALL ON FUNCTION pg2kafka.walk_scope(regclass, regclass) FROM PUBLIC;

-- Registers the online snapshot of `tbl`, walking `key_columns` (together, in row order),
-- from its first key, over the whole table or only over its partition `source`; a
-- snapshot of it already registered starts over. setup() and resnapshot() call it, and
-- queue_attached_partitions(). A snapshot of every row of the table covers every
-- partition it has now.
DROP FUNCTION IF EXISTS pg2kafka.register_snapshot(regclass, text, text);
DROP FUNCTION IF EXISTS pg2kafka.register_snapshot(regclass, text[], text);
CREATE OR REPLACE FUNCTION pg2kafka.register_snapshot(tbl regclass, key_columns text[], condition text,
                                                      source regclass DEFAULT NULL)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO pg2kafka.snapshots AS p (table_oid, key_columns, condition, rows_estimated, source_oid)
  -- pg_class.reltuples: an estimate, -1 (or 0) before the first ANALYZE.
  SELECT tbl, key_columns, condition, CASE WHEN c.reltuples > 0 THEN c.reltuples::bigint END, source
  FROM pg_class c WHERE c.oid = coalesce(source, tbl)
  ON CONFLICT (table_oid) DO UPDATE SET
    key_columns = excluded.key_columns, condition = excluded.condition, after_keys = NULL,
    source_oid = excluded.source_oid, until_keys = NULL, queued_walks = '[]',
    rows_done = 0, chunks_done = 0, rows_estimated = excluded.rows_estimated,
    started_at = now(), updated_at = now(), finished_at = NULL, outcome = NULL;
  UPDATE pg2kafka.tracked_tables t SET partitions = pg2kafka.leaf_partitions(tbl)
  WHERE t.table_oid = tbl AND condition IS NULL AND source IS NULL;
$$;
REVOKE ALL ON FUNCTION pg2kafka.register_snapshot(regclass, text[], text, regclass) FROM PUBLIC;

-- Ends `tbl`'s running snapshot where it is, as cancelled; false when none was running.
CREATE OR REPLACE FUNCTION pg2kafka.end_snapshot(tbl regclass)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  WITH ended AS (
    UPDATE pg2kafka.snapshots p
    SET finished_at = clock_timestamp(), updated_at = clock_timestamp(), outcome = 'cancelled',
        queued_walks = '[]'
    WHERE p.table_oid = tbl AND p.finished_at IS NULL
    RETURNING 1)
  SELECT count(*) > 0 FROM ended
$$;
REVOKE ALL ON FUNCTION pg2kafka.end_snapshot(regclass) FROM PUBLIC;

-- Takes SHARE UPDATE EXCLUSIVE on the partitioned table `tbl` itself (ONLY: not on its
-- partitions, where it would cancel autovacuum), which ATTACH and DETACH PARTITION take
-- too: while it is held the set of partitions cannot change. Writers are not blocked.
-- False when it cannot be had within 1 s (an ATTACH waiting for its partition, say).
CREATE OR REPLACE FUNCTION pg2kafka.lock_partitions(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
  EXECUTE format('LOCK TABLE ONLY %s IN SHARE UPDATE EXCLUSIVE MODE', tbl);
  RETURN true;
EXCEPTION WHEN lock_not_available THEN
  RETURN false;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.lock_partitions(regclass) FROM PUBLIC;

-- Partitions attached to the captured, partitioned `tbl` since setup (leaves not in
-- tracked_tables.partitions): ATTACH gave them the capture triggers, but the rows they
-- brought were never inserted through them. Queues a walk over each one that has rows,
-- and returns how many. The caller holds lock_partitions(tbl), so no chunk of `tbl` is in
-- flight and the set of partitions is fixed:
--   - no snapshot running: one starts, walking the partition;
--   - the walk over the whole table is running, past after_keys: from its next chunk on it
--     reads the new partition too, so only the keys up to after_keys are left to copy (a
--     walk of the partition until_keys = after_keys); none when it has copied nothing yet;
--   - another walk running (a partition's, or the table's with a condition): the whole
--     partition, after it.
-- An empty partition needs no copy: every row it gets from now on has its INSERT event.
CREATE OR REPLACE FUNCTION pg2kafka.queue_attached_partitions(tbl regclass)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_variable
DECLARE
  registered pg2kafka.tracked_tables;
  leaves oid[];
  part oid;
  has_rows boolean;
  estimate bigint;
  walk jsonb;
  s pg2kafka.snapshots;
  running boolean;
  whole_walk_at text[];
  queued int := 0;
BEGIN
  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl AND t.capturing;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  leaves := pg2kafka.leaf_partitions(tbl);
  IF leaves IS NULL OR leaves = registered.partitions THEN
    RETURN 0;
  END IF;
  SELECT * INTO s FROM pg2kafka.snapshots p WHERE p.table_oid = tbl FOR UPDATE;
  running := FOUND AND s.finished_at IS NULL;
  -- Where the walk of every row of the whole table is, if that is what runs.
  whole_walk_at := CASE WHEN running AND s.source_oid IS NULL AND s.condition IS NULL THEN s.after_keys END;
  -- NULL: not known which rows were copied (cannot happen since migration 0007): no guess.
  FOR part IN SELECT l FROM unnest(leaves) l WHERE registered.partitions IS NOT NULL AND l <> ALL (registered.partitions) ORDER BY l LOOP
    BEGIN
      -- Rows the running walk of the whole table has not passed yet are left to it.
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s t WHERE %s AND %s)', tbl, pg2kafka.walk_scope(tbl, part::regclass),
                     CASE WHEN whole_walk_at IS NULL THEN 'true'
                          ELSE format('(%s) <= (%s)', pg2kafka.key_row(tbl, registered.key_columns),
                                      pg2kafka.key_row(tbl, registered.key_columns, '$1')) END)
        INTO has_rows USING whole_walk_at;
    EXCEPTION WHEN insufficient_privilege THEN
      PERFORM pg2kafka.raise_snapshot_denied(tbl, SQLERRM);
    END;
    CONTINUE WHEN NOT has_rows;
    SELECT CASE WHEN c.reltuples > 0 THEN c.reltuples::bigint END INTO estimate FROM pg_class c WHERE c.oid = part;
    IF NOT running THEN
      PERFORM pg2kafka.register_snapshot(tbl, registered.key_columns, NULL, part::regclass);
      SELECT * INTO s FROM pg2kafka.snapshots p WHERE p.table_oid = tbl;
      running := true;
    ELSE
      IF s.source_oid IS NULL AND s.condition IS NULL THEN
        CONTINUE WHEN s.after_keys IS NULL;
        walk := jsonb_build_object('source', part::bigint, 'until', to_jsonb(s.after_keys));
      ELSE
        walk := jsonb_build_object('source', part::bigint, 'until', NULL);
      END IF;
      UPDATE pg2kafka.snapshots p
      SET queued_walks = p.queued_walks || jsonb_build_array(walk),
          rows_estimated = nullif(coalesce(p.rows_estimated, 0) + coalesce(estimate, 0), 0),
          updated_at = clock_timestamp()
      WHERE p.table_oid = tbl
      RETURNING * INTO s;
    END IF;
    queued := queued + 1;
  END LOOP;
  -- Detached partitions leave the list too: attached again, their rows are copied again.
  UPDATE pg2kafka.tracked_tables t SET partitions = leaves WHERE t.table_oid = tbl;
  IF queued > 0 THEN
    -- An idle relay sleeps until notified (sql/15_wake.sql); its snapshot runner looks
    -- every few seconds anyway.
    RAISE NOTICE 'pg2kafka: % partition(s) attached to % since setup: their rows are queued to be copied online', queued, tbl;
  END IF;
  RETURN queued;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.queue_attached_partitions(regclass) FROM PUBLIC;

-- For the snapshot runners (the relay, pg2kafka snapshot, run_snapshots): queues the rows
-- of partitions attached to any captured table since setup. Returns how many partitions.
-- A table whose partitions cannot be locked now (an ATTACH in progress) waits for the
-- next call.
CREATE OR REPLACE FUNCTION pg2kafka.snapshot_attached_partitions()
RETURNS int
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  tbl oid;
  queued int := 0;
BEGIN
  FOR tbl IN
    SELECT t.table_oid FROM pg2kafka.tracked_tables t
    WHERE t.capturing AND t.partitions IS NOT NULL
      AND pg2kafka.leaf_partitions(t.table_oid) IS DISTINCT FROM t.partitions
    ORDER BY t.table_oid
  LOOP
    IF pg2kafka.lock_partitions(tbl) THEN
      queued := queued + pg2kafka.queue_attached_partitions(tbl);
    END IF;
  END LOOP;
  RETURN queued;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.snapshot_attached_partitions() FROM PUBLIC;

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
  capturing boolean;
  source regclass;
  -- The key columns as SQL (key_row): t.a, t.b / $1[1]::integer, $1[2]::text
  key_list text;
  key_after text;
  key_upto text;
  missing text;
  bound text[];
  upto text[];
  next_walk jsonb;
  walk_ended boolean;
  copied bigint := 0;
BEGIN
  IF tbl IS NULL OR chunk_rows IS NULL OR chunk_rows < 1 THEN
    RAISE EXCEPTION 'pg2kafka.snapshot_chunk(table [, chunk_rows]) needs a table and a positive number of rows'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  capturing := EXISTS (SELECT 1 FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl AND t.capturing);
  -- The table lock before the progress row's, in the order teardown takes them. For a
  -- partitioned table, one that keeps its partitions as they are for the chunk; then
  -- partitions attached since setup are queued first.
  IF capturing AND pg2kafka.leaf_partitions(tbl) IS NOT NULL THEN
    IF NOT pg2kafka.lock_partitions(tbl) THEN
      RETURN QUERY SELECT 0::bigint, false;
      RETURN;
    END IF;
    PERFORM pg2kafka.queue_attached_partitions(tbl);
  ELSE
    EXECUTE format('LOCK TABLE ONLY %s IN ACCESS SHARE MODE', tbl);
  END IF;
  SELECT * INTO s FROM pg2kafka.snapshots p WHERE p.table_oid = tbl AND p.finished_at IS NULL FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;
  -- Torn down (teardown cancels its snapshot; this catches one registered meanwhile).
  IF NOT capturing THEN
    PERFORM pg2kafka.end_snapshot(tbl);
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;
  key_list := pg2kafka.key_row(tbl, s.key_columns);
  key_after := pg2kafka.key_row(tbl, s.key_columns, '$1');
  key_upto := pg2kafka.key_row(tbl, s.key_columns, '$2');
  IF key_list IS NULL THEN
    SELECT string_agg(format('"%s"', k.name), ', ' ORDER BY k.position) INTO missing
    FROM unnest(s.key_columns) WITH ORDINALITY AS k(name, position)
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped);
    PERFORM pg2kafka.end_snapshot(tbl);
    RAISE WARNING 'pg2kafka: the snapshot of % stopped after % row(s): its key column % is gone', tbl, s.rows_done, missing
      USING HINT = format('Set the table up again: SELECT pg2kafka.teardown(%L); SELECT pg2kafka.setup(%L, <key column>);', tbl::text, tbl::text);
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;

  -- What this walk reads: the table, or a partition attached since setup (and still one:
  -- a partition detached meanwhile is no longer the table's, and its walk ends here).
  source := coalesce(s.source_oid, tbl::oid)::regclass;
  walk_ended := source <> tbl AND NOT source::oid = ANY (pg2kafka.leaf_partitions(tbl));
  IF NOT walk_ended THEN
    -- The bound: the chunk_rows-th key above the last one, read without locks, over all
    -- rows (a condition filters what is copied, not how the keys are walked), never past
    -- until_keys. Several key columns compare as a row, (a, b) > (x, y), which the
    -- primary key's index serves.
    EXECUTE format(
      'SELECT ARRAY[%1$s] FROM %2$s t WHERE (%6$s) AND ($1::text[] IS NULL OR (%3$s) > (%4$s)) AND ($2::text[] IS NULL OR (%3$s) <= (%5$s))
       ORDER BY %3$s OFFSET $3 LIMIT 1',
      pg2kafka.key_row(tbl, s.key_columns, as_text => true), tbl, key_list, key_after, key_upto,
      pg2kafka.walk_scope(tbl, source))
    INTO bound USING s.after_keys, s.until_keys, chunk_rows - 1;
    upto := coalesce(bound, s.until_keys);

    BEGIN
      EXECUTE format(
        'INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row)
         SELECT %1$L, %2$L, to_json(r) FROM (
           SELECT * FROM %3$s t
           WHERE (%8$s) AND ($1::text[] IS NULL OR (%4$s) > (%5$s)) AND ($2::text[] IS NULL OR (%4$s) <= (%6$s)) AND (%7$s)
           ORDER BY %4$s
           FOR SHARE) r',
        tbl::oid, 'SNAPSHOT', tbl, key_list, key_after, key_upto, coalesce(s.condition, 'true'),
        pg2kafka.walk_scope(tbl, source))
      USING s.after_keys, upto;
    EXCEPTION WHEN insufficient_privilege THEN
      PERFORM pg2kafka.raise_snapshot_denied(tbl, SQLERRM);
    END;
    GET DIAGNOSTICS copied = ROW_COUNT;
    walk_ended := bound IS NULL;
  END IF;

  -- A walk that ended hands over to the next one queued, if any.
  next_walk := CASE WHEN walk_ended THEN s.queued_walks -> 0 END;
  UPDATE pg2kafka.snapshots p
  SET after_keys = CASE WHEN next_walk IS NOT NULL THEN NULL ELSE coalesce(bound, p.after_keys) END,
      source_oid = CASE WHEN next_walk IS NOT NULL THEN (next_walk ->> 'source')::oid ELSE p.source_oid END,
      until_keys = CASE WHEN next_walk IS NULL THEN p.until_keys
                        WHEN jsonb_typeof(next_walk -> 'until') = 'array'
                          THEN ARRAY(SELECT u.value FROM jsonb_array_elements_text(next_walk -> 'until') WITH ORDINALITY AS u(value, position) ORDER BY u.position)
                   END,
      queued_walks = CASE WHEN next_walk IS NOT NULL THEN p.queued_walks - 0 ELSE p.queued_walks END,
      rows_done = p.rows_done + copied,
      chunks_done = p.chunks_done + 1,
      updated_at = clock_timestamp(),
      finished_at = CASE WHEN walk_ended AND next_walk IS NULL THEN clock_timestamp() END,
      outcome = CASE WHEN walk_ended AND next_walk IS NULL THEN 'done' END
  WHERE p.table_oid = tbl;
  IF walk_ended AND next_walk IS NULL THEN
    UPDATE pg2kafka.tracked_tables t SET snapshot_rows = s.rows_done + copied WHERE t.table_oid = tbl;
  END IF;
  -- An idle relay sleeps until notified (sql/15_wake.sql): wake it, as a writer would.
  IF copied > 0 AND NOT pg_try_advisory_xact_lock_shared(pg2kafka.wake_lock_key()) THEN
    PERFORM pg_notify('pg2kafka_events', '');
  END IF;
  RETURN QUERY SELECT copied, walk_ended AND next_walk IS NULL;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.snapshot_chunk(regclass, int) FROM PUBLIC;

-- Registers a snapshot of `tbl` (which must be set up), to be copied online; with a
-- condition, only the rows matching it. A snapshot of it still running starts over when
-- the new one copies every row; one of some rows cannot replace it (the rest of the
-- running copy would never be made).
CREATE OR REPLACE FUNCTION pg2kafka.resnapshot(tbl regclass, condition text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
  registered pg2kafka.tracked_tables;
  running pg2kafka.snapshots;
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
  SELECT * INTO running FROM pg2kafka.snapshots p WHERE p.table_oid = tbl AND p.finished_at IS NULL FOR UPDATE;
  IF FOUND AND condition IS NOT NULL THEN
    RAISE EXCEPTION 'a snapshot of % is running (% row(s) copied): a snapshot of some rows cannot replace it',
      (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl),
      running.rows_done
      USING ERRCODE = 'object_in_use',
            HINT = format('Let it finish (pg2kafka status shows it), or cancel it first: SELECT pg2kafka.cancel_snapshot(%L);', tbl::text);
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
  -- Rows of partitions attached since setup are copied too.
  PERFORM pg2kafka.snapshot_attached_partitions();
  COMMIT;
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
