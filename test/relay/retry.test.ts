/**
 * Dead letters end to end: a real broker refuses an event for good (larger than the
 * topic's max.message.bytes), the relay (a child process) sets it aside and parks its
 * key, and an operator lists, retries or discards it with `pg2kafka dead-letters`. What
 * is checked is what a user sees: the messages on Kafka (keys, statements, per-key
 * order, count), the rows left in pg2kafka.captured_changes and pg2kafka.dead_letters,
 * and the CLI's exit code and output.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sleep, uniqueName, useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import {
  cliEnv,
  collect,
  dedupe,
  runCli,
  setMaxMessageBytes,
  useRelays,
  type ArrivedEvent,
} from './support.ts';
import type { DeadLetter } from '../../src/commands/dead-letters.ts';
import type { Status } from '../../src/commands/status.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

/** The relay env of these tests: a short idle poll, so a retried change ships soon. */
const RELAY_ENV = { LOG_LEVEL: 'debug', POLL_INTERVAL_MS: '100' };
/** The topics' max.message.bytes at first: small updates fit, a 5 kB row does not. */
const SMALL_LIMIT = 3000;
const BIG_BLOB = 5000;

/** One line per event, for comparisons that read well when they fail. */
const describe = (e: ArrivedEvent): string =>
  `${e.key ?? 'null'} ${e.statement} v=${String(e.data.v)}` +
  (typeof e.data.blob === 'string' ? ` blob=${e.data.blob.length}` : '');

/**
 * A table keyed by `id`, set up for capture, and its topic, created before the relay does
 * with max.message.bytes at SMALL_LIMIT; returns the table's name and the topic.
 */
async function capturedTable(prefix: string): Promise<{ table: string; topic: string }> {
  const table = uniqueName(prefix);
  await db.sql.unsafe(`create table ${table} (id int primary key, v int not null, blob text)`);
  await db.sql`select pg2kafka.setup(${table}::regclass, 'id')`;
  const topic = `pg2kafka.${db.name}.${table}`;
  await kafka.createTopic(topic, 1, { 'max.message.bytes': String(SMALL_LIMIT) });
  return { table, topic };
}

interface DeadLetterRow {
  id: string;
  key: string | null;
  statement: string;
  error_code: string;
  parked: boolean;
}

async function deadLetterRows(table: string): Promise<DeadLetterRow[]> {
  const rows = await db.sql<DeadLetterRow[]>`
    select id::text as id, external_id as key, statement, error_code, parked
    from pg2kafka.dead_letters d where table_name = ${table} order by d.id`;
  return [...rows];
}

/** Waits until the table has at least `count` dead letters; returns them. */
function waitForDeadLetters(table: string, count: number, what: string): Promise<DeadLetterRow[]> {
  return waitFor(
    what,
    async () => {
      const rows = await deadLetterRows(table);
      return rows.length >= count && rows;
    },
    30_000,
    100,
  );
}

const summary = (rows: DeadLetterRow[]): string[][] =>
  rows.map((d) => [d.key ?? 'null', d.statement, d.error_code, d.parked ? 'parked' : 'not parked']);

/** Runs `pg2kafka <args>` on the test database, as an operator would. */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli(args, cliEnv(db.url));
}

/** Fails with the CLI's output when it did not exit 0. */
function assertSucceeded(
  result: { code: number | null; stdout: string; stderr: string },
  what: string,
): void {
  assert.equal(result.code, 0, `${what} exited ${result.code}: ${result.stderr}${result.stdout}`);
}

