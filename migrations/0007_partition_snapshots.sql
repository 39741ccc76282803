-- Up Migration
--
-- Partitions attached after setup: ATTACH PARTITION gives the new partition the capture
-- triggers, but the rows it brings were never inserted through them. They are copied as
-- SNAPSHOT events, like the rows a table had when it was set up (sql/25_snapshots.sql).
--
-- tracked_tables.partition_triggers: for a partitioned table, the capture triggers
-- (_pg2kafka_insert) that its leaf partitions had when their rows were last copied or
-- queued to be: at setup, and whenever the snapshot runners noticed a new one since.
-- ATTACH clones the trigger, so a partition attached since (or detached and attached
-- again) carries a trigger not in the list. NULL for a table not partitioned.
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN partition_triggers oid[];
-- Tables set up before: their partitions as they are now.
UPDATE pg2kafka.tracked_tables t
SET partition_triggers = ARRAY(
  SELECT tg.oid FROM pg_trigger tg
  WHERE tg.tgname = '_pg2kafka_insert'
    AND tg.tgrelid IN (SELECT p.relid FROM pg_partition_tree(t.table_oid) p WHERE p.isleaf)
  ORDER BY tg.oid)
FROM pg_class c
WHERE c.oid = t.table_oid AND c.relkind = 'p';

-- A snapshot is a sequence of walks over the key, in order: the whole table's, then one
-- per partition attached while it ran. source_oid: the partition the walk in progress
-- reads (NULL: the whole table). walk_partitions: the leaf partitions the walk of the
-- whole table reads, those the table had when it started (NULL: not partitioned); one
-- attached later gets a walk of its own, queued in queued_partitions.
ALTER TABLE pg2kafka.snapshots ADD COLUMN source_oid oid;
ALTER TABLE pg2kafka.snapshots ADD COLUMN walk_partitions oid[];
ALTER TABLE pg2kafka.snapshots ADD COLUMN queued_partitions oid[] NOT NULL DEFAULT '{}';
-- A walk in progress since before this migration reads every partition, as it did.
UPDATE pg2kafka.snapshots s
SET walk_partitions = ARRAY(SELECT p.relid FROM pg_partition_tree(s.table_oid) p WHERE p.isleaf ORDER BY p.relid)
FROM pg_class c
WHERE c.oid = s.table_oid AND c.relkind = 'p' AND s.finished_at IS NULL;
