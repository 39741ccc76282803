/**
 * Byte budgets: what a batch holds in memory (BATCH_BYTES) and what one produce request
 * carries (keys, values and headers, under the broker's limit).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import postgres from 'postgres';
import { EventQueue } from '../../src/relay/queue.ts';
import { useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import { useRelays } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

test('a batch stops adding rows at BATCH_BYTES; a row larger than that comes alone', async () => {
  await db.sql`create table wide (id int primary key, blob text)`;
  await db.sql`select pg2kafka.setup('wide', 'id')`;
  await db.sql`insert into wide select i, repeat('x', 100000) from generate_series(1, 5) i`;
  await db.sql`insert into wide values (6, repeat('y', 1000000)), (7, 'z')`;
  const sql = db.connect({ transform: { column: { from: postgres.toCamel } }, max: 1 });
  try {
    const queue = new EventQueue(sql);
    const first = await queue.fetch({
      limit: 1000,
      maxBytes: 250_000,
      lease: undefined,
      skipTables: [],
    });
    // 0, 100k and 200k bytes come before rows 1, 2 and 3: all under 250k; row 4 is over.
    assert.deepEqual(
      first.events.map((e) => e.externalId),
      ['1', '2', '3'],
    );
    assert.equal(first.full, true);
    const rest = await queue.fetch({
      limit: 1000,
      maxBytes: 250_000,
      lease: undefined,
      skipTables: [],
      excludeIds: first.events.map((e) => e.id),
    });
    // 4 and 5 bring the batch to 200k, under the budget: 6 (1 MB) still joins; 7 does not.
    assert.deepEqual(
      rest.events.map((e) => e.externalId),
      ['4', '5', '6'],
    );
    const alone = await queue.fetch({
      limit: 1000,
      maxBytes: 250_000,
      lease: undefined,
      skipTables: [],
      excludeIds: [...first.events, ...rest.events]
        .filter((e) => e.externalId !== '6')
        .map((e) => e.id),
    });
    assert.deepEqual(
      alone.events.map((e) => e.externalId),
      ['6'],
    );
  } finally {
    await sql.end();
    await db.sql`delete from pg2kafka.captured_changes`;
    await db.sql`select pg2kafka.teardown('wide')`;
  }
});

test("small events whose headers outweigh their values ship whole: requests count headers under the broker's limit", async () => {
  // A 63-character table name: every message carries it in its "table" header.
  const table = `t${'h'.repeat(62)}`;
  await db.sql`create table ${db.sql(table)} (id int primary key)`;
  await db.sql`select pg2kafka.setup(${table}, 'id')`;
  await db.sql`insert into ${db.sql(table)} select generate_series(1, 20000)`;

  const r = relay({ BATCH_SIZE: '20000' });
  const messages = await kafka.consume(`pg2kafka.${db.name}.${table}`, 20_000, 60_000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  assert.equal((await r.stop()).code, 0);
  assert.equal(new Set(messages.map((m) => m.key)).size, 20_000);
  assert.equal(
    r.logs.some((l) => l.msg.includes('stay queued') || l.msg.includes('dead letter')),
    false,
  );
});
