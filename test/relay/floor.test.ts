/**
 * The queue floor (src/relay/floor.ts) on a real broker, with the relay as a child process:
 * - out-of-order commits while the floor rises: slow transactions hold low ids while later
 *   ones commit, some roll back, many keys, concurrent writers; each change raises its
 *   key's version by one, and the consumer side checks every key's history: nothing lost,
 *   nothing reordered, and no open transaction's id ever fell below the floor;
 * - a dead letter whose id the floor passed, retried: it is shipped, ahead of its key's
 *   later change;
 * - a REPEATABLE READ snapshot held open while thousands of rows are shipped and deleted:
 *   the floor rises past them, and a scan from the floor reads a few pages where a scan
 *   from the start of the index walks every dead entry the snapshot keeps.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type postgres from 'postgres';
import { FLOOR_MIN_STEP, FloorKeeper } from '../../src/relay/floor.ts';
import { EventQueue } from '../../src/relay/queue.ts';
import { vacuumHolder } from '../../src/relay/vacuum.ts';
import { sleep, useKafka, useTestDatabase, waitFor, type Sql } from '../helpers.ts';
import {
  dedupe,
  setMaxMessageBytes,
  useCollectors,
  useRelays,
  type ArrivedEvent,
} from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

const { collectTopic } = useCollectors(kafka.kafka);

async function floorOf(sql: Sql | postgres.TransactionSql): Promise<bigint> {
  const [row] = await sql<{ floor: string }[]>`
    select queue_floor::text as floor from pg2kafka.relay_lease`;
  return BigInt(row?.floor ?? '-1');
}

/** The highest id the queue's identity has handed out. */
async function lastId(): Promise<bigint> {
  const [row] = await db.sql<{ id: string }[]>`
    select last_value::text as id from pg2kafka.captured_changes_id_seq`;
  return BigInt(row?.id ?? '-1');
}

/**
 * The version oracle: per key, an INSERT with v = 1, then UPDATEs raising v by exactly 1,
 * always on one partition; replaying the topic gives the table.
 */
async function assertHistories(table: string, events: ArrivedEvent[]): Promise<void> {
  const state = new Map<string, number>();
  const partitions = new Map<string, number>();
  for (const e of events) {
    const key = e.key ?? '(null)';
    const at = `key ${key} ${e.statement} ${JSON.stringify(e.data)}`;
    const partition = partitions.get(key);
    if (partition !== undefined) assert.equal(e.partition, partition, `${at}: moved partitions`);
    partitions.set(key, e.partition);
    if (e.statement === 'INSERT') {
      assert.ok(!state.has(key), `${at}: inserted twice`);
      assert.equal(Number(e.data.v), 1, `${at}: first version`);
      state.set(key, 1);
    } else {
      assert.equal(e.statement, 'UPDATE', at);
      const v = state.get(key);
      assert.ok(v !== undefined, `${at}: update before the insert`);
      assert.equal(Number(e.data.v), v + 1, `${at}: out of order (had v=${v})`);
      state.set(key, v + 1);
    }
  }
  const rows = await db.sql.unsafe<{ k: string; v: number }[]>(`select k, v from ${table}`);
  assert.deepEqual(
    new Map(rows.map((r) => [r.k, r.v])),
    state,
    'replaying the topic gives the table',
  );
}

class Rollback extends Error {}

