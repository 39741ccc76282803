/**
 * Security of the capture SQL: setup's arguments cannot inject SQL, odd table names are
 * quoted everywhere, writers need no privilege on schema pg2kafka and cannot reach the
 * queue, functions named like built-ins on a writer's search_path are never called, and
 * setup refuses what it cannot capture with a message that says why.
 */
import assert from 'node:assert/strict';
import { before, test, type TestContext } from 'node:test';
import postgres from 'postgres';
import { uniqueName, useTestDatabase, type Sql } from '../helpers.ts';
import { CAPTURE_TRIGGERS, migrated, queuedChanges, queuedEvents } from './support.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
  await db.sql`create table victims (id int primary key)`;
  await db.sql`insert into victims values (1), (2), (3)`;
});

async function assertVictimsUnharmed(): Promise<void> {
  const rows = await db.sql<{ id: number }[]>`select id from victims order by id`;
  assert.deepEqual(
    rows.map((r) => r.id),
    [1, 2, 3],
  );
}

/** The pg2kafka triggers on `table` and whether it is registered: what setup leaves behind. */
async function captureState(table: string): Promise<{ triggers: string[]; registered: boolean }> {
  const triggers = await db.sql<{ name: string }[]>`
    select tgname as name from pg_trigger
    where tgrelid = ${table}::regclass and tgname like '%pg2kafka%' order by tgname`;
  const [registered] = await db.sql<{ exists: boolean }[]>`
    select exists (select 1 from pg2kafka.tracked_tables where table_oid = ${table}::regclass)`;
  return { triggers: triggers.map((t) => t.name), registered: registered?.exists ?? false };
}

const notCaptured = { triggers: [], registered: false };

test('SQL injected into setup arguments fails with an error and harms nothing', async () => {
  await db.sql`create table products (sku text primary key, name text)`;

  await assert.rejects(db.sql`select pg2kafka.setup('products; drop table victims; --', 'sku')`, {
    code: '42602',
    message: 'invalid name syntax',
  });
  await assert.rejects(db.sql`select pg2kafka.setup('products', 'sku; drop table victims')`, {
    code: '42703',
    message: 'column "sku; drop table victims" does not exist in table public.products',
  });
  await assert.rejects(
    db.sql`select pg2kafka.setup('products', $$sku" text); drop table victims; --$$)`,
    {
      code: '42703',
      message:
        'column "sku" text); drop table victims; --" does not exist in table public.products',
    },
  );

  assert.deepEqual(await captureState('products'), notCaptured);
  await assertVictimsUnharmed();
});

test('a table and key column named with quotes and semicolons are captured under their names', async () => {
  await db.sql`create schema "Sales"`;
  await db.sql`
    create table "Sales"."Order Items; drop table victims" (
      "sku""; drop table victims; --" text primary key, "it's" text)`;
  const table = '"Sales"."Order Items; drop table victims"';
  const key = 'sku"; drop table victims; --';
  await db.sql`insert into "Sales"."Order Items; drop table victims" values ('A-1', 'x')`;

  await db.sql`select pg2kafka.setup(${table}, ${key})`;
  await db.sql`insert into "Sales"."Order Items; drop table victims" values ('B-2', 'y')`;
  await db.sql`update "Sales"."Order Items; drop table victims" set "it's" = 'z' where "it's" = 'x'`;
  await db.sql`delete from "Sales"."Order Items; drop table victims" where "it's" = 'y'`;
  await db.sql`select pg2kafka.teardown(${table})`;
  await db.sql`insert into "Sales"."Order Items; drop table victims" values ('C-3', 'not captured')`;

  const events = await queuedEvents(db.sql, table);
  assert.deepEqual(
    events.map((e) => [e.schema_name, e.table_name, e.statement, e.external_id, e.data]),
    [
      [
        'Sales',
        'Order Items; drop table victims',
        'SNAPSHOT',
        'A-1',
        { [key]: 'A-1', "it's": 'x' },
      ],
      ['Sales', 'Order Items; drop table victims', 'INSERT', 'B-2', { [key]: 'B-2', "it's": 'y' }],
      ['Sales', 'Order Items; drop table victims', 'UPDATE', 'A-1', { "it's": 'z' }],
      ['Sales', 'Order Items; drop table victims', 'DELETE', 'B-2', {}],
    ],
  );
  assert.deepEqual(await captureState(table), { triggers: [], registered: true });
  await assertVictimsUnharmed();
});

