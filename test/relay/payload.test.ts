/**
 * Payload control end to end (real PostgreSQL, the relay as a child process, a real
 * broker, a real consumer): excluded and included columns, a row filter that rows enter
 * and leave, tombstones, and alter() under writers.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sleep, useKafka, useTestDatabase, waitFor, type ConsumedMessage } from '../helpers.ts';
import { cliEnv, runCli, useRelays } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

/** A message as a user checks it: key, statement header, and the value's data (null: a tombstone). */
function seen(m: ConsumedMessage): [string | null, string | undefined, unknown] {
  const value =
    m.value === null ? null : (JSON.parse(m.value) as { statement: string; data: unknown });
  return [m.key, m.headers.statement, value === null ? null : value.data];
}

async function queuedText(): Promise<string> {
  const [row] = await db.sql<{ text: string | null }[]>`
    select string_agg(coalesce(new_row::text, '') || coalesce(old_row::text, ''), ' ') as text
    from pg2kafka.captured_changes`;
  return row?.text ?? '';
}

test('an excluded column, a row filter and tombstones: snapshot, insert, update, delete, key change, checked field by field', async () => {
  await db.sql`create table accounts (id int primary key, email text, password_hash text, status text, note text)`;
  await db.sql`insert into accounts values
    (1, 'a@x', 'secret-1', 'active', 'x'), (2, 'b@x', 'secret-2', 'draft', 'y'), (3, 'c@x', 'secret-3', 'active', 'z')`;
  await db.sql`select pg2kafka.setup('accounts', 'id', exclude_columns => '{password_hash}',
                                     row_filter => 'status <> ''draft''', tombstones => true)`;
  await db.sql`update accounts set password_hash = 'secret-1b' where id = 1`; // only excluded: nothing
  await db.sql`update accounts set note = 'x2' where id = 1`; // UPDATE {"note":"x2"}
  await db.sql`insert into accounts values (4, 'd@x', 'secret-4', 'draft', 'w')`; // outside: nothing
  await db.sql`update accounts set status = 'active' where id = 2`; // enters: INSERT
  await db.sql`update accounts set status = 'draft' where id = 3`; // leaves: DELETE, tombstone
  await db.sql`delete from accounts where id = 1`; // DELETE, tombstone
  await db.sql`delete from accounts where id = 4`; // outside: nothing
  await db.sql`update accounts set id = 5 where id = 2`; // DELETE 2, INSERT 5, tombstone 2
  await db.sql`update accounts set status = null where id = 5`; // NULL is outside: DELETE, tombstone

  // The secret never reached the queue.
  assert.doesNotMatch(await queuedText(), /secret|password_hash/);

  const r = relay();
  const topic = `pg2kafka.${db.name}.accounts`;
  const messages = await kafka.consume(topic, 13, 30_000, 1500);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);

  const row = (id: number, email: string, status: string, note: string): unknown => ({
    id,
    email,
    status,
    note,
  });
  assert.deepEqual(messages.map(seen), [
    ['1', 'SNAPSHOT', row(1, 'a@x', 'active', 'x')],
    ['3', 'SNAPSHOT', row(3, 'c@x', 'active', 'z')],
    ['1', 'UPDATE', { note: 'x2' }],
    ['2', 'INSERT', row(2, 'b@x', 'active', 'y')],
    ['3', 'DELETE', {}],
    ['3', 'TOMBSTONE', null],
    ['1', 'DELETE', {}],
    ['1', 'TOMBSTONE', null],
    ['2', 'DELETE', {}],
    ['5', 'INSERT', row(5, 'b@x', 'active', 'y')],
    ['2', 'TOMBSTONE', null],
    ['5', 'DELETE', {}],
    ['5', 'TOMBSTONE', null],
  ]);
  assert.ok(
    messages.every((m) => !(m.value ?? '').includes('secret')),
    'no message carries the excluded column',
  );
});

