/**
 * `pg2kafka migrate`: from empty, re-run, concurrent runs, and clean removal with
 * DROP SCHEMA pg2kafka CASCADE.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { migrate } from '../../src/capture/migrate.ts';
import { useTestDatabase } from '../helpers.ts';
import { CAPTURE_TRIGGERS, queuedChanges, triggersOn } from './support.ts';

const db = useTestDatabase();

async function schemaObjects(): Promise<string[]> {
  const rows = await db.sql<{ object: string }[]>`
    select c.relkind::text || ' ' || c.relname as object from pg_class c
    where c.relnamespace = 'pg2kafka'::regnamespace and c.relkind in ('r', 'v')
    union all
    select 'f ' || p.proname from pg_proc p where p.pronamespace = 'pg2kafka'::regnamespace
    order by 1`;
  return rows.map((r) => r.object);
}

test('migrate installs the schema on an empty database, then is a no-op', async () => {
  const first = await migrate({ databaseUrl: db.url });
  assert.deepEqual(first, {
    migrations: [
      '0001_capture_tables',
      '0002_relay_lease',
      '0003_dead_letters',
      '0004_queue_floor',
      '0005_snapshots',
      '0006_key_columns',
      '0007_partition_snapshots',
      '0008_payload_control',
      '0009_debezium_format',
    ],
    functionsUpdated: true,
    triggersRefreshed: [],
    triggersStale: [],
  });
  const objects = await schemaObjects();
  for (const expected of [
    'r captured_changes',
    'r tracked_tables',
    'r migrations',
    'v outbound_event_queue',
    'f setup',
    'f teardown',
    'f capture_insert',
  ]) {
    assert.ok(objects.includes(expected), `${expected} missing from ${objects.join(', ')}`);
  }
  const [queue] = await db.sql<{ options: string[] }[]>`
    select reloptions as options from pg_class where oid = 'pg2kafka.captured_changes'::regclass`;
  assert.ok(queue?.options.includes('autovacuum_vacuum_scale_factor=0'));
  const [id] = await db.sql<{ type: string; identity: string }[]>`
    select format_type(atttypid, atttypmod) as type, attidentity as identity from pg_attribute
    where attrelid = 'pg2kafka.captured_changes'::regclass and attname = 'id'`;
  assert.deepEqual({ ...id }, { type: 'bigint', identity: 'a' });

  const second = await migrate({ databaseUrl: db.url });
  assert.deepEqual(second, {
    migrations: [],
    functionsUpdated: false,
    triggersRefreshed: [],
    triggersStale: [],
  });
  assert.deepEqual(await schemaObjects(), objects);
});

test('two migrations at once both succeed and install once', async () => {
  await db.sql`drop schema pg2kafka cascade`;
  const results = await Promise.all([
    migrate({ databaseUrl: db.url }),
    migrate({ databaseUrl: db.url }),
  ]);
  const applied = results.flatMap((r) => r.migrations);
  assert.deepEqual(applied, [
    '0001_capture_tables',
    '0002_relay_lease',
    '0003_dead_letters',
    '0004_queue_floor',
    '0005_snapshots',
    '0006_key_columns',
    '0007_partition_snapshots',
    '0008_payload_control',
    '0009_debezium_format',
  ]);
  const [count] = await db.sql<{ n: number }[]>`select count(*)::int as n from pg2kafka.migrations`;
  assert.equal(count?.n, 9);
});

test('DROP SCHEMA pg2kafka CASCADE leaves tracked tables working, and migrate reinstalls', async () => {
  await db.sql`create table products (sku text primary key, name text)`;
  await db.sql`insert into products values ('CM01-B', 'Red Coffee Mug')`;
  await db.sql`select pg2kafka.setup('products', 'sku')`;
  const [before] = await db.sql<
    { ns: string }[]
  >`select value as ns from pg2kafka.settings where name = 'event_namespace'`;

  await db.sql`drop schema pg2kafka cascade`;
  await db.sql`insert into products values ('CM01-R', 'Red Coffee Mug')`;
  await db.sql`update products set name = 'Big Red Coffee Mug'`;
  await db.sql`delete from products where sku = 'CM01-B'`;
  const rows = await db.sql<{ sku: string; name: string }[]>`select * from products`;
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [{ sku: 'CM01-R', name: 'Big Red Coffee Mug' }],
  );
  const [triggers] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from pg_trigger where tgrelid = 'products'::regclass and not tgisinternal`;
  assert.equal(triggers?.n, 0);

  await migrate({ databaseUrl: db.url });
  const [after] = await db.sql<
    { ns: string }[]
  >`select value as ns from pg2kafka.settings where name = 'event_namespace'`;
  assert.notEqual(after?.ns, before?.ns, 'a reinstall gets a new event namespace');
  await db.sql`select pg2kafka.setup('products', 'sku')`;
  assert.deepEqual(await queuedChanges(db.sql), [
    ['SNAPSHOT', 'CM01-R', { sku: 'CM01-R', name: 'Big Red Coffee Mug' }],
  ]);
});

/** Makes `table`'s capture look as an install before 0.1.0 left it: old names, no version. */
async function ageTriggers(table: string): Promise<void> {
  const [row] = await db.sql<{ oid: string }[]>`select ${table}::regclass::oid::text as oid`;
  await db.sql.unsafe(`select pg2kafka.drop_capture_triggers('${table}')`);
  await db.sql.unsafe(`
    create trigger pg2kafka_insert after insert on ${table} for each row
      execute function pg2kafka.capture_insert('${row?.oid ?? ''}')`);
  await db.sql`
    update pg2kafka.tracked_tables set triggers_version = null where table_oid = ${table}::regclass`;
}