test('a schema and table with capitals and spaces work with setup and name events correctly', async () => {
  await db.sql`create schema if not exists "Sales"`;
  await db.sql`create table "Sales"."Order Items" (id int primary key, "Unit Price" numeric(10, 2))`;
  await db.sql`insert into "Sales"."Order Items" values (1, 9.99)`;

  await assert.rejects(db.sql`select pg2kafka.setup('Sales."Order Items"', 'id')`, {
    code: '3F000',
    message: 'schema "sales" does not exist',
  });
  await db.sql`select pg2kafka.setup('"Sales"."Order Items"', 'id')`;
  await db.sql`insert into "Sales"."Order Items" values (2, 19.5)`;
  await db.sql`update "Sales"."Order Items" set "Unit Price" = 10.00 where id = 1`;
  await db.sql`delete from "Sales"."Order Items" where id = 2`;

  const events = await queuedEvents(db.sql, '"Sales"."Order Items"');
  assert.deepEqual(
    events.map((e) => [e.schema_name, e.table_name, e.statement, e.external_id, e.data_text]),
    [
      ['Sales', 'Order Items', 'SNAPSHOT', '1', '{"id": 1, "Unit Price": 9.99}'],
      ['Sales', 'Order Items', 'INSERT', '2', '{"id": 2, "Unit Price": 19.50}'],
      ['Sales', 'Order Items', 'UPDATE', '1', '{"Unit Price": 10.00}'],
      ['Sales', 'Order Items', 'DELETE', '2', '{}'],
    ],
  );
});

interface Writer {
  role: string;
  sql: Sql;
}

/**
 * A LOGIN role that may use schema public and read and write `table`, and nothing else.
 * Roles are cluster-wide: it is named uniquely and dropped after the test.
 */
async function writerRole(t: TestContext, table: string): Promise<Writer> {
  const role = uniqueName('pg2kafka_writer');
  const url = new URL(db.url);
  url.username = role;
  const sql = postgres(url.toString(), { max: 1, onnotice: () => undefined });
  await db.sql`create role ${db.sql(role)} login`;
  t.after(async () => {
    await sql.end({ timeout: 5 });
    await db.sql`drop owned by ${db.sql(role)}`;
    await db.sql`drop role ${db.sql(role)}`;
  });
  await db.sql`grant usage on schema public to ${db.sql(role)}`;
  await db.sql`grant select, insert, update, delete on ${db.sql(table)} to ${db.sql(role)}`;
  const [privileges] = await db.sql<{ superuser: boolean; pg2kafka: boolean }[]>`
    select rolsuper as superuser, has_schema_privilege(${role}, 'pg2kafka', 'usage') as pg2kafka
    from pg_roles where rolname = ${role}`;
  assert.deepEqual({ ...privileges }, { superuser: false, pg2kafka: false });
  return { role, sql };
}

test('a writer role with no grant on schema pg2kafka writes a tracked table and its changes are queued', async (t) => {
  await db.sql`create table orders (id int primary key, status text not null)`;
  await db.sql`select pg2kafka.setup('orders', 'id')`;
  const writer = await writerRole(t, 'orders');

  const [who] = await writer.sql<{ name: string }[]>`select current_user as name`;
  assert.equal(who?.name, writer.role);
  await writer.sql`insert into orders values (1, 'new'), (2, 'new')`;
  await writer.sql`update orders set status = 'paid' where id = 1`;
  await writer.sql`delete from orders where id = 2`;

  assert.deepEqual(await queuedChanges(db.sql, 'orders'), [
    ['INSERT', '1', { id: 1, status: 'new' }],
    ['INSERT', '2', { id: 2, status: 'new' }],
    ['UPDATE', '1', { status: 'paid' }],
    ['DELETE', '2', {}],
  ]);
});

