/**
 * Debezium's message formats end to end (real PostgreSQL, the relay as a child process, a
 * real broker, a real consumer): keys and envelopes field by field for each op, Connect
 * schemas per type, values converted without losing digits, payload control applied,
 * Debezium's topic names, and a table's own format over MESSAGE_FORMAT.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { useKafka, useTestDatabase, waitFor, type ConsumedMessage } from '../helpers.ts';
import { useRelays } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

interface Envelope {
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  source: Record<string, unknown>;
  op: string;
  ts_ms: number;
}

interface Schema {
  type: string;
  name?: string;
  field?: string;
  optional?: boolean;
  fields?: Schema[];
  parameters?: Record<string, string>;
  items?: Schema;
}

/** The message with its embedded schemas split from the payloads. */
function embedded(m: ConsumedMessage): {
  key: unknown;
  keySchema: Schema | undefined;
  value: Envelope | null;
  valueSchema: Schema | undefined;
} {
  const key = m.key === null ? null : (JSON.parse(m.key) as { schema: Schema; payload: unknown });
  const value =
    m.value === null ? null : (JSON.parse(m.value) as { schema: Schema; payload: Envelope });
  return {
    key: key?.payload ?? null,
    keySchema: key?.schema,
    value: value?.payload ?? null,
    valueSchema: value?.schema,
  };
}

/** [key, op, before, after] of each message: what a Debezium consumer acts on. */
function ops(messages: ConsumedMessage[], parse = embedded): unknown[] {
  return messages.map((m) => {
    const { key, value } = parse(m);
    return [key, value?.op ?? null, value?.before ?? null, value?.after ?? null];
  });
}

test('debezium: keys and envelopes of r, c, u, d and t with tombstones, field by field, under payload control', async () => {
  await db.sql`create table items (
    id int primary key, name text not null, price numeric(13,3), secret text, status text)`;
  await db.sql`insert into items values (1, 'one', 1.5, 's1', 'live'), (2, 'two', null, 's2', 'draft')`;
  await db.sql`select pg2kafka.setup('items', exclude_columns => '{secret}', row_filter => 'status <> ''draft''', tombstones => true)`;
  await db.sql`insert into items values (3, 'three', -2.25, 's3', 'live')`;
  await db.sql`update items set price = 1234567890.125 where id = 1`;
  await db.sql`update items set secret = 'only this' where id = 3`; // excluded only: nothing
  await db.sql`update items set status = 'live' where id = 2`; // enters the filter: c
  await db.sql`update items set id = 4 where id = 3`; // key change: d 3, c 4, tombstone 3
  await db.sql`delete from items where id = 1`; // d, tombstone
  await db.sql`truncate items`; // t
  const [tx] = await db.sql<
    { txids: string[] }[]
  >`select array_agg(tx_id::text order by id) as txids from pg2kafka.captured_changes`;

  // Debezium's names leave the database out: a prefix of this run's own keeps runs apart.
  const prefix = `dbz_${db.name}`;
  const r = relay({ MESSAGE_FORMAT: 'debezium', TOPIC_NAMING: 'debezium', TOPIC_PREFIX: prefix });
  const topic = `${prefix}.public.items`;
  const messages = await kafka.consume(topic, 10, 30_000, 1500);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);

  const row = (id: number, name: string, price: string | null, status: string) => ({
    id,
    name,
    price,
    status,
  });
  // numeric(13,3) is Connect's Decimal: base64 of the unscaled value's two's complement.
  const decimal = (unscaled: bigint): string => {
    const hex = unscaled.toString(16);
    return Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex').toString('base64');
  };
  const p1500 = decimal(1500n);
  const pBig = decimal(1234567890125n);
  const pNeg = Buffer.from([0xf7, 0x36]).toString('base64'); // -2250 = 0x10000 - 0x08ca
  assert.deepEqual(ops(messages), [
    [{ id: 1 }, 'r', null, row(1, 'one', p1500, 'live')],
    [{ id: 3 }, 'c', null, row(3, 'three', pNeg, 'live')],
    [{ id: 1 }, 'u', row(1, 'one', p1500, 'live'), row(1, 'one', pBig, 'live')],
    [{ id: 2 }, 'c', null, row(2, 'two', null, 'live')],
    [{ id: 3 }, 'd', row(3, 'three', pNeg, 'live'), null],
    [{ id: 4 }, 'c', null, row(4, 'three', pNeg, 'live')],
    [{ id: 3 }, null, null, null], // tombstone
    [{ id: 1 }, 'd', row(1, 'one', pBig, 'live'), null],
    [{ id: 1 }, null, null, null], // tombstone
    [null, 't', null, null],
  ]);
  assert.equal(messages.length, 10, 'ten messages, none more');
  assert.ok(
    messages.every((m) => !(m.value ?? '').includes('secret')),
    'no excluded column',
  );

  const first = embedded(messages[0] as ConsumedMessage);
  assert.deepEqual(first.keySchema, {
    type: 'struct',
    fields: [{ type: 'int32', optional: false, field: 'id' }],
    optional: false,
    name: `${prefix}.public.items.Key`,
  });
  const valueSchema = first.valueSchema as Schema;
  assert.equal(valueSchema.name, `${prefix}.public.items.Envelope`);
  assert.deepEqual(
    valueSchema.fields?.map((f) => f.field),
    ['before', 'after', 'source', 'transaction', 'op', 'ts_ms', 'ts_us', 'ts_ns'],
  );
  const after = (valueSchema.fields ?? [])[1] as Schema;
  assert.equal(after.name, `${prefix}.public.items.Value`);
  assert.deepEqual(after.fields, [
    { type: 'int32', optional: false, field: 'id' },
    { type: 'string', optional: false, field: 'name' },
    {
      type: 'bytes',
      name: 'org.apache.kafka.connect.data.Decimal',
      version: 1,
      parameters: { scale: '3', 'connect.decimal.precision': '13' },
      optional: true,
      field: 'price',
    },
    { type: 'string', optional: true, field: 'status' },
  ]);

  const source = (m: ConsumedMessage) => (embedded(m).value as Envelope).source;
  assert.deepEqual(
    { ...source(messages[0] as ConsumedMessage), ts_ms: 0, ts_us: 0, ts_ns: 0, txId: 0 },
    {
      version: source(messages[0] as ConsumedMessage).version,
      connector: 'pg2kafka',
      name: prefix,
      ts_ms: 0,
      snapshot: 'true',
      db: db.name,
      sequence: null,
      ts_us: 0,
      ts_ns: 0,
      schema: 'public',
      table: 'items',
      txId: 0,
      lsn: null,
      xmin: null,
    },
  );
  assert.equal(source(messages[1] as ConsumedMessage).snapshot, 'false');
  // txId is the writer's transaction; both halves of the key change share it.
  const txIds = messages.filter((m) => m.value !== null).map((m) => String(source(m).txId));
  const queued = tx?.txids ?? [];
  assert.deepEqual(txIds, [
    queued[0],
    queued[1],
    queued[2],
    queued[3],
    queued[4],
    queued[4],
    queued[5],
    queued[6],
  ]);
  for (const m of messages) {
    const value = embedded(m).value;
    if (value === null) continue;
    assert.equal(String(value.source.ts_ms), m.timestamp, 'source.ts_ms is the capture time');
    assert.ok(value.ts_ms >= Number(m.timestamp), 'ts_ms is when the relay wrote it');
  }
});