test('the floor stops below the id of an open transaction, even the only one running, and passes it once it ended', async () => {
  await db.sql`create table lone_t (id int primary key)`;
  await db.sql`select pg2kafka.setup('lone_t', 'id')`;
  const queue = new EventQueue(db.sql);
  const lease = await queue.acquireLease('floor test', 60_000);
  assert.ok(lease, 'the lease is free');
  const errors: unknown[] = [];
  const keeper = new FloorKeeper(queue.floor, (error) => errors.push(error), 0);
  const opened = db.connect({ max: 1 });
  const open = await opened.reserve();
  /** The highest id visible now, as a fetch would have read it. */
  const highest = async (): Promise<string | undefined> => {
    const [row] = await db.sql<{ id: string | null }[]>`
      select max(id)::text as id from pg2kafka.captured_changes`;
    return row?.id ?? undefined;
  };
  /** Runs keeper steps as the relay does after a fetch that read up to `highestId`. */
  const steps = async (highestId: string | undefined): Promise<bigint> => {
    for (let i = 0; i < 3; i += 1) {
      keeper.observe(lease, highestId);
      await keeper.settled();
    }
    return floorOf(db.sql);
  };
  /** Deletes the visible rows in [from, to], as shipping them does. */
  const ship = (from: bigint, to: string | undefined): Promise<unknown> =>
    db.sql`delete from pg2kafka.captured_changes
           where id >= ${from.toString()}::int8 and id <= ${to ?? '0'}::int8`;
  try {
    await db.sql`insert into lone_t select generate_series(1, 200)`;
    const early = await highest();
    await ship(0n, early);
    const before = await steps(early);
    assert.equal(before, BigInt(early ?? '0') + 1n, 'the floor passed what was shipped');

    await open`begin`;
    await open`insert into lone_t values (0)`;
    const [held] = await open<{ id: string }[]>`
      select currval('pg2kafka.captured_changes_id_seq')::text as id`;
    const heldId = BigInt(held?.id ?? '0');
    // Later ids commit, are seen by the relay, and are shipped; the open one is the only
    // transaction running with an xid meanwhile.
    await db.sql`insert into lone_t select generate_series(201, 500)`;
    const later = await highest();
    await ship(heldId + 1n, later);
    const whileOpen = await steps(later);
    assert.ok(whileOpen <= heldId, `floor ${whileOpen} stays at or below the open id ${heldId}`);

    await open`commit`;
    assert.equal(await steps(later), heldId, 'its change, committed now, is queued at the floor');
    await ship(heldId, heldId.toString());
    assert.equal(await steps(later), BigInt(later ?? '0') + 1n, 'then the floor passes it');
    assert.deepEqual(errors, []);
  } finally {
    await open`rollback`.catch(() => undefined);
    open.release();
    await opened.end();
    await queue.releaseLease(lease);
  }
});

test('out-of-order commits while the floor rises: slow transactions hold low ids, nothing is lost or reordered', async () => {
  const table = 'torture_t';
  await db.sql.unsafe(`create table ${table} (k text primary key, v int not null)`);
  await db.sql`select pg2kafka.setup(${table}, 'k')`;
  const topic = `pg2kafka.${db.name}.${table}`;
  const upsert = `insert into ${table} (k, v) values ($1, 1) on conflict (k) do update set v = ${table}.v + 1`;
  const sharedKey = (): string => `k${Math.floor(Math.random() * 300)}`;
  const r = relay({ BATCH_SIZE: '100', TOPIC_PARTITIONS: '3' });
  await r.waitForLog('active: shipping events');

  const runMs = 12_000;
  const deadline = Date.now() + runMs;
  let committed = 0;
  const slow = { committed: 0, rolledBack: 0, floorMovedWhileOpen: 0 };
  const violations: string[] = [];
  const monitor = db.connect({ max: 2 });
  const floors = new Set<bigint>();
  const sampler = (async () => {
    while (Date.now() < deadline) {
      floors.add(await floorOf(monitor));
      await sleep(100);
    }
  })();
  // Fast writers: single-row autocommit upserts on shared keys, as fast as they go.
  const fast = Array.from({ length: 3 }, async () => {
    const sql = db.connect({ max: 1 });
    try {
      while (Date.now() < deadline) {
        await sql.unsafe(upsert, [sharedKey()]);
        committed += 1;
      }
    } finally {
      await sql.end();
    }
  });
  // Slow writers: change a shared key (taking a low id), stay open 0.3 to 2.5 s while the
  // fast writers commit higher ids and the relay raises the floor, maybe change a key of
  // their own (so two slow writers never wait on each other), then commit or roll back.
  const slowWriters = Array.from({ length: 4 }, async (_, writer) => {
    const sql = db.connect({ max: 1 });
    try {
      while (Date.now() < deadline) {
        const rollback = Math.random() < 0.15;
        let changes = 0;
        try {
          await sql.begin(async (tx) => {
            await tx.unsafe(upsert, [sharedKey()]);
            changes += 1;
            const [held] = await tx<{ id: string }[]>`
              select currval('pg2kafka.captured_changes_id_seq')::text as id`;
            const heldId = BigInt(held?.id ?? '0');
            const floorThen = await floorOf(monitor);
            await sleep(300 + Math.random() * 2200);
            if (Math.random() < 0.5) {
              await tx.unsafe(upsert, [`own${writer}_${Math.floor(Math.random() * 20)}`]);
              changes += 1;
            }
            const floorNow = await floorOf(monitor);
            if (floorNow > heldId) {
              violations.push(`the floor ${floorNow} passed id ${heldId} of an open transaction`);
            }
            if (floorNow > floorThen) slow.floorMovedWhileOpen += 1;
            if (rollback) throw new Rollback();
          });
          committed += changes;
          slow.committed += 1;
        } catch (error) {
          if (!(error instanceof Rollback)) throw error;
          slow.rolledBack += 1;
        }
      }
    } finally {
      await sql.end();
    }
  });
  const consumer = await collectTopic(topic);
  try {
    await Promise.all([...fast, ...slowWriters, sampler]);
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 60_000, 200);
    await waitFor(
      `${committed} distinct events`,
      () => dedupe(consumer.received).unique.length >= committed,
      60_000,
      200,
    );
    await sleep(1000);
    const { unique } = dedupe(consumer.received);
    assert.deepEqual(violations, [], 'no open transaction’s id fell below the floor');
    assert.equal(unique.length, committed, 'one event per committed change, none lost, none extra');
    await assertHistories(table, unique);
    // The run tested something: the floor moved many times, also under open slow
    // transactions holding lower ids, and some of those committed and some rolled back.
    assert.ok(floors.size >= 5, `the floor took ${floors.size} values during the run`);
    assert.ok(
      slow.floorMovedWhileOpen >= 3,
      `floor raised under open transactions: ${JSON.stringify(slow)}`,
    );
    assert.ok(
      slow.committed >= 5 && slow.rolledBack >= 1,
      `slow transactions: ${JSON.stringify(slow)}`,
    );
    assert.ok(committed >= 1000, `writers committed ${committed} changes`);
  } finally {
    await consumer.stop();
    await r.stop();
    await monitor.end();
  }
});

