-- The role pg2kafka runs as in docker-compose.yml, made by the superuser after
-- products.sql (PostgreSQL's image runs its init scripts in name order, with psql).
--
-- As README "Security" advises, `pg2kafka migrate` runs as a dedicated role, not as a
-- superuser: it owns schema pg2kafka and its SECURITY DEFINER functions, and the relay
-- connects as it too. It needs, on the database, CREATE (migrate creates the schema),
-- and on each table it captures:
--   SELECT   setup() copies the existing rows, the triggers print rows as JSON;
--   TRIGGER  setup() installs the capture triggers;
--   UPDATE   setup() locks the table SHARE ROW EXCLUSIVE for the copy, and LOCK TABLE in
--            that mode needs UPDATE, DELETE or TRUNCATE (MAINTAIN from PostgreSQL 17).
-- For a partitioned table, grant the same on its partitions too: CREATE TRIGGER recurses
-- into them (setup, and migrate when it reinstalls the triggers). The rows of a partition
-- attached later are copied through the partitioned table, which needs no new grant; the
-- role that creates or attaches it needs EXECUTE on pg2kafka.capture_insert(),
-- capture_update() and capture_delete() (README: "Partitions attached later").
-- teardown() drops the triggers, which only the table's owner may do: run it as the
-- owner of the table, or make this role the owner.
--
-- psql variables pg2kafka_role and pg2kafka_password override the sample's name and
-- password (psql -v pg2kafka_role=... -f pg2kafka-role.sql).
\if :{?pg2kafka_role}
\else
  \set pg2kafka_role pg2kafka
\endif
\if :{?pg2kafka_password}
\else
  \set pg2kafka_password pg2kafka
\endif

CREATE ROLE :"pg2kafka_role" LOGIN PASSWORD :'pg2kafka_password';
GRANT CREATE ON DATABASE :"DBNAME" TO :"pg2kafka_role";
GRANT SELECT, TRIGGER, UPDATE ON TABLE products TO :"pg2kafka_role";
