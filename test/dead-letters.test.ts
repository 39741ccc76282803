/**
 * `pg2kafka dead-letters` (list, retry, discard) and the dead letter counts of `pg2kafka
 * status`, run as a user runs them, on a real database. Dead letters are made the way the
 * relay makes them: pg2kafka.move_to_dead_letters() under the relay lease.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, beforeEach, test } from 'node:test';
import { runner } from 'node-pg-migrate';
import { migrated } from './capture/support.ts';
import { useTestDatabase } from './helpers.ts';
import { cliEnv, runCli } from './relay/support.ts';
import type { DeadLetter } from '../src/commands/dead-letters.ts';
import type { Status } from '../src/commands/status.ts';
import { packageRoot } from '../src/package-root.ts';

const db = useTestDatabase();
/** A database without pg2kafka, then migrated only up to 0002 (before dead letters). */
const old = useTestDatabase();

before(async () => {
  await migrated(db);
});

beforeEach(async () => {
  await db.sql`delete from pg2kafka.dead_letters`;
  await db.sql`delete from pg2kafka.captured_changes`;
});

const SEE =
  'retry with: pg2kafka dead-letters retry <id>... | --all; drop with: pg2kafka dead-letters discard <id>... | --all';
const LIST_HINT = '(list them with: pg2kafka dead-letters)';

/** The environment of a command on the test database (see cliEnv). */
const env = (extra: Record<string, string | undefined> = {}): Record<string, string | undefined> =>
  cliEnv(db.url, extra);

/** Creates and sets up a table keyed by `sku`. */
async function capturedTable(name: string): Promise<void> {
  await db.sql`create table ${db.sql(name)} (sku text primary key, name text)`;
  await db.sql`select pg2kafka.setup(${name}::regclass, 'sku')`;
}

/** Runs a change and returns the id of the change it queued (the newest one). */
async function change(statement: Promise<unknown>): Promise<number> {
  await statement;
  const [row] = await db.sql<
    { id: string }[]
  >`select max(id)::text as id from pg2kafka.captured_changes`;
  return Number(row?.id);
}

interface Refusal {
  id: number;
  key: string | null;
  /** Default: [key]. */
  keys?: Array<string | null>;
  /** Default true (DEAD_LETTER_POLICY=park-key). */
  parked?: boolean;
  /** A change moved only because its key is parked. */
  follower?: boolean;
  errorCode?: string;
  reason?: string;
  payload?: string | null;
}

/** Sets changes aside as dead letters as the relay does; returns the ids moved. */
async function deadLetter(refusals: Refusal[]): Promise<number[]> {
  await db.sql`
    update pg2kafka.relay_lease set holder = 'h', epoch = 1, expires_at = now() + interval '1 hour'`;
  const tables = await db.sql<{ id: string; table_oid: string; schema: string; table: string }[]>`
    select c.id::text as id, c.table_oid::int8 as table_oid, n.nspname as schema, t.relname as table
    from pg2kafka.captured_changes c
    join pg_class t on t.oid = c.table_oid join pg_namespace n on n.oid = t.relnamespace
    where c.id = any(${refusals.map((r) => String(r.id))}::bigint[])`;
  const entries = refusals.map((r) => {
    const t = tables.find((row) => Number(row.id) === r.id);
    assert.ok(t, `change ${r.id} is queued`);
    return {
      id: r.id,
      table_oid: Number(t.table_oid),
      schema_name: t.schema,
      table_name: t.table,
      topic: `pg2kafka.${db.name}.${t.table}`,
      external_id: r.key,
      payload: r.payload === undefined ? `{"sku":${JSON.stringify(r.key)}}` : r.payload,
      error_code: r.errorCode ?? (r.follower ? 'KEY_PARKED' : 'MESSAGE_TOO_LARGE'),
      reason:
        r.reason ?? (r.follower ? 'an earlier event of its key is a dead letter' : 'too large'),
      attempts: r.follower ? 0 : 1,
      first_failed_at: new Date().toISOString(),
      parked: r.parked ?? true,
      keys: r.keys ?? [r.key],
      follower: r.follower ?? false,
    };
  });
  const moved = await db.sql<{ id: string }[]>`
    select id::text as id from pg2kafka.move_to_dead_letters(${db.sql.json(entries)}, 'h', 1) as id`;
  await db.sql`update pg2kafka.relay_lease set holder = null, expires_at = '-infinity'`;
  return moved.map((r) => Number(r.id)).sort((a, b) => a - b);
}