test('the writer role cannot read or write the queue, nor call setup or teardown', async (t) => {
  await db.sql`create table invoices (id int primary key, total numeric)`;
  await db.sql`select pg2kafka.setup('invoices', 'id')`;
  const writer = await writerRole(t, 'invoices');
  await writer.sql`insert into invoices values (1, 10)`;
  const queued = await queuedChanges(db.sql, 'invoices');
  assert.deepEqual(queued, [['INSERT', '1', { id: 1, total: 10 }]]);

  const denied = { code: '42501', message: 'permission denied for schema pg2kafka' };
  await assert.rejects(writer.sql`select * from pg2kafka.captured_changes`, denied);
  await assert.rejects(
    writer.sql`
      insert into pg2kafka.captured_changes (table_oid, statement, new_row)
      values ('invoices'::regclass, 'INSERT', '{"id": 666, "total": 0}')`,
    denied,
  );
  await assert.rejects(writer.sql`delete from pg2kafka.captured_changes`, denied);
  await assert.rejects(writer.sql`select * from pg2kafka.outbound_event_queue`, denied);
  await assert.rejects(
    writer.sql`insert into pg2kafka.outbound_event_queue (external_id) values ('666')`,
    denied,
  );
  await assert.rejects(writer.sql`select pg2kafka.setup('invoices', 'total')`, denied);
  await assert.rejects(writer.sql`select pg2kafka.teardown('invoices')`, denied);
  await assert.rejects(
    writer.sql`update pg2kafka.tracked_tables set external_id_column = 'total'`,
    denied,
  );

  assert.deepEqual(await queuedChanges(db.sql, 'invoices'), queued);
  assert.deepEqual(await captureState('invoices'), {
    triggers: CAPTURE_TRIGGERS,
    registered: true,
  });
});

test('usage on schema pg2kafka still gives a writer no access to the queue or to setup', async (t) => {
  await db.sql`create table payments (id int primary key, amount numeric)`;
  await db.sql`select pg2kafka.setup('payments', 'id')`;
  const writer = await writerRole(t, 'payments');
  await db.sql`grant usage on schema pg2kafka to ${db.sql(writer.role)}`;
  await writer.sql`insert into payments values (1, 5)`;

  const deniedOn = (what: string): { code: string; message: string } => ({
    code: '42501',
    message: `permission denied for ${what}`,
  });
  await assert.rejects(
    writer.sql`select * from pg2kafka.captured_changes`,
    deniedOn('table captured_changes'),
  );
  await assert.rejects(
    writer.sql`
      insert into pg2kafka.captured_changes (table_oid, statement)
      values ('payments'::regclass, 'TRUNCATE')`,
    deniedOn('table captured_changes'),
  );
  await assert.rejects(
    writer.sql`delete from pg2kafka.captured_changes`,
    deniedOn('table captured_changes'),
  );
  await assert.rejects(
    writer.sql`select * from pg2kafka.outbound_event_queue`,
    deniedOn('view outbound_event_queue'),
  );
  await assert.rejects(
    writer.sql`update pg2kafka.tracked_tables set external_id_column = 'amount'`,
    deniedOn('table tracked_tables'),
  );
  await assert.rejects(
    writer.sql`select pg2kafka.setup('payments', 'amount')`,
    deniedOn('function setup'),
  );
  await assert.rejects(
    writer.sql`select pg2kafka.teardown('payments')`,
    deniedOn('function teardown'),
  );
  await assert.rejects(
    writer.sql`select pg2kafka.lock_table('payments', 'ACCESS EXCLUSIVE')`,
    deniedOn('function lock_table'),
  );

  assert.deepEqual(await queuedChanges(db.sql, 'payments'), [
    ['INSERT', '1', { id: 1, amount: 5 }],
  ]);
});

