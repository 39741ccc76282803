/**
 * The proof of Debezium's format: a replica of a PostgreSQL database made by Debezium's
 * own JDBC sink connector, in a Kafka Connect standalone worker (scripts/kafka-connect.ts),
 * from the topics the relay writes with MESSAGE_FORMAT=debezium. Source tables cover the
 * fidelity types, a key of two columns, an excluded column, a row filter, tombstones and a
 * TRUNCATE; rows are copied by an online snapshot, then a seeded random mix of inserts,
 * updates (keys changed too) and deletes runs while the relay and the sink run. Once the
 * writers stop, the two databases must become equal table by table (the md5 of every row's
 * text, in key order); the rows compared and the time to converge are printed.
 *
 * `npm run test:replica` (about 2 minutes); `.ci/run` runs it. REPLICA_OPS sets the number
 * of random operations (default 3000), REPLICA_SEED the seed (default: random, printed).
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { after, before, test } from 'node:test';
import postgres from 'postgres';
import { jdbcSinkConfig, KafkaConnect } from '../../scripts/kafka-connect.ts';
import { sleep, useKafka, useTestDatabase, waitFor, type Sql } from '../helpers.ts';
import { useRelays } from '../relay/support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

const OPS = Number(process.env.REPLICA_OPS ?? 3000);
const SEED = Number(process.env.REPLICA_SEED ?? randomInt(1, 2 ** 31));
const SNAPSHOT_ROWS = 6_000; // more than one chunk (5,000): the relay copies it online
const CONVERGE_TIMEOUT_MS = Number(process.env.REPLICA_CONVERGE_MS ?? 180_000);

let target: Sql | undefined;
let targetName = '';
let targetUrl = '';
let connect: KafkaConnect | undefined;

function adminSql(): Sql {
  return postgres(process.env.DATABASE_URL ?? '', { max: 1, onnotice: () => undefined });
}

before(async () => {
  await db.ready;
  targetName = `${db.name}_replica`;
  const admin = adminSql();
  try {
    await admin.unsafe(`create database "${targetName}"`);
  } finally {
    await admin.end({ timeout: 5 });
  }
  const url = new URL(db.url);
  url.pathname = `/${targetName}`;
  targetUrl = url.toString();
  target = postgres(targetUrl, { max: 2, onnotice: () => undefined });
});

after(async () => {
  await connect?.stop();
  await target?.end({ timeout: 5 });
  const admin = adminSql();
  try {
    await admin.unsafe(`drop database if exists "${targetName}" with (force)`);
  } finally {
    await admin.end({ timeout: 5 });
  }
});

/** mulberry32: a small seeded generator, so that a failing mix can be run again. */
function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const random = generator(SEED);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
const chance = (p: number): boolean => random() < p;
const digits = (n: number): string =>
  Array.from({ length: n }, () => Math.floor(random() * 10)).join('');

const TEXTS = [
  'plain',
  'héllo wörld',
  'emoji 🐘✓',
  'quote \' and " and \\',
  '',
  'line\nbreak',
  '日本語',
];

