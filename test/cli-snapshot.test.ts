/**
 * Online snapshots on the command line: `pg2kafka setup` copying a large table itself,
 * `--background`, `pg2kafka snapshot` (and --cancel), `pg2kafka resnapshot --where`,
 * `setup '<schema>.*'`, status, and a copy stopped by a signal and resumed. What a user
 * checks: exit codes, what is printed, what is in the queue and in pg2kafka.snapshots.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { migrated, trackedAs } from './capture/support.ts';
import { useTestDatabase, waitFor } from './helpers.ts';
import { cliEnv, RelayProcess, runCli } from './relay/support.ts';
import { copySnapshots, ProgressDisplay, progressFigures } from '../src/commands/snapshot.ts';
import type { Status } from '../src/commands/status.ts';
import { createLogger } from '../src/logger.ts';
import { SnapshotRunner } from '../src/relay/snapshots.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

const env = (): Record<string, string | undefined> => cliEnv(db.url);

async function run(
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await runCli(args, env());
  return { code, stdout, stderr };
}

/** A table `name` (id int primary key, v text) with ids 1..rows. */
async function table(name: string, rows: number): Promise<void> {
  await db.sql.unsafe(`create table ${name} (id int primary key, v text not null)`);
  await db.sql.unsafe(
    `insert into ${name} select g, md5(g::text) from generate_series(1, ${rows}) g`,
  );
}

/** [statement, events, distinct ids] queued for `name`, by statement. */
async function queued(name: string): Promise<Array<[string, number, number]>> {
  const rows = await db.sql<{ statement: string; events: number; keys: number }[]>`
    select statement, count(*)::int as events, count(distinct new_row->>'id')::int as keys
    from pg2kafka.captured_changes where table_oid = ${name}::regclass
    group by 1 order by 1`;
  return rows.map((r) => [r.statement, r.events, r.keys]);
}

/** `name`'s row of pg2kafka.snapshots, if any. */
async function snapshotOf(
  name: string,
): Promise<
  | { rowsDone: number; finished: boolean; outcome: string | null; condition: string | null }
  | undefined
> {
  const [row] = await db.sql<
    { done: number; finished: boolean; outcome: string | null; condition: string | null }[]
  >`
    select rows_done::int as done, finished_at is not null as finished, outcome, condition
    from pg2kafka.snapshots where table_oid = ${name}::regclass`;
  return (
    row && {
      rowsDone: row.done,
      finished: row.finished,
      outcome: row.outcome,
      condition: row.condition,
    }
  );
}

const copying = (t: string): RegExp =>
  new RegExp(`^copying the existing rows of ${t} online(: about \\d+)?, in chunks of 5000$`, 'm');
const done = (t: string, rows: number): RegExp =>
  new RegExp(
    `^snapshot of ${t} done: ${rows} rows queued as SNAPSHOT events in \\d+\\.\\d s$`,
    'm',
  );

test('setup of a 12,000-row table copies it online: every key once, progress and summary on stderr, exit 0', async () => {
  await table('big_orders', 12_000);
  const result = await run(['setup', 'big_orders', 'id']);
  assert.equal(result.code, 0, result.stderr);
  assert.match(
    result.stdout,
    new RegExp(
      `^capturing public\\.big_orders \\(topic pg2kafka\\.${db.name}\\.big_orders\\): its existing rows( \\(about \\d+\\))? are queued as SNAPSHOT events online, in chunks\\n$`,
    ),
  );
  assert.match(result.stderr, copying('public\\.big_orders'));
  assert.match(result.stderr, done('public\\.big_orders', 12_000));
  assert.deepEqual(await queued('big_orders'), [['SNAPSHOT', 12_000, 12_000]]);
  assert.deepEqual(await snapshotOf('big_orders'), {
    rowsDone: 12_000,
    finished: true,
    outcome: 'done',
    condition: null,
  });
  // Nothing left for the next snapshot command.
  assert.deepEqual(await run(['snapshot']), {
    code: 0,
    stdout: 'no snapshot is pending\n',
    stderr: '',
  });
});