async function deadLetterIds(): Promise<number[]> {
  const rows = await db.sql<{ id: string }[]>`
    select id::text as id from pg2kafka.dead_letters order by dead_letters.id`;
  return rows.map((r) => Number(r.id));
}

/** The queue in shipping order: [id, statement, key of the new row (or old row)]. */
async function queue(): Promise<Array<[number, string, string | null]>> {
  const rows = await db.sql<{ id: string; statement: string; sku: string | null }[]>`
    select id::text as id, statement, coalesce(new_row, old_row)->>'sku' as sku
    from pg2kafka.captured_changes order by captured_changes.id`;
  return rows.map((r) => [Number(r.id), r.statement, r.sku]);
}

/** CLI output with its timestamps (always 24 characters) replaced by a fixed text. */
const withoutTimes = (text: string): string =>
  text.replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/g, 'YYYY-MM-DDTHH:MM:SS.sssZ');

test('dead-letters lists them oldest first: key, error, parked, payload size; --json with payloads', async () => {
  await capturedTable('dl_list');
  const a1 = await change(db.sql`insert into dl_list values ('CM01-A', 'Mug')`);
  const b1 = await change(db.sql`insert into dl_list values ('CM01-B', 'Mug')`);
  const a2 = await change(db.sql`update dl_list set name = 'Big mug' where sku = 'CM01-A'`);
  const t1 = await change(db.sql`truncate dl_list`);
  assert.deepEqual(
    await deadLetter([
      { id: a1, key: 'CM01-A', payload: 'Café ☕' },
      { id: b1, key: 'CM01-B', parked: false, errorCode: 'INVALID_RECORD', reason: 'bad\nrecord' },
      { id: a2, key: 'CM01-A', follower: true },
      {
        id: t1,
        key: null,
        parked: false,
        payload: null,
        errorCode: 'TOPIC_AUTHORIZATION_FAILED',
        reason: 'not authorized',
      },
    ]),
    [a1, b1, a2, t1],
  );

  const text = await runCli(['dead-letters'], env());
  assert.equal(text.code, 0, text.stderr);
  assert.equal(text.stderr, '');
  // The id column is as wide as the longest id.
  const pad = (id: number | string): string => String(id).padEnd(Math.max(2, String(t1).length));
  const T = 'YYYY-MM-DDTHH:MM:SS.sssZ';
  assert.equal(
    withoutTimes(text.stdout),
    [
      'dead letters, oldest first (key shown as JSON: null = no key):',
      `${pad('id')}  table           statement  key       error                       reason                                        parked  dead lettered at          bytes`,
      `${pad(a1)}  public.dl_list  INSERT     "CM01-A"  MESSAGE_TOO_LARGE           too large                                     yes     ${T}  9`,
      `${pad(b1)}  public.dl_list  INSERT     "CM01-B"  INVALID_RECORD              bad record                                    no      ${T}  16`,
      `${pad(a2)}  public.dl_list  UPDATE     "CM01-A"  KEY_PARKED                  an earlier event of its key is a dead letter  yes     ${T}  16`,
      `${pad(t1)}  public.dl_list  TRUNCATE   null      TOPIC_AUTHORIZATION_FAILED  not authorized                                no      ${T}  -`,
      `4 dead letter(s); ${SEE}`,
      '',
    ].join('\n'),
  );

  const json = await runCli(['dead-letters', '--json'], env());
  assert.equal(json.code, 0, json.stderr);
  const list = JSON.parse(json.stdout) as Array<Record<keyof DeadLetter, unknown>>;
  assert.deepEqual(
    list.map((d) => d.id),
    [a1, b1, a2, t1],
  );
  const [first] = list;
  assert.ok(first);
  assert.deepEqual(
    {
      ...first,
      createdAt: typeof first.createdAt,
      firstFailedAt: typeof first.firstFailedAt,
      deadLetteredAt: typeof first.deadLetteredAt,
    },
    {
      id: a1,
      table: 'public.dl_list',
      statement: 'INSERT',
      topic: `pg2kafka.${db.name}.dl_list`,
      key: 'CM01-A',
      keys: ['CM01-A'],
      errorCode: 'MESSAGE_TOO_LARGE',
      reason: 'too large',
      attempts: 1,
      parked: true,
      createdAt: 'string',
      firstFailedAt: 'string',
      deadLetteredAt: 'string',
      // Six characters, nine bytes in UTF-8.
      payloadBytes: 9,
      payload: 'Café ☕',
    },
  );
  assert.ok(!Number.isNaN(Date.parse(String(first.deadLetteredAt))));
  assert.deepEqual(
    list.map((d) => [d.key, d.keys, d.parked, d.payloadBytes, d.payload]),
    [
      ['CM01-A', ['CM01-A'], true, 9, 'Café ☕'],
      ['CM01-B', ['CM01-B'], false, 16, '{"sku":"CM01-B"}'],
      ['CM01-A', ['CM01-A'], true, 16, '{"sku":"CM01-A"}'],
      [null, [null], false, null, null],
    ],
  );
  // The list changed nothing.
  assert.deepEqual(await deadLetterIds(), [a1, b1, a2, t1]);
});

