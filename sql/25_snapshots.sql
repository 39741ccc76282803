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
-- of the table's snapshot, over that partition alone (queue_attached_partitions says why
-- no row is copied twice); the walks of a snapshot run one after the other, and it is
-- done when the last one is.

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

-- The capture triggers (_pg2kafka_insert) of the leaf partitions of `tbl`, in oid order:
-- ATTACH PARTITION clones them, so a partition attached since, or detached and attached
-- again, has one that tracked_tables.partition_triggers does not list. NULL when `tbl`
-- is not partitioned.
CREATE OR REPLACE FUNCTION pg2kafka.partition_triggers(tbl regclass)
RETURNS oid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN leaves IS NOT NULL THEN
    ARRAY(SELECT tg.oid FROM pg_trigger tg
          WHERE tg.tgname = '_pg2kafka_insert' AND tg.tgrelid = ANY (leaves) ORDER BY tg.oid) END
  FROM (SELECT pg2kafka.leaf_partitions(tbl) AS leaves) l
$$;
REVOKE ALL ON FUNCTION pg2kafka.partition_triggers(regclass) FROM PUBLIC;

-- The key columns of `tbl` as a row in SQL, for the walks' dynamic queries: of the row
-- `t` ("t.a, t.b"; as text, "t.a::text, t.b::text"), or of the text array parameter
-- `param`, cast back to the columns' types ("$1[1]::integer, $1[2]::text"). NULL when
-- one of the columns is gone.
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

-- The rows of `tbl` a walk reads, as a condition on `tbl t`. The walk of the whole table:
-- every row, or for a partitioned table those of `partitions`, the leaves it had when the
-- walk started. The walk of a partition attached since (`source`): that partition's rows,
-- read through `tbl` (privileges are those on `tbl`, which a partition attached later
-- may not have granted), and within the partition's bounds as well, so that the planner
-- scans that partition alone. Not for a partition key with expressions: the bounds would
-- evaluate them as the owner of pg2kafka (SECURITY DEFINER), so tableoid alone.
CREATE OR REPLACE FUNCTION pg2kafka.walk_scope(tbl regclass, source regclass, partitions oid[])
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE
    WHEN source IS NULL AND partitions IS NULL THEN 'true'
    WHEN source IS NULL THEN format('t.tableoid = ANY (%L::oid[])', partitions)
    WHEN EXISTS (SELECT 1 FROM pg_partition_ancestors(source) a JOIN pg_partitioned_table pt ON pt.partrelid = a.relid
                 WHERE pt.partexprs IS NOT NULL)
      THEN format('t.tableoid = %s', source::oid)
    ELSE format('t.tableoid = %s AND %s', source::oid, coalesce(pg_get_partition_constraintdef(source), 'true'))
  END
$$;
REVOKE ALL ON FUNCTION pg2kafka.walk_scope(regclass, regclass, oid[]) FROM PUBLIC;

-- Registers the online snapshot of `tbl`, walking `key_columns` (together, in row order),
-- from its first key, over the whole table or only over its partition `source`; a
-- snapshot of it already registered starts over. setup() and resnapshot() call it, and
-- queue_attached_partitions(). A snapshot of every row of the table covers every
-- partition it has now.
DROP FUNCTION IF EXISTS pg2kafka.register_snapshot(regclass, text, text);
CREATE OR REPLACE FUNCTION pg2kafka.register_snapshot(tbl regclass, key_columns text[], condition text,
                                                      source regclass DEFAULT NULL)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO pg2kafka.snapshots AS p (table_oid, key_columns, condition, rows_estimated, source_oid, walk_partitions)
  -- pg_class.reltuples: an estimate, -1 (or 0) before the first ANALYZE.
  SELECT tbl, key_columns, condition, CASE WHEN c.reltuples > 0 THEN c.reltuples::bigint END, source,
         CASE WHEN source IS NULL THEN pg2kafka.leaf_partitions(tbl) END
  FROM pg_class c WHERE c.oid = coalesce(source, tbl)
  ON CONFLICT (table_oid) DO UPDATE SET
    key_columns = excluded.key_columns, condition = excluded.condition, after_keys = NULL,
    source_oid = excluded.source_oid, walk_partitions = excluded.walk_partitions, queued_partitions = '{}',
    rows_done = 0, chunks_done = 0, rows_estimated = excluded.rows_estimated,
    started_at = now(), updated_at = now(), finished_at = NULL, outcome = NULL;
  UPDATE pg2kafka.tracked_tables t SET partition_triggers = pg2kafka.partition_triggers(tbl)
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
        queued_partitions = '{}'
    WHERE p.table_oid = tbl AND p.finished_at IS NULL
    RETURNING 1)
  SELECT count(*) > 0 FROM ended