test('retry under concurrent writes: a parked key’s dead letters go back in order, ahead of the key’s later events', async (t) => {
  const { table, topic } = await capturedTable('retry');
  const r = relay(RELAY_ENV);
  const consumer = await collect(kafka.kafka, topic);
  try {
    await r.waitForLog('active: shipping events');
    // Key 1: a row too large for the topic, then small updates that follow it while parked.
    await db.sql.unsafe(`insert into ${table} values (2, 0, 'small')`);
    await db.sql.unsafe(`insert into ${table} values (1, 0, repeat('x', ${BIG_BLOB}))`);
    const parkedUpdates = 3;
    for (let i = 0; i < parkedUpdates; i += 1) {
      await db.sql.unsafe(`update ${table} set blob = null, v = v + 1 where id = 1`);
    }
    await db.sql.unsafe(`insert into ${table} values (3, 0, null), (4, 0, null)`);
    await db.sql.unsafe(`update ${table} set v = v + 1 where id in (2, 3, 4)`);

    const parked = await waitForDeadLetters(
      table,
      1 + parkedUpdates,
      'key 1 and its followers in dead letters',
    );
    assert.deepEqual(summary(parked), [
      ['1', 'INSERT', 'MESSAGE_TOO_LARGE', 'parked'],
      ...Array.from({ length: parkedUpdates }, () => ['1', 'UPDATE', 'KEY_PARKED', 'parked']),
    ]);
    // Other keys flow meanwhile: keys 2, 3 and 4, an INSERT and an UPDATE each.
    await waitFor(
      'keys 2, 3, 4 on Kafka',
      () => dedupe(consumer.received).unique.filter((e) => e.key !== '1').length >= 6,
      30_000,
      100,
    );
    assert.ok(
      !consumer.received.some((e) => e.key === '1'),
      `nothing of key 1 shipped while parked: ${consumer.received.map(describe).join(', ')}`,
    );
    assert.ok(
      r.logs.some(
        (l) =>
          l.msg.startsWith('event set aside as a dead letter') &&
          l.errorCode === 'MESSAGE_TOO_LARGE',
      ),
      'the relay logged the dead letter',
    );
    const firstId = parked[0]?.id ?? '';

    // Fix the cause, then retry the first dead letter while a writer keeps changing key 1.
    await setMaxMessageBytes(kafka, topic, 1_000_000);
    // The writer goes on until 20 updates after the retry returned (at most 5,000), so the
    // retry always runs while it writes, however slow the machine.
    let written = 0;
    const retryState = { done: false, writtenThen: 0 };
    const writer = (async () => {
      const sql = db.connect({ max: 1 });
      try {
        while (written < 5_000 && (!retryState.done || written < retryState.writtenThen + 20)) {
          await sql.unsafe(`update ${table} set v = v + 1 where id = 1`);
          written += 1;
          await sleep(10);
        }
      } finally {
        await sql.end();
      }
    })();
    await waitFor('the writer under way', () => written >= 20, 30_000, 5);
    const writtenAtRetry = written;
    const retry = await cli(['dead-letters', 'retry', firstId]);
    const writtenAfterRetry = written;
    Object.assign(retryState, { done: true, writtenThen: written });
    assertSucceeded(retry, 'dead-letters retry');
    const retriedIds = /^(\d+) change\(s\) back in the queue: ([\d, ]+)$/m.exec(retry.stdout);
    assert.ok(retriedIds, `retry output: ${retry.stdout}`);
    assert.ok(
      Number(retriedIds[1]) >= 1 + parkedUpdates,
      `the whole parked key went back: ${retry.stdout}`,
    );
    assert.match(retry.stdout, /also retried .*: parked under the same key as the ids given/);
    assert.ok(
      retriedIds[2]?.startsWith(`${firstId}, `),
      `the refused INSERT goes back first: ${retry.stdout}`,
    );
    await writer;
    const writerUpdates = written;
    assert.ok(writtenAfterRetry < writerUpdates, 'the retry ran while the writer was writing');

    // Retries beyond the first: needed only if key 1 was parked again after the retry.
    let retries = 1;
    const leftovers: string[] = [];
    for (;;) {
      // Empty queue: every change of key 1 was either acknowledged or set aside again.
      await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000, 100);
      const left = await deadLetterRows(table);
      if (left.length === 0) break;
      leftovers.push(`after retry ${retries}: ${JSON.stringify(summary(left))}`);
      assert.ok(
        retries < 3,
        `still dead letters after ${retries} retries: ${leftovers.join('; ')}`,
      );
      assertSucceeded(await cli(['dead-letters', 'retry', '--all']), 'dead-letters retry --all');
      retries += 1;
    }
    assert.equal(await queueDepth(), 0);
    assert.deepEqual(await deadLetterRows(table), []);

    const key1Events = 1 + parkedUpdates + writerUpdates;
    await waitFor(
      `${key1Events} distinct events of key 1`,
      () => dedupe(consumer.received).unique.filter((e) => e.key === '1').length >= key1Events,
      30_000,
      100,
    );
    await sleep(1000);
    const { unique, duplicates } = dedupe(consumer.received);
    const key1 = unique.filter((e) => e.key === '1');
    assert.deepEqual(
      key1.map(describe),
      [
        `1 INSERT v=0 blob=${BIG_BLOB}`,
        ...Array.from({ length: parkedUpdates + writerUpdates }, (_, i) => `1 UPDATE v=${i + 1}`),
      ],
      'key 1 in the order of its writes, nothing missing, nothing extra',
    );
    assert.deepEqual(
      unique
        .filter((e) => e.key !== '1')
        .map(describe)
        .sort(),
      [
        '2 INSERT v=0 blob=5',
        '2 UPDATE v=1',
        '3 INSERT v=0',
        '3 UPDATE v=1',
        '4 INSERT v=0',
        '4 UPDATE v=1',
      ],
    );
    const [row] = await db.sql.unsafe<{ v: number }[]>(`select v from ${table} where id = 1`);
    assert.equal(row?.v, parkedUpdates + writerUpdates);
    const moved = r.logs.filter((l) => l.msg.startsWith('event set aside as a dead letter'));
    t.diagnostic(
      `retries needed: ${retries}; dead letters put back by the first retry: ${retriedIds[1]} ` +
        `(${1 + parkedUpdates} before the writer, so ${Number(retriedIds[1]) - 1 - parkedUpdates} ` +
        `writer updates parked); writer at ${writtenAtRetry}/${writerUpdates} when the retry ` +
        `started, ${writtenAfterRetry} when it ended; dead-letter log lines: ${moved.length}; ` +
        `messages received: ${consumer.received.length}, duplicates by uuid: ${duplicates}` +
        (leftovers.length > 0 ? `; ${leftovers.join('; ')}` : ''),
    );
    assert.equal(r.stderrText.filter((l) => l.includes('"level":60')).length, 0);
    assert.equal((await r.stop()).code, 0);
  } finally {
    await consumer.stop();
    await r.stop();
  }
});