test('setup --background leaves the copy pending; pg2kafka snapshot then copies it', async () => {
  await table('later', 12_000);
  const setup = await run(['setup', 'later', '--background']);
  assert.equal(setup.code, 0, setup.stderr);
  assert.equal(setup.stderr, '');
  assert.match(
    setup.stdout,
    /: its existing rows( \(about \d+\))? are queued as SNAPSHOT events online, in chunks\nno relay is active now: the next one to start copies it in the background; to copy it now: pg2kafka snapshot public\.later\n$/,
  );
  assert.deepEqual(await queued('later'), []);
  assert.deepEqual(await snapshotOf('later'), {
    rowsDone: 0,
    finished: false,
    outcome: null,
    condition: null,
  });

  const listed = await run(['snapshot', '--background']);
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /^pending: public\.later: 0 (of about \d+ )?rows/);
  assert.deepEqual(await queued('later'), []);

  const copy = await run(['snapshot', 'later']);
  assert.equal(copy.code, 0, copy.stderr);
  assert.equal(copy.stdout, '');
  assert.match(copy.stderr, copying('public\\.later'));
  assert.match(copy.stderr, done('public\\.later', 12_000));
  assert.deepEqual(await queued('later'), [['SNAPSHOT', 12_000, 12_000]]);
  assert.equal((await snapshotOf('later'))?.outcome, 'done');

  const again = await run(['snapshot', 'later']);
  assert.deepEqual(again, {
    code: 0,
    stdout:
      'no snapshot of public.later is pending (to copy its rows again: pg2kafka resnapshot public.later)\n',
    stderr: '',
  });
});

test('status and status --json show a pending snapshot: rows done of about how many, started at', async () => {
  await table('halfway', 12_000);
  assert.equal((await run(['setup', 'halfway', '--background'])).code, 0);
  // One chunk copied, as the relay (or CALL pg2kafka.run_snapshots()) would.
  await db.sql`select * from pg2kafka.snapshot_chunk('halfway')`;

  // 5,000 events queued and no relay: that needs attention.
  const json = await run(['status', '--json']);
  assert.equal(json.code, 3, json.stderr);
  const status = JSON.parse(json.stdout) as Status;
  assert.ok(status.attention.some((a) => a.startsWith('no relay is active and ')));
  const [oid] = await db.sql<{ oid: string }[]>`select 'halfway'::regclass::oid::text as oid`;
  const entry = status.snapshots.find((s) => s.table === 'public.halfway');
  assert.ok(entry, json.stdout);
  assert.equal(entry.tableOid, oid?.oid);
  assert.equal(entry.rowsDone, 5_000);
  assert.equal(entry.condition, null);
  assert.ok(
    typeof entry.rowsEstimated === 'number' && entry.rowsEstimated > 5_000,
    `rowsEstimated ${String(entry.rowsEstimated)}`,
  );
  assert.ok(entry.rowsPerSecond > 0);
  assert.ok(Date.parse(String(entry.startedAt)) <= Date.parse(String(entry.updatedAt)));
  assert.ok(Date.now() - Date.parse(String(entry.startedAt)) < 60_000);
  // The fields status had before are still there.
  assert.ok(status.tables.some((t) => t.table === 'public.halfway' && t.queued === 5_000));

  const text = await run(['status']);
  assert.equal(text.code, 3, text.stderr);
  assert.match(
    text.stdout,
    /^snapshots pending:\n {2}public\.halfway: 5000 of about \d+ rows \(\d+%\), \d+ rows\/s, about \S+ (s|min|h) left; started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, last chunk \d+ s ago$/m,
  );
  assert.match(
    text.stdout,
    /^ {2}no relay is active to copy them: pg2kafka snapshot copies them now$/m,
  );

  // Copied to the end, it leaves status.
  assert.equal((await run(['snapshot'])).code, 0);
  const after = JSON.parse((await run(['status', '--json'])).stdout) as Status;
  assert.deepEqual(after.snapshots, []);
  assert.doesNotMatch((await run(['status'])).stdout, /snapshots pending/);
  assert.deepEqual(await queued('halfway'), [['SNAPSHOT', 12_000, 12_000]]);
});

test('a partition attached after setup: status shows its copy pending once noticed, pg2kafka snapshot copies it', async () => {
  await db.sql`create table visits (id int primary key, v text not null) partition by range (id)`;
  await db.sql`create table visits_1 partition of visits for values from (1) to (100000)`;
  await db.sql`insert into visits select g, 'a' from generate_series(1, 10) g`;
  assert.equal((await run(['setup', 'visits'])).code, 0);
  await db.sql`create table visits_2 (id int primary key, v text not null)`;
  await db.sql`insert into visits_2 select g, 'b' from generate_series(100000, 106999) g`;
  await db.sql`alter table visits attach partition visits_2 for values from (100000) to (200000)`;
  // As the active relay's runner does every few seconds.
  await db.sql`select pg2kafka.snapshot_attached_partitions()`;
  assert.match(
    (await run(['status'])).stdout,
    /^ {2}public\.visits \(partition visits_2, attached since setup\): 0 (of about \d+ )?rows/m,
  );
  const copy = await run(['snapshot']);
  assert.equal(copy.code, 0, copy.stderr);
  assert.match(
    copy.stderr,
    /^copying the rows of partition visits_2, attached since setup, of public\.visits online/m,
  );
  assert.match(copy.stderr, done('public\\.visits', 7_000));
  assert.deepEqual(await queued('visits'), [['SNAPSHOT', 7_010, 7_010]]);
  assert.equal((await run(['snapshot'])).stdout, 'no snapshot is pending\n');
});