test('debezium: every fidelity type converted as the Debezium connector does, no digit lost', async () => {
  await db.sql`create table kinds (
    id bigint primary key, big bigint, small smallint, ratio numeric, price numeric(20,4),
    rounded numeric(6,-2), at timestamp, at3 timestamp(3), atz timestamptz, day date,
    clock time, bytes bytea, doc jsonb, tags text[], nums int[], prices numeric(8,2)[], u uuid,
    f float8, flag boolean, note text, span interval, nothing text, bc date, tz timetz)`;
  await db.sql`select pg2kafka.setup('kinds', snapshot => 'none')`;
  await db.sql`insert into kinds values (
    9223372036854775807, -9007199254740993, -32768, 123456789012345678901234567890.000000001,
    -0.0001, 12300, '1969-12-31 23:59:59.999999', '2026-12-03 12:00:00.123',
    '2026-12-03 12:00:00.5+02', '1900-02-28', '24:00:00', '\\x00ff10', '{"n": 12345678901234567890, "s": "é"}',
    '{"a,b","c\\"d",null}', '{1,-2}', '{1.10,-2.00}', '6ba7b810-9dad-11d1-80b4-00c04fd430c8',
    'Infinity', true, 'hé ✓ 🐘', '1 day 02:00:00', null, '0044-03-15 BC', '01:00:00.5+05:30')`;

  const r = relay({ MESSAGE_FORMAT: 'debezium' });
  const [message] = await kafka.consume(`pg2kafka.${db.name}.kinds`, 1, 30_000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);
  assert.ok(message);
  // Read the value as text: JSON.parse would round the 64-bit integers.
  assert.match(message.key ?? '', /"payload":\{"id":9223372036854775807\}\}$/);
  assert.match(message.value ?? '', /"big":-9007199254740993,/);
  const { value, valueSchema } = embedded(message);
  const after = value?.after as Record<string, unknown>;
  const base64 = (...bytes: number[]) => Buffer.from(bytes).toString('base64');
  const unscaledBase64 = (n: bigint) => {
    const hex = n.toString(16);
    return Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex').toString('base64');
  };
  assert.deepEqual(
    { ...after, id: 'checked above', big: 'checked above' },
    {
      id: 'checked above',
      big: 'checked above',
      small: -32768,
      ratio: { scale: 9, value: unscaledBase64(123456789012345678901234567890000000001n) },
      price: base64(0xff), // -1 at scale 4
      rounded: base64(123), // 12300 at scale -2
      at: -1,
      at3: 1796299200123,
      atz: '2026-12-03T10:00:00.5Z',
      day: -25509,
      clock: 86_400_000_000,
      bytes: base64(0x00, 0xff, 0x10),
      doc: '{"n": 12345678901234567890, "s": "é"}',
      tags: ['a,b', 'c"d', null],
      nums: [1, -2],
      prices: [base64(0x6e), base64(0xff, 0x38)],
      u: '6ba7b810-9dad-11d1-80b4-00c04fd430c8',
      f: null,
      flag: true,
      note: 'hé ✓ 🐘',
      span: '1 day 02:00:00',
      nothing: null,
      bc: -735_160, // 44 BC is year -43 of the proleptic Gregorian calendar
      tz: '19:30:00.5Z', // the day before, in UTC
    },
  );
  const fields = new Map(
    (valueSchema?.fields?.[1]?.fields ?? []).map((f) => [f.field, { ...f, field: undefined }]),
  );
  const logical = (field: string) => {
    const f = fields.get(field);
    return [f?.type, f?.name ?? null];
  };
  assert.deepEqual(
    Object.fromEntries([...fields.keys()].map((name) => [name, logical(name as string)])),
    {
      id: ['int64', null],
      big: ['int64', null],
      small: ['int16', null],
      ratio: ['struct', 'io.debezium.data.VariableScaleDecimal'],
      price: ['bytes', 'org.apache.kafka.connect.data.Decimal'],
      rounded: ['bytes', 'org.apache.kafka.connect.data.Decimal'],
      at: ['int64', 'io.debezium.time.MicroTimestamp'],
      at3: ['int64', 'io.debezium.time.Timestamp'],
      atz: ['string', 'io.debezium.time.ZonedTimestamp'],
      day: ['int32', 'io.debezium.time.Date'],
      clock: ['int64', 'io.debezium.time.MicroTime'],
      bytes: ['bytes', null],
      doc: ['string', 'io.debezium.data.Json'],
      tags: ['array', null],
      nums: ['array', null],
      prices: ['array', null],
      u: ['string', 'io.debezium.data.Uuid'],
      f: ['double', null],
      flag: ['boolean', null],
      note: ['string', null],
      span: ['string', null],
      nothing: ['string', null],
      bc: ['int32', 'io.debezium.time.Date'],
      tz: ['string', 'io.debezium.time.ZonedTime'],
    },
  );
  assert.deepEqual(fields.get('rounded')?.parameters, {
    scale: '-2',
    'connect.decimal.precision': '6',
  });
  assert.deepEqual(fields.get('prices')?.items, {
    type: 'bytes',
    name: 'org.apache.kafka.connect.data.Decimal',
    version: 1,
    parameters: { scale: '2', 'connect.decimal.precision': '8' },
    optional: true,
  });
});