test('functions named like built-ins earlier on the writer search_path are never called', async () => {
  await db.sql`create schema evil`;
  await db.sql`create table evil.calls (fn text not null)`;
  // Each impostor records that it ran, then returns something plausible but wrong.
  await db.sql.unsafe(`
    create function evil.to_jsonb(anyelement) returns jsonb language plpgsql as $$
      begin insert into evil.calls values ('to_jsonb'); return '{"evil": true}'; end $$;
    create function evil.to_json(anyelement) returns json language plpgsql as $$
      begin insert into evil.calls values ('to_json'); return '{"evil": true}'; end $$;
    create function evil.now() returns timestamptz language plpgsql as $$
      begin insert into evil.calls values ('now'); return 'epoch'; end $$;
    create function evil.current_setting(text) returns text language plpgsql as $$
      begin insert into evil.calls values ('current_setting'); return 'read committed'; end $$;
    create function evil.format(text) returns text language plpgsql as $$
      begin insert into evil.calls values ('format'); return 'select 1'; end $$;
    create function evil.upper(text) returns text language plpgsql as $$
      begin insert into evil.calls values ('upper'); return 'EVIL'; end $$;
    create function evil.md5(text) returns text language plpgsql as $$
      begin insert into evil.calls values ('md5'); return repeat('0', 32); end $$;
    create function evil.md5(bytea) returns text language plpgsql as $$
      begin insert into evil.calls values ('md5'); return repeat('0', 32); end $$;
    create function evil.random() returns float8 language plpgsql as $$
      begin insert into evil.calls values ('random'); return 0; end $$;
  `);
  await db.sql`create table accounts (id int primary key, owner text, opened_at timestamptz)`;
  await db.sql`insert into accounts values (1, 'ada', '2024-01-02 03:04:05+00')`;

  const writer = db.connect({ max: 1, connection: { search_path: 'evil, public, pg_catalog' } });
  try {
    const [trap] = await writer<{ doc: unknown }[]>`select to_jsonb(1) as doc`;
    assert.deepEqual(
      trap?.doc,
      { evil: true },
      "the impostors shadow built-ins in the writer's session",
    );
    await db.sql`delete from evil.calls`;

    await writer`select pg2kafka.setup('accounts', 'id')`;
    await writer`insert into accounts values (2, 'grace', '2024-05-06 07:08:09+00')`;
    await writer`update accounts set owner = 'Ada' where id = 1`;
    await writer`delete from accounts where id = 2`;

    const expected = [
      ['SNAPSHOT', '1', { id: 1, owner: 'ada', opened_at: '2024-01-02T03:04:05+00:00' }],
      ['INSERT', '2', { id: 2, owner: 'grace', opened_at: '2024-05-06T07:08:09+00:00' }],
      ['UPDATE', '1', { owner: 'Ada' }],
      ['DELETE', '2', {}],
    ];
    assert.deepEqual(await queuedChanges(db.sql, 'accounts'), expected);
    assert.deepEqual(
      await queuedChanges(writer, 'accounts'),
      expected,
      'read through the evil path',
    );
    const uuids = (await queuedEvents(writer, 'accounts')).map((e) => e.uuid);
    assert.deepEqual(
      uuids,
      (await queuedEvents(db.sql, 'accounts')).map((e) => e.uuid),
    );
  } finally {
    await writer.end();
  }
  const calls = await db.sql<{ fn: string }[]>`select fn from evil.calls`;
  assert.deepEqual(
    calls.map((c) => c.fn),
    [],
  );
});

test('setup refuses a view, a materialized view and a sequence, saying what each is', async () => {
  await db.sql`create table catalog_items (id int primary key, title text)`;
  await db.sql`create view catalog_view as select * from catalog_items`;
  await db.sql`create materialized view catalog_snapshot as select * from catalog_items`;
  await db.sql`create sequence catalog_ids`;

  for (const [relation, kind, key] of [
    ['catalog_view', 'a view', 'id'],
    ['catalog_snapshot', 'a materialized view', 'id'],
    ['catalog_ids', 'a sequence', 'last_value'],
  ] as const) {
    await assert.rejects(db.sql`select pg2kafka.setup(${relation}, ${key})`, {
      code: '42809',
      message: `public.${relation} is ${kind}, not a table: pg2kafka can capture only plain or partitioned tables`,
    });
    assert.deepEqual(await captureState(relation), notCaptured);
  }
});

test("setup refuses pg2kafka's own tables", async () => {
  await assert.rejects(db.sql`select pg2kafka.setup('pg2kafka.captured_changes', 'id')`, {
    code: '42809',
    message: 'pg2kafka does not capture its own tables (pg2kafka.captured_changes)',
  });
  assert.deepEqual(await captureState('pg2kafka.captured_changes'), notCaptured);
});