/** One account's columns, as SQL literals (NULLs where the column allows them). */
function accountValues(): Record<string, string> {
  const orNull = (value: string): string => (chance(0.1) ? 'null' : value);
  const sign = chance(0.5) ? '-' : '';
  return {
    big: `${sign}${chance(0.3) ? `9223372036854775${pick(['000', '807', '123', '799'])}` : digits(1 + Math.floor(random() * 17))}`,
    balance: orNull(`${sign}${digits(1 + Math.floor(random() * 13))}.${digits(6)}`),
    opened_at: orNull(
      `'${1900 + Math.floor(random() * 200)}-0${1 + Math.floor(random() * 9)}-1${Math.floor(random() * 9)} 0${Math.floor(random() * 9)}:${10 + Math.floor(random() * 49)}:0${Math.floor(random() * 9)}.${digits(6)}'`,
    ),
    seen_at: orNull(
      `'2026-12-0${1 + Math.floor(random() * 9)} 1${Math.floor(random() * 9)}:00:00.${digits(3)}+0${Math.floor(random() * 9)}'`,
    ),
    born: orNull(
      `'${1800 + Math.floor(random() * 300)}-1${Math.floor(random() * 2)}-2${Math.floor(random() * 8)}'`,
    ),
    wake: orNull(
      `'0${Math.floor(random() * 9)}:${10 + Math.floor(random() * 49)}:00.${digits(6)}'`,
    ),
    avatar: orNull(`'\\x${digits(2 * Math.floor(random() * 8))}'`),
    prefs: orNull(
      `'${JSON.stringify({ n: Number(digits(3)), big: `1${digits(19)}`, s: pick(TEXTS) })
        .replace(/"big":"(\d+)"/, '"big":$1')
        .replaceAll("'", "''")}'`,
    ),
    tags: orNull(
      `array[${Array.from({ length: Math.floor(random() * 4) }, () => `'${pick(TEXTS).replaceAll("'", "''")}'`).join(',')}]::text[]`,
    ),
    scores: orNull(
      `'{${Array.from({ length: Math.floor(random() * 4) }, () => (chance(0.2) ? 'null' : digits(3))).join(',')}}'`,
    ),
    ref: orNull(`'${digits(8)}-${digits(4)}-4${digits(3)}-8${digits(3)}-${digits(12)}'`),
    name: `'${pick(TEXTS).replaceAll("'", "''")}'`,
    active: orNull(pick(['true', 'false'])),
    ratio: orNull(pick(['0.1', '-1e-300', '1.7976931348623157e308', '3.141592653589793', '0'])),
    code: orNull(`'${digits(1 + Math.floor(random() * 11))}'`),
    ip: orNull(`'10.${Math.floor(random() * 255)}.0.${Math.floor(random() * 255)}/32'`),
    secret: `'secret-${digits(6)}'`,
  };
}

const ACCOUNT_COLUMNS = `id bigint primary key, big bigint not null, balance numeric(20,6),
  opened_at timestamp, seen_at timestamptz, born date, wake time, avatar bytea, prefs jsonb,
  tags text[], scores int[], ref uuid, name text not null, active boolean, ratio float8,
  code varchar(12), ip inet, secret text`;

/** What the replica must equal: the captured columns of the captured rows. */
const COMPARED = {
  accounts: {
    key: 'id',
    columns:
      'id, big, balance, opened_at, seen_at, born, wake, avatar, prefs, tags, scores, ref, name, active, ratio, code, ip',
    where: 'true',
  },
  order_lines: { key: 'order_id, line', columns: 'order_id, line, qty, note', where: 'qty > 0' },
  audit_log: { key: 'id', columns: 'id, entry', where: 'true' },
} as const;
type Table = keyof typeof COMPARED;

/** Every compared row as text in key order, and its md5. */
async function contents(
  sql: Sql,
  table: Table,
): Promise<{ rows: number; md5: string; lines: string[] }> {
  const { key, columns, where } = COMPARED[table];
  const exists = await sql<{ t: string | null }[]>`select to_regclass(${table})::text as t`;
  if (!exists[0]?.t) return { rows: 0, md5: '', lines: [] };
  const text = columns
    .split(',')
    .map((c) => `${c.trim()}::text`)
    .join(', ');
  const lines = await sql.unsafe<{ line: string }[]>(
    `select row(${text})::text as line from ${table} where ${where} order by ${key}`,
  );
  const all = lines.map((l) => l.line);
  const [hash] = await sql<{ md5: string }[]>`select md5(${all.join('\n')}) as md5`;
  return { rows: all.length, md5: hash?.md5 ?? '', lines: all };
}

/** The first lines that differ, for a failure message. */
function firstDifferences(source: string[], replica: string[]): string {
  const inReplica = new Set(replica);
  const inSource = new Set(source);
  const missing = source.filter((l) => !inReplica.has(l)).slice(0, 5);
  const extra = replica.filter((l) => !inSource.has(l)).slice(0, 5);
  return `missing in the replica: ${JSON.stringify(missing)}\nonly in the replica: ${JSON.stringify(extra)}`;
}

