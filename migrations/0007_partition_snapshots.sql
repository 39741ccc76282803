-- Up Migration
--
-- Partitions attached after setup: ATTACH PARTITION gives the new partition the capture
-- triggers, but the rows it brings were never inserted through them. They are copied as
-- SNAPSHOT events, like the rows a table had when it was set up (sql/25_snapshots.sql).
--
-- tracked_tables.partitions: for a partitioned table, the leaf partitions whose rows are
-- copied, or queued to be: those it had at setup, and those attached since that the
-- snapshot runners noticed. A leaf not in it is new. NULL for a table not partitioned.
ALTER TABLE pg2kafka.tracked_tables ADD COLUMN partitions oid[];
-- Tables set up before: their partitions as they are now.
UPDATE pg2kafka.tracked_tables t
SET partitions = ARRAY(SELECT p.relid FROM pg_partition_tree(t.table_oid) p WHERE p.isleaf ORDER BY p.relid)
FROM pg_class c
WHERE c.oid = t.table_oid AND c.relkind = 'p';

-- A snapshot is a sequence of walks, each over the key in order: the table itself, or one
-- partition attached after setup (source_oid), up to until_keys (inclusive) or to its last
-- key. queued_walks holds those still to come: [{"source": oid, "until": [text] or null}].
ALTER TABLE pg2kafka.snapshots ADD COLUMN source_oid oid;
ALTER TABLE pg2kafka.snapshots ADD COLUMN until_keys text[];
ALTER TABLE pg2kafka.snapshots ADD COLUMN queued_walks jsonb NOT NULL DEFAULT '[]';
