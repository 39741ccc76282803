/**
 * Delivery edges on a real broker: events Kafka refuses for good (too large for the topic,
 * a null key on a compacted topic), a topic that fails retriably (deleted under the
 * running relay), and two tables sharing one topic. Each test reads back what arrived on
 * Kafka (keys, statements, copies) and what is left in pg2kafka.captured_changes and
 * pg2kafka.dead_letters, and compares the whole picture at once, so that a failure shows
 * every figure.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sleep, uniqueName, useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import {
  useCollectors,
  useRelays,
  type ArrivedEvent,
  type Collector,
  type RelayProcess,
} from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay } = useRelays(db, kafka);

const topicOf = (table: string): string => `pg2kafka.${db.name}.${table}`;

const { collectTopic, collectors } = useCollectors(kafka.kafka);

/**
 * Each message as "key STATEMENT" (with `withData`, its data as JSON after it), in arrival
 * order sorted by key: per-key order is kept, and there is no order across keys.
 */
function byKey(received: ArrivedEvent[], withData = false): string[] {
  return [...received]
    .sort((a, b) => String(a.key).localeCompare(String(b.key)))
    .map((m) => `${String(m.key)} ${m.statement}${withData ? ` ${JSON.stringify(m.data)}` : ''}`);
}

interface QueuedChange {
  id: string;
  statement: string;
  key: string | null;
}

async function queuedChanges(table: string): Promise<QueuedChange[]> {
  return db.sql<QueuedChange[]>`
    select c.id::text as id, c.statement,
           coalesce(c.new_row ->> 'id', c.old_row ->> 'id') as key
    from pg2kafka.captured_changes c
    join pg2kafka.tracked_tables t on t.table_oid = c.table_oid
    where t.table_name = ${table}
    order by c.id`;
}

/** The table's changes still queued, as "#change-id STATEMENT key". */
async function queued(table: string): Promise<string[]> {
  return (await queuedChanges(table)).map(change);
}

function change(c: QueuedChange): string {
  return `#${c.id} ${c.statement} ${String(c.key)}`;
}

async function changeIds(table: string): Promise<string[]> {
  return (await queuedChanges(table)).map((c) => c.id);
}

interface DeadLetter {
  id: string;
  statement: string;
  topic: string;
  external_id: string | null;
  payload: string | null;
  error_code: string;
  reason: string;
  attempts: number;
  parked: boolean;
  keys: (string | null)[];
}

/**
 * The table's dead letters in id order, or a sentence when pg2kafka.dead_letters does not
 * exist (so that the comparison fails and says so, rather than the query throwing).
 */
async function deadLetters(table: string): Promise<DeadLetter[] | string> {
  const [exists] = await db.sql<{ ok: boolean }[]>`
    select to_regclass('pg2kafka.dead_letters') is not null as ok`;
  if (!exists?.ok) return 'there is no table pg2kafka.dead_letters';
  const rows = await db.sql<DeadLetter[]>`
    select d.id::text as id, d.statement, d.topic, d.external_id, d.payload, d.error_code,
           d.reason, d.attempts, d.parked, d.keys
    from pg2kafka.dead_letters d
    where d.table_name = ${table}
    order by d.id`;
  return [...rows];
}

/** The named columns of a dead letter, to compare only those. */
function columns<K extends keyof DeadLetter>(d: DeadLetter, ...names: K[]): Pick<DeadLetter, K> {
  return Object.fromEntries(names.map((name) => [name, d[name]])) as Pick<DeadLetter, K>;
}

async function deadLetterCount(table: string): Promise<number> {
  const letters = await deadLetters(table);
  return typeof letters === 'string' ? -1 : letters.length;
}

function relayState(r: RelayProcess): Promise<string> {
  return Promise.race([
    r.exited.then(({ code, signal }) => `exited (code ${String(code)}, signal ${String(signal)})`),
    sleep(20).then(() => 'running'),
  ]);
}

/** Waits until `check` holds or `timeoutMs` passed; the caller then compares what is there. */
async function settle(check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  await waitFor('the expected state', check, timeoutMs, 100).catch(() => undefined);
}

function logged(r: RelayProcess, pattern: RegExp, mentioning?: string): boolean {
  return r.logs.some(
    (l) =>
      pattern.test(l.msg) && (mentioning === undefined || JSON.stringify(l).includes(mentioning)),
  );
}

