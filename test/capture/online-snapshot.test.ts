/**
 * The online snapshot's SQL, one interleaving at a time: a chunk reads its rows FOR
 * SHARE, so a writer holding a row makes the chunk wait and its change queues first; a
 * chunk without that lock (or with FOR KEY SHARE) queues an older row after a newer
 * change, and the version oracle says so (it has teeth). Progress records the bound taken
 * before reading; setup copies small tables itself and registers big ones; the trigger
 * install waits behind a long transaction without stalling other writers or any reader.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { sleep, useTestDatabase, waitFor, type Sql } from '../helpers.ts';
import { collectNotices, migrated, queuedEvents, snapshotViolations } from './support.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

/** k 1..rows at v = 1, analyzed. */
async function createTable(table: string, rows: number): Promise<void> {
  await db.sql.unsafe(`create table ${table} (k int primary key, v int not null)`);
  await db.sql.unsafe(`insert into ${table} select g, 1 from generate_series(1, ${rows}) g`);
  await db.sql.unsafe(`analyze ${table}`);
}

/** The oracle over the queue of `table`, in shipping order. */
async function oracle(table: string) {
  const events = await queuedEvents(db.sql, table);
  return snapshotViolations(
    events.map((e) => ({ key: e.external_id, statement: e.statement, data: e.data })),
  );
}

/** Is the backend `pid` waiting for a lock? */
async function waitingForLock(pid: number): Promise<boolean> {
  const [row] = await db.sql<{ waiting: boolean }[]>`
    select wait_event_type = 'Lock' as waiting from pg_stat_activity where pid = ${pid}`;
  return row?.waiting ?? false;
}

/**
 * A writer raises k = 10 to v = 2 and holds its transaction open; `copy` copies the first
 * chunk meanwhile on another connection; then the writer commits. Returns whether the
 * copy had to wait for the writer, and the oracle's verdict on the queue.
 */
async function chunkAgainstOpenWriter(table: string, copy: (sql: Sql) => Promise<unknown>) {
  await createTable(table, 12_000);
  await db.sql.unsafe(`select pg2kafka.setup('${table}', 'k')`);
  const writers = db.connect({ max: 1 });
  const copiers = db.connect({ max: 1 });
  const writer = await writers.reserve();
  try {
    await writer`begin`;
    await writer.unsafe(`update ${table} set v = v + 1 where k = 10`);
    const [me] = await copiers<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const copying = copy(copiers);
    // Either the copy waits for the writer's row lock, or it finishes without it.
    const waited = await Promise.race([
      waitFor('the copy waiting for the row lock', () => waitingForLock(me?.pid ?? 0), 3_000).then(
        () => true,
        () => false,
      ),
      copying.then(() => false),
    ]);
    await writer`commit`;
    await copying;
    return { waited, ...(await oracle(table)) };
  } finally {
    writer.release();
    await writers.end();
    await copiers.end();
  }
}

test('a chunk waits for a writer holding one of its rows, and queues that row after its change', async () => {
  const result = await chunkAgainstOpenWriter(
    'locked_t',
    (sql) => sql`select * from pg2kafka.snapshot_chunk('locked_t')`,
  );
  assert.equal(result.waited, true, 'the chunk waited for the writer');
  assert.deepEqual(result.violations, []);
  assert.equal(result.state.get('10'), 2, 'the SNAPSHOT of k = 10 carries the change');
  assert.equal(result.snapshots.size, 5_000, 'one chunk of 5,000 rows');
});

/** The chunk's copy without FOR SHARE (`lock` ''), or with a weaker lock: a wrong variant. */
function wrongChunk(table: string, lock: string) {
  return (sql: Sql) =>
    sql.unsafe(`
      insert into pg2kafka.captured_changes (table_oid, statement, new_row)
      select '${table}'::regclass::oid, 'SNAPSHOT', to_json(r)
      from (select * from ${table} t where t.k <= 5000 order by t.k ${lock}) r`);
}

