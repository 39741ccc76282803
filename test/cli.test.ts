/**
 * The `pg2kafka` command line as a user runs it: exit codes and messages for bad usage and
 * bad configuration, and setup, teardown and status against a real database.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
import type { Status } from '../src/commands/status.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

/** The environment of a command on the test database (see cliEnv). */
const env = (extra: Record<string, string | undefined> = {}): Record<string, string | undefined> =>
  cliEnv(db.url, extra);

const triggers = (table: string): Promise<string[]> => triggersOn(db.sql, table);
const tracked = (table: string): ReturnType<typeof trackedAs> => trackedAs(db.sql, table);

test('runCli passes a variable given as undefined as unset', async () => {
  // The tests below rely on it to run commands without a variable npm test provides.
  assert.ok(process.env.KAFKA_BROKERS, 'npm test provides KAFKA_BROKERS');
  const missing = await runCli(
    ['relay'],
    env({ KAFKA_BROKERS: undefined, KAFKA_BROKER: undefined }),
  );
  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /KAFKA_BROKERS is required unless DRY_RUN=true/);
});

test('bad usage exits 2 with a message saying what is wrong', async () => {
  const cases: Array<[string[], string]> = [
    [['frobnicate'], 'pg2kafka: unknown command "frobnicate". Run pg2kafka --help for the list.\n'],
    [['status', '--verbose'], 'pg2kafka: unknown option --verbose\n'],
    [['setup', '--full'], 'pg2kafka: unknown option --full\n'],
    [
      // Several tables: one that does not exist stops the command before any is set up.
      ['setup', 'no_such_table', 'sku', 'name'],
      'pg2kafka: relation "no_such_table" does not exist (table argument: no_such_table)\n',
    ],
    [['status', 'extra'], 'pg2kafka: pg2kafka status expects no arguments, got 1 argument(s)\n'],
    [['teardown'], 'pg2kafka: pg2kafka teardown expects <table>, got 0 argument(s)\n'],
    [['migrate', 'now'], 'pg2kafka: pg2kafka migrate expects no arguments, got 1 argument(s)\n'],
  ];
  for (const [args, message] of cases) {
    const result = await runCli(args, env());
    assert.deepEqual(
      { code: result.code, stderr: result.stderr, stdout: result.stdout },
      { code: 2, stderr: message, stdout: '' },
      `pg2kafka ${args.join(' ')}`,
    );
  }
});