/** Ends a test: stops the relay, clears the tables' queue rows, returns the exit code. */
async function finish(r: RelayProcess, tables: string[]): Promise<number | null> {
  const { code } = await r.stop();
  for (const table of tables) {
    await db.sql`
      delete from pg2kafka.captured_changes c using pg2kafka.tracked_tables t
      where t.table_oid = c.table_oid and t.table_name = ${table}`;
  }
  return code;
}

interface Run {
  /** The relay's environment. */
  env?: Record<string, string>;
  /** What the run waits for, at most `timeoutMs`, before it compares. */
  until: (c: Collector, r: RelayProcess) => Promise<boolean> | boolean;
  timeoutMs: number;
  /** How long it waits after that, so that late messages and copies show up. */
  quietMs: number;
}

/**
 * One relay run on `table`: collects its topic, starts the relay, waits as `run` says, then
 * hands the collector and the relay to `check`, and ends with the relay exiting 0.
 */
async function runOn(
  table: string,
  run: Run,
  check: (c: Collector, r: RelayProcess) => Promise<void>,
): Promise<void> {
  const c = await collectTopic(topicOf(table));
  const r = relay(run.env);
  try {
    await settle(() => run.until(c, r), run.timeoutMs);
    await sleep(run.quietMs);
    await check(c, r);
    assert.equal(await finish(r, [table]), 0);
  } finally {
    await c.stop();
    await finish(r, [table]);
  }
}

/**
 * `until` for a run that ends with `arrived` messages, the queue empty and `letters` dead
 * letters.
 */
function drained(table: string, arrived: number, letters: number): Run['until'] {
  return async (c) =>
    c.received.length >= arrived &&
    (await queued(table)).length === 0 &&
    (await deadLetterCount(table)) === letters;
}

/**
 * What there is after a run, to compare at once: arrivals by key (`withData`: with their
 * data), the table's queue, its dead letters as `pick` shows each, and the relay's state.
 */
async function picture(
  table: string,
  c: Collector,
  r: RelayProcess,
  pick: (d: DeadLetter) => unknown,
  withData = false,
): Promise<{ arrived: string[]; queued: string[]; deadLetters: unknown; relay: string }> {
  const letters = await deadLetters(table);
  return {
    arrived: byKey(c.received, withData),
    queued: await queued(table),
    deadLetters: typeof letters === 'string' ? letters : letters.map(pick),
    relay: await relayState(r),
  };
}

const loggedDeadLetter = (r: RelayProcess): void => {
  assert.ok(logged(r, /dead letter/i), 'the relay logs that it set the event aside');
};

test("a refused topic shared by two tables does not delete the other table's events", async () => {
  const t = uniqueName('shared');
  const topic = topicOf(t);
  await db.sql`create table ${db.sql(t)} (id int primary key, blob text)`;
  await db.sql`select pg2kafka.setup(${t}::regclass, 'id')`;
  await db.sql`insert into ${db.sql(t)} values (1, repeat('x', 5000))`;
  const [bigId] = await changeIds(t);
  // The queued event outlives its table and keeps its name (tracked_tables keeps it): the
  // new table of the same name shares its topic.
  await db.sql`drop table ${db.sql(t)}`;
  await db.sql`create table ${db.sql(t)} (id int primary key, blob text)`;
  await db.sql`select pg2kafka.setup(${t}::regclass, 'id')`;
  await db.sql`insert into ${db.sql(t)} values (2, 'small')`;
  assert.equal((await queued(t)).length, 2);
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '2000' });

  const run: Run = {
    until: async (c) => c.received.some((m) => m.key === '2') && (await queued(t)).length === 0,
    timeoutMs: 25_000,
    quietMs: 1000,
  };
  await runOn(t, run, async (c, r) => {
    assert.deepEqual(
      await picture(t, c, r, (d) => ({
        ...columns(d, 'id', 'statement', 'topic', 'external_id', 'error_code', 'parked'),
        payloadHasTheRow: d.payload?.includes('x'.repeat(5000)) ?? false,
      })),
      {
        arrived: ['2 INSERT'],
        queued: [],
        deadLetters: [
          {
            id: bigId,
            statement: 'INSERT',
            topic,
            external_id: '1',
            error_code: 'MESSAGE_TOO_LARGE',
            parked: true,
            payloadHasTheRow: true,
          },
        ],
        relay: 'running',
      },
    );
    loggedDeadLetter(r);
  });
});

