/**
 * What the relay's fetch makes of rows whose key columns are gone: such an event is
 * flagged (the relay holds its table back rather than ship it without a key), while a
 * key column that is there but NULL, and a TRUNCATE, which has no key, are not.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import postgres from 'postgres';
import { EventQueue } from '../../src/relay/queue.ts';
import { useTestDatabase } from '../helpers.ts';
import { migrated } from '../capture/support.ts';

const db = useTestDatabase();

async function fetched(): Promise<Array<[string, string | null, string[] | undefined]>> {
  const sql = db.connect({ transform: { column: { from: postgres.toCamel } }, max: 1 });
  try {
    const { events } = await new EventQueue(sql).fetch({
      limit: 1000,
      maxBytes: 10_000_000,
      lease: undefined,
      skipTables: [],
    });
    return events.map((e) => [e.statement, e.externalId, e.keyMissing]);
  } finally {
    await sql.end();
  }
}

test('events whose rows lack a key column are flagged; a NULL key and a TRUNCATE are not', async () => {
  await migrated(db);
  await db.sql`create table single (id int primary key, code text unique)`;
  await db.sql`select pg2kafka.setup('single', 'code')`;
  await db.sql`insert into single values (1, null), (2, 'k2')`;
  await db.sql`alter table single drop column code`;
  await db.sql`insert into single values (3)`;
  await db.sql`delete from single where id = 2`;
  await db.sql`truncate single`;

  await db.sql`create table pair (region text, id int, note text, primary key (region, id))`;
  await db.sql`select pg2kafka.setup('pair')`;
  await db.sql`insert into pair values ('nullland', 1, 'null')`;
  await db.sql`alter table pair rename column region to zone`;
  await db.sql`update pair set note = 'x'`;

  assert.deepEqual(await fetched(), [
    ['INSERT', null, undefined],
    ['INSERT', 'k2', undefined],
    ['INSERT', null, ['code']],
    ['DELETE', null, ['code']],
    ['TRUNCATE', null, undefined],
    // A key that only looks like it holds a null is checked, and is whole.
    ['INSERT', '["nullland",1]', undefined],
    ['UPDATE', '[null,1]', ['region']],
  ]);
});
