-- Waking the relay without making writers pay NOTIFY's cost under load.
--
-- NOTIFY takes a cluster-wide lock from commit until after the WAL flush: any NOTIFY in
-- a writer's transaction serializes all committing writers (measured: 16 writers, 19k
-- -> 4.5k inserts/s). So writers notify only while the relay sleeps on an idle queue:
-- the relay then holds the advisory lock wake_lock_key() exclusively, and this statement
-- trigger notifies only when it cannot take that lock shared. A busy relay, or none at
-- all, holds no lock: writers take it shared (cheap, released at their commit) and never
-- notify. A writer holding it shared also stops the relay from going to sleep, which
-- closes the race of a change committed just as the relay decides to sleep; the relay
-- polls once more after raising the flag for changes committed just before.
-- Not SECURITY DEFINER and no SET clauses, to stay cheap: it runs as the writer, touches
-- nothing of pg2kafka's, and every name in it is schema-qualified.

CREATE OR REPLACE FUNCTION pg2kafka.wake_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 123588529840487::bigint $$;  -- 0x7067326b6167; src/capture/locks.ts WAKE_LOCK

CREATE OR REPLACE FUNCTION pg2kafka.wake_relay() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(123588529840487::pg_catalog.int8) THEN
    PERFORM pg_catalog.pg_notify('pg2kafka_events', '');
  END IF;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pg2kafka.wake_relay() FROM PUBLIC;