$$;
REVOKE ALL ON FUNCTION pg2kafka.end_snapshot(regclass) FROM PUBLIC;

-- Whoever changes which partitions of `tbl` a snapshot walks (queue_attached_partitions,
-- resnapshot, migrate's trigger refresh) takes this first, so they take turns.
CREATE OR REPLACE FUNCTION pg2kafka.lock_snapshot_walks(tbl regclass)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT pg_advisory_xact_lock(hashtext('pg2kafka.snapshot_walks'), tbl::oid::int4)
$$;
REVOKE ALL ON FUNCTION pg2kafka.lock_snapshot_walks(regclass) FROM PUBLIC;

-- Partitions attached to the captured, partitioned `tbl` since their rows were last
-- copied or queued (their capture trigger is not in tracked_tables.partition_triggers):
-- ATTACH gave them the capture triggers, but the rows they brought were never inserted
-- through them. Queues a walk over each one that has rows; returns how many. Each walk
-- copies the whole partition, and no other walk reads it: the walk of the whole table
-- reads only the partitions the table had when it started (walk_partitions), and one
-- attached again drops out of it and of the queue first. A walk in progress over a
-- partition attached again starts over. An empty partition needs no copy: every row it
-- gets from now on has its INSERT event. Chunks take turns with this on the progress row.
CREATE OR REPLACE FUNCTION pg2kafka.queue_attached_partitions(tbl regclass)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_variable
DECLARE
  registered pg2kafka.tracked_tables;
  current_triggers oid[];
  part oid;
  has_rows boolean;
  s pg2kafka.snapshots;
  running boolean;
  queued int := 0;
BEGIN
  PERFORM pg2kafka.lock_snapshot_walks(tbl);
  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl AND t.capturing;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  current_triggers := pg2kafka.partition_triggers(tbl);
  IF current_triggers IS NULL OR current_triggers = registered.partition_triggers THEN
    RETURN 0;
  END IF;
  SELECT * INTO s FROM pg2kafka.snapshots p WHERE p.table_oid = tbl FOR UPDATE;
  running := FOUND AND s.finished_at IS NULL;
  -- NULL: not known what was copied (a table set up before migration 0007 recorded it is
  -- backfilled by it, so this does not happen): no guess, the list starts from now.
  FOR part IN
    SELECT tg.tgrelid FROM pg_trigger tg
    WHERE registered.partition_triggers IS NOT NULL
      AND tg.oid = ANY (current_triggers) AND tg.oid <> ALL (registered.partition_triggers)
    ORDER BY tg.tgrelid
  LOOP
    IF running THEN
      -- What the walks knew of it is from before it was attached again.
      UPDATE pg2kafka.snapshots p
      SET walk_partitions = array_remove(p.walk_partitions, part),
          queued_partitions = array_remove(p.queued_partitions, part),
          after_keys = CASE WHEN p.source_oid = part THEN NULL ELSE p.after_keys END
      WHERE p.table_oid = tbl
      RETURNING * INTO s;
      IF s.source_oid = part THEN
        queued := queued + 1;
        CONTINUE;
      END IF;
    END IF;
    BEGIN
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s t WHERE %s)', tbl, pg2kafka.walk_scope(tbl, part::regclass, NULL))
        INTO has_rows;
    EXCEPTION WHEN insufficient_privilege THEN
      PERFORM pg2kafka.raise_snapshot_denied(tbl, SQLERRM);
    END;
    CONTINUE WHEN NOT has_rows;
    IF running THEN
      UPDATE pg2kafka.snapshots p
      SET queued_partitions = p.queued_partitions || part,
          rows_estimated = nullif(coalesce(p.rows_estimated, 0)
                                  + coalesce((SELECT c.reltuples::bigint FROM pg_class c WHERE c.oid = part AND c.reltuples > 0), 0), 0),
          updated_at = clock_timestamp()
      WHERE p.table_oid = tbl;
    ELSE
      PERFORM pg2kafka.register_snapshot(tbl, registered.key_columns, NULL, part::regclass);
      running := true;
    END IF;
    queued := queued + 1;
  END LOOP;
  UPDATE pg2kafka.tracked_tables t SET partition_triggers = current_triggers WHERE t.table_oid = tbl;
  IF queued > 0 THEN
    RAISE NOTICE 'pg2kafka: % partition(s) attached to % since setup: their rows are queued to be copied online', queued, tbl;
  END IF;
  RETURN queued;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.queue_attached_partitions(regclass) FROM PUBLIC;

