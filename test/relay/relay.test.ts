/**
 * The relay end to end: real PostgreSQL, the relay as a child process, a real broker,
 * and results read back with a real consumer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import { useRelays } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

test('the walk-through arrives on pg2kafka.<db>.products with exact keys, values, headers and timestamps', async () => {
  await db.sql`create table products (id serial, sku text primary key, name text not null)`;
  await db.sql`insert into products (sku, name) values ('CM01-B', 'Blue Coffee Mug'), ('CM01-R', 'Red Coffee Mug')`;
  await db.sql`select pg2kafka.setup('products', 'sku')`;
  await db.sql`update products set name = 'Big Red Coffee Mug' where sku = 'CM01-R'`;
  await db.sql`delete from products where sku = 'CM01-B'`;
  const expected = await db.sql<{ uuid: string; created_at_ms: string; created_at: string }[]>`
    select uuid::text, floor(extract(epoch from created_at) * 1000)::int8::text as created_at_ms,
           to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as created_at
    from pg2kafka.outbound_event_queue order by id, part`;

  const r = relay();
  const topic = `pg2kafka.${db.name}.products`;
  const messages = await kafka.consume(topic, 4, 30_000, 1000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);

  assert.deepEqual(
    messages.map((m) => [m.key, JSON.parse(m.value ?? '') as unknown]),
    [
      [
        'CM01-B',
        {
          uuid: expected[0]?.uuid,
          external_id: 'CM01-B',
          statement: 'SNAPSHOT',
          data: { id: 1, sku: 'CM01-B', name: 'Blue Coffee Mug' },
          created_at: expected[0]?.created_at,
        },
      ],
      [
        'CM01-R',
        {
          uuid: expected[1]?.uuid,
          external_id: 'CM01-R',
          statement: 'SNAPSHOT',
          data: { id: 2, sku: 'CM01-R', name: 'Red Coffee Mug' },
          created_at: expected[1]?.created_at,
        },
      ],
      [
        'CM01-R',
        {
          uuid: expected[2]?.uuid,
          external_id: 'CM01-R',
          statement: 'UPDATE',
          data: { name: 'Big Red Coffee Mug' },
          created_at: expected[2]?.created_at,
        },
      ],
      [
        'CM01-B',
        {
          uuid: expected[3]?.uuid,
          external_id: 'CM01-B',
          statement: 'DELETE',
          data: {},
          created_at: expected[3]?.created_at,
        },
      ],
    ],
  );
  assert.match(expected[0]?.created_at ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  assert.deepEqual(
    messages.map((m) => m.timestamp),
    expected.map((e) => e.created_at_ms),
  );
  assert.deepEqual(messages[2]?.headers, {
    uuid: expected[2]?.uuid,
    statement: 'UPDATE',
    table: 'public.products',
    database: db.name,
  });
  // The value is compact JSON in the original's field order, as the Go original printed it.
  assert.equal(
    messages[3]?.value,
    `{"uuid":"${expected[3]?.uuid ?? ''}","external_id":"CM01-B","statement":"DELETE","data":{},"created_at":"${expected[3]?.created_at ?? ''}"}`,
  );
});

test('DRY_RUN prints each event once as a JSON line on stdout, sends and deletes nothing', async () => {
  await db.sql`create table drafts (id int primary key, title text)`;
  await db.sql`insert into drafts values (1, 'one'), (2, 'two')`;
  await db.sql`select pg2kafka.setup('drafts', 'id')`;
  const before = await queueDepth();

  const r = relay({ DRY_RUN: 'true', KAFKA_BROKERS: '' });
  await waitFor('two printed events', () => r.stdout.length >= 2);
  await db.sql`update drafts set title = 'uno' where id = 1`;
  await waitFor('three printed events', () => r.stdout.length >= 3);
  await new Promise((resolve) => setTimeout(resolve, 700));
  assert.equal((await r.stop()).code, 0);

  const printed = r.stdout.map(
    (line) =>
      JSON.parse(line) as {
        topic: string;
        key: string;
        headers: Record<string, string>;
        value: string;
      },
  );
  assert.deepEqual(
    printed.map((p) => [
      p.topic,
      p.key,
      p.headers.statement,
      (JSON.parse(p.value) as { data: unknown }).data,
    ]),
    [
      [`pg2kafka.${db.name}.drafts`, '1', 'SNAPSHOT', { id: 1, title: 'one' }],
      [`pg2kafka.${db.name}.drafts`, '2', 'SNAPSHOT', { id: 2, title: 'two' }],
      [`pg2kafka.${db.name}.drafts`, '1', 'UPDATE', { title: 'uno' }],
    ],
    'each event printed exactly once',
  );
  assert.equal(await queueDepth(), before + 1, 'nothing was deleted');
  assert.ok(
    r.logs.length > 0 && r.stdout.every((l) => !l.includes('"level"')),
    'logs go to stderr only',
  );

  // Run again: the same events print again, since nothing was deleted.
  const again = relay({ DRY_RUN: 'true', KAFKA_BROKERS: '' });
  await waitFor('three printed events again', () => again.stdout.length >= 3);
  await again.stop();
  await db.sql`delete from pg2kafka.captured_changes`;
});

test('TOPIC_NAMESPACE and a table outside public shape the topic names', async () => {
  await db.sql`create schema sales`;
  await db.sql`create table sales.orders (id int primary key, total numeric)`;
  await db.sql`create table customers (id int primary key, name text)`;
  await db.sql`select pg2kafka.setup('sales.orders', 'id')`;
  await db.sql`select pg2kafka.setup('customers', 'id')`;
  await db.sql`insert into sales.orders values (1, 9.5)`;
  await db.sql`insert into customers values (7, 'ann')`;

  const r = relay({ TOPIC_NAMESPACE: 'shop', TOPIC_PREFIX: 'cdc' });
  const [order] = await kafka.consume(`cdc.shop.${db.name}.sales.orders`, 1);
  const [customer] = await kafka.consume(`cdc.shop.${db.name}.customers`, 1);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  await r.stop();
  assert.equal(order?.key, '1');
  assert.equal(order.headers.table, 'sales.orders');
  assert.equal(customer?.key, '7');
});

test('with AUTO_CREATE_TOPICS=false a missing topic holds back only its table', async () => {
  await db.sql`create table present (id int primary key)`;
  await db.sql`create table absent (id int primary key)`;
  await db.sql`select pg2kafka.setup('present', 'id')`;
  await db.sql`select pg2kafka.setup('absent', 'id')`;
  await db.sql`insert into absent values (1), (2)`;
  await db.sql`insert into present values (1), (2), (3)`;
  await kafka.createTopic(`pg2kafka.${db.name}.present`);

  const r = relay({ AUTO_CREATE_TOPICS: 'false' });
  const messages = await kafka.consume(`pg2kafka.${db.name}.present`, 3);
  assert.deepEqual(
    messages.map((m) => m.key),
    ['1', '2', '3'],
  );
  const blocked = await r.waitForLog('events of public.absent stay queued');
  assert.match(
    blocked.msg,
    /topic "pg2kafka\..*\.absent" does not exist and AUTO_CREATE_TOPICS=false/,
  );
  await waitFor('only the held-back events left', async () => (await queueDepth()) === 2);

  const admin = await kafka.admin();
  try {
    assert.ok(
      !(await admin.listTopics()).includes(`pg2kafka.${db.name}.absent`),
      'the relay did not create the topic',
    );
  } finally {
    await admin.disconnect();
  }
  // Once the topic exists, the held-back events follow.
  await kafka.createTopic(`pg2kafka.${db.name}.absent`);
  const late = await kafka.consume(`pg2kafka.${db.name}.absent`, 2, 30_000);
  assert.deepEqual(
    late.map((m) => m.key),
    ['1', '2'],
  );
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 20_000);
  await r.stop();
});

test('a table whose name Kafka rejects is held back with a clear error; others flow', async () => {
  await db.sql`create table "Odd Name" (id int primary key)`;
  await db.sql`create table fine (id int primary key)`;
  await db.sql`select pg2kafka.setup('"Odd Name"', 'id')`;
  await db.sql`select pg2kafka.setup('fine', 'id')`;
  await db.sql`insert into "Odd Name" values (1)`;
  await db.sql`insert into fine values (1)`;
  const r = relay();
  const [message] = await kafka.consume(`pg2kafka.${db.name}.fine`, 1);
  assert.equal(message?.key, '1');
  const blocked = await r.waitForLog('events of public.Odd Name stay queued');
  assert.match(blocked.msg, /has characters Kafka does not accept/);
  assert.equal(
    r.logs.filter((l) => l.msg.includes('Odd Name')).length,
    1,
    'reported once, not in a loop',
  );
  await r.stop();
  // Renaming the table lets its events go under the new name.
  await db.sql`alter table "Odd Name" rename to odd_name`;
  const r2 = relay();
  const [renamed] = await kafka.consume(`pg2kafka.${db.name}.odd_name`, 1);
  assert.equal(renamed?.key, '1');
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  await r2.stop();
});

test('the startup log shows the effective configuration without secrets', async () => {
  const url = new URL(db.url);
  url.password = 'S3cr3t-pw';
  const r = relay({
    DATABASE_URL: url.toString(),
    KAFKA_SASL_MECHANISM: 'plain',
    KAFKA_SASL_USERNAME: 'alice',
    KAFKA_SASL_PASSWORD: 'Sasl-S3cr3t',
    DRY_RUN: 'true',
  });
  const started = await r.waitForLog('pg2kafka relay starting');
  await r.stop();
  const config = started.config as {
    databaseUrl: string;
    sasl: { username: string; password: string };
  };
  assert.match(config.databaseUrl, /:\*\*\*@/);
  assert.deepEqual(config.sasl, { mechanism: 'plain', username: 'alice', password: '***' });
  const everything = r.stderrText.join('\n') + r.stdout.join('\n');
  assert.ok(!everything.includes('S3cr3t-pw'), 'database password in output');
  assert.ok(!everything.includes('Sasl-S3cr3t'), 'SASL password in output');
});

test('every kind of event ships exactly as the outbound_event_queue view describes it', async () => {
  // The relay builds messages from the raw changes itself; the view is the reference.
  await db.sql`create type mood as enum ('ok', 'sad')`;
  await db.sql`
    create table ledger (
      sku text primary key, n bigint, amount numeric(38, 10), doc jsonb, tags text[],
      at timestamptz, blob bytea, m mood, note text)`;
  await db.sql`create table audit (id bigint primary key, body text)`;
  // Keys whose JSON text differs between json and jsonb: a float, an array.
  await db.sql`create table readings (at float8 primary key, tags int[] unique not null)`;
  // A key of several columns: the JSON array of their values.
  await db.sql`
    create table pairs (region text, at timestamptz, n numeric, note text, primary key (region, at, n))`;
  await db.sql`
    insert into ledger values
      ('A', 9007199254740993, 1234567890123456789012345678.0123456789, '{"x": [1, {"y": null}]}',
       '{a,"b c"}', '2026-01-02 03:04:05.123456+02', ${Buffer.from([0, 255])}, 'ok',
       ${'caf\u00e9 "q" \\ \n\t\u0001'})`;
  await db.sql`select pg2kafka.setup('ledger', 'sku')`;
  await db.sql`select pg2kafka.setup('audit', 'id', full_row => true)`;
  await db.sql`select pg2kafka.setup('readings', 'tags')`;
  await db.sql`select pg2kafka.setup('pairs')`;
  await db.sql`insert into pairs values ('eu "x"', '2026-01-02 03:04:05+02', 1.50, 'a')`;
  await db.sql`update pairs set note = 'b'`;
  await db.sql`update pairs set n = 2`;
  await db.sql`delete from pairs`;
  await db.sql`insert into readings values (1e20, '{1,2}')`;
  await db.sql`update readings set at = -0.0`;
  await db.sql`update readings set tags = '{3}'`;
  await db.sql`insert into ledger (sku, n, note) values ('B', -9223372036854775808, '')`;
  await db.sql`update ledger set amount = 1.50, note = null where sku = 'A'`;
  await db.sql`update ledger set n = n + 1 where sku = 'A'`;
  await db.sql`update ledger set sku = 'B2', n = 1 where sku = 'B'`;
  await db.sql`delete from ledger where sku = 'A'`;
  await db.sql`truncate ledger`;
  await db.sql`insert into audit values (9223372036854775807, 'one')`;
  await db.sql`update audit set body = 'two'`;
  await db.sql`update audit set id = 1`;
  await db.sql`delete from audit`;
  const expected = await db.sql<
    {
      uuid: string;
      table_name: string;
      external_id: string | null;
      statement: string;
      data: string;
      created_at: string;
    }[]
  >`
    select uuid::text, table_name, external_id, statement, data::text,
           to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as created_at
    from pg2kafka.outbound_event_queue order by id, part`;
  assert.equal(expected.length, 22);

  const r = relay();
  const shipped = [
    ...(await kafka.consume(`pg2kafka.${db.name}.ledger`, 8, 30_000, 500)),
    ...(await kafka.consume(`pg2kafka.${db.name}.audit`, 5, 30_000, 500)),
    ...(await kafka.consume(`pg2kafka.${db.name}.readings`, 4, 30_000, 500)),
  ];
  const pairs = await kafka.consume(`pg2kafka.${db.name}.pairs`, 5, 30_000, 500);
  shipped.push(...pairs);
  const pairKey = (n: string) => `["eu \\"x\\"","2026-01-02T01:04:05+00:00",${n}]`;
  // Per key, in order (two keys may sit on two partitions).
  const statementsOf = (key: string) =>
    pairs
      .filter((m) => m.key === key)
      .map((m) => (JSON.parse(m.value ?? '') as { statement: string }).statement);
  assert.deepEqual(
    [statementsOf(pairKey('1.50')), statementsOf(pairKey('2'))],
    [
      ['INSERT', 'UPDATE', 'DELETE'],
      ['INSERT', 'DELETE'],
    ],
  );
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  await r.stop();

  assert.equal(shipped.length, expected.length);
  for (const want of expected) {
    const message = shipped.find((m) => m.headers.uuid === want.uuid);
    assert.ok(message, `event ${want.uuid} (${want.table_name} ${want.statement}) arrived`);
    const value = JSON.parse(message.value ?? '') as Record<string, unknown>;
    assert.deepEqual(
      [message.key, value.uuid, value.external_id, value.statement, value.created_at],
      [want.external_id, want.uuid, want.external_id, want.statement, want.created_at],
      `${want.table_name} ${want.statement} ${String(want.external_id)}`,
    );
    // Compared by PostgreSQL as jsonb, so big numbers count digit for digit.
    const dataText = /"data":(.*),"created_at":/.exec(message.value ?? '')?.[1] ?? '';
    const [same] = await db.sql<{ equal: boolean }[]>`
      select ${dataText}::text::jsonb = ${want.data}::text::jsonb as equal`;
    assert.ok(same?.equal, `data of ${want.statement}: shipped ${dataText}, view ${want.data}`);
  }
});
