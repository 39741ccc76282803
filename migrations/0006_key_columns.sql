-- Up Migration
--
-- Keys of several columns: a table whose primary key has several columns is captured
-- with a message key that is the JSON array of their values (sql/30_events.sql says the
-- exact text), and its online snapshot walks them in index order.
--
-- key_columns: the columns whose values make the external id, in the primary key's order;
-- one element for a key of one column (then equal to external_id_column, the original's
-- name for it). For a key of several columns external_id_column holds their names as a
-- JSON array (["region","id"]), for display: no column has that name.
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN key_columns text[];
UPDATE pg2kafka.tracked_tables SET key_columns = ARRAY[external_id_column];
ALTER TABLE pg2kafka.tracked_tables ALTER COLUMN key_columns SET NOT NULL;

-- A snapshot walks the key columns together, in row order: (a, b) > (after_keys[1],
-- after_keys[2]). after_keys holds each column's text at the last bound copied.
ALTER TABLE pg2kafka.snapshots RENAME COLUMN key_column TO key_columns;
ALTER TABLE pg2kafka.snapshots ALTER COLUMN key_columns TYPE text[] USING ARRAY[key_columns];
ALTER TABLE pg2kafka.snapshots RENAME COLUMN after_key TO after_keys;
ALTER TABLE pg2kafka.snapshots ALTER COLUMN after_keys TYPE text[]
  USING CASE WHEN after_keys IS NOT NULL THEN ARRAY[after_keys] END;
