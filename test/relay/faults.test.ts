/**
 * Faults on purpose: a standby relay and a SIGKILLed active one, the relay killed twice
 * under a concurrent write load, Kafka stopped for 20 s, PostgreSQL connections
 * terminated. After each: nothing lost, per-key order intact once duplicates are dropped
 * by uuid, and the relay never exited by itself.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { KafkaBroker } from '../../scripts/kafka-broker.ts';
import { sleep, uniqueName, useKafka, useTestDatabase, waitFor, type Sql } from '../helpers.ts';
import { collect, dedupe, useRelays, type ArrivedEvent, type Collector } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

/** Collects `topic` on `brokers` until stopped; quiet, as brokers go down here. */
function collectOn(brokers: string[], topic: string): Promise<Collector> {
  const client = new Kafka({ clientId: uniqueName('faults'), brokers, logLevel: logLevel.NOTHING });
  return collect(client, topic);
}

/**
 * Checks each key's history: after an INSERT (v = 1) every UPDATE raises v by exactly 1
 * until a DELETE; the replayed final state must equal the table.
 */
async function assertHistories(sql: Sql, table: string, events: ArrivedEvent[]): Promise<void> {
  const state = new Map<string, number>();
  const partitions = new Map<string, number>();
  for (const e of events) {
    const key = e.key ?? '(null)';
    const at = `key ${key} ${e.statement} ${JSON.stringify(e.data)}`;
    const partition = partitions.get(key);
    if (partition !== undefined)
      assert.equal(e.partition, partition, `${at}: key moved partitions`);
    partitions.set(key, e.partition);
    if (e.statement === 'INSERT' || e.statement === 'SNAPSHOT') {
      assert.ok(!state.has(key), `${at}: inserted twice`);
      state.set(key, Number(e.data.v));
    } else if (e.statement === 'UPDATE') {
      const v = state.get(key);
      assert.ok(v !== undefined, `${at}: update of a missing key`);
      assert.equal(Number(e.data.v), v + 1, `${at}: out of order (had v=${v})`);
      state.set(key, v + 1);
    } else if (e.statement === 'DELETE') {
      assert.ok(state.has(key), `${at}: delete of a missing key`);
      state.delete(key);
    }
  }
  const rows = await sql.unsafe<{ k: string; v: number }[]>(`select k, v from ${table}`);
  assert.deepEqual(
    new Map(rows.map((r) => [r.k, r.v])),
    state,
    'replaying the topic gives the table',
  );
}

/** Random single-row changes on `keys` keys from `writers` connections; returns the changes made. */
function writeLoad(
  table: string,
  options: { writers: number; keys: number; changes: number; ratePerSecond?: number },
): {
  done: Promise<number>;
  made: () => number;
} {
  let made = 0;
  let remaining = options.changes;
  const writers = Array.from({ length: options.writers }, async () => {
    const sql = db.connect({ max: 1 });
    try {
      while (remaining > 0) {
        remaining -= 1;
        const k = `k${Math.floor(Math.random() * options.keys)}`;
        if (Math.random() < 0.1) {
          const result = await sql.unsafe(`delete from ${table} where k = $1`, [k]);
          made += result.count;
        } else {
          const result = await sql.unsafe(
            `insert into ${table} (k, v, note) values ($1, 1, 'new') on conflict (k) do update set v = ${table}.v + 1, note = 'changed'`,
            [k],
          );
          made += result.count;
        }
        if (options.ratePerSecond) await sleep((1000 * options.writers) / options.ratePerSecond);
      }
    } finally {
      await sql.end();
    }
  });
  return { done: Promise.all(writers).then(() => made), made: () => made };
}