test("one topic's retriable error does not stop or duplicate other tables", async () => {
  const stuck = uniqueName('stuck');
  const healthy = uniqueName('healthy');
  for (const table of [stuck, healthy]) {
    await db.sql`create table ${db.sql(table)} (id int primary key, note text)`;
    await db.sql`select pg2kafka.setup(${table}::regclass, 'id')`;
    await kafka.createTopic(topicOf(table));
  }
  await db.sql`insert into ${db.sql(stuck)} values (0, 'before')`;
  await db.sql`insert into ${db.sql(healthy)} values (0, 'before')`;
  const before = await collectTopic(topicOf(stuck));
  const h = await collectTopic(topicOf(healthy));

  // AUTO_CREATE_TOPICS=false, so that the relay does not create the topic again itself.
  const r = relay({ AUTO_CREATE_TOPICS: 'false' });
  try {
    // Both topics are in use: the relay and its producer know them.
    await waitFor(
      'the first event of each table',
      () => before.received.length >= 1 && h.received.length >= 1,
      20_000,
    );
    await before.stop();
    // A topic deleted under the running relay: its partition answers
    // UNKNOWN_TOPIC_OR_PARTITION, a retriable error, until the topic exists again.
    // (min.insync.replicas=2 cannot stand in: Kafka caps it at the replication factor.)
    const admin = await kafka.admin();
    try {
      await admin.deleteTopics({ topics: [topicOf(stuck)], timeout: 10_000 });
      await waitFor(
        'the topic to be gone',
        async () => !(await admin.listTopics()).includes(topicOf(stuck)),
        10_000,
        200,
      );
    } finally {
      await admin.disconnect();
    }
    await sleep(1000);
    // One transaction: both changes come in the same batch.
    await db.sql.begin(async (sql) => {
      await sql`insert into ${sql(stuck)} values (1, 'stuck')`;
      await sql`insert into ${sql(healthy)} values (1, 'healthy')`;
    });
    const [stuckId] = await changeIds(stuck);
    await settle(
      async () =>
        h.received.length >= 2 &&
        (await queued(healthy)).length === 0 &&
        logged(r, /stay queued/, stuck),
      20_000,
    );
    // Long enough for resends of the healthy table's message to show up as copies.
    await sleep(8000);
    assert.deepEqual(
      {
        healthyArrived: byKey(h.received),
        healthyQueued: await queued(healthy),
        stuckQueued: await queued(stuck),
        stuckDeadLetters: await deadLetters(stuck),
        loggedStayQueued: logged(r, /stay queued/, stuck),
        relay: await relayState(r),
      },
      {
        healthyArrived: ['0 INSERT', '1 INSERT'],
        healthyQueued: [],
        stuckQueued: [`#${String(stuckId)} INSERT 1`],
        stuckDeadLetters: [],
        loggedStayQueued: true,
        relay: 'running',
      },
    );

    // Once the topic exists again, the held event follows (the hold is retried), once.
    await kafka.createTopic(topicOf(stuck));
    const s = await collectTopic(topicOf(stuck));
    await settle(async () => s.received.length >= 1 && (await queued(stuck)).length === 0, 25_000);
    await sleep(2000);
    assert.deepEqual(
      {
        healthyArrived: byKey(h.received),
        stuckArrived: byKey(s.received),
        stuckQueued: await queued(stuck),
        stuckDeadLetters: await deadLetters(stuck),
        relay: await relayState(r),
      },
      {
        healthyArrived: ['0 INSERT', '1 INSERT'],
        stuckArrived: ['1 INSERT'],
        stuckQueued: [],
        stuckDeadLetters: [],
        relay: 'running',
      },
    );
    assert.equal(await finish(r, [stuck, healthy]), 0);
  } finally {
    await Promise.all(collectors.map((c) => c.stop()));
    await finish(r, [stuck, healthy]);
  }
});

/**
 * The table of tests 3, 5 and 6: key 1 inserted small, updated to 5 kB (over the topic's
 * max.message.bytes), key 2 inserted, key 1 updated small again. Returns the change ids.
 */
async function oversizedUpdate(table: string): Promise<string[]> {
  await db.sql`create table ${db.sql(table)} (id int primary key, blob text)`;
  await db.sql`select pg2kafka.setup(${table}::regclass, 'id')`;
  await kafka.createTopic(topicOf(table), 1, { 'max.message.bytes': '2000' });
  await db.sql`insert into ${db.sql(table)} values (1, 'small-1')`;
  await db.sql`update ${db.sql(table)} set blob = repeat('y', 5000) where id = 1`;
  await db.sql`insert into ${db.sql(table)} values (2, 'small-2')`;
  await db.sql`update ${db.sql(table)} set blob = 'small-again' where id = 1`;
  const ids = await changeIds(table);
  assert.equal(ids.length, 4);
  return ids;
}

