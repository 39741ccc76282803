/**
 * What an operator's log pipeline receives from a real relay: every stderr line is one
 * JSON object whose keys are unique (strict parsers reject `"component":"relay",
 * "component":"kafka"`), the first send to new topics logs nothing above info but
 * "created topic", and a Kafka outage logs one line per retry (kafkajs's own retry chatter
 * stays at debug).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { KafkaBroker } from '../../scripts/kafka-broker.ts';
import { useTestDatabase, waitFor } from '../helpers.ts';
import { useRelays, type RelayProcess } from './support.ts';

const db = useTestDatabase();
/** This file's own broker: the outage test stops it. */
let broker: KafkaBroker | undefined;
const { relay, queueDepth } = useRelays(db, {
  get brokers(): string[] {
    if (!broker) throw new Error('the broker of this file is not started yet');
    return [broker.brokers];
  },
});

before(async () => {
  broker = await KafkaBroker.start();
});

after(async () => {
  await broker?.destroy();
});

/**
 * Parses one JSON text and fails on any object, at any depth, that repeats a key.
 * JSON.parse keeps the last of duplicate keys silently, so the text is scanned first.
 */
function parseStrictJson(text: string): unknown {
  const stack: Array<{ keys: Set<string> | undefined; expectKey: boolean }> = [];
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    const top = stack.at(-1);
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      if (end >= text.length) throw new Error('unterminated string');
      if (top?.keys && top.expectKey) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (top.keys.has(key)) throw new Error(`duplicate key "${key}" in ${text}`);
        top.keys.add(key);
        top.expectKey = false;
      }
      i = end;
    } else if (c === '{') {
      stack.push({ keys: new Set(), expectKey: true });
    } else if (c === '[') {
      stack.push({ keys: undefined, expectKey: false });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',' && top?.keys) {
      top.expectKey = true;
    }
  }
  return JSON.parse(text);
}

test('the duplicate-key check catches what JSON.parse lets through', () => {
  assert.throws(() => parseStrictJson('{"a":1,"b":{"c":[{"d":1}],"d":2},"a":2}'), /"a"/);
  assert.throws(() => parseStrictJson('{"x":{"k":"}","k":1}}'), /"k"/);
  assert.deepEqual(parseStrictJson('{"a":"\\"{","b":[{"a":1},{"a":2}]}'), {
    a: '"{',
    b: [{ a: 1 }, { a: 2 }],
  });
});

interface Line {
  level: number;
  msg: string;
  component?: string;
  [field: string]: unknown;
}

/** Every stderr line of the relay, as a log pipeline that keeps the last duplicate sees it. */
function lines(r: RelayProcess): Line[] {
  return r.stderrText.map((text) => JSON.parse(text) as Line);
}

/** Every stderr line of the relay is one JSON object with unique keys. */
function assertStrictJsonLines(r: RelayProcess): void {
  for (const [n, text] of r.stderrText.entries()) {
    let parsed: unknown;
    try {
      parsed = parseStrictJson(text);
    } catch (error) {
      assert.fail(`stderr line ${n + 1} is not strict JSON (${(error as Error).message})`);
    }
    assert.ok(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed), text);
  }
}

const INFO = 30;
const WARN = 40;

test('first sends to new topics: unique keys, nothing above info but "created topic"', async () => {
  const tables = ['fresh_a', 'fresh_b', 'fresh_c'];
  for (const t of tables) {
    await db.sql`create table ${db.sql(t)} (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup(${t}, 'k')`;
  }
  // Many partitions per new topic widen the window in which a just-created topic is
  // known to the controller but not yet served by the broker.
  const r = relay({ LOG_LEVEL: 'debug', TOPIC_PARTITIONS: '12' });
  try {
    await r.waitForLog('active: shipping events');
    for (const t of tables) {
      await db.sql`insert into ${db.sql(t)} select 'k' || i, i from generate_series(1, 50) i`;
    }
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000, 100);
    assert.equal((await r.stop()).code, 0);
    const logged = lines(r);
    const loud = logged.filter(
      (l) =>
        l.level >= WARN ||
        (l.level >= INFO && JSON.stringify(l).includes('stack')) ||
        (l.level >= INFO && l.component?.includes('kafka') === true && l.msg !== 'created topic'),
    );
    assert.deepEqual(
      loud.map((l) => `${l.level} ${l.component ?? ''} ${l.msg}`),
      [],
      'warnings, stack traces or Kafka lines other than "created topic" at info or above',
    );
    assert.deepEqual(
      logged
        .filter((l) => l.msg === 'created topic')
        .map((l) => l.topic)
        .sort(),
      tables.map((t) => `pg2kafka.${db.name}.${t}`).sort(),
      'one "created topic" per new topic',
    );
    assertStrictJsonLines(r);
    const components = new Set(logged.map((l) => l.component));
    // A child's component names its parent's: one key, readable nesting.
    assert.ok(components.has('relay.kafka'), [...components].join(', '));
  } finally {
    await r.stop();
  }
});

test(
  'Kafka stopped: one log line per retry, every line strict JSON',
  { timeout: 120_000 },
  async () => {
    assert.ok(broker);
    await db.sql`create table outage_logs (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup('outage_logs', 'k')`;
    await db.sql`insert into outage_logs values ('seed', 1)`;
    const r = relay({ LOG_LEVEL: 'debug' });
    try {
      await waitFor('the seed event shipped', async () => (await queueDepth()) === 0, 30_000, 100);
      await broker.stop();
      const outageStart = r.stderrText.length;
      await db.sql`insert into outage_logs values ('during', 1)`;
      const retryLine = (l: Line): boolean => l.msg.startsWith('cannot ship events now, retrying');
      await waitFor(
        'five retries',
        () => lines(r).slice(outageStart).filter(retryLine).length >= 5,
        40_000,
        200,
      );
      const outage = lines(r).slice(outageStart);
      await broker.start();
      await waitFor(
        'the queue drained after the outage',
        async () => (await queueDepth()) === 0,
        60_000,
        200,
      );
      assert.equal((await r.stop()).code, 0);

      const visible = outage.filter((l) => l.level >= INFO);
      const firstRetry = visible.findIndex(retryLine);
      const lastRetry = visible.findLastIndex(retryLine);
      const shown = visible.map((l) => `${l.level} ${l.component ?? ''} ${l.msg.slice(0, 100)}`);
      assert.deepEqual(
        shown
          .slice(firstRetry, lastRetry + 1)
          .filter((_, i) => !retryLine(visible[firstRetry + i] as Line)),
        [],
        'between two retry lines nothing else is logged at info or above',
      );
      assert.ok(
        firstRetry <= 2,
        `before the first retry line at most the topic's hold and release:\n${shown.slice(0, firstRetry).join('\n')}`,
      );
      const client = process.env.KAFKA_CLIENT === 'kafkajs' ? 'kafkajs' : 'librdkafka';
      assert.ok(
        outage.some((l) => l.level < INFO && l.component === `relay.${client}`),
        `${client}'s own lines are still there, at debug`,
      );
    } finally {
      await r.stop();
      if (!broker.running) await broker.start();
    }
  },
);