test('bad relay configuration exits 2 listing every problem, without connecting anywhere', async () => {
  // A listener standing in for PostgreSQL: it counts every connection attempt.
  const connections: Socket[] = [];
  const server = createServer((socket) => {
    connections.push(socket);
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const address = server.address();
    assert.ok(address !== null && typeof address === 'object');
    const result = await runCli(
      ['relay'],
      env({
        DATABASE_URL: `postgres://u:p@127.0.0.1:${address.port}/x`,
        BATCH_SIZE: 'abc',
        KAFKA_BROKERS: undefined,
        KAFKA_BROKER: undefined,
        PERFORM_MIGRATIONS: 'true',
      }),
    );
    assert.equal(result.code, 2, result.stderr);
    assert.deepEqual(result.stderr.split('\n').sort(), [
      '',
      'pg2kafka: BATCH_SIZE must be a whole number from 1 to 100000, got "abc"',
      'pg2kafka: KAFKA_BROKERS is required unless DRY_RUN=true (example: KAFKA_BROKERS=127.0.0.1:9092)',
    ]);
    assert.equal(result.stdout, '');
    assert.equal(connections.length, 0, 'the relay connected before checking its configuration');
  } finally {
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  }
});

test('--version prints the version of package.json; --help of each command exits 0', async () => {
  const { version } = JSON.parse(
    readFileSync(new URL('../package.json', import.meta.url), 'utf8'),
  ) as { version: string };
  for (const flag of ['--version', '-v']) {
    const result = await runCli([flag], env());
    assert.deepEqual(
      { code: result.code, stdout: result.stdout },
      { code: 0, stdout: `${version}\n` },
    );
  }
  const helps: Array<[string, string]> = [
    ['relay', '--help'],
    ['migrate', '--help'],
    ['setup', '--help'],
    ['teardown', '--help'],
    ['status', '--help'],
    ['status', '-h'],
    ['dead-letters', '--help'],
  ];
  for (const [command, flag] of helps) {
    // Help needs no configuration at all.
    const result = await runCli([command, flag], env({ DATABASE_URL: undefined }));
    assert.equal(result.code, 0, `${command} ${flag}: ${result.stderr}`);
    assert.ok(
      result.stdout.startsWith(`Usage: pg2kafka ${command}`),
      `${command} ${flag}: ${result.stdout}`,
    );
  }
});

/**
 * The packages (npm names, no built-ins, no tsx) a command imports, seen by a module
 * resolve hook loaded with NODE_OPTIONS=--import.
 */
async function packagesLoaded(args: string[]): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'pg2kafka-imports-'));
  try {
    const trace = join(dir, 'trace');
    writeFileSync(trace, '');
    writeFileSync(
      join(dir, 'hooks.mjs'),
      `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  if (!/^(\\.|\\/|[a-z]+:|#)/.test(specifier)) appendFileSync(${JSON.stringify(trace)}, specifier + '\\n');
  return next(specifier, context);
}
`,
    );
    writeFileSync(
      join(dir, 'register.mjs'),
      `import { register } from 'node:module';\nregister('./hooks.mjs', import.meta.url);\n`,
    );
    const result = await runCli(
      args,
      env({ NODE_OPTIONS: `--import ${join(dir, 'register.mjs')}` }),
    );
    assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`);
    const builtins = new Set(builtinModules);
    const names = readFileSync(trace, 'utf8')
      .split('\n')
      .filter((s) => s !== '')
      .map((s) =>
        s
          .split('/')
          .slice(0, s.startsWith('@') ? 2 : 1)
          .join('/'),
      )
      .filter((name) => !builtins.has(name) && name !== 'tsx' && name !== 'esbuild');
    return [...new Set(names)].sort();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('a command loads only the packages it needs: none for --version and --help', async () => {
  // The hook must see what a command imports, or the assertions below prove nothing.
  assert.ok((await packagesLoaded(['status'])).includes('postgres'), 'the hook sees imports');
  for (const args of [['--version'], ['--help'], ['setup', '--help'], ['migrate', '--help']]) {
    const loaded = await packagesLoaded(args);
    for (const name of ['dotenv', 'pino', 'kafkajs', 'node-pg-migrate', 'pg']) {
      assert.ok(
        !loaded.includes(name),
        `pg2kafka ${args.join(' ')} loads ${name}: ${loaded.join(', ')}`,
      );
    }
  }
  assert.deepEqual(await packagesLoaded(['--version']), []);
  const status = await packagesLoaded(['status']);
  for (const name of ['pino', 'kafkajs', 'node-pg-migrate', 'pg']) {
    assert.ok(!status.includes(name), `pg2kafka status loads ${name}: ${status.join(', ')}`);
  }
});

test('setup captures a table: prints the topic and the snapshot, queues SNAPSHOT events', async () => {
  await db.sql`create table products (sku text primary key, name text not null)`;
  await db.sql`insert into products values ('CM01-B', 'Blue Coffee Mug'), ('CM01-R', 'Red Coffee Mug')`;
  const result = await runCli(['setup', 'products', 'sku'], env());
  assert.equal(result.code, 0, result.stderr);
  assert.equal(
    result.stdout,
    `capturing public.products (topic pg2kafka.${db.name}.products): 2 existing row(s) queued as SNAPSHOT events\n`,
  );
  assert.equal(result.stderr, '');
  assert.deepEqual(await queuedChanges(db.sql, 'products'), [
    ['SNAPSHOT', 'CM01-B', { sku: 'CM01-B', name: 'Blue Coffee Mug' }],
    ['SNAPSHOT', 'CM01-R', { sku: 'CM01-R', name: 'Red Coffee Mug' }],
  ]);
  assert.deepEqual(await tracked('products'), { column: 'sku', fullRow: false, capturing: true });
  assert.deepEqual(await triggers('products'), CAPTURE_TRIGGERS);

  await db.sql`insert into products values ('CM02', 'Green Coffee Mug')`;
  const changes = await queuedChanges(db.sql, 'products');
  assert.deepEqual(changes.at(-1), ['INSERT', 'CM02', { sku: 'CM02', name: 'Green Coffee Mug' }]);
});

test('setup --full-row sets full-row mode', async () => {
  await db.sql`create table customers (id int primary key, email text not null)`;
  const result = await runCli(['setup', 'customers', 'id', '--full-row'], env());
  assert.equal(result.code, 0, result.stderr);
  assert.equal(
    result.stdout,
    `capturing public.customers (topic pg2kafka.${db.name}.customers): 0 existing row(s) queued as SNAPSHOT events\n`,
  );
  assert.deepEqual(await tracked('customers'), { column: 'id', fullRow: true, capturing: true });
});

test('setup on a nullable key column warns on stderr and still captures', async () => {
  await db.sql`create table notes (code text, body text)`;
  await db.sql`insert into notes values ('n1', 'first')`;
  const result = await runCli(['setup', 'notes', 'code'], env());
  assert.equal(result.code, 0, result.stderr);
  assert.equal(
    result.stderr,
    'warning: pg2kafka: external id column "code" of public.notes is not a unique NOT NULL column (it is nullable)\n',
  );
  assert.equal(
    result.stdout,
    `capturing public.notes (topic pg2kafka.${db.name}.notes): 1 existing row(s) queued as SNAPSHOT events\n`,
  );
});

test('setup of a table whose topic Kafka would reject exits 2 and installs nothing', async () => {
  await db.sql`create table "Order Items" (id int primary key)`;
  await db.sql`insert into "Order Items" values (1)`;
  const result = await runCli(['setup', '"Order Items"', 'id'], env());
  assert.equal(result.code, 2, result.stderr);
  assert.equal(
    result.stderr,
    `pg2kafka: cannot set up public."Order Items": topic "pg2kafka.${db.name}.Order Items" has characters Kafka does not accept (only letters, digits, ".", "_" and "-"): rename the table or schema (topics follow the current name)\n`,
  );
  assert.deepEqual(await triggers('"Order Items"'), []);
  assert.equal(await tracked('"Order Items"'), undefined);
  assert.deepEqual(await queuedChanges(db.sql, '"Order Items"'), []);
});

test('the topic follows TOPIC_PREFIX, TOPIC_NAMESPACE and the schema', async () => {
  await db.sql`create table orders (id int primary key)`;
  const namespaced = await runCli(['setup', 'orders', 'id'], env({ TOPIC_NAMESPACE: 'ns' }));
  assert.equal(namespaced.code, 0, namespaced.stderr);
  assert.equal(
    namespaced.stdout,
    `capturing public.orders (topic pg2kafka.ns.${db.name}.orders): 0 existing row(s) queued as SNAPSHOT events\n`,
  );

  await db.sql`create schema sales`;
  await db.sql`create table sales.invoices (id int primary key)`;
  await db.sql`insert into sales.invoices values (1), (2), (3)`;
  const schema = await runCli(['setup', 'sales.invoices', 'id'], env({ TOPIC_PREFIX: 'cdc' }));
  assert.equal(schema.code, 0, schema.stderr);
  assert.equal(
    schema.stdout,
    `capturing sales.invoices (topic cdc.${db.name}.sales.invoices): 3 existing row(s) queued as SNAPSHOT events\n`,
  );
});

test('teardown stops capture; teardown of a table not set up warns and exits 0', async () => {
  await db.sql`create table shipments (id int primary key)`;
  await db.sql`select pg2kafka.setup('shipments', 'id')`;
  assert.deepEqual(await triggers('shipments'), CAPTURE_TRIGGERS);

  const result = await runCli(['teardown', 'shipments'], env());
  assert.equal(result.code, 0, result.stderr);
  assert.equal(
    result.stdout,
    'stopped capturing public.shipments; queued events will still be shipped\n',
  );
  assert.equal(result.stderr, '');
  assert.deepEqual(await triggers('shipments'), []);
  assert.deepEqual(await tracked('shipments'), { column: 'id', fullRow: false, capturing: false });
  await db.sql`insert into shipments values (1)`;
  assert.deepEqual(await queuedChanges(db.sql, 'shipments'), []);

  await db.sql`create table drafts (id int primary key)`;
  const again = await runCli(['teardown', 'drafts'], env());
  assert.equal(again.code, 0, again.stderr);
  assert.equal(
    again.stderr,
    'warning: pg2kafka: public.drafts is not set up; nothing was changed\n',
  );
  assert.equal(again.stdout, '');
});

test('status and status --json: tracked tables, queued counts, no active relay', async () => {
  // Start from an empty registry and queue, whatever the tests before left.
  await db.sql`
    select pg2kafka.teardown(table_oid::regclass) from pg2kafka.tracked_tables where capturing`;
  await db.sql`delete from pg2kafka.captured_changes`;

  await db.sql`create table status_a (id int primary key)`;
  await db.sql`create table status_b (code text primary key)`;
  await db.sql`insert into status_a values (1), (2)`;
  await db.sql`insert into status_b values ('x')`;
  await db.sql`select pg2kafka.setup('status_a', 'id')`;
  await db.sql`select pg2kafka.setup('status_b', 'code', true)`;
  await db.sql`insert into status_a values (3)`;

  // Events queued and no relay to ship them: that needs attention, exit 3.
  const json = await runCli(['status', '--json'], env());
  assert.equal(json.code, 3, json.stderr);
  const status = JSON.parse(json.stdout) as Status;
  assert.deepEqual(status.attention, [
    'no relay is active and 4 event(s) are queued: start pg2kafka relay',
  ]);
  assert.deepEqual(
    status.tables.map((t) => ({
      table: t.table,
      externalIdColumn: t.externalIdColumn,
      fullRow: t.fullRow,
      capturing: t.capturing,
      queued: t.queued,
    })),
    [
      {
        table: 'public.status_a',
        externalIdColumn: 'id',
        fullRow: false,
        capturing: true,
        queued: 3,
      },
      {
        table: 'public.status_b',
        externalIdColumn: 'code',
        fullRow: true,
        capturing: true,
        queued: 1,
      },
    ],
  );
  for (const t of status.tables) {
    assert.ok(typeof t.oldestAgeSeconds === 'number' && t.oldestAgeSeconds >= 0, t.table);
  }
  assert.equal(status.queue.events, 4);
  assert.equal(
    status.queue.events,
    status.tables.reduce((n, t) => n + t.queued, 0),
  );
  assert.ok(
    typeof status.queue.oldestAgeSeconds === 'number' && status.queue.oldestAgeSeconds >= 0,
    `oldestAgeSeconds: ${String(status.queue.oldestAgeSeconds)}`,
  );
  assert.equal(status.relay.active, false);
  assert.equal(status.relay.holder, null);
  assert.deepEqual(status.deadLetters, { total: 0, parkedKeys: 0 });

  const text = await runCli(['status'], env());
  assert.equal(text.code, 3, text.stderr);
  const lines = text.stdout.split('\n');
  assert.equal(lines[0], 'relay: none active');
  assert.match(lines[1] ?? '', /^queue: 4 event\(s\), oldest \d+\.\d s old$/);
  assert.equal(lines[2], 'dead letters: none');
  assert.equal(lines[3], 'tables:');
  assert.match(lines[4] ?? '', /^ {2}public\.status_a key=id: 3 queued, oldest \d+\.\d s$/);
  assert.match(
    lines[5] ?? '',
    /^ {2}public\.status_b key=code full-row: 1 queued, oldest \d+\.\d s$/,
  );
  assert.deepEqual(lines.slice(6), [
    'attention:',
    '  no relay is active and 4 event(s) are queued: start pg2kafka relay',
    '',
  ]);
});

test('an error never shows the password of DATABASE_URL', async () => {
  const server = new URL(db.url);
  server.username = 'no_such_role';
  server.password = 's3cret';
  server.pathname = '/no_such_db';
  server.search = '?password=s3cret';
  for (const [url, code] of [
    // Nothing listens on port 1: a runtime failure.
    ['postgres://u:s3cret@127.0.0.1:1/x', 1],
    // The real server, a role and database that do not exist: configuration.
    [server.toString(), 2],
  ] as const) {
    const result = await runCli(['status'], env({ DATABASE_URL: url }));
    assert.equal(result.code, code, `${url}: ${result.stderr}`);
    assert.match(result.stderr, /^pg2kafka: \S/, url);
    assert.ok(!result.stderr.includes('s3cret'), `password leaked: ${result.stderr}`);
    assert.ok(!result.stdout.includes('s3cret'), `password leaked: ${result.stdout}`);
  }
});

test('status flags a table whose external id column was renamed', async () => {
  await db.sql`create table renamed_key (id int primary key, v text)`;
  await db.sql`select pg2kafka.setup('renamed_key', 'id')`;
  await db.sql`alter table renamed_key rename column id to ident`;
  const json = await runCli(['status', '--json'], env());
  assert.equal(json.code, 3, json.stderr);
  const status = JSON.parse(json.stdout) as Status;
  assert.deepEqual(
    status.tables.filter((t) => t.table === 'public.renamed_key'),
    [{ ...status.tables.find((t) => t.table === 'public.renamed_key'), keyColumnExists: false }],
  );
  assert.ok(
    status.tables.filter((t) => t.table !== 'public.renamed_key').every((t) => t.keyColumnExists),
  );
  assert.ok(
    status.attention.includes(
      'public.renamed_key: its key column id was renamed or dropped, so the relay holds its events back (they have no key): run pg2kafka teardown and pg2kafka setup again with a column it has',
    ),
    status.attention.join('\n'),
  );
  const text = await runCli(['status'], env());
  assert.match(
    text.stdout,
    /public\.renamed_key key=id \(KEY COLUMN MISSING: renamed or dropped; run teardown and setup again\)/,
  );
  assert.equal(text.code, 3);
  await db.sql`select pg2kafka.teardown('renamed_key')`;
});

test('status: capture triggers disabled or missing need attention (exit 3); a dropped table is shown, exit 0', async () => {
  await db.sql`
    select pg2kafka.teardown(table_oid::regclass) from pg2kafka.tracked_tables where capturing`;
  await db.sql`delete from pg2kafka.captured_changes`;
  await db.sql`create table quiet (id int primary key) partition by range (id)`;
  await db.sql`create table quiet_1 partition of quiet for values from (1) to (100)`;
  await db.sql`create table loud (id int primary key)`;
  await db.sql`select pg2kafka.setup('quiet')`;
  await db.sql`select pg2kafka.setup('loud')`;
  const clean = await runCli(['status', '--json'], env());
  assert.equal(clean.code, 0, clean.stdout);
  assert.deepEqual((JSON.parse(clean.stdout) as Status).attention, []);

  await db.sql`alter table quiet_1 disable trigger _pg2kafka_update`;
  await db.sql`alter table quiet enable replica trigger _pg2kafka_insert`;
  await db.sql`drop trigger _pg2kafka_delete on loud`;
  const json = await runCli(['status', '--json'], env());
  assert.equal(json.code, 3, json.stderr);
  const status = JSON.parse(json.stdout) as Status;
  const of = (table: string) => status.tables.find((t) => t.table === table);
  assert.deepEqual(of('public.quiet')?.triggersDisabled, [
    '_pg2kafka_insert on quiet',
    '_pg2kafka_insert on quiet_1',
    '_pg2kafka_update on quiet_1',
  ]);
  assert.deepEqual(of('public.loud')?.triggersMissing, ['_pg2kafka_delete']);
  assert.deepEqual(status.attention, [
    'public.loud: capture triggers are missing (_pg2kafka_delete), so its changes are not captured: run pg2kafka teardown and pg2kafka setup again',
    'public.quiet: capture triggers do not fire for ordinary writes (_pg2kafka_insert on quiet, _pg2kafka_insert on quiet_1, _pg2kafka_update on quiet_1): enable them (ALTER TABLE … ENABLE TRIGGER …); changes made meanwhile were not captured, pg2kafka resnapshot sends the rows again',
  ]);
  const text = await runCli(['status'], env());
  assert.equal(text.code, 3);
  assert.match(text.stdout, /^attention:\n {2}public\.loud: capture triggers are missing/m);

  // Dropped with an event still queued: shown, shipped under its recorded name.
  await db.sql`select pg2kafka.teardown('quiet')`;
  await db.sql`insert into loud values (1)`;
  await db.sql`drop table loud`;
  const dropped = JSON.parse((await runCli(['status', '--json'], env())).stdout) as Status;
  assert.deepEqual(
    dropped.tables.map((t) => [t.table, t.dropped, t.queued]),
    [['public.loud (dropped)', true, 1]],
  );
  await db.sql`delete from pg2kafka.captured_changes`;
});
