/**
 * Data fidelity of captured events, read back through pg2kafka.outbound_event_queue:
 * every value arrives exactly as stored (numbers are compared as PostgreSQL prints them,
 * in `data_text`, never through JS numbers), and the same row gives the same external id
 * and event text whatever the writer's session set for TimeZone, DateStyle, bytea_output,
 * extra_float_digits or IntervalStyle. Each test uses its own table.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { useTestDatabase, type Sql } from '../helpers.ts';
import { migrated, queuedEvents, type QueuedEvent } from './support.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

/** What an event says, as text: what tests of exact printing compare. */
function printed(events: QueuedEvent[]): Array<[string, string | null, string]> {
  return events.map((e) => [e.statement, e.external_id, e.data_text]);
}

test('bigint values beyond 2^53 are kept exactly, in data and in the external id', async () => {
  await db.sql`create table big_numbers (id bigint primary key, n bigint)`;
  await db.sql`select pg2kafka.setup('big_numbers', 'id')`;
  await db.sql`
    insert into big_numbers values
      (9007199254740993, -9223372036854775808),
      (9223372036854775807, 9007199254740993)`;
  await db.sql`update big_numbers set n = 9223372036854775807 where id = 9007199254740993`;
  await db.sql`delete from big_numbers where id = 9223372036854775807`;

  assert.deepEqual(printed(await queuedEvents(db.sql, 'big_numbers')), [
    ['INSERT', '9007199254740993', '{"n": -9223372036854775808, "id": 9007199254740993}'],
    ['INSERT', '9223372036854775807', '{"n": 9007199254740993, "id": 9223372036854775807}'],
    ['UPDATE', '9007199254740993', '{"n": 9223372036854775807}'],
    ['DELETE', '9223372036854775807', '{}'],
  ]);
});

test('numeric(38,10) values keep every digit and their scale, also as the external id', async () => {
  await db.sql`create table exact_amounts (amount numeric(38, 10) primary key, label text not null)`;
  await db.sql`
    insert into exact_amounts values
      (1234567890123456789012345678.0123456789, 'big'),
      (1.5, 'one and a half')`;
  await db.sql`select pg2kafka.setup('exact_amounts', 'amount')`;
  await db.sql`insert into exact_amounts values (-0.0000000001, 'tiny'), (0, 'zero')`;
  await db.sql`
    update exact_amounts set amount = amount + 0.0000000001
    where amount = 1234567890123456789012345678.0123456789`;
  await db.sql`update exact_amounts set label = 'nothing' where amount = 0`;

  assert.deepEqual(printed(await queuedEvents(db.sql, 'exact_amounts')), [
    [
      'SNAPSHOT',
      '1234567890123456789012345678.0123456789',
      '{"label": "big", "amount": 1234567890123456789012345678.0123456789}',
    ],
    ['SNAPSHOT', '1.5000000000', '{"label": "one and a half", "amount": 1.5000000000}'],
    ['INSERT', '-0.0000000001', '{"label": "tiny", "amount": -0.0000000001}'],
    ['INSERT', '0.0000000000', '{"label": "zero", "amount": 0.0000000000}'],
    ['DELETE', '1234567890123456789012345678.0123456789', '{}'],
    [
      'INSERT',
      '1234567890123456789012345678.0123456790',
      '{"label": "big", "amount": 1234567890123456789012345678.0123456790}',
    ],
    ['UPDATE', '0.0000000000', '{"label": "nothing"}'],
  ]);
});