test('an event over max.message.bytes becomes a dead letter, its key is parked, other keys flow', async () => {
  const big = uniqueName('big');
  const ids = await oversizedUpdate(big);

  const run: Run = { until: drained(big, 2, 2), timeoutMs: 25_000, quietMs: 1500 };
  await runOn(big, run, async (c, r) => {
    assert.deepEqual(
      await picture(
        big,
        c,
        r,
        (d) =>
          columns(d, 'id', 'statement', 'topic', 'external_id', 'error_code', 'parked', 'keys'),
        true,
      ),
      {
        arrived: ['1 INSERT {"id":1,"blob":"small-1"}', '2 INSERT {"id":2,"blob":"small-2"}'],
        queued: [],
        deadLetters: [
          {
            id: ids[1],
            statement: 'UPDATE',
            topic: topicOf(big),
            external_id: '1',
            error_code: 'MESSAGE_TOO_LARGE',
            parked: true,
            keys: ['1'],
          },
          {
            id: ids[3],
            statement: 'UPDATE',
            topic: topicOf(big),
            external_id: '1',
            error_code: 'KEY_PARKED',
            parked: true,
            keys: ['1'],
          },
        ],
        relay: 'running',
      },
    );
    const letters = await deadLetters(big);
    assert.ok(typeof letters !== 'string');
    const [refused] = letters;
    assert.ok(refused && refused.attempts >= 1, `attempts: ${String(refused?.attempts)}`);
    assert.ok(
      refused.payload?.includes('y'.repeat(5000)),
      'the payload is the refused message value',
    );
    const payload = JSON.parse(refused.payload ?? '') as { external_id: string; statement: string };
    assert.deepEqual([payload.external_id, payload.statement], ['1', 'UPDATE']);
    assert.ok(refused.reason.length > 0, 'a reason is recorded');
    loggedDeadLetter(r);
  });
});

test('a null-key event on a compacted topic becomes a dead letter', async () => {
  const comp = uniqueName('compacted');
  await db.sql`create table ${db.sql(comp)} (id int primary key, note text)`;
  await db.sql`select pg2kafka.setup(${comp}::regclass, 'id', true)`;
  await kafka.createTopic(topicOf(comp), 1, { 'cleanup.policy': 'compact' });
  await db.sql`insert into ${db.sql(comp)} values (1, 'one'), (2, 'two')`;
  await db.sql`truncate ${db.sql(comp)}`;
  await db.sql`insert into ${db.sql(comp)} values (3, 'three')`;
  const ids = await changeIds(comp);
  assert.equal(ids.length, 4);

  const run: Run = { until: drained(comp, 3, 1), timeoutMs: 25_000, quietMs: 1000 };
  await runOn(comp, run, async (c, r) => {
    assert.deepEqual(
      await picture(comp, c, r, (d) =>
        columns(d, 'id', 'statement', 'topic', 'external_id', 'error_code'),
      ),
      {
        arrived: ['1 INSERT', '2 INSERT', '3 INSERT'],
        queued: [],
        deadLetters: [
          {
            id: ids[2],
            statement: 'TRUNCATE',
            topic: topicOf(comp),
            external_id: null,
            error_code: 'INVALID_RECORD',
          },
        ],
        relay: 'running',
      },
    );
    loggedDeadLetter(r);
  });
});

test('DEAD_LETTER_POLICY=hold-table keeps the table waiting instead', async () => {
  const held = uniqueName('held');
  const ids = await oversizedUpdate(held);

  const run: Run = {
    env: { DEAD_LETTER_POLICY: 'hold-table' },
    until: (c, r) => c.received.length >= 1 && logged(r, /stay queued/, held),
    timeoutMs: 20_000,
    // Key 2 comes after the refused event in the same table: it must not follow.
    quietMs: 3000,
  };
  await runOn(held, run, async (c, r) => {
    assert.deepEqual(
      {
        ...(await picture(held, c, r, (d) => d)),
        loggedStayQueued: logged(r, /stay queued/, held),
      },
      {
        arrived: ['1 INSERT'],
        queued: [
          `#${String(ids[1])} UPDATE 1`,
          `#${String(ids[2])} INSERT 2`,
          `#${String(ids[3])} UPDATE 1`,
        ],
        deadLetters: [],
        loggedStayQueued: true,
        relay: 'running',
      },
    );
  });
});