test('discard drops a dead letter for good: its key is released and its later events flow', async () => {
  const { table, topic } = await capturedTable('discard');
  const r = relay(RELAY_ENV);
  const consumer = await collect(kafka.kafka, topic);
  try {
    await r.waitForLog('active: shipping events');
    // Key 1: refused, no followers. Key 2: refused, then two followers. Key 3 flows.
    await db.sql.unsafe(`insert into ${table} values (1, 0, repeat('x', ${BIG_BLOB}))`);
    await db.sql.unsafe(`insert into ${table} values (2, 0, repeat('y', ${BIG_BLOB}))`);
    await db.sql.unsafe(`update ${table} set blob = null, v = v + 1 where id = 2`);
    await db.sql.unsafe(`update ${table} set v = v + 1 where id = 2`);
    await db.sql.unsafe(`insert into ${table} values (3, 0, null)`);
    const letters = await waitForDeadLetters(table, 4, 'four dead letters');
    assert.deepEqual(summary(letters), [
      ['1', 'INSERT', 'MESSAGE_TOO_LARGE', 'parked'],
      ['2', 'INSERT', 'MESSAGE_TOO_LARGE', 'parked'],
      ['2', 'UPDATE', 'KEY_PARKED', 'parked'],
      ['2', 'UPDATE', 'KEY_PARKED', 'parked'],
    ]);
    const [key1Insert, key2Insert, key2Follower1, key2Follower2] = letters.map((l) => l.id);

    // Key 1 alone: discarding its dead letter releases it.
    const discard1 = await cli(['dead-letters', 'discard', key1Insert ?? '']);
    assertSucceeded(discard1, 'dead-letters discard');
    assert.equal(discard1.stdout, `1 dead letter(s) discarded: ${key1Insert}\n`);
    await db.sql.unsafe(`update ${table} set v = v + 1 where id = 1`);

    // Key 2: discarding only its first dead letter leaves it parked by the followers.
    const discard2 = await cli(['dead-letters', 'discard', key2Insert ?? '']);
    assertSucceeded(discard2, 'dead-letters discard');
    assert.equal(
      discard2.stdout,
      `1 dead letter(s) discarded: ${key2Insert}\n` +
        `still parked under the same key: ${key2Follower1}, ${key2Follower2} (retry or discard them too to release the key)\n`,
    );
    await db.sql.unsafe(`update ${table} set v = v + 1 where id = 2`);
    const stillParked = await waitForDeadLetters(
      table,
      3,
      "key 2's update after the partial discard in dead letters",
    );
    assert.deepEqual(summary(stillParked), [
      ['2', 'UPDATE', 'KEY_PARKED', 'parked'],
      ['2', 'UPDATE', 'KEY_PARKED', 'parked'],
      ['2', 'UPDATE', 'KEY_PARKED', 'parked'],
    ]);

    const discardAll = await cli(['dead-letters', 'discard', '--all']);
    assertSucceeded(discardAll, 'dead-letters discard --all');
    assert.match(discardAll.stdout, /^3 dead letter\(s\) discarded: /);
    assert.deepEqual(await deadLetterRows(table), []);
    await db.sql.unsafe(`update ${table} set v = v + 1 where id = 2`);

    await waitFor(
      'three distinct events',
      () => dedupe(consumer.received).unique.length >= 3,
      30_000,
      100,
    );
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000, 100);
    await sleep(1000);
    const { unique } = dedupe(consumer.received);
    assert.deepEqual(
      unique.map(describe).sort(),
      ['1 UPDATE v=1', '2 UPDATE v=4', '3 INSERT v=0'],
      'only the changes made after their key was released, and key 3',
    );
    assert.deepEqual(await deadLetterRows(table), []);
    assert.equal(await queueDepth(), 0);
    assert.equal((await r.stop()).code, 0);
  } finally {
    await consumer.stop();
    await r.stop();
  }
});