test('debezium: far and BC instants, NOT NULL infinity, arrays of json arrays, domains, a column narrowed while queued, a truncate', async () => {
  await db.sql`create domain posint as int check (value > 0)`;
  await db.sql`create domain small_posint as posint check (value < 100)`;
  await db.sql`create domain price2 as numeric(8,2)`;
  await db.sql`create table edges (id int primary key, far date, farts timestamp,
    future timestamptz, past timestamptz, valid_to timestamptz not null, docs jsonb[],
    level small_posint, levels posint[], cost price2, amount numeric(10,4))`;
  await db.sql`select pg2kafka.setup('edges', snapshot => 'none')`;
  await db.sql`insert into edges values (1, '5874897-12-31', '294000-12-31 23:59:59.999999',
    '10000-01-01 00:00:00+00', '0044-03-15 12:00:00+00 BC', 'infinity',
    array['[1,2]'::jsonb, '{"a":1}'], 42, '{1,2}', 9.99, 1.2345)`;
  // Narrowed while its event is queued: the event ships with the new type, rounded.
  await db.sql`alter table edges alter column amount type numeric(10,2)`;
  await db.sql`truncate edges`;
  // PostgreSQL's own arithmetic is the oracle for the far values.
  const [expected] = await db.sql<{ days: number; micros: string }[]>`
    select '5874897-12-31'::date - '1970-01-01'::date as days,
           (extract(epoch from '294000-12-31 23:59:59.999999'::timestamp) * 1000000)::numeric(30,0)::text as micros`;

  const r = relay({ MESSAGE_FORMAT: 'debezium' });
  const messages = await kafka.consume(`pg2kafka.${db.name}.edges`, 2, 30_000, 1000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);
  const [insert, truncate] = messages.map(embedded);
  assert.ok(insert && truncate && expected);
  assert.match(messages[0]?.value ?? '', new RegExp(`"farts":${expected.micros},`));
  assert.deepEqual(
    { ...insert.value?.after, farts: 'checked above' },
    {
      id: 1,
      far: expected.days,
      farts: 'checked above',
      future: '+10000-01-01T00:00:00Z',
      past: '-0043-03-15T12:00:00Z',
      valid_to: null, // infinity has no Connect value
      docs: ['[1, 2]', '{"a": 1}'],
      level: 42,
      levels: [1, 2],
      cost: Buffer.from([0x03, 0xe7]).toString('base64'), // 999 at scale 2
      amount: Buffer.from([0x7b]).toString('base64'), // 1.2345 rounded to 1.23 at scale 2
    },
  );
  const fields = (insert.valueSchema?.fields?.[1]?.fields ?? []).map((f) => ({
    field: f.field,
    type: f.type,
    optional: f.optional,
    items: f.items?.type,
    scale: f.parameters?.scale,
  }));
  const field = (name: string) => fields.find((f) => f.field === name);
  assert.deepEqual(field('valid_to'), {
    field: 'valid_to',
    type: 'string',
    optional: true, // NOT NULL, but infinity is written as null
    items: undefined,
    scale: undefined,
  });
  assert.equal(field('level')?.type, 'int32', 'a domain of a domain is its base type');
  assert.equal(field('levels')?.items, 'int32', 'an array of a domain is an array of its base');
  assert.equal(field('cost')?.scale, '2');
  assert.equal(field('amount')?.scale, '2', 'the type at the time it ships');
  assert.deepEqual([truncate.key, truncate.value?.op], [null, 't']);
  assert.deepEqual(
    truncate.valueSchema?.fields?.[0],
    insert.valueSchema?.fields?.[0],
    "a truncate's row schema is the table's, not an empty struct",
  );
});

