/**
 * DELIVERY=exactly-once (KAFKA_CLIENT=rdkafka): each batch is one Kafka transaction with a
 * marker of its queue ids. A read_committed consumer (kafkajs consumers are, by default)
 * sees each event once and in order: normally, after a kill -9 between the commit and the
 * delete, with a leader paused past its lease while writers go on, and across a broker
 * restart.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import kafkajs, { Kafka, logLevel } from 'kafkajs';
import { KafkaBroker } from '../../scripts/kafka-broker.ts';
import { sleep, uniqueName, useKafka, useTestDatabase, waitFor, type Sql } from '../helpers.ts';
import {
  collect,
  useRelays,
  type ArrivedEvent,
  type Collector,
  type RelayProcess,
} from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);
const EXACTLY_ONCE = { KAFKA_CLIENT: 'rdkafka', DELIVERY: 'exactly-once' };

async function table(sql: Sql): Promise<{ name: string; topic: string }> {
  const name = uniqueName('eos');
  await sql`create table ${sql(name)} (k text primary key, v int not null)`;
  await sql`select pg2kafka.setup(${name}::regclass, 'k')`;
  const topic = `pg2kafka.${db.name}.${name}`;
  await kafka.createTopic(topic, 3);
  return { name, topic };
}

/** Each key's values in arrival order, as "k:v" strings; copies show as repeats. */
function histories(events: ArrivedEvent[]): Map<string, number[]> {
  const byKey = new Map<string, number[]>();
  for (const e of events) {
    const list = byKey.get(String(e.key)) ?? [];
    list.push(e.statement === 'DELETE' ? -1 : Number(e.data.v));
    byKey.set(String(e.key), list);
  }
  return byKey;
}

/** The keys a table's topic received, in order, and the table's dead letters. */
async function arrivedAndSetAside(
  collector: Collector,
  name: string,
): Promise<{
  arrived: Array<string | null>;
  deadLetters: Array<{ external_id: string; error_code: string }>;
}> {
  const deadLetters = await db.sql<{ external_id: string; error_code: string }[]>`
    select external_id, error_code from pg2kafka.dead_letters where table_name = ${name}`;
  return {
    arrived: collector.received.map((e) => e.key),
    deadLetters: deadLetters.map((d) => ({ external_id: d.external_id, error_code: d.error_code })),
  };
}

