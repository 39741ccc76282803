/**
 * `pg2kafka setup` and `teardown` when the arguments or the table's state are not what
 * the command needs: what it prints, its exit code (2: change the arguments, 1: retry
 * later), and that it changed nothing.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import {
  CAPTURE_TRIGGERS,
  migrated,
  queuedChanges,
  trackedAs,
  triggersOn,
} from './capture/support.ts';
import { useTestDatabase } from './helpers.ts';
import { cliEnv, runCli } from './relay/support.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

const env = (): Record<string, string | undefined> => cliEnv(db.url);

const triggers = (table: string): Promise<string[]> => triggersOn(db.sql, table);
const tracked = (table: string): ReturnType<typeof trackedAs> => trackedAs(db.sql, table);

/** What a command printed and how it exited, for one deepEqual. */
async function run(
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await runCli(args, env());
  return { code, stdout, stderr };
}

test('a second setup with the same settings says it is already capturing and queues nothing', async () => {
  await db.sql`create table products (sku text primary key, name text not null)`;
  await db.sql`insert into products values ('CM01-B', 'Blue Coffee Mug'), ('CM01-R', 'Red Coffee Mug')`;
  const first = await run(['setup', 'products', 'sku']);
  assert.equal(first.code, 0, first.stderr);

  const again = await run(['setup', 'products', 'sku']);
  assert.deepEqual(again, {
    code: 0,
    stdout: `already capturing public.products (topic pg2kafka.${db.name}.products, key sku): nothing changed, nothing queued\n`,
    stderr: '',
  });
  assert.equal((await queuedChanges(db.sql, 'products')).length, 2);
});

test('setup with another key column than the one set up exits 2, keeps the old key, says how to change it', async () => {
  await db.sql`create table if not exists products (sku text primary key, name text not null)`;
  await db.sql`select pg2kafka.setup('products', 'sku')`;
  const queued = await queuedChanges(db.sql, 'products');

  const other = await run(['setup', 'products', 'name']);
  assert.deepEqual(other, {
    code: 2,
    stdout: '',
    stderr:
      'pg2kafka: public.products is already set up with external id column "sku", not "name"; nothing was changed\n' +
      '  hint: to change it: pg2kafka teardown public.products, then, once its queued events have been shipped (pg2kafka status), pg2kafka setup public.products name\n',
  });
  const fullRow = await run(['setup', 'products', 'sku', '--full-row']);
  assert.deepEqual(fullRow, {
    code: 2,
    stdout: '',
    stderr:
      'pg2kafka: public.products is already set up without --full-row; nothing was changed\n' +
      '  hint: to change it: pg2kafka teardown public.products, then, once its queued events have been shipped (pg2kafka status), pg2kafka setup public.products sku --full-row\n',
  });
  assert.deepEqual(await tracked('products'), { column: 'sku', fullRow: false, capturing: true });
  assert.deepEqual(await queuedChanges(db.sql, 'products'), queued);

  // The same in SQL: an error with its own SQLSTATE, not a warning.
  await assert.rejects(
    db.sql`select pg2kafka.setup('products', 'name')`,
    (error: Error & { code?: string; hint?: string }) => {
      assert.equal(error.code, '42710');
      assert.equal(
        error.hint,
        "To change the external id column, tear it down first: SELECT pg2kafka.teardown('public.products'); then SELECT pg2kafka.setup('public.products', 'name');",
      );
      return true;
    },
  );
});

test('bad arguments exit 2 with the reason: missing column, view, missing schema, bad name', async () => {
  await db.sql`create table if not exists products (sku text primary key, name text not null)`;
  await db.sql`create view product_names as select sku, name from products`;
  await db.sql`create sequence product_numbers`;
  const cases: Array<[string[], string]> = [
    [
      ['setup', 'products', 'skuu'],
      'pg2kafka: column "skuu" does not exist in table public.products\n' +
        '  hint: The second argument names the column whose value becomes the Kafka message key, for example the primary key.\n',
    ],
    [
      ['setup', 'product_names', 'sku'],
      'pg2kafka: public.product_names is a view, not a table: pg2kafka can capture only plain or partitioned tables\n',
    ],
    [
      ['setup', 'product_numbers', 'last_value'],
      'pg2kafka: public.product_numbers is a sequence, not a table: pg2kafka can capture only plain or partitioned tables\n',
    ],
    [
      ['setup', 'prodcuts', 'sku'],
      'pg2kafka: relation "prodcuts" does not exist (table argument: prodcuts)\n',
    ],
    [
      ['setup', 'nosuch.products', 'sku'],
      'pg2kafka: schema "nosuch" does not exist (table argument: nosuch.products)\n',
    ],
    [
      ['setup', 'a.b.c.d', 'sku'],
      'pg2kafka: improper relation name (too many dotted names): a.b.c.d (table argument: a.b.c.d)\n',
    ],
    [
      ['setup', 'otherdb.public.products', 'sku'],
      'pg2kafka: cross-database references are not implemented: "otherdb.public.products" (table argument: otherdb.public.products)\n',
    ],
    [['teardown', '"unclosed'], 'pg2kafka: invalid name syntax (table argument: "unclosed)\n'],
  ];
  for (const [args, stderr] of cases) {
    assert.deepEqual(await run(args), { code: 2, stdout: '', stderr }, args.join(' '));
  }
});