test('the oracle has teeth: a chunk read without a row lock queues an older row after a newer change', async () => {
  const result = await chunkAgainstOpenWriter('unlocked_t', wrongChunk('unlocked_t', ''));
  assert.equal(result.waited, false, 'nothing made the copy wait');
  assert.deepEqual(result.violations, ['key 10 SNAPSHOT v=1: older than v=2 already sent']);
});

test('FOR KEY SHARE is not enough either: an UPDATE of other columns does not wait for it', async () => {
  const result = await chunkAgainstOpenWriter(
    'keyshare_t',
    wrongChunk('keyshare_t', 'for key share'),
  );
  assert.equal(result.waited, false, 'nothing made the copy wait');
  assert.deepEqual(result.violations, ['key 10 SNAPSHOT v=1: older than v=2 already sent']);
});

test('progress is the bound taken before reading, not the largest key copied', async () => {
  await createTable('bound_t', 12_000);
  await db.sql`select pg2kafka.setup('bound_t', 'k', snapshot => 'none')`;
  await db.sql`select pg2kafka.resnapshot('bound_t', 'k <= 3 or k > 11998')`;
  const progress = async () => {
    const [row] = await db.sql<{ after: string[] | null; done: string; outcome: string | null }[]>`
      select after_keys as after, rows_done::text as done, outcome
      from pg2kafka.snapshots where table_oid = 'bound_t'::regclass`;
    return row && { afterKey: row.after, rowsDone: Number(row.done), outcome: row.outcome };
  };
  const chunks: unknown[] = [];
  for (let i = 0; i < 3; i += 1) {
    const [chunk] = await db.sql<{ rows: string; done: boolean }[]>`
      select rows_copied::text as rows, done from pg2kafka.snapshot_chunk('bound_t')`;
    chunks.push({ copied: Number(chunk?.rows), last: chunk?.done, ...(await progress()) });
  }
  // The first chunk's bound is the 5,000th key: recorded although only 1..3 matched.
  assert.deepEqual(chunks, [
    { copied: 3, last: false, afterKey: ['5000'], rowsDone: 3, outcome: null },
    { copied: 0, last: false, afterKey: ['10000'], rowsDone: 3, outcome: null },
    { copied: 2, last: true, afterKey: ['10000'], rowsDone: 5, outcome: 'done' },
  ]);
  const events = await queuedEvents(db.sql, 'bound_t');
  assert.deepEqual(
    events.map((e) => e.external_id),
    ['1', '2', '3', '11999', '12000'],
  );
});

test('setup copies a table of one chunk itself, registers a bigger one, and says which', async () => {
  await createTable('one_chunk_t', 5_000);
  await createTable('two_chunks_t', 5_001);
  const { notices, onnotice } = collectNotices();
  const sql = db.connect({ max: 1, onnotice });
  try {
    await sql`select pg2kafka.setup('one_chunk_t')`;
    await sql`select pg2kafka.setup('two_chunks_t')`;
  } finally {
    await sql.end();
  }
  assert.deepEqual(
    notices.map((n) => n.message),
    [
      'pg2kafka: capturing public.one_chunk_t, 5000 existing row(s) queued as SNAPSHOT events',
      'pg2kafka: capturing public.two_chunks_t; its existing rows (about 5001) are copied online, in chunks, by the active relay (or pg2kafka snapshot, or CALL pg2kafka.run_snapshots())',
    ],
  );
  assert.equal((await queuedEvents(db.sql, 'one_chunk_t')).length, 5_000);
  assert.equal((await queuedEvents(db.sql, 'two_chunks_t')).length, 0);
  const pending = await db.sql<{ table: string; key: string[] }[]>`
    select table_oid::regclass::text as table, key_columns as key
    from pg2kafka.snapshots
    where finished_at is null and table_oid in ('one_chunk_t'::regclass, 'two_chunks_t'::regclass)`;
  assert.deepEqual(
    pending.map((p) => ({ ...p })),
    [{ table: 'two_chunks_t', key: ['k'] }],
  );
});