/** One random operation on a random table, as SQL. */
function randomOperation(
  ids: { accounts: Set<number>; lines: Set<string> },
  next: { id: number },
): string {
  const roll = random();
  if (roll < 0.55) {
    // accounts: insert 35%, update 45%, key change 8%, delete 12%
    const op = random();
    const existing = [...ids.accounts];
    if (op < 0.35 || existing.length < 10) {
      const id = next.id++;
      ids.accounts.add(id);
      const v = accountValues();
      return `insert into accounts (id, ${Object.keys(v).join(', ')}) values (${id}, ${Object.values(v).join(', ')})`;
    }
    const id = pick(existing);
    if (op < 0.8) {
      const v = accountValues();
      const columns = Object.keys(v).filter(() => chance(0.4));
      if (columns.length === 0) columns.push('secret'); // an excluded column only: nothing sent
      return `update accounts set ${columns.map((c) => `${c} = ${v[c]}`).join(', ')} where id = ${id}`;
    }
    if (op < 0.88) {
      const to = next.id++;
      ids.accounts.delete(id);
      ids.accounts.add(to);
      return `update accounts set id = ${to} where id = ${id}`;
    }
    ids.accounts.delete(id);
    return `delete from accounts where id = ${id}`;
  }
  if (roll < 0.95) {
    // order_lines: qty <= 0 is outside the filter, so updates move rows in and out of it
    const existing = [...ids.lines];
    const qty = Math.floor(random() * 10) - 3;
    const note = chance(0.2) ? 'null' : `'${pick(TEXTS).replaceAll("'", "''")}'`;
    const op = random();
    if (op < 0.35 || existing.length < 10) {
      const key = `${1 + Math.floor(random() * 50)},${Math.floor(random() * 1000)}`;
      if (ids.lines.has(key))
        return `update order_lines set qty = ${qty} where (order_id, line) = (${key})`;
      ids.lines.add(key);
      return `insert into order_lines values (${key}, ${qty}, ${note})`;
    }
    const key = pick(existing);
    if (op < 0.8)
      return `update order_lines set qty = ${qty}, note = ${note} where (order_id, line) = (${key})`;
    if (op < 0.9) {
      const [order] = key.split(',');
      const to = `${order},${1000 + next.id++}`;
      ids.lines.delete(key);
      ids.lines.add(to);
      return `update order_lines set line = ${to.split(',')[1]} where (order_id, line) = (${key})`;
    }
    ids.lines.delete(key);
    return `delete from order_lines where (order_id, line) = (${key})`;
  }
  return chance(0.03)
    ? 'truncate audit_log'
    : `insert into audit_log (entry) values ('${pick(TEXTS).replaceAll("'", "''")}')`;
}

