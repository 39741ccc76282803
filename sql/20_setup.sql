-- setup() and teardown(): what a user calls to start and stop capturing a table.
--
-- setup takes SHARE ROW EXCLUSIVE on the table (what CREATE TRIGGER needs anyway). It
-- conflicts with writers but not with readers, and is never ACCESS EXCLUSIVE. Holding
-- it, setup installs the triggers. Then the rows the table already has become SNAPSHOT
-- events, in one of two ways:
--   - online (the default, for a table larger than one chunk, snapshot_chunk_rows()):
--     setup only registers the copy in pg2kafka.snapshots and commits; the copy then
--     runs in chunks, each one short transaction, while writers go on (sql/25_snapshots.sql
--     says why that keeps per-key order, and who runs the chunks);
--   - in setup's own transaction, under the lock (a table that fits in one chunk, a key
--     that cannot be walked in order, or snapshot => 'locked'):
--       - a writer that committed before the lock was granted is in the copy (READ
--         COMMITTED: the copy's statement takes its snapshot after the lock), and left
--         no event;
--       - a writer that comes after waits for setup to commit, then fires the triggers,
--         so its event has a higher id than every SNAPSHOT event of the table.
--     That needs READ COMMITTED: under REPEATABLE READ the transaction's snapshot could
--     predate the lock and miss rows, so setup refuses to run there.
--
-- The lock is requested with a short lock_timeout and retried with jitter: a DDL lock
-- request that waits queues every later writer behind it, so waiting long for one slow
-- transaction would stall the application. Writers wait at most for setup's transaction.
-- Two setups of one table at once (two deploys) take turns on a transaction advisory
-- lock before either reads the registry, so the second sees what the first did.

-- Who stands in the way of `mode` on `tbl` (or on one of its partitions or inheritance
-- children, which LOCK TABLE takes too): one entry per session holding, or queued ahead
-- for, a conflicting lock, with its application, user, state and transaction age. Run
-- right after a lock timeout, so the session is usually still there. Without
-- pg_read_all_stats the caller sees state and age only for its own role's sessions.
CREATE OR REPLACE FUNCTION pg2kafka.lock_holders(tbl regclass, mode text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH RECURSIVE tree(relid) AS (
    SELECT tbl::oid
    UNION
    SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
  ),
  conflicting AS (
    SELECT l.pid, l.granted, l.virtualtransaction,
           -- 'RowExclusiveLock' -> 'ROW EXCLUSIVE', as LOCK TABLE names it.
           upper(regexp_replace(regexp_replace(l.mode, 'Lock$', ''), '([a-z])([A-Z])', '\1 \2', 'g'))
             || ' on ' || l.relation::regclass::text AS what
    FROM pg_locks l
    WHERE l.locktype = 'relation'
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.relation IN (SELECT relid FROM tree)
      AND l.pid IS DISTINCT FROM pg_backend_pid()
      -- Qualified: a bare "mode" would be pg_locks.mode.
      AND l.mode = ANY (CASE lock_holders.mode
        WHEN 'ACCESS EXCLUSIVE' THEN ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock',
          'ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock']
        ELSE ARRAY['RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock',
          'ExclusiveLock', 'AccessExclusiveLock']
      END)
  ),
  sessions AS (
    SELECT c.pid, min(c.virtualtransaction) AS vxid, bool_or(c.granted) AS holds,
           string_agg(DISTINCT c.what, ', ') AS what
    FROM conflicting c
    GROUP BY c.pid
  )
  SELECT coalesce(
    string_agg(
      CASE WHEN s.pid IS NULL
        THEN format('a prepared transaction (virtual transaction %s) %s %s', s.vxid,
                    CASE WHEN s.holds THEN 'holds' ELSE 'waits for' END, s.what)
        ELSE format('pid %s (application "%s", user "%s") %s %s%s', s.pid, a.application_name,
                    a.usename, CASE WHEN s.holds THEN 'holds' ELSE 'waits for' END, s.what,
                    CASE
                      WHEN a.state IS NULL THEN ' (its state is visible only with pg_read_all_stats)'
                      ELSE format(', %s%s', a.state,
                        CASE WHEN a.xact_start IS NULL THEN '' ELSE ', transaction open for ' || (
                          SELECT CASE WHEN secs < 120 THEN round(secs)::text || ' s'
                                      WHEN secs < 7200 THEN round(secs / 60)::text || ' min'
                                      ELSE round(secs / 3600, 1)::text || ' h' END
                          FROM (SELECT extract(epoch FROM clock_timestamp() - a.xact_start) AS secs) age)
                        END)
                    END)
      END,
      '; ' ORDER BY s.holds DESC, a.xact_start NULLS LAST),
    'the session that held the conflicting lock has finished since')
  FROM sessions s
  LEFT JOIN pg_stat_activity a ON a.pid = s.pid
$$;
REVOKE ALL ON FUNCTION pg2kafka.lock_holders(regclass, text) FROM PUBLIC;

-- Takes `mode` on `tbl`, retrying lock timeouts; raises lock_not_available when it cannot,
-- naming the sessions in the way (DETAIL).
CREATE OR REPLACE FUNCTION pg2kafka.lock_table(tbl regclass, mode text, attempts int DEFAULT 20)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '500ms'
AS $$
BEGIN
  IF mode NOT IN ('SHARE ROW EXCLUSIVE', 'ACCESS EXCLUSIVE') THEN
    RAISE EXCEPTION 'pg2kafka.lock_table: unexpected lock mode %', mode;
  END IF;
  FOR attempt IN 1..attempts LOOP
    BEGIN
      EXECUTE format('LOCK TABLE %s IN %s MODE', tbl, mode);
      RETURN;
    EXCEPTION WHEN lock_not_available THEN
      IF attempt = attempts THEN
        RAISE EXCEPTION 'could not lock table % in % mode after % attempts', tbl, mode, attempts
          USING ERRCODE = 'lock_not_available',
                DETAIL = pg2kafka.lock_holders(tbl, mode) || '.',
                HINT = 'Retry when that transaction has finished. A session left idle in transaction can be ended with SELECT pg_terminate_backend(pid).';
      END IF;
      PERFORM pg_sleep(0.05 + random() * 0.25);
    END;
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.lock_table(regclass, text, int) FROM PUBLIC;

-- Why an external id column cannot order events per key, or NULL when it can.
CREATE OR REPLACE FUNCTION pg2kafka.key_column_problem(tbl regclass, attnum smallint)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE
    WHEN NOT a.attnotnull THEN 'it is nullable'
    WHEN NOT EXISTS (
      SELECT 1 FROM pg_index i
      WHERE i.indrelid = tbl AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
        AND i.indnkeyatts = 1 AND i.indkey[0] = attnum
    ) THEN 'no unique index covers it alone'
  END
  FROM pg_attribute a
  WHERE a.attrelid = tbl AND a.attnum = key_column_problem.attnum
$$;
REVOKE ALL ON FUNCTION pg2kafka.key_column_problem(regclass, smallint) FROM PUBLIC;

-- How messages name a key: 'external id column "sku"', or 'key columns "region", "id"'.
CREATE OR REPLACE FUNCTION pg2kafka.key_phrase(key_columns text[])
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN cardinality(key_columns) = 1 THEN 'external id column ' ELSE 'key columns ' END
         || (SELECT string_agg('"' || c || '"', ', ' ORDER BY o) FROM unnest(key_columns) WITH ORDINALITY u(c, o))
$$;

-- The setup() call that captures `tbl` with `key_columns` (the primary key's: no column named).
CREATE OR REPLACE FUNCTION pg2kafka.setup_call(tbl text, key_columns text[])
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN cardinality(key_columns) = 1 THEN format('SELECT pg2kafka.setup(%L, %L);', tbl, key_columns[1])
              ELSE format('SELECT pg2kafka.setup(%L);', tbl) END
$$;
REVOKE ALL ON FUNCTION pg2kafka.key_phrase(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.setup_call(text, text[]) FROM PUBLIC;

-- Drops the capture triggers of a table (their clones on partitions go with them).
CREATE OR REPLACE FUNCTION pg2kafka.drop_capture_triggers(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  trigger_name name;
BEGIN
  FOR trigger_name IN
    SELECT tgname FROM pg_trigger
    WHERE tgrelid = tbl AND tgname IN ('_pg2kafka_insert', '_pg2kafka_update', '_pg2kafka_delete', '_pg2kafka_truncate', '_pg2kafka_wake',
                                       '_pg2kafka_update_enter', '_pg2kafka_update_leave',
                                       -- the names before 0.1.0
                                       'pg2kafka_insert', 'pg2kafka_update', 'pg2kafka_delete', 'pg2kafka_truncate', 'pg2kafka_wake')
  LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, tbl);
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.drop_capture_triggers(regclass) FROM PUBLIC;

-- The version of what install_capture_triggers() creates. Raise it with any change to the
-- triggers below: migrate then reinstalls them on every captured table
-- (src/capture/migrate.ts), since setup() leaves a table it already captures alone.
CREATE OR REPLACE FUNCTION pg2kafka.capture_triggers_version() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 4 $$;

-- A row filter as stored (tracked_tables.row_filter: PostgreSQL's own print of it, with
-- the row named pg2kafka_row) on the row named `name`: NEW or OLD in a trigger's WHEN,
-- t in a snapshot's query. deparse_row_filter() made sure the name occurs nowhere else.
CREATE OR REPLACE FUNCTION pg2kafka.row_filter_on(row_filter text, name text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT '(' || replace(row_filter, 'pg2kafka_row.', name || '.') || ') IS TRUE'
$$;
REVOKE ALL ON FUNCTION pg2kafka.row_filter_on(text, text) FROM PUBLIC;

-- A user's row filter on `tbl` (a condition on its columns, unqualified: status <> 'draft')
-- as PostgreSQL prints it back with the row named pg2kafka_row: parsed, type-checked and
-- with every column qualified, so it can be evaluated on NEW and OLD. Raises
-- invalid_parameter_value, saying why, for anything else.
CREATE OR REPLACE FUNCTION pg2kafka.deparse_row_filter(tbl regclass, row_filter text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  printed text[];
  result_type regtype;
  alias text;
BEGIN
  IF row_filter IS NULL OR row_filter !~ '\S' THEN
    RETURN NULL;
  END IF;
  -- Printed twice under two names: the same text but for the name proves the name is a
  -- qualifier only (not inside a literal), so row_filter_on() may replace it.
  FOREACH alias IN ARRAY ARRAY['pg2kafka_row', 'pg2kafka_other'] LOOP
    BEGIN
      IF to_regclass('pg_temp.pg2kafka_row_filter') IS NOT NULL THEN
        DROP VIEW pg_temp.pg2kafka_row_filter;
      END IF;
      EXECUTE format('CREATE TEMP VIEW pg2kafka_row_filter AS SELECT (%s) AS pg2kafka_filter FROM %s AS %I',
                     row_filter, tbl, alias);
    EXCEPTION WHEN OTHERS THEN
      RAISE EXCEPTION 'the row filter % is not a condition on the columns of %: %', quote_literal(row_filter), tbl, SQLERRM
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Name the columns without the table: status <> ''draft''.';
    END;
    SELECT a.atttypid INTO result_type FROM pg_attribute a
    WHERE a.attrelid = 'pg_temp.pg2kafka_row_filter'::regclass AND a.attname = 'pg2kafka_filter';
    printed := printed || (regexp_match(pg_get_viewdef('pg_temp.pg2kafka_row_filter'::regclass),
                                        '^\s*SELECT (.*) AS pg2kafka_filter\s+FROM [^\n]*$'))[1];
    DROP VIEW pg_temp.pg2kafka_row_filter;
  END LOOP;
  IF result_type <> 'boolean'::regtype THEN
    RAISE EXCEPTION 'the row filter % is of type %, not boolean', quote_literal(row_filter), result_type
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Give a condition, such as status <> ''draft''.';
  END IF;
  IF printed[1] IS NULL OR replace(printed[1], 'pg2kafka_row.', 'pg2kafka_other.') IS DISTINCT FROM printed[2] THEN
    RAISE EXCEPTION 'the row filter % cannot be used: it holds the text pg2kafka_row. or pg2kafka_other.', quote_literal(row_filter)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN printed[1];
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.deparse_row_filter(regclass, text) FROM PUBLIC;

-- (Re)creates the capture triggers of `tbl` for its settings in tracked_tables (a table
-- being set up: those given); the caller holds SHARE ROW EXCLUSIVE on it.
--   A column list: the _projected captures (sql/10_capture_triggers.sql).
--   A row filter: INSERT and DELETE fire only for rows inside it, and UPDATE is three
--   triggers, at most one of which fires for a row: inside before and after (an UPDATE,
--   if it changed), entering (an INSERT of the new row), leaving (a DELETE of the old
--   row). All of it evaluated in WHEN clauses, in C, before any plpgsql runs.
-- Before 0.3.0 it took the table only; a call with one argument must not be ambiguous.
DROP FUNCTION IF EXISTS pg2kafka.install_capture_triggers(regclass);
DROP FUNCTION IF EXISTS pg2kafka.install_capture_triggers(regclass, text[], text[], text);
CREATE OR REPLACE FUNCTION pg2kafka.install_capture_triggers(tbl regclass, key_columns text[], included_columns text[] DEFAULT NULL,
                                                             excluded_columns text[] DEFAULT '{}', row_filter text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  capture text := '';
  args text := format('%L', tbl::oid);
  in_new text := 'true';
  in_old text := 'true';
BEGIN
  PERFORM pg2kafka.drop_capture_triggers(tbl);
  IF included_columns IS NOT NULL OR cardinality(excluded_columns) > 0 THEN
    capture := '_projected';
    args := format('%L, %L, %L, %L', tbl::oid,
                   CASE WHEN included_columns IS NOT NULL THEN 'include' ELSE 'exclude' END,
                   coalesce(included_columns, excluded_columns)::text,
                   key_columns::text);
  END IF;
  IF row_filter IS NOT NULL THEN
    in_new := pg2kafka.row_filter_on(row_filter, 'NEW');
    in_old := pg2kafka.row_filter_on(row_filter, 'OLD');
  END IF;
  -- AFTER triggers fire in name order, and "_" sorts before every lowercase letter: ours
  -- fire before a user's trigger named like most are (set_slug, audit_row), so a change
  -- such a trigger makes to the same row queues after the change that caused it.
  EXECUTE format(
    'CREATE TRIGGER _pg2kafka_insert AFTER INSERT ON %s FOR EACH ROW %s EXECUTE FUNCTION pg2kafka.capture_insert%s(%s)',
    tbl, CASE WHEN row_filter IS NOT NULL THEN format('WHEN (%s)', in_new) ELSE '' END, capture, args);
  EXECUTE format(
    'CREATE TRIGGER _pg2kafka_update AFTER UPDATE ON %s FOR EACH ROW WHEN (%sOLD.* *<> NEW.*) EXECUTE FUNCTION pg2kafka.capture_update%s(%s)',
    tbl, CASE WHEN row_filter IS NOT NULL THEN format('%s AND %s AND ', in_old, in_new) ELSE '' END, capture, args);
  IF row_filter IS NOT NULL THEN
    EXECUTE format(
      'CREATE TRIGGER _pg2kafka_update_enter AFTER UPDATE ON %s FOR EACH ROW WHEN (NOT %s AND %s) EXECUTE FUNCTION pg2kafka.capture_insert%s(%s)',
      tbl, in_old, in_new, capture, args);
    EXECUTE format(
      'CREATE TRIGGER _pg2kafka_update_leave AFTER UPDATE ON %s FOR EACH ROW WHEN (%s AND NOT %s) EXECUTE FUNCTION pg2kafka.capture_delete%s(%s)',
      tbl, in_old, in_new, capture, args);
  END IF;
  EXECUTE format(
    'CREATE TRIGGER _pg2kafka_delete AFTER DELETE ON %s FOR EACH ROW %s EXECUTE FUNCTION pg2kafka.capture_delete%s(%s)',
    tbl, CASE WHEN row_filter IS NOT NULL THEN format('WHEN (%s)', in_old) ELSE '' END, capture, args);
  EXECUTE format(
    'CREATE TRIGGER _pg2kafka_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pg2kafka.capture_truncate(%L)',
    tbl, tbl::oid);
  -- Once per statement, after the row triggers: wakes an idle relay (sql/15_wake.sql).
  EXECUTE format(
    'CREATE TRIGGER _pg2kafka_wake AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pg2kafka.wake_relay()',
    tbl);
EXCEPTION WHEN feature_not_supported THEN
  -- "cannot use subquery in trigger WHEN condition", and the like.
  RAISE EXCEPTION 'the row filter % cannot be evaluated by a trigger: %', quote_literal(row_filter), SQLERRM
    USING ERRCODE = 'invalid_parameter_value',
          HINT = 'A row filter may use the row''s columns, operators and functions, but no subquery.';
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.install_capture_triggers(regclass, text[], text[], text[], text) FROM PUBLIC;

-- The JSON of a row (named `alias` in the query) as the capture triggers store it: only
-- the columns of its list, if it has one. For the snapshots' INSERT ... SELECT.
DROP FUNCTION IF EXISTS pg2kafka.captured_row_sql(text, text[], text[]);
CREATE OR REPLACE FUNCTION pg2kafka.captured_row_sql(alias text, included_columns text[], excluded_columns text[], key_columns text[])
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  -- alias.*, not the bare alias: a column of that name would win over the row.
  SELECT CASE
    WHEN included_columns IS NOT NULL THEN format('pg2kafka.project_row(to_json(%s.*), %L, %L, %L)', alias, 'include', included_columns, key_columns)
    WHEN cardinality(excluded_columns) > 0 THEN format('pg2kafka.project_row(to_json(%s.*), %L, %L, %L)', alias, 'exclude', excluded_columns, key_columns)
    ELSE format('to_json(%s.*)', alias)
  END
$$;
REVOKE ALL ON FUNCTION pg2kafka.captured_row_sql(text, text[], text[], text[]) FROM PUBLIC;

-- For migrate: brings the triggers of a captured table to the current version, under the
-- same short, retried lock as setup (lock_not_available when it cannot be taken).
CREATE OR REPLACE FUNCTION pg2kafka.refresh_capture_triggers(tbl regclass)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM pg2kafka.lock_table(tbl, 'SHARE ROW EXCLUSIVE');
  -- New triggers on the partitions too: the rows of one attached since the last look are
  -- queued first, while its trigger still tells it apart.
  PERFORM pg2kafka.queue_attached_partitions(tbl);
  PERFORM pg2kafka.install_capture_triggers(tbl, t.key_columns, t.included_columns, t.excluded_columns, t.row_filter)
  FROM pg2kafka.tracked_tables t WHERE t.table_oid = tbl;
  UPDATE pg2kafka.tracked_tables t
  SET triggers_version = pg2kafka.capture_triggers_version(), partition_triggers = pg2kafka.partition_triggers(tbl)
  WHERE t.table_oid = tbl;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.refresh_capture_triggers(regclass) FROM PUBLIC;

-- Re-raises `message`, what a snapshot query of `tbl` failed with (insufficient_privilege),
-- saying what to grant: row_security = off turns a policy that would hide rows from
-- pg2kafka's owner into this error, so that no snapshot is ever filtered silently.
CREATE OR REPLACE FUNCTION pg2kafka.raise_snapshot_denied(tbl regclass, message text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION '%', message
    USING ERRCODE = 'insufficient_privilege',
          HINT = CASE WHEN message LIKE '%row-level security%'
            THEN format('Row-level security would hide rows of %s from the snapshot. Let the role that owns schema pg2kafka (%s) bypass it (ALTER ROLE %s BYPASSRLS) or own the table.',
                        tbl, current_user, quote_ident(current_user))
            ELSE format('The role that owns schema pg2kafka (%s) must be able to read %s: GRANT SELECT ON %s TO %s;',
                        current_user, tbl, tbl, quote_ident(current_user))
          END;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.raise_snapshot_denied(regclass, text) FROM PUBLIC;

-- The payload settings of `tbl` (keyed by `key_names`) as setup() and alter() store them,
-- or an error saying what is wrong: columns that exist (matched exactly), key columns never
-- excluded and always included, one list at most, a row filter that compiles (and only
-- from a member of the owner's role: it runs as that role), a known message format.
CREATE OR REPLACE FUNCTION pg2kafka.payload_settings(
  tbl regclass, key_names text[], exclude_columns text[], include_columns text[], row_filter text, message_format text,
  OUT included text[], OUT excluded text[], OUT filter text, OUT format text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
  unknown text;
  keys_excluded text;
BEGIN
  IF cardinality(exclude_columns) > 0 AND cardinality(include_columns) > 0 THEN
    RAISE EXCEPTION 'give exclude_columns or include_columns, not both'
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'exclude_columns: every column but these (a column added later is carried); include_columns: only these (and the key).';
  END IF;
  SELECT string_agg(format('"%s"', c.name), ', ' ORDER BY c.n) INTO unknown
  FROM unnest(coalesce(exclude_columns, '{}') || coalesce(include_columns, '{}')) WITH ORDINALITY AS c(name, n)
  WHERE c.name IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute a
                                      WHERE a.attrelid = tbl AND a.attname = c.name AND a.attnum > 0 AND NOT a.attisdropped);
  IF unknown IS NOT NULL THEN
    RAISE EXCEPTION 'no column % in table %', unknown, tbl
      USING ERRCODE = 'undefined_column',
            HINT = format('Its columns: %s. Names are matched exactly, case included, without SQL quotes.',
                          (SELECT string_agg(a.attname, ', ' ORDER BY a.attnum) FROM pg_attribute a
                           WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped));
  END IF;
  SELECT string_agg(format('"%s"', k), ', ') INTO keys_excluded FROM unnest(key_names) k WHERE k = ANY (exclude_columns);
  IF keys_excluded IS NOT NULL THEN
    RAISE EXCEPTION 'the key column % of % cannot be excluded: it is the message key', keys_excluded, tbl
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Every event carries its key columns. Exclude other columns, or set the table up with another key.';
  END IF;
  -- An include list holds the key columns, first and in key order, then the others as given.
  IF include_columns IS NOT NULL AND cardinality(include_columns) > 0 THEN
    included := key_names || ARRAY(SELECT c.name FROM unnest(include_columns) WITH ORDINALITY AS c(name, n)
                                   WHERE c.name <> ALL (key_names) GROUP BY c.name ORDER BY min(c.n));
  END IF;
  excluded := ARRAY(SELECT DISTINCT c FROM unnest(coalesce(exclude_columns, '{}')) c ORDER BY 1);
  IF row_filter IS NOT NULL AND row_filter ~ '\S' AND NOT pg_has_role(session_user, current_user, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied: only the owner of schema pg2kafka (%) may give a row filter', current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'The filter runs as that role, in the writers'' transactions. Ask its owner to set the table up.';
  END IF;
  filter := pg2kafka.deparse_row_filter(tbl, row_filter);
  IF message_format IS NOT NULL AND message_format NOT IN ('pg2kafka', 'debezium', 'debezium-schemaless', '') THEN
    RAISE EXCEPTION 'message_format must be ''pg2kafka'', ''debezium'' or ''debezium-schemaless'', not %', quote_literal(message_format)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Leave it out to follow the relay''s MESSAGE_FORMAT.';
  END IF;
  format := nullif(message_format, '');
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.payload_settings(regclass, text[], text[], text[], text, text) FROM PUBLIC;

-- How a table's payload settings read in a message: ' (excluding "password_hash"; rows where ...)'.
CREATE OR REPLACE FUNCTION pg2kafka.payload_phrase(t pg2kafka.tracked_tables)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(' (' || nullif(concat_ws('; ',
    CASE WHEN t.included_columns IS NOT NULL THEN 'only the columns ' || (SELECT string_agg(format('"%s"', c), ', ') FROM unnest(t.included_columns) c) END,
    CASE WHEN cardinality(t.excluded_columns) > 0 THEN 'without the columns ' || (SELECT string_agg(format('"%s"', c), ', ') FROM unnest(t.excluded_columns) c) END,
    CASE WHEN t.row_filter IS NOT NULL THEN 'rows where ' || replace(t.row_filter, 'pg2kafka_row.', '') END,
    CASE WHEN t.tombstones THEN 'tombstones after deletes' END,
    CASE WHEN t.message_format IS NOT NULL THEN 'format ' || t.message_format END), '') || ')', '')
$$;
REVOKE ALL ON FUNCTION pg2kafka.payload_phrase(pg2kafka.tracked_tables) FROM PUBLIC;

-- Before 0.2.0 setup had no snapshot argument, before 0.3.0 no payload settings. Dropping
-- those versions (once, on upgrade) keeps setup('t', 'k') unambiguous; a GRANT EXECUTE on
-- them must be given again.
DROP FUNCTION IF EXISTS pg2kafka.setup(regclass, text, boolean);
DROP FUNCTION IF EXISTS pg2kafka.setup(regclass, text, boolean, text);

-- snapshot: 'online' (default), 'locked' (copy every row in setup's transaction, as
-- before 0.2.0), or 'none' (capture changes only). external_id_name defaults to the
-- table's primary key; a primary key of several columns makes a key of all of them (the
-- message key is the JSON array of their values, sql/30_events.sql).
-- Payload settings (payload_settings() checks them; NULL: not given): exclude_columns,
-- include_columns, row_filter, tombstones, message_format. A table already set up keeps
-- its settings: setup with others refuses and points to alter().
CREATE OR REPLACE FUNCTION pg2kafka.setup(table_name_ref regclass, external_id_name text DEFAULT NULL,
                                          full_row boolean DEFAULT false, snapshot text DEFAULT 'online',
                                          exclude_columns text[] DEFAULT NULL, include_columns text[] DEFAULT NULL,
                                          row_filter text DEFAULT NULL, tombstones boolean DEFAULT NULL,
                                          message_format text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The snapshot prints rows exactly as the capture triggers do.
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
  rel record;
  online boolean;
  fits boolean;
  key_names text[];
  key_attnum smallint;
  problem text;
  registered pg2kafka.tracked_tables;
  qualified text;
  near_match name;
  snapshot_count bigint;
  payload record;
  settings_given boolean := exclude_columns IS NOT NULL OR include_columns IS NOT NULL OR row_filter IS NOT NULL
                            OR tombstones IS NOT NULL OR message_format IS NOT NULL;
BEGIN
  IF table_name_ref IS NULL OR full_row IS NULL OR snapshot IS NULL THEN
    RAISE EXCEPTION 'pg2kafka.setup(table [, external_id_column [, full_row [, snapshot]]]) needs a table, and no NULL in the others'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF snapshot NOT IN ('online', 'locked', 'none') THEN
    RAISE EXCEPTION 'pg2kafka.setup: snapshot must be ''online'', ''locked'' or ''none'', not %', quote_literal(snapshot)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = '''online'' copies the existing rows in chunks while writers go on, ''locked'' in setup''s own transaction, ''none'' not at all.';
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pg2kafka.setup() must run in a READ COMMITTED transaction, not %',
      upper(current_setting('transaction_isolation'))
      USING ERRCODE = 'invalid_transaction_state',
            HINT = 'Its snapshot would miss rows committed while it waits for the table lock. Call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction, with default_transaction_isolation = ''read committed''.';
  END IF;

  SELECT c.oid, c.relkind, c.relpersistence, c.relispartition, n.nspname, c.relname
  INTO rel
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = table_name_ref;
  qualified := format('%I.%I', rel.nspname, rel.relname);

  IF rel.relkind NOT IN ('r', 'p') THEN
    RAISE EXCEPTION '% is %, not a table: pg2kafka can capture only plain or partitioned tables',
      qualified,
      CASE rel.relkind
        WHEN 'v' THEN 'a view' WHEN 'm' THEN 'a materialized view' WHEN 'f' THEN 'a foreign table'
        WHEN 'S' THEN 'a sequence' WHEN 'i' THEN 'an index' WHEN 'I' THEN 'a partitioned index'
        WHEN 'c' THEN 'a composite type' WHEN 't' THEN 'a TOAST table' ELSE 'of kind ' || rel.relkind::text
      END
      USING ERRCODE = 'wrong_object_type';
  END IF;
  IF rel.relpersistence = 't' THEN
    RAISE EXCEPTION '% is a temporary table: pg2kafka can capture only tables all sessions see', qualified
      USING ERRCODE = 'wrong_object_type';
  END IF;
  IF rel.relispartition THEN
    RAISE EXCEPTION '% is a partition: set up its partitioned table instead (events name that table)', qualified
      USING ERRCODE = 'wrong_object_type',
            HINT = format('SELECT pg2kafka.setup(%L, %L);', pg_partition_root(table_name_ref)::text, external_id_name);
  END IF;
  -- A parent's snapshot would copy its children's rows, whose changes no trigger captures.
  IF rel.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = table_name_ref) THEN
    RAISE EXCEPTION '% has inheritance children (%): pg2kafka captures a table and its own rows only', qualified,
      (SELECT string_agg(i.inhrelid::regclass::text, ', ' ORDER BY i.inhrelid::regclass::text) FROM pg_inherits i WHERE i.inhparent = table_name_ref)
      USING ERRCODE = 'wrong_object_type',
            HINT = 'Set up each child table by itself, or use declarative partitioning (a partitioned table is captured with all its partitions).';
  END IF;
  IF rel.nspname = 'pg2kafka' THEN
    RAISE EXCEPTION 'pg2kafka does not capture its own tables (%)', qualified
      USING ERRCODE = 'wrong_object_type';
  END IF;

  -- Two setups of this table take turns from here (the second then sees the first's row).
  PERFORM pg_advisory_xact_lock(hashtext('pg2kafka.setup'), table_name_ref::oid::int4);

  IF external_id_name IS NULL THEN
    -- The primary key's columns in index order (INCLUDE columns are not part of it).
    SELECT array_agg(a.attname::text ORDER BY k.position)
    INTO key_names
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = table_name_ref AND i.indisprimary AND k.position <= i.indnkeyatts;
    IF key_names IS NULL THEN
      RAISE EXCEPTION '% has no primary key: name its external id column', qualified
        USING ERRCODE = 'undefined_column',
              HINT = format('SELECT pg2kafka.setup(%L, <column>); the column''s value becomes the Kafka message key: a unique NOT NULL column.', qualified);
    END IF;
    -- For several columns, their names as a JSON array: what status shows as the key.
    external_id_name := CASE WHEN cardinality(key_names) = 1 THEN key_names[1] ELSE to_json(key_names)::text END;
  ELSE
    key_names := ARRAY[external_id_name];
  END IF;

  -- setup runs as pg2kafka's owner; the snapshot copies every row into the queue. So the
  -- role that logged in must itself be able to read the table.
  IF NOT has_table_privilege(session_user, table_name_ref, 'SELECT') THEN
    RAISE EXCEPTION 'permission denied: % may not read %, so it may not capture it', session_user, qualified
      USING ERRCODE = 'insufficient_privilege';
  END IF;

  SELECT a.attnum INTO key_attnum
  FROM pg_attribute a
  WHERE a.attrelid = table_name_ref AND a.attname = external_id_name AND a.attnum > 0 AND NOT a.attisdropped;
  -- (The columns of a primary key exist.)
  IF NOT FOUND AND cardinality(key_names) = 1 THEN
    -- The name is matched exactly; a column that differs only in case, or the name given
    -- in SQL double quotes, is probably what was meant.
    SELECT a.attname INTO near_match
    FROM pg_attribute a
    WHERE a.attrelid = table_name_ref AND a.attnum > 0 AND NOT a.attisdropped
      AND (lower(a.attname) = lower(external_id_name) OR format('%I', a.attname) = external_id_name)
    ORDER BY a.attnum
    LIMIT 1;
    RAISE EXCEPTION 'column "%" does not exist in table %', external_id_name, qualified
      USING ERRCODE = 'undefined_column',
            HINT = CASE
              WHEN near_match IS NOT NULL THEN format(
                'Did you mean "%s"? The column name is matched exactly, case included, and given without SQL quotes.', near_match)
              ELSE 'The second argument names the column whose value becomes the Kafka message key, for example the primary key.'
            END;
  END IF;

  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = table_name_ref;
  -- Another key would change the message key of every later event: refuse, never ignore.
  IF FOUND AND registered.capturing AND registered.key_columns <> key_names THEN
    RAISE EXCEPTION '% is already set up with %, not %; nothing was changed',
      qualified, pg2kafka.key_phrase(registered.key_columns),
      CASE WHEN cardinality(registered.key_columns) = 1 AND cardinality(key_names) = 1
           THEN '"' || external_id_name || '"' ELSE pg2kafka.key_phrase(key_names) END
      USING ERRCODE = 'duplicate_object',
            HINT = format('To change the external id column, tear it down first: SELECT pg2kafka.teardown(%L); then %s',
                          qualified, pg2kafka.setup_call(qualified, key_names));
  END IF;
  payload := pg2kafka.payload_settings(table_name_ref, key_names, exclude_columns, include_columns, row_filter, message_format);
  IF FOUND AND registered.capturing AND settings_given AND (
       registered.included_columns IS DISTINCT FROM payload.included
       OR registered.excluded_columns IS DISTINCT FROM payload.excluded
       OR registered.row_filter IS DISTINCT FROM payload.filter
       OR registered.tombstones IS DISTINCT FROM coalesce(tombstones, false)
       OR registered.message_format IS DISTINCT FROM payload.format) THEN
    RAISE EXCEPTION '% is already set up with other payload settings%; nothing was changed',
      qualified, pg2kafka.payload_phrase(registered)
      USING ERRCODE = 'duplicate_object',
            HINT = format('Change them with pg2kafka.alter(%L, ...): it applies them under the table lock, so no change is lost or sent twice.', qualified);
  END IF;
  IF FOUND AND registered.capturing THEN
    RAISE WARNING 'pg2kafka: % is already set up (%)%; nothing was changed',
      qualified, pg2kafka.key_phrase(registered.key_columns), pg2kafka.payload_phrase(registered)
      USING HINT = format('To change its payload settings, call pg2kafka.alter(%L, ...); to change its key, pg2kafka.teardown(%L) first.', qualified, qualified);
    RETURN;
  END IF;
  -- Queued events take the key of the table's current setup when they ship: another key
  -- would change theirs. Except for events whose rows lack the old key columns (renamed
  -- or dropped: the relay holds them back, keyless): they have no key to change, and
  -- setting the table up with a column they have is how they get one.
  IF FOUND AND (registered.key_columns <> key_names OR registered.full_row <> full_row)
     AND EXISTS (
       SELECT 1 FROM pg2kafka.captured_changes q
       WHERE q.table_oid = table_name_ref
         AND (registered.full_row <> full_row
              OR (SELECT pg_catalog.bool_and((coalesce(q.new_row, q.old_row) OPERATOR(pg_catalog.->) k.name) IS NOT NULL)
                  FROM pg_catalog.unnest(registered.key_columns) AS k(name)))) THEN
    RAISE EXCEPTION '% still has queued events captured with %',
      qualified, pg2kafka.key_phrase(registered.key_columns) || CASE WHEN registered.full_row THEN ' in full-row mode' ELSE '' END
      USING ERRCODE = 'object_in_use',
            HINT = 'Let the relay ship them first (pg2kafka status shows the queue), then call setup again.';
  END IF;

  -- A primary key of several columns is unique and NOT NULL by definition.
  problem := CASE WHEN cardinality(key_names) = 1 THEN pg2kafka.key_column_problem(table_name_ref, key_attnum) END;
  IF problem IS NOT NULL THEN
    RAISE WARNING 'pg2kafka: external id column "%" of % is not a unique NOT NULL column (%)',
      external_id_name, qualified, problem
      USING HINT = 'Per-key event order holds only when the external id identifies one row; prefer the primary key.';
  END IF;

  PERFORM pg2kafka.lock_table(table_name_ref, 'SHARE ROW EXCLUSIVE');

  PERFORM pg2kafka.install_capture_triggers(table_name_ref, key_names, payload.included, payload.excluded, payload.filter);

  -- Online needs a key to walk in order; a table of one chunk or less is copied here.
  online := false;
  IF snapshot = 'online' THEN
    BEGIN
      -- Every row counts, also with a row filter: a copy under the lock reads them all.
    EXECUTE format('SELECT count(*) <= %s FROM (SELECT 1 FROM %s LIMIT %s) r',
                   pg2kafka.snapshot_chunk_rows(), table_name_ref, pg2kafka.snapshot_chunk_rows() + 1)
      INTO fits;
    EXCEPTION WHEN insufficient_privilege THEN
      PERFORM pg2kafka.raise_snapshot_denied(table_name_ref, SQLERRM);
    END;
    online := NOT fits AND problem IS NULL;
    IF NOT fits AND problem IS NOT NULL THEN
      RAISE WARNING 'pg2kafka: % has no unique NOT NULL external id column to walk in chunks: its rows are copied under the table lock, and its writers wait for the whole copy', qualified
        USING HINT = 'Set it up with a unique NOT NULL column (ideally the primary key) to copy it online.';
    END IF;
  END IF;
  snapshot_count := 0;
  IF online THEN
    PERFORM pg2kafka.register_snapshot(table_name_ref, key_names, NULL);
    snapshot_count := NULL;
  ELSE
    -- A snapshot left from an earlier setup would describe another capture.
    DELETE FROM pg2kafka.snapshots p WHERE p.table_oid = table_name_ref;
    IF snapshot <> 'none' THEN
      BEGIN
        EXECUTE format(
          'INSERT INTO pg2kafka.captured_changes (table_oid, statement, new_row) SELECT %L, %L, %s FROM %s t WHERE %s',
          table_name_ref::oid, 'SNAPSHOT', pg2kafka.captured_row_sql('t', payload.included, payload.excluded, key_names),
          table_name_ref, coalesce(pg2kafka.row_filter_on(payload.filter, 't'), 'true'));
      EXCEPTION WHEN insufficient_privilege THEN
        PERFORM pg2kafka.raise_snapshot_denied(table_name_ref, SQLERRM);
      END;
      GET DIAGNOSTICS snapshot_count = ROW_COUNT;
    END IF;
  END IF;

  INSERT INTO pg2kafka.tracked_tables AS t
    (table_oid, schema_name, table_name, external_id_column, key_columns, full_row, capturing, snapshot_rows, triggers_version,
     partition_triggers, included_columns, excluded_columns, row_filter, tombstones, message_format)
  VALUES (table_name_ref, rel.nspname, rel.relname, external_id_name, key_names, full_row, true, snapshot_count,
          pg2kafka.capture_triggers_version(),
          -- The partitions whose rows are copied now (or not, with snapshot 'none'): rows that
          -- a partition attached later brings are copied when the runners notice it.
          pg2kafka.partition_triggers(table_name_ref),
          payload.included, payload.excluded, payload.filter, coalesce(tombstones, false), payload.format)
  ON CONFLICT (table_oid) DO UPDATE SET
    schema_name = excluded.schema_name, table_name = excluded.table_name,
    external_id_column = excluded.external_id_column, key_columns = excluded.key_columns, full_row = excluded.full_row,
    capturing = true, snapshot_rows = excluded.snapshot_rows, triggers_version = excluded.triggers_version,
    partition_triggers = excluded.partition_triggers,
    included_columns = excluded.included_columns, excluded_columns = excluded.excluded_columns,
    row_filter = excluded.row_filter, tombstones = excluded.tombstones, message_format = excluded.message_format,
    set_up_at = now(), torn_down_at = NULL;

  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = table_name_ref;
  qualified := qualified || pg2kafka.payload_phrase(registered);
  IF online THEN
    RAISE NOTICE 'pg2kafka: capturing %; its existing rows%are copied online, in chunks, by the active relay (or pg2kafka snapshot, or CALL pg2kafka.run_snapshots())',
      qualified, coalesce((SELECT ' (about ' || p.rows_estimated || ') ' FROM pg2kafka.snapshots p WHERE p.table_oid = table_name_ref), ' ');
  ELSIF snapshot = 'none' THEN
    RAISE NOTICE 'pg2kafka: capturing %, without a snapshot of its existing rows', qualified;
  ELSE
    RAISE NOTICE 'pg2kafka: capturing %, % existing row(s) queued as SNAPSHOT events', qualified, snapshot_count;
  END IF;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.setup(regclass, text, boolean, text, text[], text[], text, boolean, text) FROM PUBLIC;

-- Stops capturing; events already queued stay and are still shipped. DROP TRIGGER needs
-- ACCESS EXCLUSIVE for an instant, requested with the same short, retried timeout.
CREATE OR REPLACE FUNCTION pg2kafka.teardown(table_name_ref regclass)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  registered pg2kafka.tracked_tables;
  snapshot_cancelled boolean;
BEGIN
  IF table_name_ref IS NULL THEN
    RAISE EXCEPTION 'pg2kafka.teardown(table) needs a table' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = table_name_ref AND t.capturing;
  IF NOT FOUND THEN
    RAISE WARNING 'pg2kafka: % is not set up; nothing was changed', table_name_ref;
    RETURN;
  END IF;
  -- In turn with setup() and alter(), which hold a snapshot's progress row while they
  -- wait for the table.
  PERFORM pg_advisory_xact_lock(hashtext('pg2kafka.setup'), table_name_ref::oid::int4);
  PERFORM pg2kafka.lock_table(table_name_ref, 'ACCESS EXCLUSIVE');
  PERFORM pg2kafka.drop_capture_triggers(table_name_ref);
  UPDATE pg2kafka.tracked_tables t SET capturing = false, torn_down_at = now() WHERE t.table_oid = table_name_ref;
  -- A copy of rows whose later changes no trigger captures would mislead consumers.
  snapshot_cancelled := pg2kafka.end_snapshot(table_name_ref);
  RAISE NOTICE 'pg2kafka: stopped capturing %; its queued events will still be shipped%', table_name_ref,
    CASE WHEN snapshot_cancelled THEN ' (its online snapshot was cancelled)' ELSE '' END;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.teardown(regclass) FROM PUBLIC;

-- Changes the payload settings of a captured table (a setting left out, NULL, stays as it
-- is; exclude_columns => '{}' or include_columns => '{}' lifts the column list,
-- row_filter => '' the filter, message_format => '' follows the relay's MESSAGE_FORMAT).
-- Under the table's lock (SHARE ROW EXCLUSIVE, as setup), in one transaction: a change
-- committed before it is captured as before, one after it with the new settings, none
-- lost or captured twice; a running online snapshot's chunk finishes first, the next
-- ones copy with the new settings. Queued events keep what they were captured with; the
-- format and tombstones apply to what ships from then on. A change that lets more out (a
-- column, rows a filter kept back) sends nothing for rows as they are: resnapshot() does.
CREATE OR REPLACE FUNCTION pg2kafka.alter(table_name_ref regclass, exclude_columns text[] DEFAULT NULL,
                                          include_columns text[] DEFAULT NULL, row_filter text DEFAULT NULL,
                                          tombstones boolean DEFAULT NULL, message_format text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
  registered pg2kafka.tracked_tables;
  changed pg2kafka.tracked_tables;
  payload record;
BEGIN
  IF table_name_ref IS NULL THEN
    RAISE EXCEPTION 'pg2kafka.alter(table, exclude_columns => ..., include_columns => ..., row_filter => ..., tombstones => ..., message_format => ...) needs a table'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF exclude_columns IS NULL AND include_columns IS NULL AND row_filter IS NULL AND tombstones IS NULL AND message_format IS NULL THEN
    RAISE EXCEPTION 'pg2kafka.alter(%) was given no setting to change', table_name_ref
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name one: exclude_columns, include_columns, row_filter, tombstones or message_format, e.g. pg2kafka.alter(''t'', exclude_columns => ''{secret}'').';
  END IF;
  -- What events carry is the owner's to decide: lifting a column list or a filter lets
  -- out what the owner kept in.
  IF NOT pg_has_role(session_user, current_user, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied: only the owner of schema pg2kafka (%) may change what events carry', current_user
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  -- In setup's and teardown's turn (a teardown that committed meanwhile is seen below),
  -- then in the order the snapshot functions take their locks: the walks' lock, the
  -- progress row (after a chunk in flight; later chunks read the new settings), and only
  -- then the table, so that writers wait for no chunk.
  PERFORM pg_advisory_xact_lock(hashtext('pg2kafka.setup'), table_name_ref::oid::int4);
  PERFORM pg2kafka.lock_snapshot_walks(table_name_ref);
  PERFORM 1 FROM pg2kafka.snapshots p WHERE p.table_oid = table_name_ref FOR UPDATE;
  PERFORM pg2kafka.lock_table(table_name_ref, 'SHARE ROW EXCLUSIVE');
  SELECT * INTO registered FROM pg2kafka.tracked_tables t WHERE t.table_oid = table_name_ref AND t.capturing FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION '% is not set up', table_name_ref
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = format('Set it up with these settings instead: SELECT pg2kafka.setup(%L, ...);', table_name_ref::text);
  END IF;
  payload := pg2kafka.payload_settings(table_name_ref, registered.key_columns,
    CASE WHEN exclude_columns IS NOT NULL THEN exclude_columns WHEN include_columns IS NULL THEN registered.excluded_columns END,
    CASE WHEN include_columns IS NOT NULL THEN include_columns WHEN exclude_columns IS NULL THEN registered.included_columns END,
    row_filter, message_format);
  changed := registered;
  changed.included_columns := payload.included;
  changed.excluded_columns := payload.excluded;
  IF row_filter IS NOT NULL THEN changed.row_filter := payload.filter; END IF;
  IF message_format IS NOT NULL THEN changed.message_format := payload.format; END IF;
  changed.tombstones := coalesce(tombstones, registered.tombstones);
  -- The rows of a partition attached since are queued first, while its trigger still
  -- tells it apart (as migrate's refresh does).
  PERFORM pg2kafka.queue_attached_partitions(table_name_ref);
  PERFORM pg2kafka.install_capture_triggers(table_name_ref, changed.key_columns, changed.included_columns, changed.excluded_columns, changed.row_filter);
  UPDATE pg2kafka.tracked_tables t
  SET included_columns = changed.included_columns, excluded_columns = changed.excluded_columns,
      row_filter = changed.row_filter, tombstones = changed.tombstones, message_format = changed.message_format,
      triggers_version = pg2kafka.capture_triggers_version(), partition_triggers = pg2kafka.partition_triggers(table_name_ref)
  WHERE t.table_oid = table_name_ref;
  RAISE NOTICE 'pg2kafka: % is captured%', table_name_ref,
    coalesce(nullif(pg2kafka.payload_phrase(changed), ''), ' with every column, every row')
    USING HINT = CASE
      WHEN (registered.included_columns IS NOT NULL AND (changed.included_columns IS NULL OR NOT changed.included_columns <@ registered.included_columns))
        OR NOT registered.excluded_columns <@ changed.excluded_columns
        OR (registered.row_filter IS NOT NULL AND changed.row_filter IS DISTINCT FROM registered.row_filter)
      THEN format('Events carry more from now on; rows as they are now are sent again by SELECT pg2kafka.resnapshot(%L);', table_name_ref::text)
      ELSE 'Queued events keep what they were captured with.' END;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.alter(regclass, text[], text[], text, boolean, text) FROM PUBLIC;