test('dead-letters --table shows one table; none at all says so', async () => {
  await capturedTable('dl_table_a');
  await capturedTable('dl_table_b');
  const a = await change(db.sql`insert into dl_table_a values ('a', 'x')`);
  const b = await change(db.sql`insert into dl_table_b values ('b', 'x')`);
  await deadLetter([
    { id: a, key: 'a' },
    { id: b, key: 'b' },
  ]);
  const one = await runCli(['dead-letters', '--json', '--table', 'dl_table_b'], env());
  assert.equal(one.code, 0, one.stderr);
  assert.deepEqual(
    (JSON.parse(one.stdout) as DeadLetter[]).map((d) => [d.id, d.table]),
    [[b, 'public.dl_table_b']],
  );
  const text = await runCli(['dead-letters', 'list', '--table', 'public.dl_table_a'], env());
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^1 dead letter\(s\); retry with/m);
  assert.match(text.stdout, /public\.dl_table_a/);
  assert.doesNotMatch(text.stdout, /dl_table_b/);

  // A dropped table keeps its dead letters, found by the name it had.
  await db.sql`drop table dl_table_b`;
  // status too still works with a set-up table dropped (format('%I') of no name raised).
  // (Dead letters need attention: exit 3.)
  const status = await runCli(['status', '--json'], env());
  assert.equal(status.code, 3, status.stderr);
  assert.ok(
    (JSON.parse(status.stdout) as Status).tables.some(
      (t) => t.table === 'public.dl_table_b (dropped)',
    ),
    status.stdout,
  );
  const dropped = await runCli(['dead-letters', '--table', 'public.dl_table_b', '--json'], env());
  assert.equal(dropped.code, 0, dropped.stderr);
  assert.deepEqual(
    (JSON.parse(dropped.stdout) as DeadLetter[]).map((d) => [d.id, d.table]),
    [[b, 'public.dl_table_b (dropped)']],
  );

  await db.sql`delete from pg2kafka.dead_letters`;
  const none = await runCli(['dead-letters'], env());
  assert.deepEqual(
    { code: none.code, stdout: none.stdout, stderr: none.stderr },
    { code: 0, stdout: 'no dead letters\n', stderr: '' },
  );
  const noneJson = await runCli(['dead-letters', '--json'], env());
  assert.deepEqual({ code: noneJson.code, stdout: noneJson.stdout }, { code: 0, stdout: '[]\n' });
});

