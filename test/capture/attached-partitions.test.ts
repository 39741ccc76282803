/**
 * Partitions attached to a captured table after setup: ATTACH PARTITION gives them the
 * capture triggers, but the rows they bring never passed through them. The snapshot
 * runners notice such a partition and copy its rows as SNAPSHOT events, once each:
 * alone when no snapshot runs, or, while the walk of the whole table runs, only the keys
 * that walk had already passed (it reads the new partition itself from then on).
 *
 * pg2kafka is installed by a dedicated role (as the README advises), granted what setup
 * needs on the partitioned tables and the partitions they have then (CREATE TRIGGER
 * recurses into them); the partitions attached later grant it nothing.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { migrate } from '../../src/capture/migrate.ts';
import { uniqueName, useTestDatabase } from '../helpers.ts';
import { collectNotices, queuedEvents } from './support.ts';

const db = useTestDatabase();
/** Roles belong to the whole server: this file's own, dropped after it. */
const role = uniqueName('pg2kafka_parts');

before(async () => {
  await db.ready;
  await db.sql.unsafe(`create role "${role}" login`);
  await db.sql.unsafe(`grant create on database "${db.name}" to "${role}"`);
  const url = new URL(db.url);
  url.username = role;
  await migrate({ databaseUrl: url.toString() });
});

after(async () => {
  await db.sql.unsafe(`drop owned by "${role}" cascade`).catch(() => undefined);
});

/** What pg2kafka's role needs (examples/pg2kafka-role.sql) on `tables`, and on nothing else. */
async function grantCapture(...tables: string[]): Promise<void> {
  await db.sql.unsafe(`grant select, trigger, update on ${tables.join(', ')} to "${role}"`);
}

/** The SNAPSHOT events of `table` per key: how many of each. */
async function snapshotCounts(table: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const e of await queuedEvents(db.sql, table)) {
    if (e.statement === 'SNAPSHOT' && e.external_id !== null) {
      counts.set(e.external_id, (counts.get(e.external_id) ?? 0) + 1);
    }
  }
  return counts;
}

async function attachedPartitions(): Promise<number> {
  const [row] = await db.sql<{ n: number }[]>`select pg2kafka.snapshot_attached_partitions() as n`;
  return row?.n ?? -1;
}

test('a partition attached after setup: its rows arrive as SNAPSHOT events, once; later changes as usual', async () => {
  await db.sql`create table sales (id int primary key, v text) partition by range (id)`;
  await db.sql`create table sales_1 partition of sales for values from (1) to (1000)`;
  await grantCapture('sales', 'sales_1');
  await db.sql`insert into sales values (1, 'a'), (2, 'a')`;
  await db.sql`select pg2kafka.setup('sales')`;
  assert.equal(await attachedPartitions(), 0, 'nothing new yet');

  await db.sql`create table sales_2 (id int primary key, v text)`;
  await db.sql`insert into sales_2 values (1000, 'b'), (1001, 'b'), (1002, 'b')`;
  await db.sql`alter table sales attach partition sales_2 for values from (1000) to (2000)`;
  // Pre-created and empty: nothing to copy, its rows will all be INSERTs.
  await db.sql`create table sales_3 partition of sales for values from (2000) to (3000)`;
  const { notices, onnotice } = collectNotices();
  const sql = db.connect({ max: 1, onnotice });
  try {
    const [row] = await sql<{ n: number }[]>`select pg2kafka.snapshot_attached_partitions() as n`;
    assert.equal(row?.n, 1);
  } finally {
    await sql.end();
  }
  assert.deepEqual(
    notices.map((n) => n.message),
    [
      'pg2kafka: 1 partition(s) attached to public.sales since setup: their rows are queued to be copied online',
    ],
  );
  assert.equal(await attachedPartitions(), 0, 'noticed once');
  await db.sql`update sales set v = 'c' where id = 1001`;
  await db.sql`insert into sales values (2000, 'd')`;
  await db.sql`call pg2kafka.run_snapshots()`;
  assert.deepEqual(
    (await queuedEvents(db.sql, 'sales')).map((e) => [e.statement, e.external_id, e.data]),
    [
      ['SNAPSHOT', '1', { id: 1, v: 'a' }],
      ['SNAPSHOT', '2', { id: 2, v: 'a' }],
      ['UPDATE', '1001', { v: 'c' }],
      ['INSERT', '2000', { id: 2000, v: 'd' }],
      // The copy reads each row as it is by then, after the change already queued.
      ['SNAPSHOT', '1000', { id: 1000, v: 'b' }],
      ['SNAPSHOT', '1001', { id: 1001, v: 'c' }],
      ['SNAPSHOT', '1002', { id: 1002, v: 'b' }],
    ],
  );
  const [progress] = await db.sql<{ outcome: string; rows: string }[]>`
    select outcome, rows_done::text as rows from pg2kafka.snapshots where table_oid = 'sales'::regclass`;
  assert.deepEqual({ ...progress }, { outcome: 'done', rows: '3' });

  // Detached, its rows are no longer the table's; attached again, they are copied again.
  await db.sql`alter table sales detach partition sales_2`;
  assert.equal(await attachedPartitions(), 0);
  await db.sql`alter table sales attach partition sales_2 for values from (1000) to (2000)`;
  assert.equal(await attachedPartitions(), 1);
  await db.sql`call pg2kafka.run_snapshots()`;
  assert.equal((await snapshotCounts('sales')).get('1002'), 2);
});