test('dates and times print as ISO 8601, timestamptz in UTC, intervals in postgres style', async () => {
  await db.sql`
    create table temporal_values (
      id int primary key, at timestamptz, local_at timestamp, day date, clock time,
      clock_tz timetz, span interval, never timestamptz, old_day date)`;
  await db.sql`select pg2kafka.setup('temporal_values', 'id')`;
  await db.sql`
    insert into temporal_values values (
      1, '2024-03-10 02:30:00.123456-05', '2024-02-29 23:59:59.5', '2024-02-29', '12:34:56.789',
      '23:59:59.5-04:30', '1 year 2 mons -3 days +04:05:06.789', '-infinity', '0044-03-15 BC')`;
  await db.sql`update temporal_values set at = '2024-12-31 23:59:59+14' where id = 1`;

  const events = await queuedEvents(db.sql, 'temporal_values');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.data]),
    [
      [
        'INSERT',
        '1',
        {
          id: 1,
          at: '2024-03-10T07:30:00.123456+00:00',
          local_at: '2024-02-29T23:59:59.5',
          day: '2024-02-29',
          clock: '12:34:56.789',
          clock_tz: '23:59:59.5-04:30',
          span: '1 year 2 mons -3 days +04:05:06.789',
          never: '-infinity',
          old_day: '0044-03-15 BC',
        },
      ],
      ['UPDATE', '1', { at: '2024-12-31T09:59:59+00:00' }],
    ],
  );
});

test('bytea, arrays, nested jsonb, an enum, uuid, booleans and NULLs keep their values', async () => {
  await db.sql`create type mood as enum ('sad', 'ok', 'happy')`;
  await db.sql`
    create table assorted_values (
      id int primary key, raw bytea, ints int[], grid int[], words text[], doc jsonb,
      feeling mood, ref uuid, yes boolean, no boolean,
      missing_text text, missing_ints int[], missing_doc jsonb, missing_mood mood)`;
  await db.sql`select pg2kafka.setup('assorted_values', 'id')`;
  await db.sql`
    insert into assorted_values (id, raw, ints, grid, words, doc, feeling, ref, yes, no) values (
      1, '\\x00ff5c2710', '{1,NULL,-3}', '{{1,2},{3,4}}', ${['a,b', '', 'x"y', null, 'back\\slash', '{}']},
      '{"a": {"b": [1, 2.50, {"c": null}], "d": "x"}, "e": [], "f": {}}',
      'happy', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, false)`;
  await db.sql`update assorted_values set feeling = 'sad', ints = '{}' where id = 1`;

  const events = await queuedEvents(db.sql, 'assorted_values');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.data]),
    [
      [
        'INSERT',
        '1',
        {
          id: 1,
          raw: '\\x00ff5c2710',
          ints: [1, null, -3],
          grid: [
            [1, 2],
            [3, 4],
          ],
          words: ['a,b', '', 'x"y', null, 'back\\slash', '{}'],
          doc: { a: { b: [1, 2.5, { c: null }], d: 'x' }, e: [], f: {} },
          feeling: 'happy',
          ref: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          yes: true,
          no: false,
          missing_text: null,
          missing_ints: null,
          missing_doc: null,
          missing_mood: null,
        },
      ],
      ['UPDATE', '1', { feeling: 'sad', ints: [] }],
    ],
  );
  assert.ok(
    events[0]?.data_text.includes('"doc": {"a": {"b": [1, 2.50, {"c": null}], "d": "x"}'),
    `numbers inside jsonb keep their scale: ${events[0]?.data_text}`,
  );
});

test('unicode text, quotes, backslashes and control characters arrive unchanged', async () => {
  await db.sql`create table texts (name text primary key, body text, tags text[])`;
  await db.sql`select pg2kafka.setup('texts', 'name')`;
  const name = 'Zoë 😀 漢字 "quoted" back\\slash';
  const renamed = "Ünïcödé ✓ — 日本語 'single' \\\\ two backslashes";
  const body = 'café naïve\n\ttab; family 👩‍👩‍👧‍👦; Ελληνικά; עברית; \u0001 control; "q" \\ end';
  const tags = ['😀', 'a "quoted", tag', 'back\\slash', 'Ñ'];
  await db.sql`insert into texts ${db.sql({ name, body, tags })}`;
  await db.sql`update texts set name = ${renamed} where name = ${name}`;

  const [stored] = await db.sql<{ body: string }[]>`select body from texts`;
  assert.equal(stored?.body, body, 'the table holds what was sent');
  const events = await queuedEvents(db.sql, 'texts');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.data]),
    [
      ['INSERT', name, { name, body, tags }],
      ['DELETE', name, {}],
      ['INSERT', renamed, { name: renamed, body, tags }],
    ],
  );
});