test("debezium-schemaless: a table's own format wins over MESSAGE_FORMAT; payloads without schemas", async () => {
  await db.sql`create table plain_items (sku text primary key, qty int)`;
  await db.sql`create table other_items (sku text primary key, qty int)`;
  await db.sql`select pg2kafka.setup('plain_items', snapshot => 'none', message_format => 'debezium-schemaless')`;
  await db.sql`select pg2kafka.setup('other_items', snapshot => 'none')`;
  await db.sql`insert into plain_items values ('A-1', 1)`;
  await db.sql`update plain_items set qty = 2`;
  await db.sql`delete from plain_items`;
  await db.sql`insert into other_items values ('B-1', 1)`;

  const r = relay({ MESSAGE_FORMAT: 'debezium' });
  const plain = await kafka.consume(`pg2kafka.${db.name}.plain_items`, 3, 30_000, 1000);
  const other = await kafka.consume(`pg2kafka.${db.name}.other_items`, 1, 30_000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);

  const schemaless = (m: ConsumedMessage) => ({
    key: m.key === null ? null : (JSON.parse(m.key) as unknown),
    value: m.value === null ? null : (JSON.parse(m.value) as Envelope),
    keySchema: undefined,
    valueSchema: undefined,
  });
  assert.deepEqual(ops(plain, schemaless), [
    [{ sku: 'A-1' }, 'c', null, { sku: 'A-1', qty: 1 }],
    [{ sku: 'A-1' }, 'u', { sku: 'A-1', qty: 1 }, { sku: 'A-1', qty: 2 }],
    [{ sku: 'A-1' }, 'd', { sku: 'A-1', qty: 2 }, null],
  ]);
  assert.ok(
    plain.every((m) => !(m.value ?? '').includes('"schema":{')),
    'no schema',
  );
  assert.deepEqual(ops(other), [[{ sku: 'B-1' }, 'c', null, { sku: 'B-1', qty: 1 }]]);
  assert.match(other[0]?.value ?? '', /^\{"schema":\{/);
});
