/**
 * How a pool from openPool() treats a server that is restarting: connections with queries
 * in flight are cut, and every new one is answered "the database system is starting up"
 * (57P03) and closed, as PostgreSQL does while it recovers. Counted at a TCP proxy in front
 * of the test database: the pool backs off instead of reconnecting as fast as the server
 * answers, comes back soon after the server does, and an ended pool connects no more.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openPool } from '../src/database.ts';
import { PgProxy, useProxies } from './pg-proxy.ts';
import { sleep, useTestDatabase } from './helpers.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const db = useTestDatabase();

/** Proxies in front of the test database, closed after the file. */
const { startProxy } = useProxies(db);

/** A pool of three through `proxy`, with two slow queries in flight when it goes down. */
async function poolCutMidQuery(proxy: PgProxy) {
  const sql = openPool(proxy.url(db.url), { max: 3 });
  await sql`select 1`;
  const inFlight = [sql`select pg_sleep(2)`, sql`select pg_sleep(2)`].map((q) =>
    q.then(
      () => 'done',
      (error: unknown) => (error instanceof Error ? error.message : String(error)),
    ),
  );
  await sleep(200);
  const before = proxy.attempts;
  proxy.goDown();
  return { sql, inFlight, before };
}

/** One `select 1` every 300 ms for `ms`, as a relay polling would; failures are expected. */
async function queryEvery300Ms(sql: ReturnType<typeof openPool>, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    void sql`select 1`.catch(() => undefined);
    await sleep(300);
  }
}

test('a server starting up is not flooded: the pool backs off between connections', async (t) => {
  const proxy = await startProxy();
  const { sql, inFlight, before } = await poolCutMidQuery(proxy);
  try {
    await queryEvery300Ms(sql, 3_000);
    const attempts = proxy.attempts - before;
    t.diagnostic(`connection attempts in 3 s while down: ${attempts}`);
    // Backoff from 100 ms doubling, for at most three connections: about 15 in 3 s. The
    // flood this replaced was about 800 a second.
    assert.ok(attempts <= 24, `${attempts} connection attempts in 3 s while the server was down`);
    assert.deepEqual(
      (await Promise.all(inFlight)).map((m) => m !== 'done'),
      [true, true],
      'the cut queries failed',
    );
  } finally {
    proxy.goUp();
    await sql.end({ timeout: 1 });
  }
});

test('once the server is back the pool answers within the backoff it reached', async (t) => {
  const proxy = await startProxy();
  const { sql } = await poolCutMidQuery(proxy);
  try {
    await queryEvery300Ms(sql, 3_000);
    proxy.goUp();
    const started = Date.now();
    const [row] = await sql<{ one: number }[]>`select 1 as one`;
    assert.equal(row?.one, 1);
    t.diagnostic(`answered ${Date.now() - started} ms after the server was back`);
    // However long the failures went on, the delay stops growing at 1.6 s.
    assert.ok(Date.now() - started < 3_000, `answered after ${Date.now() - started} ms`);
  } finally {
    proxy.goUp();
    await sql.end({ timeout: 1 });
  }
});

test('an ended pool opens no more connections, even with queries queued', async () => {
  const proxy = await startProxy();
  const { sql } = await poolCutMidQuery(proxy);
  const queued = sql`select 1`.catch(() => undefined);
  await sleep(500);
  await sql.end({ timeout: 1 });
  await queued;
  await sleep(200);
  const afterEnd = proxy.attempts;
  await sleep(2_000);
  proxy.goUp();
  assert.equal(proxy.attempts - afterEnd, 0, 'connection attempts after sql.end()');
});

test('a pool ignores only its dropped array-types query: any other unhandled rejection still ends the process', () => {
  // A process of its own: an unhandled rejection would end this test file's.
  const script = [
    "import { openPool } from './src/database.ts';",
    `const sql = openPool(${JSON.stringify(db.url)});`,
    "const stale = Object.defineProperty(new Error('dropped'), 'query', { value: \"select b.oid where a.typcategory = 'A'\" });",
    'void Promise.reject(stale);',
    "setTimeout(() => { void Promise.reject(new Error('a real bug')); }, 50);",
    "setTimeout(() => { console.log('still running'); void sql.end(); }, 500);",
  ].join('\n');
  const child = spawnSync(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', script],
    {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 20_000,
    },
  );
  assert.equal(child.status, 1, child.stderr);
  assert.match(child.stderr, /a real bug/);
  assert.doesNotMatch(child.stderr, /dropped/);
  assert.doesNotMatch(child.stdout, /still running/);
});