test('snapshot --cancel stops a snapshot where it is; the events queued stay', async () => {
  await table('cancelled', 12_000);
  assert.equal((await run(['setup', 'cancelled', '--background'])).code, 0);
  await db.sql`select * from pg2kafka.snapshot_chunk('cancelled')`;

  const cancel = await run(['snapshot', '--cancel', 'cancelled']);
  assert.deepEqual(cancel, {
    code: 0,
    stdout:
      'cancelled the snapshot of public.cancelled after 5000 rows; the SNAPSHOT events already queued stay (to copy it again: pg2kafka resnapshot public.cancelled)\n',
    stderr: '',
  });
  assert.deepEqual(await snapshotOf('cancelled'), {
    rowsDone: 5_000,
    finished: true,
    outcome: 'cancelled',
    condition: null,
  });
  assert.deepEqual(await queued('cancelled'), [['SNAPSHOT', 5_000, 5_000]]);
  // Nothing pending is copied by a later snapshot.
  assert.equal((await run(['snapshot', 'cancelled'])).code, 0);
  assert.deepEqual(await queued('cancelled'), [['SNAPSHOT', 5_000, 5_000]]);

  assert.deepEqual(await run(['snapshot', '--cancel', 'cancelled']), {
    code: 0,
    stdout: '',
    stderr: 'warning: pg2kafka: no snapshot of public.cancelled is running; nothing was changed\n',
  });
  assert.deepEqual(await run(['snapshot', '--cancel']), {
    code: 2,
    stdout: '',
    stderr: 'pg2kafka: pg2kafka snapshot --cancel expects <table>..., got 0 argument(s)\n',
  });
});