test('attached while the walk of the whole table runs: the keys it passed are walked in the partition, every row once', async () => {
  // Keys (id, grp) in that order: the new partition's keys interleave with the old ones.
  await db.sql`
    create table ledger (id int, grp text, v int not null, primary key (id, grp)) partition by list (grp)`;
  await db.sql`create table ledger_a partition of ledger for values in ('a')`;
  await grantCapture('ledger', 'ledger_a');
  await db.sql`insert into ledger select g, 'a', 1 from generate_series(1, 12000) g`;
  await db.sql`select pg2kafka.setup('ledger')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('ledger')`;

  await db.sql`create table ledger_b (id int, grp text, v int not null, primary key (id, grp))`;
  await db.sql`insert into ledger_b select g, 'b', 1 from generate_series(1, 12000, 3) g`;
  await db.sql`alter table ledger attach partition ledger_b for values in ('b')`;
  // The next chunk notices it first: its rows up to where the walk is, [5000,"a"], are queued.
  await db.sql`select * from pg2kafka.snapshot_chunk('ledger')`;
  const [state] = await db.sql<{ walks: unknown; after: string[] }[]>`
    select queued_walks as walks, after_keys as after
    from pg2kafka.snapshots where table_oid = 'ledger'::regclass`;
  const [b] = await db.sql<{ oid: string }[]>`select 'ledger_b'::regclass::oid::text as oid`;
  assert.deepEqual(state?.walks, [{ source: Number(b?.oid), until: ['5000', 'a'] }]);
  await db.sql`call pg2kafka.run_snapshots()`;

  const counts = await snapshotCounts('ledger');
  const expected = [
    ...Array.from({ length: 12000 }, (_, i) => `[${i + 1},"a"]`),
    ...Array.from({ length: 4000 }, (_, i) => `[${3 * i + 1},"b"]`),
  ];
  assert.deepEqual(
    expected.filter((k) => counts.get(k) !== 1).slice(0, 10),
    [],
    'every row exactly once',
  );
  assert.equal(counts.size, expected.length, 'and nothing else');
  const [done] = await db.sql<{ outcome: string; rows: string; walks: unknown }[]>`
    select outcome, rows_done::text as rows, queued_walks as walks
    from pg2kafka.snapshots where table_oid = 'ledger'::regclass`;
  assert.deepEqual({ ...done }, { outcome: 'done', rows: '16000', walks: [] });
});

test('a walk queued for a partition detached before its turn copies nothing; teardown drops the queue', async () => {
  await db.sql`create table logs (id int primary key) partition by range (id)`;
  await db.sql`create table logs_1 partition of logs for values from (1) to (100000)`;
  await grantCapture('logs', 'logs_1');
  await db.sql`insert into logs select g from generate_series(1, 12000) g`;
  await db.sql`select pg2kafka.setup('logs')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('logs')`;
  // Keys below the walk's position: queued behind it.
  await db.sql`create table logs_0 (id int primary key)`;
  await db.sql`insert into logs_0 select -g from generate_series(1, 10) g`;
  await db.sql`alter table logs attach partition logs_0 for values from (-100) to (1)`;
  assert.equal(await attachedPartitions(), 1);
  await db.sql`alter table logs detach partition logs_0`;
  await db.sql`call pg2kafka.run_snapshots()`;
  const counts = await snapshotCounts('logs');
  assert.equal(counts.size, 12000);
  assert.equal(counts.get('-1'), undefined, 'the detached partition was not copied');

  await db.sql`alter table logs attach partition logs_0 for values from (-100) to (1)`;
  await db.sql`select pg2kafka.resnapshot('logs')`;
  // A snapshot of every row covers the partition: nothing more is queued for it.
  assert.equal(await attachedPartitions(), 0);
  // teardown drops triggers, which only the table's owner may do.
  await db.sql.unsafe(`alter table logs owner to "${role}"`);
  await db.sql`select pg2kafka.teardown('logs')`;
  const [ended] = await db.sql<{ outcome: string; walks: unknown }[]>`
    select outcome, queued_walks as walks from pg2kafka.snapshots where table_oid = 'logs'::regclass`;
  assert.deepEqual({ ...ended }, { outcome: 'cancelled', walks: [] });
});