test('setup refuses a temporary table', async () => {
  const session = await db.sql.reserve();
  try {
    await session`create temporary table drafts (id int primary key, body text)`;
    await assert.rejects(session`select pg2kafka.setup('drafts', 'id')`, (error: unknown) => {
      assert.ok(error instanceof postgres.PostgresError);
      assert.equal(error.code, '42809');
      assert.match(
        error.message,
        /^pg_temp_\d+\.drafts is a temporary table: pg2kafka can capture only tables all sessions see$/,
      );
      return true;
    });
    const [triggers] = await session<{ n: number }[]>`
      select count(*)::int as n from pg_trigger where tgrelid = 'drafts'::regclass`;
    assert.equal(triggers?.n, 0);
  } finally {
    session.release();
  }
});

test('setup refuses a partition and hints at its partitioned table', async () => {
  await db.sql`
    create table measurements (id bigint, taken_on date, primary key (id, taken_on))
    partition by range (taken_on)`;
  await db.sql`
    create table measurements_2024 partition of measurements
    for values from ('2024-01-01') to ('2025-01-01')`;

  await assert.rejects(db.sql`select pg2kafka.setup('measurements_2024', 'id')`, {
    code: '42809',
    message:
      'public.measurements_2024 is a partition: set up its partitioned table instead (events name that table)',
    hint: "SELECT pg2kafka.setup('public.measurements', 'id');",
  });
  assert.deepEqual(await captureState('measurements_2024'), notCaptured);
});

test('setup refuses an inheritance parent, whose children it would copy but not capture', async () => {
  await db.sql`create table vehicles (id int primary key, name text)`;
  await db.sql`create table trucks (axles int) inherits (vehicles)`;
  await db.sql`insert into trucks values (1, 'big', 3)`;
  await assert.rejects(db.sql`select pg2kafka.setup('vehicles', 'id')`, {
    code: '42809',
    message:
      'public.vehicles has inheritance children (public.trucks): pg2kafka captures a table and its own rows only',
  });
  assert.deepEqual(await captureState('vehicles'), notCaptured);
});

test('setup reports a table that does not exist', async () => {
  await assert.rejects(db.sql`select pg2kafka.setup('no_such_table', 'id')`, {
    code: '42P01',
    message: 'relation "no_such_table" does not exist',
  });
  await assert.rejects(db.sql`select pg2kafka.setup('public.no_such_table', 'id')`, {
    code: '42P01',
    message: 'relation "public.no_such_table" does not exist',
  });
});

test('setup refuses NULL arguments (a NULL key column means the primary key)', async () => {
  await db.sql`create table shipments (id int primary key)`;
  const needsAll = {
    code: '22004',
    message:
      'pg2kafka.setup(table [, external_id_column [, full_row [, snapshot]]]) needs a table, and no NULL in the others',
  };
  await assert.rejects(db.sql`select pg2kafka.setup(null, 'id')`, needsAll);
  await assert.rejects(db.sql`select pg2kafka.setup('shipments', 'id', null)`, needsAll);
  await assert.rejects(db.sql`select pg2kafka.setup('shipments', 'id', false, null)`, needsAll);
  await assert.rejects(db.sql`select pg2kafka.setup('shipments', 'id', false, 'later')`, {
    code: '22023',
    message: "pg2kafka.setup: snapshot must be 'online', 'locked' or 'none', not 'later'",
  });
  assert.deepEqual(await captureState('shipments'), notCaptured);
});

test('setup refuses to run in a REPEATABLE READ or SERIALIZABLE transaction', async () => {
  await db.sql`create table customers (id int primary key)`;
  for (const level of ['repeatable read', 'serializable']) {
    await assert.rejects(
      db.sql.begin(
        `isolation level ${level}`,
        (tx) => tx`select pg2kafka.setup('customers', 'id')`,
      ),
      {
        code: '25000',
        message: `pg2kafka.setup() must run in a READ COMMITTED transaction, not ${level.toUpperCase()}`,
      },
    );
    assert.deepEqual(await captureState('customers'), notCaptured);
  }

  await db.sql.begin(
    'isolation level read committed',
    (tx) => tx`select pg2kafka.setup('customers', 'id')`,
  );
  assert.deepEqual(await captureState('customers'), {
    triggers: CAPTURE_TRIGGERS,
    registered: true,
  });
});
