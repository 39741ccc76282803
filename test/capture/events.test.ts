/**
 * What a user sees in the queue after setup() and ordinary writes: the seed's
 * walk-through, UPDATE diffs, no-op updates, key changes, TRUNCATE, full-row mode,
 * partitioned tables, renames, setup twice, teardown.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { useTestDatabase } from '../helpers.ts';
import { collectNotices, queuedChanges, queuedEvents, migrated } from './support.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

test('the walk-through: snapshot, rename, delete', async () => {
  await db.sql`create table products (id serial, sku text primary key, name text not null)`;
  await db.sql`insert into products (sku, name) values ('CM01-B', 'Blue Coffee Mug'), ('CM01-R', 'Red Coffee Mug')`;
  await db.sql`select pg2kafka.setup('products', 'sku')`;
  await db.sql`update products set name = 'Big Red Coffee Mug' where sku = 'CM01-R'`;
  await db.sql`delete from products where sku = 'CM01-B'`;

  assert.deepEqual(await queuedChanges(db.sql, 'products'), [
    ['SNAPSHOT', 'CM01-B', { id: 1, sku: 'CM01-B', name: 'Blue Coffee Mug' }],
    ['SNAPSHOT', 'CM01-R', { id: 2, sku: 'CM01-R', name: 'Red Coffee Mug' }],
    ['UPDATE', 'CM01-R', { name: 'Big Red Coffee Mug' }],
    ['DELETE', 'CM01-B', {}],
  ]);
  const events = await queuedEvents(db.sql, 'products');
  assert.ok(events.every((e) => e.schema_name === 'public' && e.table_name === 'products'));
  assert.equal(
    new Set(events.map((e) => e.uuid)).size,
    events.length,
    'every event has its own uuid',
  );
  for (const e of events)
    assert.match(e.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const again = await queuedEvents(db.sql, 'products');
  assert.deepEqual(
    again.map((e) => e.uuid),
    events.map((e) => e.uuid),
    'uuids are stable across reads',
  );
});

test('INSERT carries the full row; UPDATE only changed columns; a no-op UPDATE nothing', async () => {
  await db.sql`create table items (id int primary key, name text, qty int, tags text[], meta jsonb)`;
  await db.sql`select pg2kafka.setup('items', 'id')`;
  await db.sql`insert into items values (1, 'mug', 3, '{a,b}', '{"x": 1}')`;
  await db.sql`update items set qty = 3 where id = 1`;
  await db.sql`update items set name = name, tags = tags where id = 1`;
  await db.sql`update items set qty = 4, meta = '{"x": 2}' where id = 1`;
  await db.sql`update items set name = null where id = 1`;
  await db.sql`update items set id = id where id = 1`;
  assert.deepEqual(await queuedChanges(db.sql, 'items'), [
    ['INSERT', '1', { id: 1, name: 'mug', qty: 3, tags: ['a', 'b'], meta: { x: 1 } }],
    ['UPDATE', '1', { qty: 4, meta: { x: 2 } }],
    ['UPDATE', '1', { name: null }],
  ]);
});

test('an UPDATE that equality calls a no-op but that prints differently is captured', async () => {
  await db.sql`create table prices (id int primary key, price numeric)`;
  await db.sql`insert into prices values (1, 1.5)`;
  await db.sql`select pg2kafka.setup('prices', 'id')`;
  await db.sql`update prices set price = 1.50 where id = 1`;
  await db.sql`update prices set price = 1.50 where id = 1`;
  const events = await queuedEvents(db.sql, 'prices');
  assert.deepEqual(
    events.map((e) => [e.statement, e.data_text]),
    [
      ['SNAPSHOT', '{"id": 1, "price": 1.5}'],
      ['UPDATE', '{"price": 1.50}'],
    ],
  );
});

test('a multi-row statement queues one event per row, in statement order', async () => {
  await db.sql`create table bulk (id int primary key, v int)`;
  await db.sql`select pg2kafka.setup('bulk', 'id')`;
  await db.sql`insert into bulk select g, g from generate_series(1, 100) g`;
  await db.sql`update bulk set v = v + 1 where id <= 10`;
  await db.sql`delete from bulk where id > 95`;
  const changes = await queuedChanges(db.sql, 'bulk');
  assert.equal(changes.length, 100 + 10 + 5);
  assert.deepEqual(changes.slice(100, 102), [
    ['UPDATE', '1', { v: 2 }],
    ['UPDATE', '2', { v: 3 }],
  ]);
  assert.deepEqual(
    changes.slice(110).map(([s, k]) => `${s} ${String(k)}`),
    ['DELETE 96', 'DELETE 97', 'DELETE 98', 'DELETE 99', 'DELETE 100'],
  );
});

test('an UPDATE of the external id becomes a DELETE of the old key then an INSERT of the new', async () => {
  await db.sql`create table skus (sku text primary key, name text)`;
  await db.sql`select pg2kafka.setup('skus', 'sku')`;
  await db.sql`insert into skus values ('A-1', 'anvil')`;
  await db.sql`update skus set sku = 'A-2', name = 'big anvil' where sku = 'A-1'`;
  const events = await queuedEvents(db.sql, 'skus');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.data, e.part]),
    [
      ['INSERT', 'A-1', { sku: 'A-1', name: 'anvil' }, 1],
      ['DELETE', 'A-1', {}, 0],
      ['INSERT', 'A-2', { sku: 'A-2', name: 'big anvil' }, 1],
    ],
  );
  assert.equal(events[1]?.id, events[2]?.id, 'both halves come from one captured change');
  assert.notEqual(events[1]?.uuid, events[2]?.uuid);
});

test('TRUNCATE queues one event without a key', async () => {
  await db.sql`create table logs (id int primary key, line text)`;
  await db.sql`insert into logs values (1, 'a'), (2, 'b')`;
  await db.sql`select pg2kafka.setup('logs', 'id')`;
  await db.sql`truncate logs`;
  assert.deepEqual(await queuedChanges(db.sql, 'logs'), [
    ['SNAPSHOT', '1', { id: 1, line: 'a' }],
    ['SNAPSHOT', '2', { id: 2, line: 'b' }],
    ['TRUNCATE', null, {}],
  ]);
});

test('full-row mode: UPDATE carries the whole new row, DELETE the old row', async () => {
  await db.sql`create table accounts (id int primary key, owner text, balance numeric(12, 2))`;
  await db.sql`insert into accounts values (1, 'ann', 10)`;
  await db.sql`select pg2kafka.setup('accounts', 'id', true)`;
  await db.sql`update accounts set balance = 12.5 where id = 1`;
  await db.sql`update accounts set id = 2 where id = 1`;
  await db.sql`delete from accounts where id = 2`;
  assert.deepEqual(await queuedChanges(db.sql, 'accounts'), [
    ['SNAPSHOT', '1', { id: 1, owner: 'ann', balance: 10 }],
    ['UPDATE', '1', { id: 1, owner: 'ann', balance: 12.5 }],
    ['DELETE', '1', { id: 1, owner: 'ann', balance: 12.5 }],
    ['INSERT', '2', { id: 2, owner: 'ann', balance: 12.5 }],
    ['DELETE', '2', { id: 2, owner: 'ann', balance: 12.5 }],
  ]);
});

test('a NULL external id stays NULL', async () => {
  await db.sql`create table loose (id int primary key, code text)`;
  const { notices, onnotice } = collectNotices();
  const sql = db.connect({ max: 1, onnotice });
  try {
    await sql`select pg2kafka.setup('loose', 'code')`;
  } finally {
    await sql.end();
  }
  assert.ok(
    notices.some(
      (n) =>
        n.severity === 'WARNING' &&
        n.message ===
          'pg2kafka: external id column "code" of public.loose is not a unique NOT NULL column (it is nullable)',
    ),
    JSON.stringify(notices),
  );
  await db.sql`insert into loose values (1, null), (2, 'B')`;
  await db.sql`update loose set code = 'A' where id = 1`;
  assert.deepEqual(await queuedChanges(db.sql, 'loose'), [
    ['INSERT', null, { id: 1, code: null }],
    ['INSERT', 'B', { id: 2, code: 'B' }],
    ['DELETE', null, {}],
    ['INSERT', 'A', { id: 1, code: 'A' }],
  ]);
});

test('a NOT NULL column without a unique index is accepted with a warning', async () => {
  await db.sql`create table catalog (id int primary key, sku text not null)`;
  const { notices, onnotice } = collectNotices();
  const sql = db.connect({ max: 1, onnotice });
  try {
    await sql`select pg2kafka.setup('catalog', 'sku')`;
  } finally {
    await sql.end();
  }
  const warning = notices.find((n) => n.severity === 'WARNING');
  assert.equal(
    warning?.message,
    'pg2kafka: external id column "sku" of public.catalog is not a unique NOT NULL column (no unique index covers it alone)',
  );
  assert.match(warning.hint ?? '', /prefer the primary key/);
});

test('a partitioned table: events of every partition name the parent', async () => {
  await db.sql`create table orders (id bigint, region text, total numeric, primary key (id, region)) partition by list (region)`;
  await db.sql`create table orders_eu partition of orders for values in ('eu')`;
  await db.sql`create table orders_us partition of orders for values in ('us')`;
  await db.sql`insert into orders values (1, 'eu', 10)`;
  await db.sql`select pg2kafka.setup('orders', 'id')`;
  await db.sql`create table orders_ap partition of orders for values in ('ap')`;
  await db.sql`insert into orders values (2, 'us', 20), (3, 'ap', 30)`;
  await db.sql`update orders set total = 11 where id = 1`;
  await db.sql`delete from orders where id = 2`;
  // Straight into a partition, bypassing the parent: still captured.
  await db.sql`insert into orders_eu values (4, 'eu', 40)`;
  await db.sql`delete from orders_ap where id = 3`;
  const events = await queuedEvents(db.sql, 'orders');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.table_name, e.data]),
    [
      ['SNAPSHOT', '1', 'orders', { id: 1, region: 'eu', total: 10 }],
      ['INSERT', '2', 'orders', { id: 2, region: 'us', total: 20 }],
      ['INSERT', '3', 'orders', { id: 3, region: 'ap', total: 30 }],
      ['UPDATE', '1', 'orders', { total: 11 }],
      ['DELETE', '2', 'orders', {}],
      ['INSERT', '4', 'orders', { id: 4, region: 'eu', total: 40 }],
      ['DELETE', '3', 'orders', {}],
    ],
  );
  await assert.rejects(db.sql`select pg2kafka.setup('orders_eu', 'id')`, {
    message:
      'public.orders_eu is a partition: set up its partitioned table instead (events name that table)',
  });
});

test('multi-row statements: every row, in statement order, also upserts and writable CTEs', async () => {
  await db.sql`create table stock (sku text primary key, qty int not null)`;
  await db.sql`select pg2kafka.setup('stock', 'sku')`;
  await db.sql`insert into stock select 'S' || g, g from generate_series(1, 3) g`;
  await db.sql`
    insert into stock values ('S2', 20), ('S4', 4)
    on conflict (sku) do update set qty = excluded.qty`;
  await db.sql`delete from stock where sku in ('S1', 'S3')`;
  await db.sql`
    with gone as (delete from stock where sku = 'S4' returning sku)
    insert into stock select sku || '-new', 5 from gone`;
  await db.sql`insert into stock select 'none', 0 where false`;
  const changes = await queuedChanges(db.sql, 'stock');
  assert.deepEqual(changes.slice(0, 3), [
    ['INSERT', 'S1', { sku: 'S1', qty: 1 }],
    ['INSERT', 'S2', { sku: 'S2', qty: 2 }],
    ['INSERT', 'S3', { sku: 'S3', qty: 3 }],
  ]);
  // Within one statement, rows of different keys may come in either order.
  const byStatement = (from: number, to: number) =>
    changes.slice(from, to).sort((a, b) => String(a[1]).localeCompare(String(b[1])));
  assert.deepEqual(byStatement(3, 5), [
    ['UPDATE', 'S2', { qty: 20 }],
    ['INSERT', 'S4', { sku: 'S4', qty: 4 }],
  ]);
  assert.deepEqual(byStatement(5, 7), [
    ['DELETE', 'S1', {}],
    ['DELETE', 'S3', {}],
  ]);
  assert.deepEqual(byStatement(7, 9), [
    ['DELETE', 'S4', {}],
    ['INSERT', 'S4-new', { sku: 'S4-new', qty: 5 }],
  ]);
  assert.equal(changes.length, 9, 'a statement that writes no row adds no event');
});

test("a user's AFTER triggers that change the same row: their changes queue after the change that fired them", async () => {
  await db.sql`create table articles (id int primary key, title text not null, slug text, edits int not null default 0)`;
  await db.sql`select pg2kafka.setup('articles', 'id')`;
  await db.sql`
    create function set_slug() returns trigger language plpgsql as $$
    begin
      update articles set slug = lower(new.title) where id = new.id;
      return null;
    end $$`;
  await db.sql`
    create function count_edit() returns trigger language plpgsql as $$
    begin
      if new.title is distinct from old.title then
        update articles set edits = edits + 1 where id = new.id;
      end if;
      return null;
    end $$`;
  // Names that sort before and after "pg2kafka": AFTER triggers fire in name order.
  for (const name of ['a_slug', 'z_slug']) {
    await db.sql.unsafe(
      `create trigger ${name} after insert on articles for each row execute function set_slug()`,
    );
  }
  for (const name of ['a_edits', 'z_edits']) {
    await db.sql.unsafe(
      `create trigger ${name} after update on articles for each row execute function count_edit()`,
    );
  }
  await db.sql`insert into articles (id, title) values (1, 'Hello')`;
  await db.sql`update articles set title = 'Bye' where id = 1`;
  const changes = await queuedChanges(db.sql, 'articles');
  assert.deepEqual(changes[0], ['INSERT', '1', { id: 1, title: 'Hello', slug: null, edits: 0 }]);
  assert.deepEqual(changes.at(-1)?.[2], { edits: 2 }, 'the last UPDATE has the final count');
  // Replaying the events in queue order gives the row as it is now.
  const replayed: Record<string, unknown> = {};
  for (const [, , data] of changes) Object.assign(replayed, data);
  const [row] = await db.sql`select * from articles where id = 1`;
  assert.deepEqual(replayed, { ...row });
});

test('an inheritance child set up on its own is captured also through its parent', async () => {
  await db.sql`create table vehicles (id int primary key, name text)`;
  await db.sql`create table trucks (load int) inherits (vehicles)`;
  await db.sql`alter table trucks add primary key (id)`;
  await db.sql`select pg2kafka.setup('trucks', 'id')`;
  await db.sql`insert into trucks values (1, 'big', 10)`;
  await db.sql`update vehicles set name = 'bigger' where id = 1`;
  await db.sql`delete from vehicles where id = 1`;
  assert.deepEqual(await queuedChanges(db.sql, 'trucks'), [
    ['INSERT', '1', { id: 1, name: 'big', load: 10 }],
    ['UPDATE', '1', { name: 'bigger' }],
    ['DELETE', '1', {}],
  ]);
});

test('setup twice warns and neither doubles the trigger nor the snapshot', async () => {
  await db.sql`create table twice (id int primary key)`;
  await db.sql`insert into twice values (1)`;
  await db.sql`select pg2kafka.setup('twice', 'id')`;
  const { notices, onnotice } = collectNotices();
  const sql = db.connect({ max: 1, onnotice });
  try {
    await sql`select pg2kafka.setup('twice', 'id', true)`;
  } finally {
    await sql.end();
  }
  assert.deepEqual(
    notices.filter((n) => n.severity === 'WARNING').map((n) => n.message),
    ['pg2kafka: public.twice is already set up (external id column "id"); nothing was changed'],
  );
  await db.sql`insert into twice values (2)`;
  assert.deepEqual(await queuedChanges(db.sql, 'twice'), [
    ['SNAPSHOT', '1', { id: 1 }],
    ['INSERT', '2', { id: 2 }],
  ]);
  const [triggers] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from pg_trigger where tgrelid = 'twice'::regclass and not tgisinternal`;
  assert.equal(triggers?.n, 5);
});

test('a renamed table keeps capturing and its events follow the new name', async () => {
  await db.sql`create table old_name (id int primary key)`;
  await db.sql`select pg2kafka.setup('old_name', 'id')`;
  await db.sql`insert into old_name values (1)`;
  await db.sql`create schema archive`;
  await db.sql`alter table old_name rename to new_name`;
  await db.sql`alter table new_name set schema archive`;
  await db.sql`insert into archive.new_name values (2)`;
  const events = await queuedEvents(db.sql, 'archive.new_name');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.schema_name, e.table_name]),
    [
      ['INSERT', '1', 'archive', 'new_name'],
      ['INSERT', '2', 'archive', 'new_name'],
    ],
  );
});

test('teardown stops capture, keeps queued events, and setup again snapshots afresh', async () => {
  await db.sql`create table gone (id int primary key, v text)`;
  await db.sql`insert into gone values (1, 'a')`;
  await db.sql`select pg2kafka.setup('gone', 'id')`;
  await db.sql`insert into gone values (2, 'b')`;
  await db.sql`select pg2kafka.teardown('gone')`;
  await db.sql`insert into gone values (3, 'c')`;
  await db.sql`update gone set v = 'z'`;
  assert.deepEqual(await queuedChanges(db.sql, 'gone'), [
    ['SNAPSHOT', '1', { id: 1, v: 'a' }],
    ['INSERT', '2', { id: 2, v: 'b' }],
  ]);
  const [triggers] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from pg_trigger where tgrelid = 'gone'::regclass and not tgisinternal`;
  assert.equal(triggers?.n, 0);

  // Changing the external id while events of the old one are queued would mislabel them.
  await assert.rejects(
    db.sql`select pg2kafka.setup('gone', 'v')`,
    (error: Error & { code?: string }) => {
      assert.equal(error.code, '55006');
      assert.match(
        error.message,
        /public\.gone still has queued events captured with external id column "id"/,
      );
      return true;
    },
  );
  await db.sql`select pg2kafka.setup('gone', 'id')`;
  assert.deepEqual((await queuedChanges(db.sql, 'gone')).slice(2), [
    ['SNAPSHOT', '1', { id: 1, v: 'z' }],
    ['SNAPSHOT', '2', { id: 2, v: 'z' }],
    ['SNAPSHOT', '3', { id: 3, v: 'z' }],
  ]);
});

test('events of a dropped table stay readable under its last known name', async () => {
  await db.sql`create table doomed (id int primary key)`;
  await db.sql`select pg2kafka.setup('doomed', 'id')`;
  await db.sql`insert into doomed values (1)`;
  const [{ oid } = { oid: 0 }] = await db.sql<
    { oid: number }[]
  >`select 'doomed'::regclass::oid as oid`;
  await db.sql`drop table doomed`;
  const rows = await db.sql<{ statement: string; external_id: string; table_name: string }[]>`
    select statement, external_id, table_name from pg2kafka.outbound_event_queue where table_oid = ${oid}`;
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [{ statement: 'INSERT', external_id: '1', table_name: 'doomed' }],
  );
});

test('event uuids are RFC 4122 version 3 uuids of the install namespace and the event id', async () => {
  const { v3 } = await import('uuid');
  const [ns] = await db.sql<
    { value: string }[]
  >`select value from pg2kafka.settings where name = 'event_namespace'`;
  const events = await queuedEvents(db.sql);
  assert.ok(events.length > 10);
  for (const e of events) {
    const name = e.part === 0 ? `${e.id}:old-key` : e.id;
    assert.equal(e.uuid, v3(name, ns?.value ?? ''), `event ${e.id}/${e.part}`);
  }
});
