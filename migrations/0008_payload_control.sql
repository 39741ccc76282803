-- Up Migration
--
-- Payload control: what of a captured table leaves the database, set by setup() or
-- alter() (sql/20_setup.sql) and applied by the capture triggers, so that a column left
-- out never reaches the queue, a dead letter or Kafka.
--
-- included_columns: the only columns events carry (the key columns always), NULL for
-- every column. excluded_columns: the columns events never carry; a column added to the
-- table later is carried unless listed. At most one of the two is set.
-- row_filter: a condition on the row, as PostgreSQL printed it back with the row named
-- pg2kafka_row (NULL: every row). Rows outside it send nothing; an UPDATE that takes a row
-- out sends a DELETE, one that brings it in an INSERT.
-- tombstones: after each DELETE event, a message with the same key and a null value.
-- message_format: 'pg2kafka' or 'debezium'; NULL follows the relay's MESSAGE_FORMAT.
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN included_columns text[];
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN excluded_columns text[] NOT NULL DEFAULT '{}';
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN row_filter text;
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN tombstones boolean NOT NULL DEFAULT false;
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN message_format text
  CHECK (message_format IN ('pg2kafka', 'debezium'));
ALTER TABLE pg2kafka.tracked_tables ADD CONSTRAINT tracked_tables_one_column_list
  CHECK (included_columns IS NULL OR cardinality(excluded_columns) = 0);

