-- Moving refused events to pg2kafka.dead_letters, and putting them back.
--
-- Every function here takes the dead_letters table in EXCLUSIVE mode first (readers are
-- not blocked): the relay's move and an operator's retry or discard then run one after
-- the other, and each sees what the other committed. That is what keeps a key's order
-- when a retry races the relay parking that key's newest change (see retry below).

-- The relay's move: removes the given changes from the queue and records them as dead
-- letters, in one transaction, only while the caller holds the relay lease. An entry with
-- follower = true is a change moved only because one of its keys is parked: it moves only
-- if that key is still parked now, by an existing dead letter or by an entry moved before
-- it in this call (entries go in id order, so a follower that changes its key parks the
-- new key for the changes after it); otherwise it stays queued, and the relay ships it
-- after the retried changes of its key. Returns the ids moved.
CREATE OR REPLACE FUNCTION pg2kafka.move_to_dead_letters(entries jsonb, lease_holder text, lease_epoch bigint)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  e record;
BEGIN
  LOCK TABLE pg2kafka.dead_letters IN EXCLUSIVE MODE;
  IF NOT EXISTS (
    SELECT 1 FROM pg2kafka.relay_lease l
    WHERE l.holder = lease_holder AND l.epoch = lease_epoch AND l.expires_at > clock_timestamp())
  THEN
    RETURN;
  END IF;
  FOR e IN
    SELECT x.*
    FROM jsonb_to_recordset(entries) AS x(
      id bigint, table_oid oid, schema_name text, table_name text, topic text,
      external_id text, payload text, error_code text, reason text, attempts integer,
      first_failed_at timestamptz, parked boolean, keys text[], follower boolean)
    ORDER BY x.id
  LOOP
    CONTINUE WHEN e.follower AND NOT EXISTS (
      SELECT 1 FROM pg2kafka.dead_letters d, unnest(d.keys) dk, unnest(e.keys) ek
      WHERE d.parked AND d.table_oid = e.table_oid AND dk IS NOT DISTINCT FROM ek);
    RETURN QUERY
    WITH moved AS (
      DELETE FROM pg2kafka.captured_changes c WHERE c.id = e.id
      RETURNING c.id, c.table_oid, c.statement, c.new_row, c.old_row, c.created_at, c.tx_id
    )
    INSERT INTO pg2kafka.dead_letters AS d (
      id, table_oid, schema_name, table_name, statement, new_row, old_row, created_at, tx_id,
      topic, external_id, payload, error_code, reason, attempts, parked, keys, first_failed_at)
    SELECT c.id, c.table_oid, e.schema_name, e.table_name, c.statement, c.new_row, c.old_row,
           c.created_at, c.tx_id, e.topic, e.external_id, e.payload, e.error_code, e.reason, e.attempts,
           e.parked, e.keys, e.first_failed_at
    FROM moved c
    RETURNING d.id;
  END LOOP;
END
$$;

-- The dead letters that `ids` names, widened to every parked dead letter sharing a table
-- and a key with them: retrying or discarding part of a parked key would leave the key
-- parked by the rest.
CREATE OR REPLACE FUNCTION pg2kafka.dead_letter_group(ids bigint[])
RETURNS SETOF bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH RECURSIVE grp(id) AS (
    SELECT d.id FROM pg2kafka.dead_letters d WHERE d.id = ANY(ids)
    UNION
    SELECT d2.id
    FROM grp g
    JOIN pg2kafka.dead_letters d1 ON d1.id = g.id AND d1.parked
    JOIN pg2kafka.dead_letters d2 ON d2.table_oid = d1.table_oid AND d2.parked
    WHERE EXISTS (SELECT 1 FROM unnest(d1.keys) k1, unnest(d2.keys) k2
                  WHERE k1 IS NOT DISTINCT FROM k2)
  )
  SELECT id FROM grp
$$;

-- Puts dead letters back in the queue under their original ids (so, lowest id first,
-- they ship ahead of every later change of their key), with every parked dead letter of
-- the same keys (NULL ids: all of them). A change the relay parks while this runs either
-- moved before (then it is part of the group and goes back too) or checks its key after
-- this commits (then it is not parked any more and stays queued behind the retried ones).
-- The ids are below the queue floor, up to which the relay reads nothing (the relay may
-- have raised it past them once they left the queue): the floor is lowered to the lowest
-- one in this transaction, so a fetch sees the rows and the lowered floor together. A
-- concurrent raise either locked the lease row first (this UPDATE waits, then lowers
-- what it raised) or waits for this commit and then sees the rows (src/relay/floor.ts).
-- Returns the ids put back.
CREATE OR REPLACE FUNCTION pg2kafka.retry_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  back_ids bigint[];
BEGIN
  LOCK TABLE pg2kafka.dead_letters IN EXCLUSIVE MODE;
  WITH back AS (
    DELETE FROM pg2kafka.dead_letters d
    WHERE ids IS NULL OR d.id IN (SELECT pg2kafka.dead_letter_group(ids))
    RETURNING d.id, d.table_oid, d.statement, d.new_row, d.old_row, d.created_at, d.tx_id
  ), put AS (
    -- tx_id: the writer's transaction, not the retry's (Debezium's source.txId)
    INSERT INTO pg2kafka.captured_changes (id, table_oid, statement, new_row, old_row, created_at, tx_id)
    OVERRIDING SYSTEM VALUE
    SELECT b.id, b.table_oid, b.statement, b.new_row, b.old_row, b.created_at, b.tx_id FROM back b
    ORDER BY b.id
    RETURNING id
  )
  SELECT array_agg(put.id ORDER BY put.id) INTO back_ids FROM put;
  IF back_ids IS NULL THEN
    RETURN;
  END IF;
  UPDATE pg2kafka.relay_lease SET queue_floor = least(queue_floor, back_ids[1]);
  -- The rows bypass the capture triggers: wake a sleeping relay as they would.
  PERFORM pg_notify('pg2kafka_events', '');
  RETURN QUERY SELECT unnest(back_ids);
END
$$;

-- Drops dead letters for good (NULL ids: all of them). Only the named ones: the rest of a
-- parked key stays parked until it is retried or discarded too. Returns the ids dropped.
CREATE OR REPLACE FUNCTION pg2kafka.discard_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  LOCK TABLE pg2kafka.dead_letters IN EXCLUSIVE MODE;
  RETURN QUERY
  DELETE FROM pg2kafka.dead_letters d WHERE ids IS NULL OR d.id = ANY(ids) RETURNING d.id;
END
$$;

REVOKE ALL ON FUNCTION pg2kafka.move_to_dead_letters(jsonb, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.dead_letter_group(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.retry_dead_letters(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2kafka.discard_dead_letters(bigint[]) FROM PUBLIC;