-- For the snapshot runners (the relay, pg2kafka snapshot, run_snapshots): queues the rows
-- of partitions attached to any captured table since setup. Returns how many partitions.
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
    JOIN pg_class c ON c.oid = t.table_oid
    WHERE t.capturing AND t.partition_triggers IS NOT NULL
      AND pg2kafka.partition_triggers(t.table_oid) IS DISTINCT FROM t.partition_triggers
    ORDER BY t.table_oid
  LOOP
    queued := queued + pg2kafka.queue_attached_partitions(tbl);
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
  -- The key columns as SQL (key_row): t.a, t.b / $1[1]::integer, $1[2]::text
  key_list text;
  key_after text;
  key_upto text;
  missing text;
  one_chunk boolean;
  scope text;
  bound text[];
  next_partition oid;
  walk_ended boolean;
  copied bigint := 0;
  registered pg2kafka.tracked_tables;
BEGIN
  IF tbl IS NULL OR chunk_rows IS NULL OR chunk_rows < 1 THEN
    RAISE EXCEPTION 'pg2kafka.snapshot_chunk(table [, chunk_rows]) needs a table and a positive number of rows'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = tbl) THEN
    IF pg2kafka.end_snapshot(tbl) THEN
      RAISE WARNING 'pg2kafka: the snapshot of table % stopped: the table was dropped', tbl::oid;
    END IF;
    RETURN QUERY SELECT 0::bigint, true;
    RETURN;
  END IF;
  -- The table's lock before the progress row's, in the order teardown takes them; what
  -- the registry says is read after it (a setup or teardown that held the table is over).
  EXECUTE format('LOCK TABLE ONLY %s IN ACCESS SHARE MODE', tbl);
  capturing := EXISTS (SELECT 1 FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl AND t.capturing);
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

  -- A walk over a partition detached since is over: its rows are no longer the table's.
  walk_ended := s.source_oid IS NOT NULL AND NOT s.source_oid = ANY (pg2kafka.leaf_partitions(tbl));
  IF NOT walk_ended THEN
    scope := pg2kafka.walk_scope(tbl, s.source_oid::regclass, s.walk_partitions);
    -- A key that is not unique and NOT NULL cannot be walked in chunks (setup copies
    -- such a table under its lock; a partition attached later gets here): the whole walk
    -- in this one chunk.
    one_chunk := cardinality(s.key_columns) = 1 AND pg2kafka.key_column_problem(tbl,
      (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = s.key_columns[1])) IS NOT NULL;
    -- The bound: the chunk_rows-th key above the last one, read without locks, over all
    -- the walk's rows (a condition filters what is copied, not how the keys are walked).
    -- Several key columns compare as a row, (a, b) > (x, y), which the primary key's
    -- index serves.
    IF NOT one_chunk THEN
      EXECUTE format(
        'SELECT ARRAY[%1$s] FROM %2$s t WHERE (%5$s) AND ($1::text[] IS NULL OR (%3$s) > (%4$s)) ORDER BY %3$s OFFSET $2 LIMIT 1',
        pg2kafka.key_row(tbl, s.key_columns, as_text => true), tbl, key_list, key_after, scope)
      INTO bound USING s.after_keys, chunk_rows - 1;
    END IF;

    -- Only the rows inside the table's row filter, and of them only the columns its
    -- events carry (sql/20_setup.sql), as the capture triggers store them.
    SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl;
    BEGIN
      EXECUTE format(
        'INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row)
         SELECT %1$L, %2$L, %10$s FROM (
           SELECT * FROM %3$s t
           WHERE (%8$s) AND ($1::text[] IS NULL OR (%4$s) > (%5$s)) AND ($2::text[] IS NULL OR (%4$s) <= (%6$s)) AND (%7$s) AND %9$s
           ORDER BY %4$s
           FOR SHARE) r',
        tbl::oid, 'SNAPSHOT', tbl, key_list, key_after, key_upto,
        -- The condition is the walk of the whole table's: a partition attached since is
        -- copied whole.
        coalesce(CASE WHEN s.source_oid IS NULL THEN s.condition END, 'true'), scope,
        coalesce(pg2kafka.row_filter_on(registered.row_filter, 't'), 'true'),
        pg2kafka.captured_row_sql('r', registered.included_columns, registered.excluded_columns, registered.key_columns))
      USING s.after_keys, bound;
    EXCEPTION WHEN insufficient_privilege THEN
      PERFORM pg2kafka.raise_snapshot_denied(tbl, SQLERRM);
    END;
    GET DIAGNOSTICS copied = ROW_COUNT;
    walk_ended := bound IS NULL;
  END IF;

  -- A walk that ended hands over to the next partition queued, if any.
  next_partition := CASE WHEN walk_ended THEN s.queued_partitions[1] END;
  UPDATE pg2kafka.snapshots p
  SET after_keys = CASE WHEN next_partition IS NOT NULL THEN NULL ELSE coalesce(bound, p.after_keys) END,
      source_oid = coalesce(next_partition, p.source_oid),
      walk_partitions = CASE WHEN next_partition IS NOT NULL THEN NULL ELSE p.walk_partitions END,
      queued_partitions = CASE WHEN next_partition IS NOT NULL THEN p.queued_partitions[2:] ELSE p.queued_partitions END,
      rows_done = p.rows_done + copied,
      chunks_done = p.chunks_done + 1,
      updated_at = clock_timestamp(),
      finished_at = CASE WHEN walk_ended AND next_partition IS NULL THEN clock_timestamp() END,
      outcome = CASE WHEN walk_ended AND next_partition IS NULL THEN 'done' END
  WHERE p.table_oid = tbl;
  IF walk_ended AND next_partition IS NULL THEN
    UPDATE pg2kafka.tracked_tables t SET snapshot_rows = s.rows_done + copied WHERE t.table_oid = tbl;
  END IF;
  -- An idle relay sleeps until notified (sql/15_wake.sql): wake it, as a writer would.
  IF copied > 0 AND NOT pg_try_advisory_xact_lock_shared(pg2kafka.wake_lock_key()) THEN
    PERFORM pg_notify('pg2kafka_events', '');
  END IF;
  RETURN QUERY SELECT copied, walk_ended AND next_partition IS NULL;
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
  -- In turn with the runners that queue the walks of partitions attached since.
  PERFORM pg2kafka.lock_snapshot_walks(tbl);
  SELECT * INTO running FROM pg2kafka.snapshots p WHERE p.table_oid = tbl FOR UPDATE;
  IF FOUND AND running.finished_at IS NULL AND condition IS NOT NULL THEN
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