test('retry <id> puts the whole parked key back under the original ids, ahead of its later change', async () => {
  await capturedTable('dl_retry');
  const a1 = await change(db.sql`insert into dl_retry values ('a', '1')`);
  const b1 = await change(db.sql`insert into dl_retry values ('b', '1')`);
  const a2 = await change(db.sql`update dl_retry set name = '2' where sku = 'a'`);
  const b2 = await change(db.sql`update dl_retry set name = '2' where sku = 'b'`);
  // a1 refused, a2 followed it (key a parked); b2 refused on its own (key b parked).
  await deadLetter([
    { id: a1, key: 'a' },
    { id: a2, key: 'a', follower: true },
    { id: b2, key: 'b' },
  ]);
  // Meanwhile a later change of key a is queued (no relay runs to park it).
  const a3 = await change(db.sql`update dl_retry set name = '3' where sku = 'a'`);
  assert.deepEqual(await queue(), [
    [b1, 'INSERT', 'b'],
    [a3, 'UPDATE', 'a'],
  ]);

  const wakes: string[] = [];
  const listening = await db.sql.listen('pg2kafka_events', (payload) => wakes.push(payload));
  try {
    // Asking for the follower alone retries its whole key group.
    const result = await runCli(['dead-letters', 'retry', String(a2)], env());
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, '');
    assert.equal(
      result.stdout,
      `2 change(s) back in the queue: ${a1}, ${a2}\n` +
        `also retried ${a1}: parked under the same key as the ids given (a parked key goes back whole, in id order)\n`,
    );
    assert.deepEqual(await queue(), [
      [a1, 'INSERT', 'a'],
      [b1, 'INSERT', 'b'],
      [a2, 'UPDATE', 'a'],
      [a3, 'UPDATE', 'a'],
    ]);
    assert.deepEqual(await deadLetterIds(), [b2]);
    // The events the relay reads, in its order: key a's first, then its later change.
    const events = await db.sql<{ id: string; external_id: string }[]>`
      select id::text as id, external_id from pg2kafka.outbound_event_queue
      where external_id = 'a' order by outbound_event_queue.id, part`;
    assert.deepEqual(
      events.map((e) => Number(e.id)),
      [a1, a2, a3],
    );
    // A sleeping relay is woken rather than left to its next poll.
    await waitForWake(wakes);

    // Asked for exactly its group: no "also retried" line.
    const b = await runCli(['dead-letters', 'retry', String(b2)], env());
    assert.equal(b.code, 0, b.stderr);
    assert.equal(b.stdout, `1 change(s) back in the queue: ${b2}\n`);
    assert.deepEqual(await deadLetterIds(), []);
    assert.deepEqual(
      (await queue()).map(([id]) => id),
      [a1, b1, a2, b2, a3],
    );
  } finally {
    await listening.unlisten();
  }
});