test('DEAD_LETTER_POLICY=skip sets the event aside and keeps shipping its key', async () => {
  const skipped = uniqueName('skipped');
  const ids = await oversizedUpdate(skipped);

  const run: Run = {
    env: { DEAD_LETTER_POLICY: 'skip' },
    until: drained(skipped, 3, 1),
    timeoutMs: 25_000,
    quietMs: 1500,
  };
  await runOn(skipped, run, async (c, r) => {
    assert.deepEqual(
      await picture(
        skipped,
        c,
        r,
        (d) => ({
          ...columns(d, 'id', 'statement', 'external_id', 'error_code', 'parked'),
          payloadHasTheBlob: d.payload?.includes('y'.repeat(5000)) ?? false,
        }),
        true,
      ),
      {
        arrived: [
          '1 INSERT {"id":1,"blob":"small-1"}',
          '1 UPDATE {"blob":"small-again"}',
          '2 INSERT {"id":2,"blob":"small-2"}',
        ],
        queued: [],
        deadLetters: [
          {
            id: ids[1],
            statement: 'UPDATE',
            external_id: '1',
            error_code: 'MESSAGE_TOO_LARGE',
            parked: false,
            payloadHasTheBlob: true,
          },
        ],
        relay: 'running',
      },
    );
    loggedDeadLetter(r);
  });
});

test('a table whose key column was renamed is held back from the first keyless event, and ships once set up with the new name', async () => {
  const t = uniqueName('rekeyed');
  await db.sql`create table ${db.sql(t)} (id int primary key, sku text not null unique, note text)`;
  await db.sql`select pg2kafka.setup(${t}::regclass, 'sku')`;
  await kafka.createTopic(topicOf(t));
  await db.sql`insert into ${db.sql(t)} values (1, 'a1', 'before'), (2, 'a2', 'before')`;
  await db.sql`alter table ${db.sql(t)} rename column sku to code`;
  await db.sql`insert into ${db.sql(t)} values (3, 'b3', 'after')`;
  await db.sql`update ${db.sql(t)} set note = 'after' where id = 1`;
  await db.sql`delete from ${db.sql(t)} where id = 2`;
  const ids = await changeIds(t);
  assert.equal(ids.length, 5);

  const c = await collectTopic(topicOf(t));
  const r = relay();
  try {
    await settle(() => c.received.length >= 2 && logged(r, /stay queued/, t), 20_000);
    // Long enough for a keyless event to arrive if it were sent.
    await sleep(3000);
    const held = r.logs.find((l) => /stay queued/.test(l.msg) && JSON.stringify(l).includes(t));
    assert.deepEqual(
      {
        arrived: byKey(c.received),
        queued: await queued(t),
        heldReasonNamesTheColumn: /"sku"/.test(String(held?.msg)),
        heldReasonSaysWhatToDo: /pg2kafka setup/.test(String(held?.msg)),
        relay: await relayState(r),
      },
      {
        arrived: ['a1 INSERT', 'a2 INSERT'],
        queued: [
          `#${String(ids[2])} INSERT 3`,
          `#${String(ids[3])} UPDATE 1`,
          `#${String(ids[4])} DELETE 2`,
        ],
        heldReasonNamesTheColumn: true,
        heldReasonSaysWhatToDo: true,
        relay: 'running',
      },
    );
    assert.equal((await r.stop()).code, 0);

    // What the hold says to do: set the table up again keyed by the new name. The held
    // events then ship keyed by it, ahead of the new snapshot.
    await db.sql`select pg2kafka.teardown(${t}::regclass)`;
    await db.sql`select pg2kafka.setup(${t}::regclass, 'code')`;
    const again = relay();
    try {
      await settle(async () => c.received.length >= 7 && (await queued(t)).length === 0, 20_000);
      await sleep(1000);
      assert.deepEqual(
        { arrived: byKey(c.received), queued: await queued(t) },
        {
          arrived: [
            'a1 INSERT',
            'a1 UPDATE',
            'a1 SNAPSHOT',
            'a2 INSERT',
            'a2 DELETE',
            'b3 INSERT',
            'b3 SNAPSHOT',
          ],
          queued: [],
        },
      );
      assert.equal((await again.stop()).code, 0);
    } finally {
      await finish(again, [t]);
    }
  } finally {
    await c.stop();
    await finish(r, [t]);
  }
});
