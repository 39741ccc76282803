/**
 * setup() under load: the snapshot and the trigger together lose and double nothing
 * while writers hammer the table, and setup never blocks readers.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { sleep, useTestDatabase, type Sql } from '../helpers.ts';
import { migrated, queuedEvents } from './support.ts';

const db = useTestDatabase();

before(async () => {
  await migrated(db);
});

type Row = Record<string, unknown>;

/** Replays a table's events; fails on a change that contradicts what came before. */
async function replay(sql: Sql, table: string): Promise<Map<string, Row>> {
  const state = new Map<string, Row>();
  const snapshotted = new Set<string>();
  for (const event of await queuedEvents(sql, table)) {
    const key = event.external_id ?? '(null)';
    const at = `event ${event.id}/${event.part} ${event.statement} ${key}`;
    switch (event.statement) {
      case 'SNAPSHOT':
        assert.ok(!snapshotted.has(key), `${at}: a second snapshot of the key`);
        assert.ok(!state.has(key), `${at}: snapshot of a key already inserted`);
        snapshotted.add(key);
        state.set(key, event.data);
        break;
      case 'INSERT':
        assert.ok(!state.has(key), `${at}: insert of a key that exists`);
        state.set(key, event.data);
        break;
      case 'UPDATE': {
        const row = state.get(key);
        assert.ok(row, `${at}: update of a key that does not exist`);
        state.set(key, { ...row, ...event.data });
        break;
      }
      case 'DELETE':
        assert.ok(state.has(key), `${at}: delete of a key that does not exist`);
        state.delete(key);
        break;
      default:
        assert.fail(`${at}: unexpected statement`);
    }
  }
  return state;
}

test('a snapshot taken while 4 writers hammer the table loses and doubles nothing', async () => {
  await db.sql`create table stock (id int primary key, qty int not null, note text)`;
  await db.sql`insert into stock select g, 0, 'initial' from generate_series(1, 5000) g`;

  let stopping = false;
  const writes = { beforeSetup: 0, duringOrAfter: 0 };
  let setupDone = false;
  const writers = Array.from({ length: 4 }, async (_, w) => {
    const sql = db.connect({ max: 1 });
    try {
      let n = 0;
      while (!stopping) {
        n += 1;
        const id = 1 + Math.floor(Math.random() * 6000);
        const op = n % 4;
        if (op === 0) {
          await sql`insert into stock values (${id}, ${n}, ${`w${w}`}) on conflict (id) do nothing`;
        } else if (op === 1) {
          await sql`delete from stock where id = ${id}`;
        } else if (op === 2) {
          await sql`update stock set qty = qty + 1, note = ${`w${w}-${n}`} where id = ${id}`;
        } else {
          await sql.begin(async (tx) => {
            await tx`update stock set qty = qty - 1 where id = ${id}`;
            await tx`update stock set note = 'moved' where id = ${(id % 6000) + 1}`;
          });
        }
        if (setupDone) writes.duringOrAfter += 1;
        else writes.beforeSetup += 1;
      }
    } finally {
      await sql.end();
    }
  });

  await sleep(300);
  await db.sql`select pg2kafka.setup('stock', 'id')`;
  setupDone = true;
  await sleep(700);
  stopping = true;
  await Promise.all(writers);

  assert.ok(writes.beforeSetup > 50, `writers ran before setup (${writes.beforeSetup} writes)`);
  assert.ok(writes.duringOrAfter > 50, `writers ran after setup (${writes.duringOrAfter} writes)`);

  const replayed = await replay(db.sql, 'stock');
  const rows = await db.sql<{ id: number; row: Row }[]>`select id, to_jsonb(s) as row from stock s`;
  const actual = new Map(rows.map((r) => [String(r.id), r.row]));
  assert.equal(replayed.size, actual.size, 'as many keys in the events as rows in the table');
  for (const [key, row] of actual) assert.deepEqual(replayed.get(key), row, `key ${key}`);
});

test('setup holds no lock that blocks readers; writers wait only for its transaction', async () => {
  await db.sql`create table busy (id int primary key, v text)`;
  await db.sql`insert into busy select g, 'v' from generate_series(1, 1000) g`;
  const setupConnection = await db.sql.reserve();
  const probe = db.connect({ max: 1 });
  try {
    await setupConnection`begin`;
    await setupConnection`select pg2kafka.setup('busy', 'id')`;
    const [{ pid } = { pid: 0 }] = await setupConnection<
      { pid: number }[]
    >`select pg_backend_pid() as pid`;

    const locks = await probe<{ mode: string }[]>`
      select mode from pg_locks where pid = ${pid} and relation = 'busy'::regclass and granted`;
    const modes = locks.map((l) => l.mode);
    assert.ok(modes.includes('ShareRowExclusiveLock'), modes.join(', '));
    assert.ok(!modes.includes('AccessExclusiveLock'), modes.join(', '));

    await probe`set lock_timeout = '1s'`;
    const [count] = await probe<{ n: number }[]>`select count(*)::int as n from busy`;
    assert.equal(count?.n, 1000, 'a reader is not blocked by setup');

    await probe`set lock_timeout = '200ms'`;
    await assert.rejects(probe`insert into busy values (1001, 'w')`, { code: '55P03' });

    await setupConnection`commit`;
    await probe`insert into busy values (1001, 'w')`;
  } finally {
    setupConnection.release();
    await probe.end();
  }
  const events = await queuedEvents(db.sql, 'busy');
  assert.equal(events.length, 1001);
  assert.deepEqual(
    [events[999]?.statement, events[1000]?.statement, events[1000]?.external_id],
    ['SNAPSHOT', 'INSERT', '1001'],
  );
});