async function waitForWake(wakes: string[]): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (wakes.length === 0) {
    assert.ok(Date.now() < deadline, 'retry sent no NOTIFY on pg2kafka_events');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('retry widens through a key change to every parked key it links', async () => {
  await capturedTable('dl_rekey');
  const b1 = await change(db.sql`insert into dl_rekey values ('b', '1')`);
  const bc = await change(db.sql`update dl_rekey set sku = 'c' where sku = 'b'`);
  const c1 = await change(db.sql`update dl_rekey set name = '2' where sku = 'c'`);
  // b1 parks b; the key change follows b and parks c too; c1 follows c (a later batch).
  await deadLetter([
    { id: b1, key: 'b' },
    { id: bc, key: 'c', keys: ['b', 'c'], follower: true },
  ]);
  await deadLetter([{ id: c1, key: 'c', follower: true }]);
  const result = await runCli(['dead-letters', 'retry', String(c1)], env());
  assert.equal(result.code, 0, result.stderr);
  assert.equal(
    result.stdout,
    `3 change(s) back in the queue: ${b1}, ${bc}, ${c1}\n` +
      `also retried ${b1}, ${bc}: parked under the same key as the ids given (a parked key goes back whole, in id order)\n`,
  );
  assert.deepEqual(
    (await queue()).map(([id]) => id),
    [b1, bc, c1],
  );
});

test('retry --all puts every dead letter back, in id order', async () => {
  await capturedTable('dl_retry_all');
  const ids: number[] = [];
  for (const sku of ['a', 'b', 'c']) {
    ids.push(await change(db.sql`insert into dl_retry_all values (${sku}, '1')`));
  }
  const [a, b, c] = ids as [number, number, number];
  await deadLetter([
    { id: a, key: 'a' },
    { id: b, key: 'b', parked: false },
    { id: c, key: 'c' },
  ]);
  assert.deepEqual(await queue(), []);
  const result = await runCli(['dead-letters', 'retry', '--all'], env());
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout, `3 change(s) back in the queue: ${a}, ${b}, ${c}\n`);
  assert.deepEqual(await queue(), [
    [a, 'INSERT', 'a'],
    [b, 'INSERT', 'b'],
    [c, 'INSERT', 'c'],
  ]);
  assert.deepEqual(await deadLetterIds(), []);

  const again = await runCli(['dead-letters', 'retry', '--all'], env());
  assert.deepEqual(
    { code: again.code, stdout: again.stdout, stderr: again.stderr },
    { code: 0, stdout: 'no dead letters: nothing to retry\n', stderr: '' },
  );
});

test('discard <id> drops exactly those and says which of their key stay parked; --all drops the rest', async () => {
  await capturedTable('dl_discard');
  const a1 = await change(db.sql`insert into dl_discard values ('a', '1')`);
  const b1 = await change(db.sql`insert into dl_discard values ('b', '1')`);
  const a2 = await change(db.sql`update dl_discard set name = '2' where sku = 'a'`);
  const c1 = await change(db.sql`insert into dl_discard values ('c', '1')`);
  await deadLetter([
    { id: a1, key: 'a' },
    { id: b1, key: 'b' },
    { id: a2, key: 'a', follower: true },
  ]);

  const one = await runCli(['dead-letters', 'discard', String(a1)], env());
  assert.equal(one.code, 0, one.stderr);
  assert.equal(
    one.stdout,
    `1 dead letter(s) discarded: ${a1}\n` +
      `still parked under the same key: ${a2} (retry or discard them too to release the key)\n`,
  );
  assert.deepEqual(await deadLetterIds(), [b1, a2]);
  assert.deepEqual(await queue(), [[c1, 'INSERT', 'c']]);

  const two = await runCli(['dead-letters', 'discard', String(b1), String(a2), String(b1)], env());
  assert.equal(two.code, 0, two.stderr);
  assert.equal(two.stdout, `2 dead letter(s) discarded: ${b1}, ${a2}\n`);
  assert.deepEqual(await deadLetterIds(), []);

  const a3 = await change(db.sql`update dl_discard set name = '3' where sku = 'a'`);
  await deadLetter([{ id: a3, key: 'a' }]);
  const all = await runCli(['dead-letters', 'discard', '--all'], env());
  assert.equal(all.code, 0, all.stderr);
  assert.equal(all.stdout, `1 dead letter(s) discarded: ${a3}\n`);
  assert.deepEqual(await deadLetterIds(), []);
  assert.deepEqual(await queue(), [[c1, 'INSERT', 'c']]);

  const none = await runCli(['dead-letters', 'discard', '--all'], env());
  assert.deepEqual(
    { code: none.code, stdout: none.stdout },
    { code: 0, stdout: 'no dead letters: nothing to discard\n' },
  );
});