test('resnapshot --where queues exactly the matching rows again; bad input exits 2 saying what to do', async () => {
  await table('again', 12_000);
  assert.equal((await run(['setup', 'again'])).code, 0);
  assert.deepEqual(await queued('again'), [['SNAPSHOT', 12_000, 12_000]]);

  const some = await run(['resnapshot', 'again', '--where', 'id <= 100']);
  assert.equal(some.code, 0, some.stderr);
  assert.equal(some.stdout, 'snapshot of public.again (rows where id <= 100) registered\n');
  assert.match(
    some.stderr,
    /^copying the rows of public\.again where id <= 100 online(: about \d+)?, in chunks of 5000$/m,
  );
  assert.match(some.stderr, done('public\\.again', 100));
  assert.deepEqual(await queued('again'), [['SNAPSHOT', 12_100, 12_000]]);
  const [low] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from pg2kafka.captured_changes
    where table_oid = 'again'::regclass and (new_row->>'id')::int <= 100`;
  assert.equal(low?.n, 200);
  assert.deepEqual(await snapshotOf('again'), {
    rowsDone: 100,
    finished: true,
    outcome: 'done',
    condition: 'id <= 100',
  });

  await db.sql`create table not_captured (id int primary key)`;
  const cases: Array<[string[], RegExp]> = [
    [
      ['resnapshot', 'again', '--where', 'id <== 100'],
      /^pg2kafka: the condition 'id <== 100' is not a valid condition on public\.again: operator does not exist: integer <== integer\n {2}hint: --where takes a SQL condition on the columns of public\.again, as in --where "id <= 100"\n$/,
    ],
    [
      ['resnapshot', 'again', '--where', 'no_such_column = 1'],
      /^pg2kafka: the condition 'no_such_column = 1' is not a valid condition on public\.again: column "no_such_column" does not exist\n/,
    ],
    [['resnapshot', 'again', '--where'], /^pg2kafka: --where needs a value\n$/],
    [
      ['resnapshot', 'no_such_table'],
      /^pg2kafka: relation "no_such_table" does not exist \(table argument: no_such_table\)\n$/,
    ],
    [
      ['resnapshot', 'not_captured'],
      /^pg2kafka: public\.not_captured is not set up: pg2kafka resnapshot works on the tables pg2kafka captures\n {2}hint: set it up first: pg2kafka setup public\.not_captured\n$/,
    ],
    [
      ['snapshot', 'not_captured'],
      /^pg2kafka: public\.not_captured is not set up: pg2kafka snapshot works on the tables pg2kafka captures\n {2}hint: set it up first: pg2kafka setup public\.not_captured\n$/,
    ],
    [['resnapshot'], /^pg2kafka: pg2kafka resnapshot expects <table>, got 0 argument\(s\)\n$/],
  ];
  for (const [args, stderr] of cases) {
    const result = await run(args);
    assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, stderr, args.join(' '));
    assert.equal(result.stdout, '', args.join(' '));
  }
  // None of them registered or queued anything.
  assert.deepEqual(await queued('again'), [['SNAPSHOT', 12_100, 12_000]]);
  assert.equal((await snapshotOf('again'))?.condition, 'id <= 100');
  assert.equal(await snapshotOf('not_captured'), undefined);
});

test('setup without a key column takes the primary key; --snapshot=none queues nothing, locked copies at once', async () => {
  await db.sql`create table by_pk (code text primary key, n int)`;
  await db.sql`insert into by_pk values ('a', 1), ('b', 2), ('c', 3)`;
  assert.deepEqual(await run(['setup', 'by_pk']), {
    code: 0,
    stdout: `capturing public.by_pk (topic pg2kafka.${db.name}.by_pk): 3 existing row(s) queued as SNAPSHOT events\n`,
    stderr: '',
  });
  assert.deepEqual(await trackedAs(db.sql, 'by_pk'), {
    column: 'code',
    fullRow: false,
    capturing: true,
  });

  await table('changes_only', 12_000);
  assert.deepEqual(await run(['setup', 'changes_only', '--snapshot=none']), {
    code: 0,
    stdout: `capturing public.changes_only (topic pg2kafka.${db.name}.changes_only): its existing rows are not queued (--snapshot=none)\n`,
    stderr: '',
  });
  assert.deepEqual(await queued('changes_only'), []);
  assert.equal(await snapshotOf('changes_only'), undefined);
  await db.sql`update changes_only set v = 'x' where id = 7`;
  assert.deepEqual(await queued('changes_only'), [['UPDATE', 1, 1]]);

  await table('at_once', 12_000);
  assert.deepEqual(await run(['setup', 'at_once', '--snapshot', 'locked']), {
    code: 0,
    stdout: `capturing public.at_once (topic pg2kafka.${db.name}.at_once): 12000 existing row(s) queued as SNAPSHOT events\n`,
    stderr: '',
  });
  assert.deepEqual(await queued('at_once'), [['SNAPSHOT', 12_000, 12_000]]);
  assert.equal(await snapshotOf('at_once'), undefined);

  // A primary key of several columns is the key: the JSON array of their values.
  await db.sql`create table two_col_pk (a int, b text, primary key (a, b))`;
  await db.sql`insert into two_col_pk values (1, 'x')`;
  assert.deepEqual(await run(['setup', 'two_col_pk']), {
    code: 0,
    stdout: `capturing public.two_col_pk (topic pg2kafka.${db.name}.two_col_pk): 1 existing row(s) queued as SNAPSHOT events\n`,
    stderr: '',
  });
  const [pair] = await db.sql<{ key: string }[]>`
    select external_id as key from pg2kafka.outbound_event_queue where table_oid = 'two_col_pk'::regclass`;
  assert.equal(pair?.key, '[1,"x"]');

  await db.sql`create table no_pk (code text, n int)`;
  const cases: Array<[string[], string]> = [
    [
      ['setup', 'no_pk'],
      'pg2kafka: public.no_pk has no primary key: name its external id column\n' +
        '  hint: name its key column: pg2kafka setup public.no_pk <column> (a unique NOT NULL column; its value becomes the Kafka message key)\n',
    ],
    [
      ['setup', 'no_pk', '--snapshot=sometimes'],
      'pg2kafka: --snapshot must be online, locked or none, not "sometimes" (online copies a large table in chunks while its writers go on, locked at once under the table lock, none not at all)\n',
    ],
    [
      ['setup'],
      'pg2kafka: pg2kafka setup expects <table> [<external-id-column>], got 0 argument(s)\n',
    ],
  ];
  for (const [args, stderr] of cases) {
    assert.deepEqual(await run(args), { code: 2, stdout: '', stderr }, args.join(' '));
  }
  assert.equal(await trackedAs(db.sql, 'no_pk'), undefined);
});

test("setup 'schema.*' sets up every table of the schema with its primary key, reports the rest, exit 1 if one failed", async () => {
  await db.sql`create schema shop`;
  await table('shop.orders', 6_000);
  await db.sql`create table shop.tiny (id int primary key)`;
  await db.sql`insert into shop.tiny values (1), (2)`;
  await db.sql`create table shop.notes (body text)`;
  await db.sql`create table shop.lines (order_id int, line int, primary key (order_id, line))`;
  await db.sql`create table shop.events (id int primary key) partition by range (id)`;
  await db.sql`create table shop.events_2026 partition of shop.events for values from (1) to (1000)`;
  await db.sql`insert into shop.events values (10), (20)`;
  await db.sql`create table shop."Bad Name" (id int primary key)`;
  await db.sql`create view shop.order_view as select * from shop.orders`;

  const result = await run(['setup', 'shop.*']);
  assert.equal(result.code, 1, result.stderr);
  const topic = (t: string): string => `pg2kafka.${db.name}.shop.${t}`;
  assert.match(
    result.stdout,
    new RegExp(
      '^' +
        [
          `capturing shop\\.events \\(topic ${topic('events')}\\): 2 existing row\\(s\\) queued as SNAPSHOT events`,
          `capturing shop\\.lines \\(topic ${topic('lines')}\\): 0 existing row\\(s\\) queued as SNAPSHOT events`,
          'skipped shop\\.notes: no primary key; set it up with its key column: pg2kafka setup shop\\.notes <column>',
          `capturing shop\\.orders \\(topic ${topic('orders')}\\): its existing rows( \\(about \\d+\\))? are queued as SNAPSHOT events online, in chunks`,
          `capturing shop\\.tiny \\(topic ${topic('tiny')}\\): 2 existing row\\(s\\) queued as SNAPSHOT events`,
          'schema shop: 4 table\\(s\\) set up, 0 already captured, 1 skipped, 1 failed',
        ].join('\\n') +
        '\\n$',
    ),
  );
  assert.match(
    result.stderr,
    new RegExp(
      `^pg2kafka: cannot set up shop\\."Bad Name": topic "${topic('Bad Name')}" has characters Kafka does not accept`,
      'm',
    ),
  );
  assert.match(result.stderr, done('shop\\.orders', 6_000));
  assert.deepEqual(await queued('shop.orders'), [['SNAPSHOT', 6_000, 6_000]]);
  assert.deepEqual(await queued('shop.events'), [['SNAPSHOT', 2, 2]]);
  assert.deepEqual(await queued('shop.tiny'), [['SNAPSHOT', 2, 2]]);
  for (const t of ['shop.notes', 'shop.events_2026', 'shop."Bad Name"']) {
    assert.equal(await trackedAs(db.sql, t), undefined, t);
  }

  // Again, without the table that fails: everything is already captured, exit 0.
  await db.sql`drop table shop."Bad Name"`;
  const again = await run(['setup', 'shop.*']);
  assert.equal(again.code, 0, again.stderr);
  assert.match(
    again.stdout,
    /^already capturing shop\.orders \(topic \S+, key id\): nothing changed, nothing queued$/m,
  );
  assert.match(
    again.stdout,
    /^already capturing shop\.lines \(topic \S+, key \["order_id","line"\]\): nothing changed, nothing queued$/m,
  );
  assert.match(
    again.stdout,
    /^schema shop: 0 table\(s\) set up, 4 already captured, 1 skipped, 0 failed\n$/m,
  );
  assert.deepEqual(await queued('shop.orders'), [['SNAPSHOT', 6_000, 6_000]]);

  for (const [args, stderr] of [
    [['setup', 'nosuch.*'], 'pg2kafka: schema nosuch does not exist (table argument: nosuch.*)\n'],
    [
      ['setup', 'shop.*', 'id'],
      'pg2kafka: pg2kafka setup shop.* sets up each table of schema shop with its primary key: give no column\n',
    ],
  ] as const) {
    assert.deepEqual(await run([...args]), { code: 2, stdout: '', stderr }, args.join(' '));
  }
});

test('setup of several tables: each with its primary key, reported one by one, exit 1 if one failed', async () => {
  await table('many_a', 3);
  await table('many_b', 6_000);
  await db.sql`create table many_c (code text)`;
  await db.sql`create table many_d (region text, n int, primary key (region, n))`;
  const result = await run(['setup', 'many_a', 'many_b', 'many_c']);
  assert.equal(result.code, 1, result.stderr);
  assert.match(
    result.stdout,
    new RegExp(
      '^' +
        [
          `capturing public\\.many_a \\(topic pg2kafka\\.${db.name}\\.many_a\\): 3 existing row\\(s\\) queued as SNAPSHOT events`,
          `capturing public\\.many_b \\(topic pg2kafka\\.${db.name}\\.many_b\\): its existing rows( \\(about \\d+\\))? are queued as SNAPSHOT events online, in chunks`,
          'setup: 2 table\\(s\\) set up, 0 already captured, 0 skipped, 1 failed',
        ].join('\\n') +
        '\\n$',
    ),
  );
  assert.match(
    result.stderr,
    /^pg2kafka: public\.many_c has no primary key: name its external id column/m,
  );
  assert.match(result.stderr, done('public\\.many_b', 6_000));
  assert.deepEqual(await queued('many_b'), [['SNAPSHOT', 6_000, 6_000]]);

  // Two arguments: the second is a table when the first has no column of that name.
  await db.sql`alter table many_d add column many_a int`;
  const two = await run(['setup', 'many_a', 'many_d']);
  assert.equal(two.code, 0, two.stderr);
  assert.match(
    two.stdout,
    /^already capturing public\.many_a \(topic \S+, key id\): nothing changed/m,
  );
  assert.match(two.stdout, /^capturing public\.many_d .*: 0 existing row\(s\) queued/m);
  assert.match(
    two.stdout,
    /^setup: 1 table\(s\) set up, 1 already captured, 0 skipped, 0 failed$/m,
  );
  assert.deepEqual(await trackedAs(db.sql, 'many_d'), {
    column: '["region","n"]',
    fullRow: false,
    capturing: true,
  });
  // ... and the key column when it has: many_d.many_a, not the table many_a.
  await db.sql`select pg2kafka.teardown('many_d')`;
  await db.sql`alter table many_d add constraint many_d_a unique (many_a)`;
  await db.sql`alter table many_d alter column many_a set not null`;
  const keyed = await run(['setup', 'many_d', 'many_a']);
  assert.equal(keyed.code, 0, keyed.stderr);
  assert.equal((await trackedAs(db.sql, 'many_d'))?.column, 'many_a');
  // A mistyped column is still a column that does not exist.
  const typo = await run(['setup', 'many_d', 'many_aa']);
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /^pg2kafka: column "many_aa" does not exist in table public\.many_d/);
});

/** Starts `pg2kafka <args>`, signals it once its copy has committed a chunk past `after` rows. */
async function interruptCopy(
  args: string[],
  name: string,
  after: number,
  signal: NodeJS.Signals,
): Promise<{ code: number | null; stderr: string }> {
  const cli = new RelayProcess({ DATABASE_URL: db.url }, args);
  try {
    await waitFor(
      `a chunk of ${name} copied past ${after} rows`,
      async () => ((await snapshotOf(name))?.rowsDone ?? 0) > after || undefined,
      30_000,
      5,
    );
    const exited = await cli.stop(signal);
    return { code: exited.code, stderr: cli.stderrText.join('\n') };
  } finally {
    await cli.kill();
  }
}

test('SIGTERM or SIGINT during a copy stops after the chunk in flight, keeps the progress; snapshot resumes it', async () => {
  const total = 300_000;
  await table('huge', total);

  const stopped = await interruptCopy(['setup', 'huge'], 'huge', 0, 'SIGTERM');
  assert.equal(stopped.code, 143, stopped.stderr);
  const first = await snapshotOf('huge');
  assert.ok(first && first.rowsDone > 0 && first.rowsDone < total, JSON.stringify(first));
  assert.equal(first.finished, false);
  assert.equal(first.rowsDone % 5_000, 0, 'whole chunks only');
  // No half chunk: the queue holds exactly the rows recorded as done.
  assert.deepEqual(await queued('huge'), [['SNAPSHOT', first.rowsDone, first.rowsDone]]);
  assert.match(
    stopped.stderr,
    new RegExp(
      `^pg2kafka: stopped by SIGTERM after the chunk in flight: ${first.rowsDone}( of about \\d+)? rows of public\\.huge are queued as SNAPSHOT events, and that progress is kept\\n` +
        ' {2}to resume: pg2kafka snapshot public\\.huge \\(the active relay also resumes it by itself\\)$',
      'm',
    ),
  );

  const interrupted = await interruptCopy(['snapshot'], 'huge', first.rowsDone, 'SIGINT');
  assert.equal(interrupted.code, 130, interrupted.stderr);
  assert.match(interrupted.stderr, /^pg2kafka: stopped by SIGINT after the chunk in flight: /m);
  const second = await snapshotOf('huge');
  assert.ok(second && second.rowsDone > first.rowsDone && second.rowsDone < total);
  assert.deepEqual(await queued('huge'), [['SNAPSHOT', second.rowsDone, second.rowsDone]]);

  const resumed = await run(['snapshot']);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(
    resumed.stderr,
    new RegExp(`^resuming the snapshot of public\\.huge after ${second.rowsDone} rows`, 'm'),
  );
  assert.match(
    resumed.stderr,
    new RegExp(
      `^snapshot of public\\.huge done: ${total} rows queued as SNAPSHOT events, ${total - second.rowsDone} of them by this run in \\d+\\.\\d s$`,
      'm',
    ),
  );
  // Every key exactly once.
  assert.deepEqual(await queued('huge'), [['SNAPSHOT', total, total]]);
  assert.equal((await snapshotOf('huge'))?.outcome, 'done');
});

test('--help of snapshot and resnapshot; pg2kafka --help lists them', async () => {
  for (const command of ['snapshot', 'resnapshot']) {
    const result = await runCli([command, '--help'], cliEnv(db.url, { DATABASE_URL: undefined }));
    assert.equal(result.code, 0, result.stderr);
    assert.ok(result.stdout.startsWith(`Usage: pg2kafka ${command}`), result.stdout);
  }
  const help = await runCli(['--help'], cliEnv(db.url, { DATABASE_URL: undefined }));
  assert.match(
    help.stdout,
    /^ {2}setup <table> \[<column>\] \[--full-row\] \[--snapshot=online\|locked\|none\] \[--background\]$/m,
  );
  assert.match(help.stdout, /^ {2}snapshot \[<table>\.\.\.\] \[--background\]$/m);
  assert.match(help.stdout, /^ {2}snapshot --cancel <table>\.\.\. +\S/m);
  assert.match(help.stdout, /^ {2}resnapshot <table> \[--where <condition>\] \[--background\]$/m);
});

/** A stderr stand-in with a clock the test moves. */
function fakeStderr(isTTY: boolean): {
  err: { write(text: string): boolean; isTTY: boolean; columns: number };
  writes: string[];
  clock: { now: number };
} {
  const writes: string[] = [];
  return {
    writes,
    clock: { now: 0 },
    err: {
      isTTY,
      columns: 120,
      write(text: string) {
        writes.push(text);
        return true;
      },
    },
  };
}

test('progress on a terminal: one line redrawn in place, at most every 100 ms', () => {
  const { err, writes, clock } = fakeStderr(true);
  const display = new ProgressDisplay(err, () => clock.now);
  display.start('public.t', 0, 100_000);
  assert.deepEqual(writes, [
    '\r\x1b[Kpublic.t [....................] 0 of about 100000 rows (0%), 0 rows/s',
  ]);
  clock.now = 50;
  display.update(5_000);
  assert.equal(writes.length, 1, 'redrawn before 100 ms');
  clock.now = 1_000;
  display.update(25_000);
  assert.deepEqual(writes.slice(1), [
    '\r\x1b[Kpublic.t [#####...............] 25000 of about 100000 rows (25%), 25000 rows/s, about 3 s left',
  ]);
  display.clear();
  assert.deepEqual(writes.slice(2), ['\r\x1b[K']);
  display.clear();
  assert.equal(writes.length, 3, 'cleared once');
});

test('progress elsewhere: a line every 5 s, no escape codes', () => {
  const { err, writes, clock } = fakeStderr(false);
  const display = new ProgressDisplay(err, () => clock.now);
  display.start('public.t', 10_000, 100_000);
  for (const at of [1_000, 2_000, 4_999]) {
    clock.now = at;
    display.update(10_000 + at * 5);
  }
  assert.deepEqual(writes, []);
  clock.now = 5_000;
  display.update(35_000);
  clock.now = 6_000;
  display.update(40_000);
  assert.deepEqual(writes, [
    'snapshot of public.t: 35000 of about 100000 rows (35%), 5000 rows/s, about 13 s left\n',
  ]);
  display.clear();
  assert.equal(writes.length, 1);
  assert.equal(progressFigures(10, null, 2.4), '10 rows, 2 rows/s');
  assert.equal(progressFigures(990, 900, 10), '990 of about 900 rows (99%), 10 rows/s');
  assert.equal(
    progressFigures(0, 10_000_000, 1_000),
    '0 of about 10000000 rows (0%), 1000 rows/s, about 2.8 h left',
  );
});

/** An Output that keeps what is written, stdout and stderr in one list. */
function recordedOutput(): {
  output: { out(text: string): void; err: { write(text: string): boolean } };
  writes: string[];
} {
  const writes: string[] = [];
  return {
    writes,
    output: {
      out: (text) => writes.push(text),
      err: {
        write(text: string) {
          writes.push(text);
          return true;
        },
      },
    },
  };
}

test('a snapshot cancelled before its turn exits 1 as one cancelled mid-copy does; one done by another runner 0', async () => {
  await table('cancelled_first', 12_000);
  await table('done_elsewhere', 12_000);
  assert.equal((await run(['setup', 'cancelled_first', '--background'])).code, 0);
  assert.equal((await run(['setup', 'done_elsewhere', '--background'])).code, 0);
  const oids = await db.sql<{ name: string; oid: string }[]>`
    select relname as name, oid::text as oid from pg_class
    where relname in ('cancelled_first', 'done_elsewhere') and relkind = 'r'`;
  const target = (name: string): { oid: string; table: string } => ({
    oid: oids.find((o) => o.name === name)?.oid ?? '',
    table: `public.${name}`,
  });
  // What another session does between the list of pending snapshots and their copy.
  await db.sql`select pg2kafka.cancel_snapshot('cancelled_first')`;
  await db.sql`call pg2kafka.run_snapshots()`;

  const both = recordedOutput();
  const code = await copySnapshots(
    db.sql,
    [target('cancelled_first'), target('done_elsewhere')],
    both.output,
  );
  assert.equal(code, 1, both.writes.join(''));
  assert.deepEqual(both.writes, [
    'the snapshot of public.cancelled_first is no longer pending: cancelled after 0 rows (pg2kafka resnapshot public.cancelled_first starts a new one)\n',
    'the snapshot of public.done_elsewhere is no longer pending: done, 12000 rows\n',
  ]);
  const done = recordedOutput();
  assert.equal(await copySnapshots(db.sql, [target('done_elsewhere')], done.output), 0);
  assert.deepEqual(await queued('cancelled_first'), []);
  assert.deepEqual(await queued('done_elsewhere'), [['SNAPSHOT', 12_000, 12_000]]);
});

test("the relay's warning about a chunk it cannot copy names the table and says PostgreSQL's hint", async () => {
  await table('refused', 12_000);
  await db.sql.unsafe(`
    create function public.refuse_at(id int) returns boolean language plpgsql as $$
    begin
      if id = 7000 then
        raise exception 'row % refused', id using hint = 'Fix row 7000.';
      end if;
      return true;
    end $$`);
  assert.equal((await run(['setup', 'refused', '--snapshot=none'])).code, 0);
  const registered = await run([
    'resnapshot',
    'refused',
    '--where',
    'public.refuse_at(id)',
    '--background',
  ]);
  assert.equal(registered.code, 0, registered.stderr);

  const lines: Array<{ level: number; msg: string; table?: string }> = [];
  const logger = createLogger('info', {
    write: (line: string) => {
      lines.push(JSON.parse(line) as { level: number; msg: string; table?: string });
    },
  });
  const runner = new SnapshotRunner(db.sql, logger, () => {}, {
    checkMs: 10,
    backlogRows: 10_000_000,
  });
  runner.setActive(true);
  runner.start();
  try {
    await waitFor('a warning', () => lines.some((l) => l.level === 40) || undefined, 30_000);
  } finally {
    await runner.stop();
    await db.sql`select pg2kafka.cancel_snapshot('refused')`;
  }
  const warning = lines.find((l) => l.level === 40);
  assert.match(
    warning?.msg ?? '',
    /^cannot copy the snapshot of refused now, retrying in \d+ ms: row 7000 refused \(hint: Fix row 7000\.\)$/,
  );
  assert.equal(warning?.table, 'refused');
  // The chunk before the one that fails is kept, whole.
  assert.equal((await snapshotOf('refused'))?.rowsDone, 5_000);
  assert.deepEqual(await queued('refused'), [['SNAPSHOT', 5_000, 5_000]]);
});