test('migrate brings the triggers of every captured table up to date; a locked one is reported, not fatal', async () => {
  await migrate({ databaseUrl: db.url });
  for (const table of ['aged_a', 'aged_b']) {
    await db.sql.unsafe(`create table ${table} (id int primary key, v int)`);
    await db.sql.unsafe(`select pg2kafka.setup('${table}', 'id')`);
    await ageTriggers(table);
  }
  assert.deepEqual(await triggersOn(db.sql, 'aged_a'), ['pg2kafka_insert']);
  // A transaction that wrote aged_b stays open: its lock cannot be taken meanwhile.
  const holders = db.connect({ max: 1 });
  const holder = await holders.reserve();
  let locked;
  try {
    await holder`begin`;
    await holder`insert into aged_b values (1, 1)`;
    locked = await migrate({ databaseUrl: db.url });
  } finally {
    await holder`commit`;
    holder.release();
    await holders.end();
  }
  assert.deepEqual(locked.triggersRefreshed, ['aged_a']);
  assert.deepEqual(
    locked.triggersStale.map((s) => s.table),
    ['aged_b'],
  );
  assert.match(
    locked.triggersStale[0]?.error ?? '',
    /could not lock table public\.aged_b .*pid \d+/,
  );
  assert.deepEqual(await triggersOn(db.sql, 'aged_a'), CAPTURE_TRIGGERS);
  assert.deepEqual(await triggersOn(db.sql, 'aged_b'), ['pg2kafka_insert'], 'left as it was');

  const again = await migrate({ databaseUrl: db.url });
  assert.deepEqual([again.triggersRefreshed, again.triggersStale], [['aged_b'], []]);
  assert.deepEqual(await triggersOn(db.sql, 'aged_b'), CAPTURE_TRIGGERS);
  await db.sql`delete from pg2kafka.captured_changes`;
  await db.sql`insert into aged_a values (2, 1)`;
  const [queued] = await db.sql<{ statements: string[] }[]>`
    select array_agg(statement order by id) as statements from pg2kafka.captured_changes`;
  assert.deepEqual(queued?.statements, ['INSERT']);
  const third = await migrate({ databaseUrl: db.url });
  assert.deepEqual(third.triggersRefreshed, [], 'nothing left to refresh');
});

test('the migrate command reports a missing DATABASE_URL with exit code 2', () => {
  const env = { ...process.env };
  delete env.DATABASE_URL;
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'migrate'], {
    encoding: 'utf8',
    env,
    cwd: new URL('../..', import.meta.url).pathname,
  });
  assert.equal(result.status, 2);
  assert.match(result.stderr, /DATABASE_URL is required/);
});

test('the migrate command migrates the database at DATABASE_URL', () => {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'migrate'], {
    encoding: 'utf8',
    env: { ...process.env, DATABASE_URL: db.url },
    cwd: new URL('../..', import.meta.url).pathname,
  });
  assert.equal(result.status, 0, result.stderr);
  assert.match(result.stderr, /schema pg2kafka is up to date/);
});

test('advisory lock keys are distinct, and the SQL wake key is the one the relay uses', async () => {
  const { MIGRATION_LOCK, REPEATABLE_SQL_LOCK, WAKE_LOCK } =
    await import('../../src/capture/locks.ts');
  assert.equal(new Set([MIGRATION_LOCK, REPEATABLE_SQL_LOCK, WAKE_LOCK]).size, 3);
  const [row] = await db.sql<{ key: string }[]>`select pg2kafka.wake_lock_key()::text as key`;
  assert.equal(row?.key, String(WAKE_LOCK));
  const [trigger] = await db.sql<{ body: string }[]>`
    select prosrc as body from pg_proc where oid = 'pg2kafka.wake_relay()'::regprocedure`;
  assert.ok(trigger?.body.includes(String(WAKE_LOCK)), 'wake_relay() tests the same key');
});