test('bad input exits 2 with what to do, and changes nothing', async () => {
  await capturedTable('dl_bad');
  const a1 = await change(db.sql`insert into dl_bad values ('a', '1')`);
  const a2 = await change(db.sql`update dl_bad set name = '2' where sku = 'a'`);
  const b1 = await change(db.sql`insert into dl_bad values ('b', '1')`);
  await deadLetter([
    { id: a1, key: 'a' },
    { id: a2, key: 'a', follower: true },
  ]);
  const missing = a1 + 1000;
  const cases: Array<[string[], string]> = [
    [
      ['dead-letters', 'retry'],
      `pg2kafka dead-letters retry expects dead letter ids or --all, got neither ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'discard'],
      `pg2kafka dead-letters discard expects dead letter ids or --all, got neither ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'retry', String(a1), '--all'],
      `pg2kafka dead-letters retry expects dead letter ids or --all, not both ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'discard', '--all', String(a1)],
      `pg2kafka dead-letters discard expects dead letter ids or --all, not both ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'retry', 'abc'],
      `dead letter id must be a whole number such as 42, got "abc" ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'retry', '1.5'],
      `dead letter id must be a whole number such as 42, got "1.5" ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'discard', '0'],
      `dead letter id must be a whole number such as 42, got "0" ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'discard', '-3'],
      `dead letter id must be a whole number such as 42, got "-3" ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'retry', '99999999999999999999'],
      `dead letter id must be a whole number such as 42, got "99999999999999999999" ${LIST_HINT}`,
    ],
    // A queued change is not a dead letter.
    [
      ['dead-letters', 'retry', String(a1), String(b1), String(missing)],
      `no dead letter with id ${b1}, ${missing}: nothing was retried ${LIST_HINT}`,
    ],
    [
      ['dead-letters', 'discard', String(a1), String(missing)],
      `no dead letter with id ${missing}: nothing was discarded ${LIST_HINT}`,
    ],
    [['dead-letters', 'retry', '--json'], 'unknown option --json'],
    [['dead-letters', '--all'], 'unknown option --all'],
    [
      ['dead-letters', 'frobnicate'],
      'pg2kafka dead-letters expects list, retry or discard, got "frobnicate". Run pg2kafka dead-letters --help for usage.',
    ],
    [['dead-letters', '--table'], '--table needs a table name, e.g. --table public.orders'],
    [
      ['dead-letters', '--table', 'no_such_table'],
      'relation "no_such_table" does not exist and has no dead letters (table argument: no_such_table)',
    ],
  ];
  for (const [args, message] of cases) {
    const result = await runCli(args, env());
    assert.deepEqual(
      { code: result.code, stderr: result.stderr, stdout: result.stdout },
      { code: 2, stderr: `pg2kafka: ${message}\n`, stdout: '' },
      `pg2kafka ${args.join(' ')}`,
    );
  }
  assert.deepEqual(await deadLetterIds(), [a1, a2]);
  assert.deepEqual(await queue(), [[b1, 'INSERT', 'b']]);
});