test('a key of several columns is walked as a row: (g, k) above the bound, every row once, in key order', async () => {
  await db.sql`create table walk_t (k int, g int, v int not null, primary key (g, k))`;
  await db.sql`insert into walk_t select k, g, 1 from generate_series(1, 3) g, generate_series(1, 4) k`;
  await db.sql`select pg2kafka.setup('walk_t', snapshot => 'none')`;
  await db.sql`select pg2kafka.resnapshot('walk_t')`;
  const steps: unknown[] = [];
  for (let i = 0; i < 3; i += 1) {
    const [chunk] = await db.sql<{ rows: string; done: boolean }[]>`
      select rows_copied::text as rows, done from pg2kafka.snapshot_chunk('walk_t', 5)`;
    const [progress] = await db.sql<{ after: string[] | null }[]>`
      select after_keys as after from pg2kafka.snapshots where table_oid = 'walk_t'::regclass`;
    steps.push([Number(chunk?.rows), chunk?.done, progress?.after]);
  }
  assert.deepEqual(steps, [
    [5, false, ['2', '1']],
    [5, false, ['3', '2']],
    [2, true, ['3', '2']],
  ]);
  const keys = ['1', '2', '3'].flatMap((g) => ['1', '2', '3', '4'].map((k) => `[${g},${k}]`));
  assert.deepEqual(
    (await queuedEvents(db.sql, 'walk_t')).map((e) => e.external_id),
    keys,
  );
});

test('the external id of a key of several columns is the JSON array of the values, as data writes them', async () => {
  await db.sql`
    create table pair_t (name text, at timestamptz, n numeric, note text, primary key (name, at, n))`;
  await db.sql`select pg2kafka.setup('pair_t')`;
  await db.sql`
    insert into pair_t values (${'caf\u00e9 "q" \\'}, '2026-01-02 03:04:05.123456+02', 1.50, 'a')`;
  await db.sql`update pair_t set note = 'b'`;
  await db.sql`update pair_t set n = 2`;
  await db.sql`delete from pair_t`;
  const key = (n: string) => `["caf\u00e9 \\"q\\" \\\\","2026-01-02T01:04:05.123456+00:00",${n}]`;
  assert.deepEqual(
    (await queuedEvents(db.sql, 'pair_t')).map((e) => [e.statement, e.external_id, e.part]),
    [
      ['INSERT', key('1.50'), 1],
      ['UPDATE', key('1.50'), 1],
      // A change of any key column is a key change.
      ['DELETE', key('1.50'), 0],
      ['INSERT', key('2'), 1],
      ['DELETE', key('2'), 1],
    ],
  );
  // Each element is the value's JSON text in the event's data.
  const [insert] = await queuedEvents(db.sql, 'pair_t');
  const data = JSON.parse(insert?.data_text ?? '{}') as Record<string, unknown>;
  assert.deepEqual(JSON.parse(insert?.external_id ?? ''), [data.name, data.at, 1.5]);
  assert.match(insert?.data_text ?? '', /"n": 1.50/);
  // As the row's JSON writes them: a float as printed, an array without spaces.
  await db.sql`create table float_t (f float8, a int[], primary key (f, a))`;
  await db.sql`select pg2kafka.setup('float_t')`;
  await db.sql`insert into float_t values (1e20, '{1,2}'), (1e-7, '{}')`;
  assert.deepEqual(
    (await queuedEvents(db.sql, 'float_t')).map((e) => e.external_id),
    ['[1e+20,[1,2]]', '[1e-07,[]]'],
  );
});