test('exactly-once: events ship in transactions, once each and in order; the marker topic holds the last batch', async () => {
  const { name, topic } = await table(db.sql);
  await db.sql`insert into ${db.sql(name)} select 'k' || i, 1 from generate_series(1, 20) i`;
  await db.sql`update ${db.sql(name)} set v = 2`;
  const collector = await collect(kafka.kafka, topic);
  const r = relay(EXACTLY_ONCE);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  await waitFor('40 events', () => collector.received.length >= 40, 10_000);
  await sleep(1500);
  await collector.stop();
  assert.deepEqual(
    histories(collector.received),
    new Map(Array.from({ length: 20 }, (_, i) => [`k${i + 1}`, [1, 2]])),
  );
  const [marker] = await kafka.consume(`pg2kafka.${db.name}.pg2kafka.commits`, 1, 10_000);
  assert.ok(marker, 'a marker was committed');
  assert.equal(marker.key, `pg2kafka.${db.name}.pg2kafka.commits`, 'keyed by the transactional id');
  assert.match(String(marker.value), /"ranges":\[\["\d+","\d+"\]/);
  assert.ok(r.logs.some((l) => l.msg.startsWith('exactly-once: earlier producers')));
  assert.equal((await r.stop()).code, 0);
});

/**
 * 30 changes shipped by a relay in one transaction while their rows are locked FOR
 * UPDATE: the queue can be read but not deleted from, so the relay commits, then waits
 * on its delete. `meanwhile` runs then, the lock still held; the waiting delete is ended
 * after it (a killed client's statement would otherwise still run once the lock goes).
 */
async function commitWithDeleteHeld(
  meanwhile: (r: RelayProcess) => Promise<void>,
): Promise<{ r: RelayProcess; collector: Collector }> {
  const { name, topic } = await table(db.sql);
  await db.sql`insert into ${db.sql(name)} select 'k' || i, 1 from generate_series(1, 30) i`;
  const collector = await collect(kafka.kafka, topic);
  const blocker = db.connect({ max: 1 });
  let r: RelayProcess | undefined;
  try {
    await blocker.begin(async (tx) => {
      await tx`select id from pg2kafka.captured_changes for update`;
      const started = relay(EXACTLY_ONCE);
      r = started;
      await waitFor('all 30 committed to Kafka', () => collector.received.length >= 30, 30_000);
      const waitingDelete = db.sql`
        select pid from pg_stat_activity
        where datname = current_database() and application_name = 'pg2kafka relay'
          and wait_event_type = 'Lock' and query ilike '%delete from pg2kafka.captured_changes%'`;
      await waitFor(
        'the relay waiting on its delete',
        async () => (await waitingDelete).length > 0,
      );
      await meanwhile(started);
      await db.sql`
        select pg_terminate_backend(pid) from pg_stat_activity
        where datname = current_database() and application_name = 'pg2kafka relay'
          and query ilike '%delete from pg2kafka.captured_changes%'`;
    });
  } catch (error) {
    await r?.kill();
    throw error;
  } finally {
    await blocker.end();
  }
  if (!r) throw new Error('no relay started');
  return { r, collector };
}

/** The 30 keys of commitWithDeleteHeld, each once. */
function assertEachOnce(collector: Collector): void {
  assert.deepEqual(
    collector.received.map((e) => String(e.key)).sort(),
    Array.from({ length: 30 }, (_, i) => `k${i + 1}`).sort(),
    'each event once, read_committed',
  );
}

test('exactly-once: killed -9 between the commit and the delete, the next relay deletes what was delivered and sends nothing twice', async () => {
  const { collector } = await commitWithDeleteHeld(async (first) => {
    assert.equal((await first.kill()).signal, 'SIGKILL');
  });
  assert.equal(await queueDepth(), 30, 'committed to Kafka, still queued');

  const next = relay(EXACTLY_ONCE);
  await next.waitForLog('deleted, not sent again', 30_000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  await sleep(1500);
  await collector.stop();
  assertEachOnce(collector);
  assert.equal((await next.stop()).code, 0);
});

test('exactly-once: the delete after a commit fails (its connection ended): the running relay deletes those ids next, sending nothing twice', async () => {
  // The relay keeps running: only its waiting delete's connection is ended.
  const { r, collector } = await commitWithDeleteHeld(() => Promise.resolve());
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  await sleep(2000);
  await collector.stop();
  assertEachOnce(collector);
  assert.ok(r.logs.some((l) => l.msg.includes('deleted, not sent again')));
  assert.equal((await r.stop()).code, 0);
});

test('exactly-once: a leader paused past its lease while writers go on, then resumed: once each, in order', async () => {
  const { name, topic } = await table(db.sql);
  const collector = await collect(kafka.kafka, topic);
  const first = relay(EXACTLY_ONCE);
  await first.waitForLog('active: shipping events');
  const second = relay(EXACTLY_ONCE);
  await second.waitForLog('pg2kafka relay starting');

  const state = { writing: true };
  let changes = 0;
  const writer = (async () => {
    const sql = db.connect({ max: 1 });
    try {
      while (state.writing) {
        const k = `k${changes % 20}`;
        await sql`insert into ${sql(name)} values (${k}, 1) on conflict (k) do update set v = ${sql(name)}.v + 1`;
        changes += 1;
        await sleep(5);
      }
    } finally {
      await sql.end();
    }
  })();
  await waitFor('events flowing', () => collector.received.length >= 50, 20_000);
  process.kill(first.pid as number, 'SIGSTOP');
  await second.waitForLog('active: shipping events', 30_000);
  await sleep(1000);
  process.kill(first.pid as number, 'SIGCONT');
  await sleep(3000);
  state.writing = false;
  await writer;
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  await sleep(2000);
  await collector.stop();

  const uuids = collector.received.map((e) => e.uuid);
  assert.equal(new Set(uuids).size, uuids.length, 'no event twice');
  assert.equal(collector.received.length, changes, 'every change once');
  for (const [key, values] of histories(collector.received)) {
    assert.deepEqual(
      values,
      values.map((_, i) => i + 1),
      `key ${key} in order`,
    );
  }
  await Promise.all([first.stop(), second.stop()]);
});

test('exactly-once: the broker restarted while writers go on: every change once, in order, nothing lost', async (t) => {
  const broker = await KafkaBroker.start();
  try {
    const name = uniqueName('eos_restart');
    await db.sql`create table ${db.sql(name)} (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup(${name}::regclass, 'k')`;
    const topic = `pg2kafka.${db.name}.${name}`;
    const client = new Kafka({
      clientId: uniqueName('eos'),
      brokers: [broker.brokers],
      logLevel: logLevel.NOTHING,
    });
    const admin = client.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
    await admin.disconnect();
    const collector = await collect(client, topic);
    const r = relay({ ...EXACTLY_ONCE, KAFKA_BROKERS: broker.brokers });
    try {
      await r.waitForLog('active: shipping events');
      const state = { writing: true, changes: 0 };
      const writer = (async () => {
        const sql = db.connect({ max: 1 });
        try {
          while (state.writing) {
            const k = `k${state.changes % 20}`;
            await sql`insert into ${sql(name)} values (${k}, 1) on conflict (k) do update set v = ${sql(name)}.v + 1`;
            state.changes += 1;
            await sleep(10);
          }
        } finally {
          await sql.end();
        }
      })();
      await waitFor('events flowing', () => collector.received.length >= 50, 30_000);
      await broker.stop();
      await sleep(5000);
      await broker.start();
      await sleep(3000);
      state.writing = false;
      await writer;
      await waitFor('an empty queue', async () => (await queueDepth()) === 0, 90_000, 200);
      await waitFor('every change', () => collector.received.length >= state.changes, 60_000, 200);
      await sleep(2000);
      // The consumer may read a record again after the restart (its group's offsets were
      // not committed yet): the same partition and offset, not a second record. What the
      // relay wrote twice would be a second record with the same uuid.
      const records = new Map(collector.received.map((e) => [`${e.partition}:${e.offset}`, e]));
      const written = [...records.values()];
      t.diagnostic(
        `records: ${written.length}; read again by the consumer: ${collector.received.length - written.length}; the relay said: ${r.logs
          .filter((l) => l.msg.startsWith('exactly-once'))
          .map((l) => l.msg)
          .join(' | ')}`,
      );
      const copies = written.filter((e, i) => written.findIndex((w) => w.uuid === e.uuid) !== i);
      assert.deepEqual(
        copies.map((e) => `${e.uuid} at ${e.partition}:${e.offset}`),
        [],
        'no event twice (a copy at another offset)',
      );
      assert.equal(written.length, state.changes, 'every change once');
      for (const [key, values] of histories(written)) {
        assert.deepEqual(
          values,
          values.map((_, i) => i + 1),
          `key ${key} in order`,
        );
      }
    } finally {
      await collector.stop();
      await r.stop();
    }
  } finally {
    await broker.destroy();
  }
});

test('exactly-once: an event Kafka refuses for good aborts its transaction; it becomes a dead letter, every other event arrives once', async () => {
  const name = uniqueName('eos_refused');
  await db.sql`create table ${db.sql(name)} (k text primary key, blob text not null)`;
  await db.sql`select pg2kafka.setup(${name}::regclass, 'k')`;
  const topic = `pg2kafka.${db.name}.${name}`;
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '2000' });
  await db.sql`insert into ${db.sql(name)} values ('a', 'small-a')`;
  await db.sql`insert into ${db.sql(name)} values ('big', ${'y'.repeat(5000)})`;
  await db.sql`insert into ${db.sql(name)} values ('b', 'small-b'), ('c', 'small-c')`;
  const collector = await collect(kafka.kafka, topic);
  const r = relay({ ...EXACTLY_ONCE, DEAD_LETTER_POLICY: 'skip' });
  try {
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
    await sleep(2000);
    await collector.stop();
    assert.deepEqual(await arrivedAndSetAside(collector, name), {
      arrived: ['a', 'b', 'c'],
      deadLetters: [{ external_id: 'big', error_code: 'MESSAGE_TOO_LARGE' }],
    });
  } finally {
    await r.stop();
  }
});

