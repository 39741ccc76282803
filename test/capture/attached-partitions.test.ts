/**
 * Partitions attached to a captured table after setup: ATTACH PARTITION gives them the
 * capture triggers, but the rows they bring never passed through them. The snapshot
 * runners notice such a partition (also one detached and attached again) and copy its
 * rows as SNAPSHOT events, once each, in a walk of its own: the walk of the whole table
 * reads only the partitions it started with.
 *
 * pg2kafka is installed by a dedicated role (as the README advises), granted what setup
 * needs on the partitioned tables and the partitions they have then (CREATE TRIGGER
 * recurses into them); the partitions attached later grant it nothing.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { migrate } from '../../src/capture/migrate.ts';
import { uniqueName, useTestDatabase, waitFor } from '../helpers.ts';
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

/**
 * `name` (id int primary key) partitioned by range, with one partition `<name>_1` for ids
 * 1..99999 holding ids 1..rows, granted to pg2kafka's role, set up.
 */
async function setUpPartitioned(name: string, rows: number): Promise<void> {
  await db.sql.unsafe(`create table ${name} (id int primary key) partition by range (id)`);
  await db.sql.unsafe(
    `create table ${name}_1 partition of ${name} for values from (1) to (100000)`,
  );
  await grantCapture(name, `${name}_1`);
  await db.sql.unsafe(`insert into ${name} select g from generate_series(1, ${rows}) g`);
  await db.sql.unsafe(`select pg2kafka.setup('${name}')`);
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

test('attached while the walk of the whole table runs: a walk of its own after it, every row once', async () => {
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
  // A chunk of the whole table before the runner notices it: ledger_b is not its to read.
  await db.sql`select * from pg2kafka.snapshot_chunk('ledger')`;
  assert.equal(await attachedPartitions(), 1);
  const [state] = await db.sql<{ walks: string[]; queued: string[]; after: string[] }[]>`
    select walk_partitions::regclass[]::text[] as walks, queued_partitions::regclass[]::text[] as queued,
           after_keys as after
    from pg2kafka.snapshots where table_oid = 'ledger'::regclass`;
  assert.deepEqual(
    { ...state },
    { walks: ['ledger_a'], queued: ['ledger_b'], after: ['10000', 'a'] },
  );
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
  const [done] = await db.sql<{ outcome: string; rows: string; queued: unknown }[]>`
    select outcome, rows_done::text as rows, queued_partitions as queued
    from pg2kafka.snapshots where table_oid = 'ledger'::regclass`;
  assert.deepEqual({ ...done }, { outcome: 'done', rows: '16000', queued: [] });
});

test('a walk queued for a partition detached before its turn copies nothing; teardown drops the queue', async () => {
  await setUpPartitioned('logs', 12_000);
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
  const [ended] = await db.sql<{ outcome: string; queued: unknown }[]>`
    select outcome, queued_partitions as queued from pg2kafka.snapshots where table_oid = 'logs'::regclass`;
  assert.deepEqual({ ...ended }, { outcome: 'cancelled', queued: [] });
});

test('detached, changed and attached again in one transaction, between two looks: its rows are copied again', async () => {
  await db.sql`create table stock (id int primary key, n int not null) partition by range (id)`;
  await db.sql`create table stock_1 partition of stock for values from (1) to (1000)`;
  await db.sql`create table stock_2 partition of stock for values from (1000) to (2000)`;
  await grantCapture('stock', 'stock_1', 'stock_2');
  await db.sql`insert into stock values (1, 1), (1000, 1), (1001, 1)`;
  await db.sql`select pg2kafka.setup('stock')`;
  await db.sql.begin(async (tx) => {
    await tx`alter table stock detach partition stock_2`;
    // Detached, it has no capture triggers: these changes leave no event.
    await tx`update stock_2 set n = 2 where id = 1000`;
    await tx`insert into stock_2 values (1500, 1)`;
    await tx`alter table stock attach partition stock_2 for values from (1000) to (2000)`;
  });
  assert.equal(await attachedPartitions(), 1, 'its trigger is new: attached again');
  await db.sql`call pg2kafka.run_snapshots()`;
  const snapshots = (await queuedEvents(db.sql, 'stock')).filter((e) => e.statement === 'SNAPSHOT');
  assert.deepEqual(
    snapshots.slice(3).map((e) => [e.external_id, e.data]),
    [
      ['1000', { id: 1000, n: 2 }],
      ['1001', { id: 1001, n: 1 }],
      ['1500', { id: 1500, n: 1 }],
    ],
  );
});

test('attached, detached and attached again while the walk of the whole table runs: one walk, every row once', async () => {
  await db.sql`create table trips (id int, zone int, primary key (id, zone)) partition by list (zone)`;
  await db.sql`create table trips_1 partition of trips for values in (1)`;
  await grantCapture('trips', 'trips_1');
  await db.sql`insert into trips select g, 1 from generate_series(1, 12000) g`;
  await db.sql`select pg2kafka.setup('trips')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('trips')`;
  await db.sql`create table trips_2 (id int, zone int, primary key (id, zone))`;
  await db.sql`insert into trips_2 select g, 2 from generate_series(1, 100) g`;
  await db.sql`alter table trips attach partition trips_2 for values in (2)`;
  assert.equal(await attachedPartitions(), 1);
  await db.sql`alter table trips detach partition trips_2`;
  await db.sql`select * from pg2kafka.snapshot_chunk('trips')`;
  await db.sql`alter table trips attach partition trips_2 for values in (2)`;
  assert.equal(await attachedPartitions(), 1);
  await db.sql`call pg2kafka.run_snapshots()`;
  const counts = await snapshotCounts('trips');
  assert.equal(counts.size, 12_100);
  assert.deepEqual(
    [...counts].filter(([, n]) => n !== 1),
    [],
    'no row twice',
  );
});

test('attached while a snapshot of some rows runs: that one does not read it, its own walk copies every row', async () => {
  await db.sql`create table fares (id int primary key, kind text not null) partition by range (id)`;
  await db.sql`create table fares_1 partition of fares for values from (1) to (100000)`;
  await grantCapture('fares', 'fares_1');
  await db.sql`insert into fares select g, 'a' from generate_series(1, 12000) g`;
  await db.sql`select pg2kafka.setup('fares', snapshot => 'none')`;
  await db.sql`select pg2kafka.resnapshot('fares', 'id % 2 = 0')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('fares')`;
  await db.sql`create table fares_2 (id int primary key, kind text not null)`;
  await db.sql`insert into fares_2 select g, 'b' from generate_series(100000, 100009) g`;
  await db.sql`alter table fares attach partition fares_2 for values from (100000) to (200000)`;
  assert.equal(await attachedPartitions(), 1);
  await db.sql`call pg2kafka.run_snapshots()`;
  const counts = await snapshotCounts('fares');
  assert.equal(counts.size, 6_000 + 10, 'the even rows, and every row of the new partition');
  assert.deepEqual(
    [...counts].filter(([, n]) => n !== 1),
    [],
    'none twice',
  );
});

test('a key that cannot be walked: the attached partition is copied in one chunk, NULL keys too', async () => {
  await db.sql`create table notes (id int, label text, primary key (id)) partition by range (id)`;
  await db.sql`create table notes_1 partition of notes for values from (1) to (1000)`;
  await grantCapture('notes', 'notes_1');
  // A nullable, non-unique external id: accepted with a WARNING, copied under the lock.
  await db.sql`select pg2kafka.setup('notes', 'label')`;
  await db.sql`create table notes_2 (id int primary key, label text)`;
  await db.sql`insert into notes_2 values (1000, 'a'), (1001, null), (1002, null)`;
  await db.sql`alter table notes attach partition notes_2 for values from (1000) to (2000)`;
  assert.equal(await attachedPartitions(), 1);
  const [chunk] = await db.sql<{ rows: string; done: boolean }[]>`
    select rows_copied::text as rows, done from pg2kafka.snapshot_chunk('notes', 1)`;
  assert.deepEqual({ ...chunk }, { rows: '3', done: true });
});

test('a partition key with an expression: the copy evaluates nothing of it as the owner of pg2kafka', async () => {
  await db.sql`create table calls (who text, id int)`;
  await db.sql`grant insert on calls to public`;
  // Claims to be IMMUTABLE (a partition key must be), and records who evaluates it.
  await db.sql.unsafe(`
    create function public.note_call(n int) returns void language sql volatile as $$
    insert into public.calls values (current_user, n) $$`);
  await db.sql`grant execute on function public.note_call(int) to public`;
  await db.sql.unsafe(`
    create function public.bucket(n int) returns int language plpgsql immutable as $$
    begin perform public.note_call(n); return n; end $$`);
  // (A partition key with an expression allows no primary key.)
  await db.sql`create table events2 (id int not null) partition by range (public.bucket(id))`;
  await db.sql`create table events2_1 partition of events2 for values from (1) to (1000)`;
  await grantCapture('events2', 'events2_1');
  await db.sql`select pg2kafka.setup('events2', 'id')`;
  await db.sql`create table events2_2 (id int not null)`;
  await db.sql`insert into events2_2 values (1000), (1001)`;
  await db.sql`alter table events2 attach partition events2_2 for values from (1000) to (2000)`;
  assert.equal(await attachedPartitions(), 1);
  await db.sql`call pg2kafka.run_snapshots()`;
  assert.deepEqual([...(await snapshotCounts('events2')).keys()].sort(), ['1000', '1001']);
  const calls = await db.sql<{ who: string }[]>`select who from calls where who = ${role}`;
  assert.deepEqual(
    calls.map((c) => c.who),
    [],
  );
});

test('a captured partitioned table dropped: the runners go on, its pending snapshot ends', async () => {
  await setUpPartitioned('gone', 12_000);
  const [oid] = await db.sql<{ oid: string }[]>`select 'gone'::regclass::oid::text as oid`;
  await db.sql`drop table gone`;
  assert.equal(await attachedPartitions(), 0);
  const { notices, onnotice } = collectNotices();
  const sql = db.connect({ max: 1, onnotice });
  try {
    const [chunk] = await sql<{ rows: string; done: boolean }[]>`
      select rows_copied::text as rows, done from pg2kafka.snapshot_chunk(${oid?.oid ?? ''}::oid::regclass)`;
    assert.deepEqual({ ...chunk }, { rows: '0', done: true });
  } finally {
    await sql.end();
  }
  assert.deepEqual(
    notices.map((n) => n.message),
    [`pg2kafka: the snapshot of table ${oid?.oid} stopped: the table was dropped`],
  );
});

test('resnapshot with a condition waits for a runner queueing a partition, then sees its snapshot run', async () => {
  await setUpPartitioned('routes', 0);
  await db.sql`create table routes_2 (id int primary key)`;
  await db.sql`insert into routes_2 values (100000), (100001)`;
  await db.sql`alter table routes attach partition routes_2 for values from (100000) to (200000)`;
  const runner = await db.sql.reserve();
  try {
    await runner`begin`;
    await runner`select pg2kafka.snapshot_attached_partitions()`;
    const other = db.connect({ max: 1 });
    try {
      const [me] = await other<{ pid: number }[]>`select pg_backend_pid() as pid`;
      const resnapshot = other`select pg2kafka.resnapshot('routes', 'id < 3')`;
      const outcome = resnapshot.then(
        () => 'registered',
        (error: unknown) => (error as { code?: string }).code ?? 'error',
      );
      await waitFor('resnapshot waiting for the runner', async () => {
        const [row] = await db.sql<{ waiting: boolean }[]>`
          select wait_event_type = 'Lock' as waiting from pg_stat_activity where pid = ${me?.pid ?? 0}`;
        return row?.waiting ?? false;
      });
      await runner`commit`;
      assert.equal(await outcome, '55006', 'refused: the partition copy runs');
    } finally {
      await other.end();
    }
  } finally {
    runner.release();
  }
  await db.sql`call pg2kafka.run_snapshots()`;
  assert.deepEqual([...(await snapshotCounts('routes')).keys()].sort(), ['100000', '100001']);
});