test('resnapshot with a condition while a snapshot runs is refused: the rest of that copy would never be made', async () => {
  await createTable('midway_t', 12_000);
  await db.sql`select pg2kafka.setup('midway_t', 'k')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('midway_t')`;
  await assert.rejects(db.sql`select pg2kafka.resnapshot('midway_t', 'k <= 10')`, {
    code: '55006',
    message:
      'a snapshot of public.midway_t is running (5000 row(s) copied): a snapshot of some rows cannot replace it',
  });
  await db.sql`call pg2kafka.run_snapshots()`;
  const events = await queuedEvents(db.sql, 'midway_t');
  assert.equal(new Set(events.map((e) => e.external_id)).size, 12_000, 'every row copied');
  assert.equal(events.length, 12_000, 'each once');
  // Without a condition it starts over: every row again.
  await db.sql`select pg2kafka.resnapshot('midway_t')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('midway_t')`;
  await db.sql`select pg2kafka.resnapshot('midway_t')`;
  await db.sql`call pg2kafka.run_snapshots()`;
  assert.equal((await queuedEvents(db.sql, 'midway_t')).length, 12_000 + 5_000 + 12_000);
});

test('a chunk queued behind a setup in progress copies once it commits: it reads the registry after the lock', async () => {
  await createTable('again_t', 12_000);
  await db.sql`select pg2kafka.setup('again_t', 'k', snapshot => 'none')`;
  await db.sql`select pg2kafka.teardown('again_t')`;
  const setup = await db.sql.reserve();
  const locker = await db.sql.reserve();
  const copier = db.connect({ max: 1 });
  try {
    await setup`begin`;
    await setup`select pg2kafka.setup('again_t', 'k')`;
    // A DDL lock queued behind setup's, and the chunk queued behind that.
    await locker`begin`;
    const [lockerPid] = await locker<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const locked = locker`lock table again_t in access exclusive mode`.then(() => true);
    await waitFor('the DDL lock waiting', () => waitingForLock(lockerPid?.pid ?? 0));
    const [copierPid] = await copier<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const chunk = copier<{ rows: string; done: boolean }[]>`
      select rows_copied::text as rows, done from pg2kafka.snapshot_chunk('again_t')`;
    const copied = chunk.then(([row]) => row && { ...row });
    await waitFor('the chunk waiting', () => waitingForLock(copierPid?.pid ?? 0));
    await setup`commit`;
    assert.equal(await locked, true);
    await locker`commit`;
    assert.deepEqual(await copied, { rows: '5000', done: false });
  } finally {
    setup.release();
    locker.release();
    await copier.end();
  }
  const [state] = await db.sql<{ outcome: string | null; done: string }[]>`
    select outcome, rows_done::text as done from pg2kafka.snapshots where table_oid = 'again_t'::regclass`;
  assert.deepEqual({ ...state }, { outcome: null, done: '5000' });
});

test('CALL pg2kafka.run_snapshots() copies every pending snapshot, a chunk per transaction', async () => {
  await createTable('called_t', 12_000);
  await db.sql`select pg2kafka.setup('called_t', 'k')`;
  await db.sql`call pg2kafka.run_snapshots()`;
  const [row] = await db.sql<{ done: string; chunks: string; outcome: string }[]>`
    select rows_done::text as done, chunks_done::text as chunks, outcome
    from pg2kafka.snapshots where table_oid = 'called_t'::regclass`;
  assert.deepEqual({ ...row }, { done: '12000', chunks: '3', outcome: 'done' });
  const keys = new Set((await queuedEvents(db.sql, 'called_t')).map((e) => e.external_id));
  assert.equal(keys.size, 12_000);
});