test('a second relay waits as a standby and takes over after the active one is killed', async () => {
  await db.sql`create table standby_t (k text primary key, v int not null, note text)`;
  await db.sql`select pg2kafka.setup('standby_t', 'k')`;
  const first = relay();
  await first.waitForLog('active: shipping events');
  const second = relay();
  await second.waitForLog('pg2kafka relay starting');
  await db.sql`insert into standby_t values ('a', 1, 'x'), ('b', 1, 'x')`;
  const topic = `pg2kafka.${db.name}.standby_t`;
  const early = await kafka.consume(topic, 2);
  assert.deepEqual(
    early.map((m) => m.key),
    ['a', 'b'],
  );
  await sleep(1500);
  assert.ok(
    !second.logs.some((l) => l.msg.includes('active: shipping events')),
    'the standby never became active',
  );
  assert.ok(!second.logs.some((l) => l.msg === 'batch shipped'), 'the standby shipped nothing');

  await first.kill();
  const killedAt = Date.now();
  await db.sql`insert into standby_t values ('c', 1, 'x')`;
  await second.waitForLog('active: shipping events', 20_000);
  const takeoverMs = Date.now() - killedAt;
  assert.ok(takeoverMs < 15_000, `took over in ${takeoverMs} ms`);
  const all = await kafka.consume(topic, 3);
  assert.deepEqual(
    all.map((m) => m.key),
    ['a', 'b', 'c'],
  );
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await second.stop()).code, 0);
});

test('a relay stopped with SIGTERM hands over at once', async () => {
  await db.sql`create table handover_t (k text primary key, v int not null, note text)`;
  await db.sql`select pg2kafka.setup('handover_t', 'k')`;
  const first = relay();
  await first.waitForLog('active: shipping events');
  const second = relay();
  await second.waitForLog('pg2kafka relay starting');
  await sleep(500);
  const stoppedAt = Date.now();
  assert.equal((await first.stop()).code, 0);
  assert.ok(Date.now() - stoppedAt < 10_000, 'exited within 10 s');
  await second.waitForLog('active: shipping events', 5_000);
  await db.sql`insert into handover_t values ('z', 1, 'x')`;
  const [message] = await kafka.consume(`pg2kafka.${db.name}.handover_t`, 1);
  assert.equal(message?.key, 'z');
  await second.stop();
});

test('4 writers, 500 keys, 20k changes, the relay SIGKILLed twice: nothing lost, per-key order kept', async () => {
  const table = 'load_t';
  await db.sql.unsafe(`create table ${table} (k text primary key, v int not null, note text)`);
  await db.sql`select pg2kafka.setup(${table}, 'k')`;
  const topic = `pg2kafka.${db.name}.${table}`;
  const batchSize = 200;
  const env = { BATCH_SIZE: String(batchSize), TOPIC_PARTITIONS: '3' };

  let current = relay(env);
  await current.waitForLog('active: shipping events');
  const load = writeLoad(table, { writers: 4, keys: 500, changes: 20_000 });
  const consumer = await collectOn(kafka.brokers, topic);
  try {
    for (let kill = 1; kill <= 2; kill += 1) {
      await waitFor(
        `${kill * 4000} changes written`,
        () => load.made() >= kill * 4000,
        120_000,
        20,
      );
      await waitFor('events arriving', () => consumer.received.length > 0, 60_000);
      const { signal } = await current.kill();
      assert.equal(signal, 'SIGKILL');
      current = relay(env);
    }
    const made = await load.done;
    assert.ok(made >= 19_000, `writers made ${made} changes`);
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 120_000, 200);
    await waitFor(
      `${made} distinct events`,
      () => dedupe(consumer.received).unique.length >= made,
      60_000,
      200,
    ).catch(() => undefined);
    await sleep(1000);
    const { unique, duplicates } = dedupe(consumer.received);
    // What the topic holds, to tell an event lost from a consumer behind.
    const admin = kafka.kafka.admin();
    await admin.connect();
    const inKafka = await admin
      .fetchTopicOffsets(topic)
      .then((offsets) => offsets.reduce((n, o) => n + Number(o.high), 0))
      .finally(() => admin.disconnect());
    assert.equal(
      unique.length,
      made,
      `exactly one event per change, after dropping duplicates (the topic holds ${inKafka} messages, ${consumer.received.length} consumed, ${duplicates} of them copies)`,
    );
    assert.ok(
      duplicates <= 2 * batchSize,
      `${duplicates} duplicates for 2 kills with BATCH_SIZE=${batchSize}`,
    );
    await assertHistories(db.sql, table, unique);
    assert.equal(current.stderrText.filter((l) => l.includes('"level":60')).length, 0);
  } finally {
    await consumer.stop();
    await current.stop();
  }
});