test('pg2kafka dead-letters lists what the relay set aside', async () => {
  const { table, topic } = await capturedTable('listed');
  const r = relay(RELAY_ENV);
  try {
    await r.waitForLog('active: shipping events');
    await db.sql.unsafe(`insert into ${table} values (7, 0, repeat('z', ${BIG_BLOB}))`);
    await db.sql.unsafe(`insert into ${table} values (8, 0, null)`);
    const [letter] = await waitForDeadLetters(table, 1, 'a dead letter');
    const [message] = await kafka.consume(topic, 1, 30_000, 500);
    assert.equal(message?.key, '8', 'the other key flowed');
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000, 100);

    const listed = await cli(['dead-letters', '--json']);
    assertSucceeded(listed, 'dead-letters --json');
    const deadLetters = JSON.parse(listed.stdout) as Array<
      Omit<DeadLetter, 'createdAt' | 'firstFailedAt' | 'deadLetteredAt'> & Record<string, unknown>
    >;
    assert.equal(deadLetters.length, 1, listed.stdout);
    const [entry] = deadLetters;
    assert.ok(entry);
    assert.deepEqual(
      {
        id: entry.id,
        table: entry.table,
        statement: entry.statement,
        topic: entry.topic,
        key: entry.key,
        keys: entry.keys,
        errorCode: entry.errorCode,
        parked: entry.parked,
        attempts: entry.attempts,
      },
      {
        id: Number(letter?.id),
        table: `public.${table}`,
        statement: 'INSERT',
        topic,
        key: '7',
        keys: ['7'],
        errorCode: 'MESSAGE_TOO_LARGE',
        parked: true,
        attempts: 1,
      },
    );
    assert.match(entry.reason, /max\.message\.bytes/);
    assert.ok((entry.payloadBytes ?? 0) > BIG_BLOB, `payload of ${entry.payloadBytes} bytes`);
    const payload = JSON.parse(entry.payload ?? '') as {
      statement: string;
      external_id: string;
      data: { blob: string };
    };
    assert.deepEqual(
      [payload.statement, payload.external_id, payload.data.blob.length],
      ['INSERT', '7', BIG_BLOB],
    );

    const text = await cli(['dead-letters']);
    assertSucceeded(text, 'dead-letters');
    assert.match(
      text.stdout,
      new RegExp(`^${entry.id} +public\\.${table} +INSERT +"7" +MESSAGE_TOO_LARGE .* yes `, 'm'),
    );
    assert.match(text.stdout, /^1 dead letter\(s\); retry with: /m);

    // A dead letter needs attention: status exits 3.
    const status = await cli(['status', '--json']);
    assert.equal(status.code, 3, status.stderr);
    const parsed = JSON.parse(status.stdout) as Status;
    assert.deepEqual(parsed.deadLetters, { total: 1, parkedKeys: 1 });
    const plain = await cli(['status']);
    assert.equal(plain.code, 3, plain.stderr);
    assert.match(plain.stdout, /^dead letters: 1, parking 1 key\(s\)/m);

    // Leave the database as found: nothing set aside.
    assertSucceeded(await cli(['dead-letters', 'discard', '--all']), 'dead-letters discard --all');
    assert.deepEqual(await deadLetterRows(table), []);
    assert.equal((await r.stop()).code, 0);
  } finally {
    await r.stop();
  }
});