test('a dead letter retried after the floor passed its id is shipped, ahead of its key’s later change', async () => {
  const table = 'retried_t';
  await db.sql.unsafe(`create table ${table} (id int primary key, v int not null, blob text)`);
  await db.sql`select pg2kafka.setup(${table}, 'id')`;
  const topic = `pg2kafka.${db.name}.${table}`;
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '3000' });
  const r = relay({ POLL_INTERVAL_MS: '100' });
  const consumer = await collectTopic(topic);
  try {
    await r.waitForLog('active: shipping events');
    // Key 1: too large for the topic (a dead letter, parking the key), then an update
    // that follows it there; then enough other rows that the floor can pass them.
    await db.sql.unsafe(`insert into ${table} values (1, 1, repeat('x', 5000))`);
    await db.sql.unsafe(`update ${table} set v = 2, blob = null where id = 1`);
    const others = 3 * Number(FLOOR_MIN_STEP);
    await db.sql.unsafe(
      `insert into ${table} select g, 1, null from generate_series(2, ${others + 1}) g`,
    );
    const letters = await waitFor(
      'key 1 and its follower in dead letters',
      async () => {
        const rows = await db.sql<{ id: string }[]>`
          select d.id::text as id from pg2kafka.dead_letters d where table_name = ${table} order by d.id`;
        return rows.length === 2 && rows.map((row) => BigInt(row.id));
      },
      30_000,
      100,
    );
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000, 100);
    const passed = await waitFor(
      'the floor past the dead letters',
      async () => {
        const floor = await floorOf(db.sql);
        return floor > (letters[1] ?? 0n) && floor;
      },
      15_000,
      100,
    );

    await setMaxMessageBytes(kafka, topic, 1_000_000);
    const { retried, floorAfter } = await db.sql.begin(async (tx) => {
      const rows = await tx<{ id: string }[]>`select pg2kafka.retry_dead_letters() as id`;
      return { retried: rows.map((row) => BigInt(row.id)), floorAfter: await floorOf(tx) };
    });
    assert.deepEqual(retried, letters, 'both dead letters went back under their ids');
    assert.ok(passed > (letters[1] ?? 0n), 'the floor had passed them');
    assert.equal(floorAfter, letters[0], 'the retry lowered the floor to the lowest id put back');
    // A later change of key 1, queued behind the retried ones.
    await db.sql.unsafe(`update ${table} set v = 3 where id = 1`);

    await waitFor(
      'key 1’s three events',
      () => dedupe(consumer.received).unique.filter((e) => e.key === '1').length >= 3,
      30_000,
      100,
    );
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000, 100);
    await sleep(500);
    const { unique } = dedupe(consumer.received);
    assert.deepEqual(
      unique.filter((e) => e.key === '1').map((e) => `${e.statement} v=${String(e.data.v)}`),
      ['INSERT v=1', 'UPDATE v=2', 'UPDATE v=3'],
    );
    assert.equal(unique.filter((e) => e.key !== '1').length, others, 'every other row once');
    const [left] = await db.sql<{ n: number }[]>`
      select count(*)::int as n from pg2kafka.dead_letters where table_name = ${table}`;
    assert.equal(left?.n, 0, 'no dead letters left');
    await waitFor(
      'the floor past the retried ids again',
      async () => (await floorOf(db.sql)) > (letters[1] ?? 0n),
      15_000,
      100,
    );
  } finally {
    await consumer.stop();
    await r.stop();
  }
});