test('the trigger install waits behind a long transaction without stalling other writers or readers', async () => {
  await createTable('waits_t', 100);
  const holders = db.connect({ max: 1 });
  const holder = await holders.reserve();
  const probes = db.connect({ max: 2 });
  let probing = true;
  const longest = { write: 0, read: 0 };
  const probe = async (kind: 'write' | 'read') => {
    while (probing) {
      const started = performance.now();
      if (kind === 'write') await probes`update waits_t set v = v + 1 where k = 50`;
      else await probes`select v from waits_t where k = 50`;
      longest[kind] = Math.max(longest[kind], performance.now() - started);
      await sleep(5);
    }
  };
  try {
    // A transaction that wrote the table and stays open: setup's lock must wait for it.
    await holder`begin`;
    await holder`update waits_t set v = v + 1 where k = 1`;
    const loops = [probe('write'), probe('read')];
    const setupStarted = Date.now();
    const setup = db.sql`select pg2kafka.setup('waits_t', 'k')`;
    await sleep(3_000);
    const stillWaiting = await Promise.race([setup.then(() => false), sleep(0).then(() => true)]);
    await holder`commit`;
    await setup;
    const setupMs = Date.now() - setupStarted;
    probing = false;
    await Promise.all(loops);
    assert.equal(stillWaiting, true, 'setup waited for the open transaction');
    assert.ok(setupMs >= 3_000, `setup returned after ${setupMs} ms`);
    // Each of setup's lock attempts gives up after its lock_timeout (500 ms): a writer
    // queued behind one waits no longer than that.
    assert.ok(longest.write < 1_500, `the longest write took ${longest.write.toFixed(0)} ms`);
    assert.ok(longest.read < 200, `the longest read took ${longest.read.toFixed(0)} ms`);
  } finally {
    holder.release();
    await holders.end();
    await probes.end();
  }
  const events = await queuedEvents(db.sql, 'waits_t');
  assert.equal(events.filter((e) => e.statement === 'SNAPSHOT').length, 100);
});

test('two setups of one table at once (two deploys): one sets it up, the other changes nothing', async () => {
  for (const [table, rows] of [
    ['twice_small_t', 1_000],
    ['twice_big_t', 12_000],
  ] as const) {
    await createTable(table, rows);
    const { notices, onnotice } = collectNotices();
    const pools = [db.connect({ max: 1, onnotice }), db.connect({ max: 1, onnotice })];
    try {
      await Promise.all(pools.map((sql) => sql.unsafe(`select pg2kafka.setup('${table}', 'k')`)));
    } finally {
      await Promise.all(pools.map((sql) => sql.end()));
    }
    const warnings = notices.filter((n) => n.severity === 'WARNING').map((n) => n.message);
    assert.deepEqual(warnings, [
      `pg2kafka: public.${table} is already set up (external id column "k"); nothing was changed`,
    ]);
    await db.sql`call pg2kafka.run_snapshots()`;
    const events = await queuedEvents(db.sql, table);
    assert.equal(events.length, rows, `${table}: one SNAPSHOT per row`);
    assert.equal(new Set(events.map((e) => e.external_id)).size, rows);
  }
});

test('without a key column setup takes the primary key, of one column or several; none must be named', async () => {
  await db.sql`create table pk_t (code text primary key, v int)`;
  // Index order, not table order; INCLUDE columns are not part of the key.
  await db.sql`
    create table composite_t (extra int, b int, a int, constraint composite_pk primary key (a, b) include (extra))`;
  await db.sql`create table heap_t (a int)`;
  await db.sql`select pg2kafka.setup('pk_t')`;
  await db.sql`select pg2kafka.setup('composite_t')`;
  const rows = await db.sql<{ table: string; column: string; keys: string[] }[]>`
    select table_oid::regclass::text as table, external_id_column as column, key_columns as keys
    from pg2kafka.tracked_tables
    where table_oid in ('pk_t'::regclass, 'composite_t'::regclass) order by 1`;
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [
      { table: 'composite_t', column: '["a","b"]', keys: ['a', 'b'] },
      { table: 'pk_t', column: 'code', keys: ['code'] },
    ],
  );
  await db.sql`insert into composite_t values (7, 2, 1)`;
  assert.deepEqual(
    (await queuedEvents(db.sql, 'composite_t')).map((e) => [e.statement, e.external_id]),
    [['INSERT', '[1,2]']],
  );
  // The same key again changes nothing; a key of one of its columns is refused.
  await db.sql`select pg2kafka.setup('composite_t')`;
  await assert.rejects(db.sql`select pg2kafka.setup('composite_t', 'a')`, {
    code: '42710',
    message:
      'public.composite_t is already set up with key columns "a", "b", not external id column "a"; nothing was changed',
  });
  await assert.rejects(db.sql`select pg2kafka.setup('heap_t')`, {
    code: '42703',
    message: 'public.heap_t has no primary key: name its external id column',
  });
});