test('PostgreSQL connections terminated mid-run: no loss, no exit', async () => {
  const table = 'terminate_t';
  await db.sql.unsafe(`create table ${table} (k text primary key, v int not null, note text)`);
  await db.sql`select pg2kafka.setup(${table}, 'k')`;
  await db.sql.unsafe(`insert into ${table} values ('seed', 1, 'x')`);
  const r = relay();
  const consumer = await collectOn(kafka.brokers, `pg2kafka.${db.name}.${table}`);
  try {
    await waitFor('the seed event', () => consumer.received.length >= 1, 30_000);
    const load = writeLoad(table, { writers: 2, keys: 50, changes: 1500, ratePerSecond: 500 });
    for (let i = 0; i < 3; i += 1) {
      await sleep(700);
      // The relay reconnects at its own pace (its pools back off): terminate once it has.
      const terminated = await waitFor(
        'relay connections to terminate',
        async () => {
          const [row] = await db.sql<{ n: number }[]>`
            select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
            where datname = ${db.name} and application_name like 'pg2kafka%'`;
          return (row?.n ?? 0) > 0 && row?.n;
        },
        10_000,
        100,
      ).catch(() => 0);
      assert.ok(terminated > 0, 'relay connections were terminated');
    }
    const made = await load.done;
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 60_000, 200);
    await waitFor(
      'every event',
      () => dedupe(consumer.received).unique.length >= made + 1,
      30_000,
      200,
    );
    const { unique } = dedupe(consumer.received);
    assert.equal(unique.length, made + 1);
    await assertHistories(db.sql, table, unique);
    assert.ok(
      await Promise.race([r.exited.then(() => false), sleep(10).then(() => true)]),
      `the relay is still running; its last lines:\n${r.stderrText.slice(-8).join('\n')}`,
    );
  } finally {
    await consumer.stop();
    await r.stop();
  }
});

test('Kafka stopped for 20 s mid-run: no loss, no exit, shipping resumes by itself', async () => {
  const broker = await KafkaBroker.start();
  const table = 'outage_t';
  try {
    await db.sql.unsafe(`create table ${table} (k text primary key, v int not null, note text)`);
    await db.sql`select pg2kafka.setup(${table}, 'k')`;
    await db.sql.unsafe(`insert into ${table} values ('seed', 1, 'x')`);
    const r = relay({ KAFKA_BROKERS: broker.brokers });
    const topic = `pg2kafka.${db.name}.${table}`;
    const consumer = await collectOn([broker.brokers], topic);
    try {
      await waitFor('the seed event', () => consumer.received.length >= 1, 30_000);
      const load = writeLoad(table, { writers: 2, keys: 50, changes: 1000, ratePerSecond: 40 });
      await sleep(2000);
      await broker.stop();
      await sleep(20_000);
      assert.ok(
        r.logs.some((l) => l.msg.startsWith('cannot ship events now, retrying')),
        'the relay reported the outage',
      );
      assert.ok(
        await Promise.race([r.exited.then(() => false), sleep(10).then(() => true)]),
        'the relay is still running',
      );
      await broker.start();
      const made = await load.done;
      await waitFor('an empty queue', async () => (await queueDepth()) === 0, 90_000, 200);
      await waitFor(
        'every event',
        () => dedupe(consumer.received).unique.length >= made + 1,
        60_000,
        200,
      );
      const { unique } = dedupe(consumer.received);
      assert.equal(unique.length, made + 1);
      await assertHistories(db.sql, table, unique);
    } finally {
      await consumer.stop();
      await r.stop();
    }
  } finally {
    await broker.destroy();
  }
});