test('a json, point or xml column is captured and does not break updates of the table', async () => {
  // Types without an equality operator: the update trigger's WHEN clause must still work.
  await db.sql`
    create table documents (id int primary key, body json, location point, markup xml, title text)`;
  await db.sql`select pg2kafka.setup('documents', 'id')`;
  await db.sql`
    insert into documents values (1, '{"b": 1, "a": [true, null]}', '(1.5,2)', '<p>hi</p>', 'draft')`;
  await db.sql`update documents set title = 'final' where id = 1`;
  await db.sql`update documents set body = '{"b": 2}' where id = 1`;

  const [row] = await db.sql<{ title: string }[]>`select title from documents where id = 1`;
  assert.equal(row?.title, 'final');
  const events = await queuedEvents(db.sql, 'documents');
  assert.deepEqual(
    events.map((e) => [e.statement, e.external_id, e.data]),
    [
      [
        'INSERT',
        '1',
        {
          id: 1,
          body: { a: [true, null], b: 1 },
          location: '(1.5,2)',
          markup: '<p>hi</p>',
          title: 'draft',
        },
      ],
      ['UPDATE', '1', { title: 'final' }],
      ['UPDATE', '1', { body: { b: 2 } }],
    ],
  );
});

/**
 * A key type whose text form depends on a session setting. `input` parses the same under
 * every value of the setting; `json` is how the value must print in events.
 */
interface SettingCase {
  setting: string;
  values: string[];
  keyType: string;
  input: string;
  json: string;
  externalId: string;
}

const settingCases: SettingCase[] = [
  {
    setting: 'TimeZone',
    values: ['America/New_York', 'UTC', 'Asia/Kolkata'],
    keyType: 'timestamptz',
    input: '2024-03-10T07:30:00.123456Z',
    json: '"2024-03-10T07:30:00.123456+00:00"',
    externalId: '2024-03-10T07:30:00.123456+00:00',
  },
  {
    setting: 'DateStyle',
    values: ['SQL, DMY', 'ISO, MDY'],
    keyType: 'timestamptz',
    input: '2024-03-10T07:30:00.123456Z',
    json: '"2024-03-10T07:30:00.123456+00:00"',
    externalId: '2024-03-10T07:30:00.123456+00:00',
  },
  {
    setting: 'bytea_output',
    values: ['escape', 'hex'],
    keyType: 'bytea',
    input: '\\x00ff5c27',
    json: '"\\\\x00ff5c27"',
    externalId: '\\x00ff5c27',
  },
  {
    setting: 'extra_float_digits',
    values: ['-15', '3'],
    keyType: 'float8',
    input: '0.30000000000000004',
    json: '0.30000000000000004',
    externalId: '0.30000000000000004',
  },
  {
    setting: 'IntervalStyle',
    values: ['sql_standard', 'postgres', 'iso_8601'],
    keyType: 'interval',
    input: 'P1Y2M-3DT4H5M6.789S',
    json: '"1 year 2 mons -3 days +04:05:06.789"',
    externalId: '1 year 2 mons -3 days +04:05:06.789',
  },
];

/** Inserts, updates and deletes the row with key `input`; returns how the session printed the key. */
async function writeKey(sql: Sql, table: string, c: SettingCase): Promise<string> {
  const key = sql`${c.input}::text::${sql.unsafe(c.keyType)}`;
  const [row] = await sql<{ printed: string }[]>`
    insert into ${sql(table)} (k, note) values (${key}, 'inserted') returning k::text as printed`;
  await sql`update ${sql(table)} set note = 'updated' where k = ${key}`;
  await sql`delete from ${sql(table)} where k = ${key}`;
  assert.ok(row);
  return row.printed;
}

