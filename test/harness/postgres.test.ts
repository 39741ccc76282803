/**
 * Canary of the test harness: each file gets its own fresh database, reached through
 * `postgres` over a real connection.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { useTestDatabase } from '../helpers.ts';

const db = useTestDatabase();

test('the file has its own, empty database', async () => {
  const [row] = await db.sql<{ name: string; tables: number }[]>`
    select current_database() as name,
           (select count(*)::int from pg_tables where schemaname not in ('pg_catalog', 'information_schema')) as tables`;
  assert.equal(row?.name, db.name);
  assert.equal(row.tables, 0);
});

test('rows round-trip through postgres with bind parameters', async () => {
  await db.sql`create table products (sku text primary key, name text not null, price numeric(12, 2))`;
  const sku = `CM01-'B"; drop table products; --`;
  await db.sql`insert into products ${db.sql({ sku, name: 'Red Coffee Mug', price: '9.99' })}`;
  const rows = await db.sql<
    { sku: string; name: string; price: string }[]
  >`select sku, name, price from products`;
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [{ sku, name: 'Red Coffee Mug', price: '9.99' }],
  );
});

test('a second pool sees committed rows and is closed by the test', async () => {
  await db.sql`create table counters (id int primary key, n bigint not null)`;
  await db.sql`insert into counters values (1, 9007199254740993)`;
  const other = db.connect({ max: 1 });
  try {
    const [row] = await other<{ n: string }[]>`select n::text as n from counters where id = 1`;
    assert.equal(row?.n, '9007199254740993');
  } finally {
    await other.end();
  }
});