test('mixed-case and other-schema names: the hint says how to name the table or column', async () => {
  await db.sql`create table "Mixed" ("Id" int primary key, "Name" text)`;
  await db.sql`create schema archive`;
  await db.sql`create table archive.orders_2019 (id int primary key)`;
  const cases: Array<[string[], string]> = [
    [
      ['setup', 'Mixed', 'Id'],
      'pg2kafka: relation "mixed" does not exist (table argument: Mixed)\n' +
        `  hint: did you mean "Mixed"? Unquoted names are folded to lower case, as in SQL: quote it: pg2kafka setup '"Mixed"' Id\n`,
    ],
    [
      ['teardown', 'public.MIXED'],
      'pg2kafka: relation "public.mixed" does not exist (table argument: public.MIXED)\n' +
        `  hint: did you mean public."Mixed"? Unquoted names are folded to lower case, as in SQL: quote it: pg2kafka teardown 'public."Mixed"'\n`,
    ],
    [
      ['setup', 'orders_2019', 'id'],
      'pg2kafka: relation "orders_2019" does not exist (table argument: orders_2019)\n' +
        '  hint: did you mean archive.orders_2019? Its schema is not on the search_path: pg2kafka setup archive.orders_2019 id\n',
    ],
    [
      ['setup', '"Mixed"', 'id'],
      'pg2kafka: column "id" does not exist in table public."Mixed"\n' +
        '  hint: Did you mean "Id"? The column name is matched exactly, case included, and given without SQL quotes.\n',
    ],
    [
      ['setup', '"Mixed"', '"Id"'],
      'pg2kafka: column ""Id"" does not exist in table public."Mixed"\n' +
        '  hint: Did you mean "Id"? The column name is matched exactly, case included, and given without SQL quotes.\n',
    ],
  ];
  for (const [args, stderr] of cases) {
    assert.deepEqual(await run(args), { code: 2, stdout: '', stderr }, args.join(' '));
  }
  assert.equal(await tracked('"Mixed"'), undefined);

  const quoted = await run(['setup', '"Mixed"', 'Id']);
  assert.deepEqual(quoted, {
    code: 0,
    stdout: `capturing public."Mixed" (topic pg2kafka.${db.name}.Mixed): 0 existing row(s) queued as SNAPSHOT events\n`,
    stderr: '',
  });
});

test('setup and teardown that cannot lock the table name the session in the way and exit 1', async () => {
  await db.sql`create table busy (id int primary key)`;
  await db.sql`create table busy_teardown (id int primary key)`;
  await db.sql`select pg2kafka.setup('busy_teardown', 'id')`;

  // Two sessions idle in transaction: a writer of busy, a reader of busy_teardown.
  const holder = db.connect({ max: 2, connection: { application_name: 'nightly-report' } });
  const writer = await holder.reserve();
  const reader = await holder.reserve();
  try {
    const [w] = await writer<{ pid: number; user: string }[]>`
      select pg_backend_pid() as pid, current_user as user`;
    await writer`begin`;
    await writer`insert into busy values (1)`;
    const [r] = await reader<{ pid: number }[]>`select pg_backend_pid() as pid`;
    await reader`begin`;
    await reader`select count(*) from busy_teardown`;
    assert.ok(w && r);

    const [setup, teardown] = await Promise.all([
      run(['setup', 'busy', 'id']),
      run(['teardown', 'busy_teardown']),
    ]);
    const expect = (mode: string, table: string, held: string, pid: number): RegExp =>
      new RegExp(
        `^pg2kafka: could not lock table public\\.${table} in ${mode} mode after 20 attempts\\n` +
          `  detail: pid ${pid} \\(application "nightly-report", user "${w.user}"\\) holds ${held} on public\\.${table}, idle in transaction, transaction open for \\d+ s\\.\\n` +
          '  hint: Retry when that transaction has finished\\. A session left idle in transaction can be ended with SELECT pg_terminate_backend\\(pid\\)\\.\\n$',
      );
    assert.equal(setup.code, 1, setup.stderr);
    assert.match(setup.stderr, expect('SHARE ROW EXCLUSIVE', 'busy', 'ROW EXCLUSIVE', w.pid));
    assert.equal(teardown.code, 1, teardown.stderr);
    assert.match(
      teardown.stderr,
      expect('ACCESS EXCLUSIVE', 'busy_teardown', 'ACCESS SHARE', r.pid),
    );
    assert.equal(setup.stdout + teardown.stdout, '');
  } finally {
    await writer`rollback`;
    await reader`rollback`;
    writer.release();
    reader.release();
    await holder.end();
  }
  assert.deepEqual(await triggers('busy'), [], 'setup installed nothing');
  assert.equal(await tracked('busy'), undefined);
  assert.deepEqual(await triggers('busy_teardown'), CAPTURE_TRIGGERS, 'teardown removed nothing');
});