test('an include list and a filter in an online snapshot of chunks: only the rows inside, only the columns listed', async () => {
  await db.sql`create table big (id int primary key, name text, ssn text, region text)`;
  await db.sql`insert into big select g, 'n' || g, 'ssn-' || g, case when g % 3 = 0 then 'eu' else 'us' end
               from generate_series(1, 12000) g`;
  const setup = await runCli(
    ['setup', 'big', '--include=name', "--filter=region = 'eu'", '--background'],
    cliEnv(db.url),
  );
  assert.equal(setup.code, 0, setup.stderr);
  // 12,000 rows are more than one chunk: the copy is online, in chunks (4,000 pass).
  const [registered] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from pg2kafka.snapshots where table_oid = 'big'::regclass and finished_at is null`;
  assert.equal(registered?.n, 1, setup.stdout);
  const r = relay();
  const topic = `pg2kafka.${db.name}.big`;
  const messages = await kafka.consume(topic, 4000, 60_000, 1500);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  assert.equal((await r.stop()).code, 0);
  assert.equal(messages.length, 4000);
  const ids = messages.map((m) => {
    const [key, statement, data] = seen(m);
    assert.equal(statement, 'SNAPSHOT');
    assert.deepEqual(data, { id: Number(key), name: `n${key ?? ''}` });
    return Number(key);
  });
  assert.deepEqual(
    ids,
    Array.from({ length: 4000 }, (_, i) => (i + 1) * 3),
  );
});

test('alter under writers: each change once, in order; the excluded column stops at one point per key', async () => {
  await db.sql`create table counters (id int primary key, n int not null, secret text)`;
  await db.sql`insert into counters select g, 0, 's' from generate_series(1, 10) g`;
  await db.sql`select pg2kafka.setup('counters', 'id', snapshot => 'none')`;
  const r = relay();
  let stop = false;
  const writers = Array.from({ length: 4 }, async (_, w) => {
    let i = 0;
    while (!stop) {
      const id = ((i += 1) % 10) + 1;
      if (id % 4 === w) continue;
      await db.sql`update counters set n = n + 1, secret = md5(random()::text) where id = ${id}`;
    }
  });
  await sleep(1500);
  const altered = await runCli(['alter', 'counters', '--exclude=secret'], cliEnv(db.url));
  assert.equal(altered.code, 0, altered.stderr);
  assert.match(altered.stdout, /counters is captured \(without the columns "secret"\)/);
  await sleep(1500);
  stop = true;
  await Promise.all(writers);
  const finals = await db.sql<{ id: number; n: number }[]>`select id, n from counters order by id`;
  const total = finals.reduce((sum, f) => sum + f.n, 0);
  const topic = `pg2kafka.${db.name}.counters`;
  const messages = await kafka.consume(topic, total, 60_000, 1500);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  assert.equal((await r.stop()).code, 0);

  assert.equal(messages.length, total, 'each change once');
  const byKey = new Map<string, Array<{ n: unknown; secret: boolean }>>();
  for (const m of messages) {
    const [key, statement, data] = seen(m);
    assert.equal(statement, 'UPDATE');
    const d = data as { n: unknown; secret?: unknown };
    byKey.set(key ?? '', [...(byKey.get(key ?? '') ?? []), { n: d.n, secret: 'secret' in d }]);
  }
  let keysSwitched = 0;
  for (const { id, n } of finals) {
    const events = byKey.get(String(id)) ?? [];
    assert.deepEqual(
      events.map((e) => e.n),
      Array.from({ length: n }, (_, i) => i + 1),
      `key ${id}: every n once, in order`,
    );
    const firstWithout = events.findIndex((e) => !e.secret);
    const switchAt = firstWithout < 0 ? events.length : firstWithout;
    assert.ok(
      events.slice(switchAt).every((e) => !e.secret),
      `key ${id}: once left out, the secret stays out`,
    );
    if (switchAt > 0 && switchAt < events.length) keysSwitched += 1;
  }
  assert.ok(keysSwitched > 0, 'writers ran on both sides of the alter');
  // An UPDATE of only the excluded column now sends nothing.
  await db.sql`update counters set secret = 'again' where id = 1`;
  const [row] = await db.sql<
    { n: number }[]
  >`select count(*)::int as n from pg2kafka.captured_changes`;
  assert.equal(row?.n, 0);
});

test('bad payload settings are refused with what to do, and change nothing', async () => {
  await db.sql`create table profiles (id int primary key, email text, status text)`;
  const cases: Array<[string[], RegExp]> = [
    [
      ['setup', 'profiles', '--exclude=id'],
      /key column "id" of public.profiles cannot be excluded/,
    ],
    [
      ['setup', 'profiles', '--exclude=nope'],
      /no column "nope" in table public.profiles[\s\S]*Its columns: id, email, status/,
    ],
    [['setup', 'profiles', '--exclude=email', '--include=status'], /cannot be given together/],
    [['setup', 'profiles', '--filter=status'], /of type text, not boolean/],
    [
      ['setup', 'profiles', '--filter=nope = 1'],
      /column "nope" does not exist[\s\S]*hint: Name the columns/,
    ],
    [
      ['setup', 'profiles', '--filter=id in (select 1)'],
      /cannot be evaluated by a trigger[\s\S]*no subquery/,
    ],
    [
      ['setup', 'profiles', '--format=avro'],
      /--format must be one of pg2kafka, debezium, debezium-schemaless, got "avro"/,
    ],
    [['alter', 'profiles', '--tombstones'], /public.profiles is not set up/],
  ];
  for (const [args, expected] of cases) {
    const result = await runCli(args, cliEnv(db.url));
    assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, expected, args.join(' '));
  }
  await assert.rejects(
    db.sql`select pg2kafka.setup('profiles', message_format => 'avro')`,
    /message_format must be 'pg2kafka', 'debezium' or 'debezium-schemaless', not 'avro'/,
  );
  const [tracked] = await db.sql<
    { n: number }[]
  >`select count(*)::int as n from pg2kafka.tracked_tables where table_name = 'profiles'`;
  assert.equal(tracked?.n, 0);

  const ok = await runCli(['setup', 'profiles', '--exclude=email'], cliEnv(db.url));
  assert.equal(ok.code, 0, ok.stderr);
  const again = await runCli(['setup', 'profiles', '--exclude=status'], cliEnv(db.url));
  assert.equal(again.code, 2, again.stderr);
  assert.match(again.stderr, /already set up with other payload settings[\s\S]*pg2kafka alter/);
  const same = await runCli(['setup', 'profiles'], cliEnv(db.url));
  assert.equal(same.code, 0, same.stderr);
  const [settings] = await db.sql<{ excluded: string[] }[]>`
    select excluded_columns as excluded from pg2kafka.tracked_tables where table_name = 'profiles'`;
  assert.deepEqual(settings?.excluded, ['email'], 'setup without settings keeps them');
  const status = await runCli(['status'], cliEnv(db.url));
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /public\.profiles key=id \(without the columns "email"\): 0 queued/);
});

test('alter on a table with an include list, after a teardown, and an excluded column renamed: never a secret, always what to do', async () => {
  await db.sql`create table members (id int primary key, name text, secret text)`;
  await db.sql`select pg2kafka.setup('members', include_columns => '{name}')`;
  const altered = await runCli(['alter', 'members', '--tombstones'], cliEnv(db.url));
  assert.equal(altered.code, 0, altered.stderr);
  assert.match(
    altered.stdout,
    /public\.members is captured \(only the columns "id", "name"; tombstones after deletes\)/,
  );
  await db.sql`insert into members values (1, 'a', 'S1')`;

  // An excluded column renamed: the row keeps only its key, and status says why.
  const lifted = await runCli(['alter', 'members', '--exclude=secret'], cliEnv(db.url));
  assert.equal(lifted.code, 0, lifted.stderr);
  await db.sql`alter table members rename column secret to token`;
  await db.sql`insert into members values (2, 'b', 'LEAK')`;
  const status = await runCli(['status'], cliEnv(db.url));
  assert.match(
    status.stdout,
    /EXCLUDED COLUMN "secret" MISSING[^\n]*pg2kafka alter public\.members --exclude=/,
  );
  const fixed = await runCli(['alter', 'members', '--exclude=token'], cliEnv(db.url));
  assert.equal(fixed.code, 0, fixed.stderr);
  await db.sql`insert into members values (3, 'c', 'S3')`;
  const rows = await db.sql<{ statement: string; row: string }[]>`
    select statement, new_row::text as row from pg2kafka.captured_changes order by id`;
  assert.deepEqual(
    rows.map((r) => [r.statement, r.row]),
    [
      ['INSERT', '{"id":1,"name":"a"}'],
      ['INSERT', '{"id":2}'],
      ['INSERT', '{"id":3,"name":"c"}'],
    ],
  );

  // alter() after a teardown refuses, and puts no trigger back.
  await db.sql`select pg2kafka.teardown('members')`;
  const after = await runCli(['alter', 'members', '--no-tombstones'], cliEnv(db.url));
  assert.equal(after.code, 2, after.stderr);
  assert.match(after.stderr, /public\.members is not set up/);
  const [triggers] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from pg_trigger where tgrelid = 'members'::regclass and tgname like '_pg2kafka%'`;
  assert.equal(triggers?.n, 0);
});