for (const c of settingCases) {
  test(`a key of type ${c.keyType} prints the same whatever the writer's ${c.setting}`, async () => {
    const table = `key_by_${c.setting.toLowerCase()}`;
    await db.sql`create table ${db.sql(table)} (k ${db.sql.unsafe(c.keyType)} primary key, note text)`;
    await db.sql`select pg2kafka.setup(${table}, 'k')`;

    const shown = [await writeKey(db.sql, table, c)];
    for (const value of c.values) {
      const writer = db.connect({ max: 1, connection: { [c.setting]: value } });
      try {
        const [session] = await writer<{ value: string }[]>`
          select current_setting(${c.setting}) as value`;
        assert.equal(session?.value, value);
        shown.push(await writeKey(writer, table, c));
      } finally {
        await writer.end();
      }
    }
    assert.ok(
      new Set(shown).size > 1,
      `${c.setting} changes how the writers' sessions print the key: ${shown.join(' | ')}`,
    );

    const reference: Array<[string, string | null, string]> = [
      ['INSERT', c.externalId, `{"k": ${c.json}, "note": "inserted"}`],
      ['UPDATE', c.externalId, '{"note": "updated"}'],
      ['DELETE', c.externalId, '{}'],
    ];
    assert.deepEqual(
      printed(await queuedEvents(db.sql, table)),
      shown.flatMap(() => reference),
    );
  });
}

test('SNAPSHOT events from a setup in a session with odd settings print as INSERT events', async () => {
  await db.sql`
    create table odd_session_snapshot (
      k timestamptz primary key, raw bytea, ratio float8, span interval, day date, local_at timestamp)`;
  const insertRow = (sql: Sql) => sql`
    insert into odd_session_snapshot values (
      '2024-03-10T07:30:00.123456Z', '\\x00ff5c27', 0.1::float8 + 0.2::float8,
      'P1Y2M-3DT4H5M6.789S', '2024-02-29', '2024-02-29T23:59:59.5')`;
  await insertRow(db.sql);
  const odd = db.connect({
    max: 1,
    connection: {
      TimeZone: 'Asia/Kolkata',
      DateStyle: 'SQL, DMY',
      IntervalStyle: 'sql_standard',
      bytea_output: 'escape',
      extra_float_digits: '-15',
    },
  });
  try {
    const [shown] = await odd<{ ratio: string; span: string }[]>`
      select ratio::text as ratio, span::text as span from odd_session_snapshot`;
    assert.deepEqual({ ...shown }, { ratio: '0.3', span: '+1-2 -3 +4:05:06.789' });
    await odd`select pg2kafka.setup('odd_session_snapshot', 'k')`;
    await db.sql`delete from odd_session_snapshot`;
    await insertRow(odd);
    await db.sql`delete from odd_session_snapshot`;
    await insertRow(db.sql);
  } finally {
    await odd.end();
  }

  const k = '2024-03-10T07:30:00.123456+00:00';
  const data =
    '{"k": "2024-03-10T07:30:00.123456+00:00", "day": "2024-02-29", "raw": "\\\\x00ff5c27", ' +
    '"span": "1 year 2 mons -3 days +04:05:06.789", "ratio": 0.30000000000000004, ' +
    '"local_at": "2024-02-29T23:59:59.5"}';
  assert.deepEqual(printed(await queuedEvents(db.sql, 'odd_session_snapshot')), [
    ['SNAPSHOT', k, data],
    ['DELETE', k, '{}'],
    ['INSERT', k, data],
    ['DELETE', k, '{}'],
    ['INSERT', k, data],
  ]);
});

test('a float8 keeps full precision when the writer has extra_float_digits = -15', async () => {
  await db.sql`create table readings (id int primary key, value float8, third float8, small real)`;
  await db.sql`select pg2kafka.setup('readings', 'id')`;
  const writer = db.connect({ max: 1, connection: { extra_float_digits: '-15' } });
  try {
    const [row] = await writer<{ value: string }[]>`
      insert into readings values (1, 0.1::float8 + 0.2::float8, 1::float8 / 3, 0.1::real)
      returning value::text as value`;
    assert.equal(row?.value, '0.3', "the writer's own session rounds the value");
    await writer`update readings set value = value * 3 where id = 1`;
  } finally {
    await writer.end();
  }

  assert.deepEqual(printed(await queuedEvents(db.sql, 'readings')), [
    [
      'INSERT',
      '1',
      '{"id": 1, "small": 0.1, "third": 0.3333333333333333, "value": 0.30000000000000004}',
    ],
    ['UPDATE', '1', '{"value": 0.9000000000000001}'],
  ]);
});