test('teardown cancels a pending snapshot: no copy of rows whose changes are no longer captured', async () => {
  await createTable('torn_t', 12_000);
  await db.sql`select pg2kafka.setup('torn_t', 'k')`;
  await db.sql`select * from pg2kafka.snapshot_chunk('torn_t')`;
  await db.sql`select pg2kafka.teardown('torn_t')`;
  const [chunk] = await db.sql<{ rows: string; done: boolean }[]>`
    select rows_copied::text as rows, done from pg2kafka.snapshot_chunk('torn_t')`;
  assert.deepEqual({ ...chunk }, { rows: '0', done: true });
  await db.sql`call pg2kafka.run_snapshots()`;
  const [row] = await db.sql<{ outcome: string; done: string }[]>`
    select outcome, rows_done::text as done from pg2kafka.snapshots
    where table_oid = 'torn_t'::regclass`;
  assert.deepEqual({ ...row }, { outcome: 'cancelled', done: '5000' });
  assert.equal((await queuedEvents(db.sql, 'torn_t')).length, 5_000, 'only the chunk before');
});

test('resnapshot: the caller must read the table, and only the owner of pg2kafka may give a condition', async () => {
  await createTable('guarded_t', 10);
  await db.sql`create table secret_t (n int)`;
  await db.sql`insert into secret_t values (7)`;
  await db.sql`select pg2kafka.setup('guarded_t', 'k')`;
  const role = `resnap_${Date.now().toString(36)}`;
  await db.sql.unsafe(`create role "${role}" login`);
  const sql = db.connect({ max: 1, user: role });
  try {
    await db.sql.unsafe(`grant usage on schema pg2kafka to "${role}"`);
    await db.sql.unsafe(
      `grant execute on function pg2kafka.resnapshot(regclass, text) to "${role}"`,
    );
    await assert.rejects(sql`select pg2kafka.resnapshot('public.guarded_t')`, {
      code: '42501',
      message: `permission denied: ${role} may not read public.guarded_t, so it may not snapshot it`,
    });
    await db.sql.unsafe(`grant select on guarded_t to "${role}"`);
    await assert.rejects(
      sql`select pg2kafka.resnapshot('public.guarded_t', 'k = (select n from public.secret_t)')`,
      { code: '42501' },
    );
    await sql`select pg2kafka.resnapshot('public.guarded_t')`;
  } finally {
    await sql.end();
    await db.sql.unsafe(`drop owned by "${role}"`);
    await db.sql.unsafe(`drop role "${role}"`);
  }
});

test('a table with columns named t and r is copied whole, at once and online (not the column mistaken for the row)', async () => {
  for (const [table, rows] of [
    ['letters_small_t', 3],
    ['letters_big_t', 5_001],
  ] as const) {
    await db.sql.unsafe(`create table ${table} (k int primary key, t text, r int)`);
    await db.sql.unsafe(
      `insert into ${table} select g, 'x' || g, g * 10 from generate_series(1, ${rows}) g`,
    );
    await db.sql.unsafe(`select pg2kafka.setup('${table}')`);
  }
  await db.sql`call pg2kafka.run_snapshots()`;
  for (const [table, rows] of [
    ['letters_small_t', 3],
    ['letters_big_t', 5_001],
  ] as const) {
    const events = await queuedEvents(db.sql, table);
    assert.equal(events.length, rows, table);
    assert.deepEqual(
      { key: events[2]?.external_id, data: events[2]?.data },
      { key: '3', data: { k: 3, t: 'x3', r: 30 } },
      table,
    );
  }
});