test('exactly-once: a topic whose max.message.bytes shrinks while the relay runs: a batch refused whole is narrowed across transactions; only the event too large alone is set aside', async () => {
  const name = uniqueName('eos_shrunk');
  await db.sql`create table ${db.sql(name)} (k text primary key, blob text not null)`;
  await db.sql`select pg2kafka.setup(${name}::regclass, 'k')`;
  const topic = `pg2kafka.${db.name}.${name}`;
  await kafka.createTopic(topic, 1);
  const collector = await collect(kafka.kafka, topic);
  const r = relay({ ...EXACTLY_ONCE, DEAD_LETTER_POLICY: 'skip' });
  try {
    // The relay reads the topic's limits with its first event, and keeps them a while.
    await db.sql`insert into ${db.sql(name)} values ('first', 'x')`;
    await waitFor('the first event', () => collector.received.length === 1, 30_000);
    const admin = await kafka.admin();
    try {
      await admin.alterConfigs({
        validateOnly: false,
        resources: [
          {
            type: kafkajs.ConfigResourceTypes.TOPIC,
            name: topic,
            configEntries: [{ name: 'max.message.bytes', value: '6000' }],
          },
        ],
      });
    } finally {
      await admin.disconnect();
    }
    // One transaction of writes: twenty events of about 1.5 kB (each fits, together they
    // are a batch the topic now refuses whole) and one of 8 kB that no batch can hold.
    await db.sql.begin(async (tx) => {
      for (let n = 1; n <= 20; n += 1) {
        await tx`insert into ${tx(name)} values (${`k${n}`}, ${'s'.repeat(1500)})`;
        if (n === 12) await tx`insert into ${tx(name)} values ('big', ${'b'.repeat(8000)})`;
      }
    });
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 60_000);
    await sleep(2000);
    await collector.stop();
    assert.deepEqual(await arrivedAndSetAside(collector, name), {
      arrived: ['first', ...Array.from({ length: 20 }, (_, i) => `k${i + 1}`)],
      deadLetters: [{ external_id: 'big', error_code: 'MESSAGE_TOO_LARGE' }],
    });
    assert.ok(
      r.logs.some((l) => l.msg.startsWith('exactly-once: Kafka refused a batch whole')),
      'the relay says it narrowed a batch refused whole',
    );
  } finally {
    await r.stop();
  }
});
