-- Up Migration
--
-- Debezium's message formats (src/relay/debezium.ts).
--
-- captured_changes.tx_id: the writer's transaction id (txid_current(), with its epoch),
-- Debezium's source.txId; dead letters keep it, so a retried change keeps it too. Added
-- without a default first (no rewrite of a queue that may be long), then given one for
-- the rows to come; changes queued before stay NULL, which Debezium's schema allows.
-- bigint and txid_current() rather than xid8, which PostgreSQL 12 does not have.
-- message_format also accepts 'debezium-schemaless': the payload without Connect's schema.
ALTER TABLE pg2kafka.captured_changes ADD COLUMN tx_id bigint;
ALTER TABLE pg2kafka.captured_changes ALTER COLUMN tx_id SET DEFAULT pg_catalog.txid_current();
ALTER TABLE pg2kafka.dead_letters ADD COLUMN tx_id bigint;
ALTER TABLE pg2kafka.tracked_tables DROP CONSTRAINT tracked_tables_message_format_check;
ALTER TABLE pg2kafka.tracked_tables ADD CONSTRAINT tracked_tables_message_format_check
  CHECK (message_format IN ('pg2kafka', 'debezium', 'debezium-schemaless'));