test('Debezium JDBC sink replica: snapshot plus a random mix with key changes converges to equal tables', async () => {
  process.stderr.write(
    `[replica] seed ${SEED} (REPLICA_SEED=${SEED} runs this mix again), ${OPS} operations\n`,
  );
  const { sql } = db;
  await sql.unsafe(`create table accounts (${ACCOUNT_COLUMNS})`);
  await sql`create table order_lines (order_id int, line int, qty int not null, note text, primary key (order_id, line))`;
  await sql`create table audit_log (id int generated always as identity primary key, entry text)`;
  const ids = { accounts: new Set<number>(), lines: new Set<string>() };
  const next = { id: 1 };
  const seedRows: string[] = [];
  for (let i = 0; i < SNAPSHOT_ROWS; i++) {
    const id = next.id++;
    ids.accounts.add(id);
    const v = accountValues();
    seedRows.push(`(${id}, ${Object.values(v).join(', ')})`);
  }
  const names = Object.keys(accountValues()).join(', ');
  for (let i = 0; i < seedRows.length; i += 1000) {
    await sql.unsafe(
      `insert into accounts (id, ${names}) values ${seedRows.slice(i, i + 1000).join(', ')}`,
    );
  }
  for (let order = 1; order <= 30; order++) {
    for (let line = 0; line < 10; line++) {
      ids.lines.add(`${order},${line}`);
      await sql`insert into order_lines values (${order}, ${line}, ${Math.floor(random() * 10) - 3}, ${pick(TEXTS)})`;
    }
  }
  await sql`insert into audit_log (entry) values ('before setup')`;

  await sql`select pg2kafka.setup('accounts', exclude_columns => '{secret}', tombstones => true)`;
  await sql`select pg2kafka.setup('order_lines', row_filter => 'qty > 0')`;
  await sql`select pg2kafka.setup('audit_log')`;

  const r = relay({ MESSAGE_FORMAT: 'debezium' });
  const topics = Object.keys(COMPARED).map((t) => `pg2kafka.${db.name}.${t}`);
  // The sink subscribes once its topics exist: the relay creates them with the snapshots'
  // first events.
  const admin = await kafka.admin();
  try {
    await waitFor(
      'the relay to create the topics',
      async () => {
        const existing = new Set(await admin.listTopics());
        return topics.every((t) => existing.has(t));
      },
      60_000,
    );
  } finally {
    await admin.disconnect();
  }

  const startedConnect = Date.now();
  connect = await KafkaConnect.start({
    brokers: kafka.brokers.join(','),
    connector: jdbcSinkConfig('pg2kafka-replica', targetUrl, {
      topics: topics.join(','),
      'insert.mode': 'upsert',
      'primary.key.mode': 'record_key',
      'delete.enabled': 'true',
      'truncate.enabled': 'true',
      'schema.evolution': 'basic',
      'collection.name.format': '${source.table}',
    }),
  });
  const connectMs = Date.now() - startedConnect;

  const writeStarted = Date.now();
  for (let done = 0; done < OPS;) {
    const size = 1 + Math.floor(random() * 5);
    const statements = Array.from({ length: Math.min(size, OPS - done) }, () =>
      randomOperation(ids, next),
    );
    await sql.begin(async (tx) => {
      for (const statement of statements) await tx.unsafe(statement);
    });
    done += statements.length;
  }
  const writeMs = Date.now() - writeStarted;
  const writesEnded = Date.now();

  let verdict = '';
  for (;;) {
    await connect.assertHealthy('pg2kafka-replica');
    const depth = await queueDepth();
    let equal = depth === 0;
    const report: string[] = [];
    for (const table of Object.keys(COMPARED) as Table[]) {
      const source = await contents(sql, table);
      const replica = await contents(target as Sql, table);
      report.push(`${table}: ${source.rows} rows, replica ${replica.rows}`);
      if (source.md5 !== replica.md5) {
        equal = false;
        verdict = `${table} differs (queue ${depth}):\n${firstDifferences(source.lines, replica.lines)}`;
      }
    }
    if (equal) {
      process.stderr.write(
        `[replica] equal after ${Date.now() - writesEnded} ms from the last write (${OPS} operations written in ${writeMs} ms, Connect started in ${connectMs} ms): ${report.join('; ')}\n`,
      );
      break;
    }
    if (Date.now() - writesEnded > CONVERGE_TIMEOUT_MS) {
      assert.fail(
        `the replica did not converge in ${CONVERGE_TIMEOUT_MS} ms (seed ${SEED}): ${report.join('; ')}\n${verdict}\n${connect.logErrors()}`,
      );
    }
    await sleep(1000);
  }
  assert.equal((await r.stop()).code, 0);
  const [secret] = await (target as Sql)<{ n: number }[]>`
    select count(*)::int as n from information_schema.columns where table_name = 'accounts' and column_name = 'secret'`;
  assert.equal(secret?.n, 0, 'the excluded column is not in the replica');
  // The sink created the columns from the schemas: source types where they carry them.
  const types = await (target as Sql)<{ name: string; type: string }[]>`
    select attname::text as name, format_type(atttypid, atttypmod) as type
    from pg_attribute where attrelid = 'accounts'::regclass and attnum > 0 and not attisdropped
    order by attnum`;
  assert.deepEqual(Object.fromEntries(types.map((t) => [t.name, t.type])), {
    id: 'bigint',
    big: 'bigint',
    balance: 'numeric(20,6)',
    opened_at: 'timestamp(6) without time zone',
    seen_at: 'timestamp(6) with time zone',
    born: 'date',
    wake: 'time(6) without time zone',
    avatar: 'bytea',
    prefs: 'jsonb',
    tags: 'text[]',
    scores: 'integer[]',
    ref: 'uuid',
    name: 'text',
    active: 'boolean',
    ratio: 'double precision',
    code: 'character varying(12)',
    ip: 'inet',
  });
});