/** Shared buffers a plan touched (hit or read), from EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON). */
async function buffersOf(query: string): Promise<{ buffers: number; rows: number }> {
  const [row] = await db.sql.unsafe<{ 'QUERY PLAN': [{ Plan: Record<string, number> }] }[]>(
    `explain (analyze, buffers, format json) ${query}`,
  );
  const plan = row?.['QUERY PLAN'][0].Plan ?? {};
  return {
    buffers: (plan['Shared Hit Blocks'] ?? 0) + (plan['Shared Read Blocks'] ?? 0),
    rows: plan['Actual Rows'] ?? -1,
  };
}

test('with a REPEATABLE READ snapshot held open, the floor rises past what was shipped and the fetch skips the dead entries', async () => {
  const table = 'held_t';
  await db.sql.unsafe(`create table ${table} (id int primary key, note text)`);
  await db.sql`select pg2kafka.setup(${table}, 'id')`;
  const topic = `pg2kafka.${db.name}.${table}`;
  const holding = db.connect({ max: 1, connection: { application_name: 'long report' } });
  const report = await holding.reserve();
  let r = relay();
  try {
    await report`begin isolation level repeatable read`;
    await report`select 1`;
    await r.waitForLog('active: shipping events');
    await kafka.createTopic(topic, 1);
    const consumer = await collectTopic(topic);
    const rows = 20_000;
    for (let from = 1; from <= rows; from += 2000) {
      await db.sql.unsafe(
        `insert into ${table} select g, 'row ' || g from generate_series(${from}, ${from + 1999}) g`,
      );
      await sleep(100);
    }
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 60_000, 100);
    const top = await lastId();
    const floor = await waitFor(
      'the floor near the last id shipped',
      async () => {
        const f = await floorOf(db.sql);
        return f > top - FLOOR_MIN_STEP && f;
      },
      15_000,
      100,
    );
    assert.ok(floor <= top + 1n, `floor ${floor}, last id ${top}`);

    // What a user would check: the snapshot is still held, it is named as what holds
    // vacuum back, the dead entries are still in the index, and the fetch's range from
    // the floor does not walk them.
    const [reportPid] = await report<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const holder = await vacuumHolder(db.sql);
    assert.equal(holder?.pid, reportPid?.pid, 'the held snapshot holds vacuum back');
    assert.equal(holder?.applicationName, 'long report');
    const fromStart = await buffersOf(
      'select c.id from pg2kafka.captured_changes c where c.id >= 0 order by c.id limit 1000',
    );
    const fromFloor = await buffersOf(
      'select c.id from pg2kafka.captured_changes c where c.id >= (select l.queue_floor from pg2kafka.relay_lease l) order by c.id limit 1000',
    );
    assert.equal(fromStart.rows, 0, 'the queue is empty');
    assert.ok(
      fromStart.buffers > 50,
      `from the start: ${fromStart.buffers} buffers (dead entries kept)`,
    );
    assert.ok(fromFloor.buffers < 10, `from the floor: ${fromFloor.buffers} buffers`);
    await waitFor(
      `${rows} events on Kafka`,
      () => dedupe(consumer.received).unique.length >= rows,
      30_000,
      200,
    );

    // DRY_RUN (no lease, reads forward from the last printed id) prints what is queued
    // above the floor.
    assert.equal((await r.stop()).code, 0);
    await db.sql.unsafe(`insert into ${table} values (${rows + 1}, 'after the floor')`);
    r = relay({ DRY_RUN: 'true', KAFKA_BROKERS: '' });
    await waitFor(
      'the dry run printing the new row',
      () => r.stdout.some((line) => line.includes('after the floor')),
      20_000,
    );
    assert.equal((await r.stop()).code, 0);
    assert.equal(await queueDepth(), 1, 'the dry run deleted nothing');
  } finally {
    await r.stop();
    await report`rollback`.catch(() => undefined);
    report.release();
    await holding.end();
  }
});
