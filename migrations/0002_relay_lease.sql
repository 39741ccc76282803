-- Up Migration
--
-- Leadership among relays: one row, held by the active relay. A lease with a heartbeat
-- and an epoch rather than an advisory lock: session advisory locks break behind
-- transaction-pooling proxies and can outlive a dead peer for as long as its TCP
-- connection looks alive. Times come from the database clock, the one clock every relay
-- shares. The relay's fetch and delete both require the lease (holder, epoch, not
-- expired), so a relay that lost it can neither read a batch to ship nor delete one.
CREATE TABLE pg2kafka.relay_lease (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  holder text,
  epoch bigint NOT NULL DEFAULT 0,
  acquired_at timestamptz,
  renewed_at timestamptz,
  expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO pg2kafka.relay_lease DEFAULT VALUES;