test('--help of dead-letters and of its actions exits 0 without a database', async () => {
  for (const args of [
    ['dead-letters', '--help'],
    ['dead-letters', '-h'],
    ['dead-letters', 'retry', '--help'],
    ['dead-letters', 'discard', '-h'],
  ]) {
    const result = await runCli(args, env({ DATABASE_URL: undefined }));
    assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`);
    assert.ok(result.stdout.startsWith('Usage: pg2kafka dead-letters'), result.stdout);
  }
  const help = await runCli(['--help'], env({ DATABASE_URL: undefined }));
  assert.match(help.stdout, /^ {2}dead-letters retry <id>\.\.\. \| --all$/m);
});

test('status counts the dead letters and the keys they park', async () => {
  await capturedTable('dl_status');
  const a1 = await change(db.sql`insert into dl_status values ('a', '1')`);
  const a2 = await change(db.sql`update dl_status set name = '2' where sku = 'a'`);
  const b1 = await change(db.sql`insert into dl_status values ('b', '1')`);
  const c1 = await change(db.sql`insert into dl_status values ('c', '1')`);
  const queued = await change(db.sql`insert into dl_status values ('d', '1')`);

  // Events queued and no relay to ship them: exit 3 already.
  const empty = await runCli(['status', '--json'], env());
  assert.equal(empty.code, 3, empty.stderr);
  assert.deepEqual((JSON.parse(empty.stdout) as Status).deadLetters, { total: 0, parkedKeys: 0 });
  const emptyText = await runCli(['status'], env());
  assert.equal(emptyText.stdout.split('\n')[2], 'dead letters: none');

  // Key a parked by two dead letters, key b by one, c not parked (DEAD_LETTER_POLICY=skip).
  await deadLetter([
    { id: a1, key: 'a' },
    { id: a2, key: 'a', follower: true },
    { id: b1, key: 'b' },
    { id: c1, key: 'c', parked: false },
  ]);
  const json = await runCli(['status', '--json'], env());
  assert.equal(json.code, 3, json.stderr);
  const status = JSON.parse(json.stdout) as Status;
  assert.deepEqual(status.deadLetters, { total: 4, parkedKeys: 2 });
  assert.ok(
    status.attention.includes(
      '4 dead letter(s), Kafka refused them for good: pg2kafka dead-letters lists them',
    ),
    status.attention.join('\n'),
  );
  assert.equal(status.queue.events, 1);
  assert.deepEqual(await queue(), [[queued, 'INSERT', 'd']]);

  const text = await runCli(['status'], env());
  assert.equal(text.code, 3, text.stderr);
  const lines = text.stdout.split('\n');
  assert.equal(lines[0], 'relay: none active');
  assert.match(lines[1] ?? '', /^queue: 1 event\(s\), oldest \d+\.\d s old$/);
  assert.equal(
    lines[2],
    'dead letters: 4, parking 2 key(s) (list them with: pg2kafka dead-letters)',
  );
});

test('without the dead letters table: dead-letters and status say to run pg2kafka migrate', async () => {
  await old.ready;
  const oldEnv = cliEnv(old.url);
  const commands = [
    ['dead-letters'],
    ['dead-letters', '--json'],
    ['dead-letters', 'retry', '--all'],
    ['dead-letters', 'discard', '1'],
    ['status'],
  ];
  /** Each command says what is missing and to run pg2kafka migrate, exit 2, nothing on stdout. */
  const assertEachSaysMigrate = async (missing: RegExp): Promise<void> => {
    for (const args of commands) {
      const result = await runCli(args, oldEnv);
      assert.equal(result.code, 2, args.join(' '));
      assert.equal(result.stdout, '', args.join(' '));
      assert.match(result.stderr, missing, args.join(' '));
      assert.match(result.stderr, /run "pg2kafka migrate"/, args.join(' '));
    }
  };
  // Not installed at all.
  await assertEachSaysMigrate(/the pg2kafka schema is not installed in database/);

  // Installed by a version before dead letters: the first two migrations only.
  await runner({
    databaseUrl: old.url,
    dir: join(packageRoot, 'migrations'),
    direction: 'up',
    count: 2,
    migrationsTable: 'migrations',
    migrationsSchema: 'pg2kafka',
    createMigrationsSchema: true,
    singleTransaction: true,
    log: () => undefined,
  });
  const [table] = await old.sql<{ exists: boolean }[]>`
    select to_regclass('pg2kafka.relay_lease') is not null
       and to_regclass('pg2kafka.dead_letters') is null as exists`;
  assert.equal(table?.exists, true, 'migrated to 0002 only');
  await assertEachSaysMigrate(/is older than this pg2kafka \(missing 0003_dead_letters/);

  // After pg2kafka migrate: an empty list.
  const migrate = await runCli(['migrate'], oldEnv);
  assert.equal(migrate.code, 0, migrate.stderr);
  const list = await runCli(['dead-letters'], oldEnv);
  assert.deepEqual(
    { code: list.code, stdout: list.stdout },
    { code: 0, stdout: 'no dead letters\n' },
  );
});
