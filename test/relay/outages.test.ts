/**
 * The relay when something around it is wrong: a DATABASE_URL the server refuses, a
 * schema nobody migrated (or one dropped under a running relay), PostgreSQL restarting,
 * SIGTERM in the middle of an outage, and a leader that cannot reach Kafka while a
 * correctly configured standby could. Each asserts what an operator sees: exit code, the
 * lines logged, how hard the relay hits the server, and which events arrived.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migrate } from '../../src/capture/migrate.ts';
import { startRelay } from '../../src/commands/relay.ts';
import type { Status } from '../../src/commands/status.ts';
import { parseConfig } from '../../src/config.ts';
import { createLogger } from '../../src/logger.ts';
import { useProxies } from '../pg-proxy.ts';
import { sleep, useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import { cliEnv, runCli, useRelays } from './support.ts';

const db = useTestDatabase();
/** A database nobody migrated. */
const bare = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

/** Proxies in front of the test database, closed after the file. */
const { startProxy } = useProxies(db);

/** A port nothing listens on: connections are refused at once. */
const NO_BROKER = '127.0.0.1:1';

function withUser(url: string, user: string): string {
  const parsed = new URL(url);
  parsed.username = user;
  return parsed.toString();
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

for (const [what, change, expected] of [
  ['a role that does not exist', (u: string) => withUser(u, 'nosuchuser'), /nosuchuser/],
  ['a database that does not exist', (u: string) => withDatabase(u, 'nosuchdb'), /nosuchdb/],
] as const) {
  test(
    `${what}: the relay says so and exits 2 at start, after one attempt`,
    { timeout: 90_000 },
    async () => {
      const proxy = await startProxy();
      const started = Date.now();
      const r = relay({ DATABASE_URL: change(proxy.url(db.url)) });
      const { code } = await r.exited;
      assert.equal(code, 2, r.stderrText.join('\n'));
      assert.ok(Date.now() - started < 15_000, 'exited within 15 s');
      const text = r.stderrText.join('\n');
      assert.match(text, expected);
      assert.match(text, /refused the connection/);
      assert.match(text, new RegExp(`127\\.0\\.0\\.1:${proxy.port}`), 'names the host');
      assert.ok(proxy.attempts <= 2, `${proxy.attempts} connection attempts`);
    },
  );
}

test(
  'no schema: the relay says to run pg2kafka migrate and exits 2 before taking the lease',
  { timeout: 90_000 },
  async () => {
    await bare.ready;
    const r = relay({ DATABASE_URL: bare.url });
    const { code } = await r.exited;
    assert.equal(code, 2, r.stderrText.join('\n'));
    const text = r.stderrText.join('\n');
    assert.match(text, /pg2kafka migrate/);
    assert.match(text, /PERFORM_MIGRATIONS=true/);
    assert.doesNotMatch(text, /relation .* does not exist/);
  },
);

test(
  'PostgreSQL restarting for 6 s: every pool backs off, one LISTEN retry chain, nothing lost',
  { timeout: 90_000 },
  async (t) => {
    await db.sql`create table restart_t (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup('restart_t', 'k')`;
    const proxy = await startProxy();
    const r = relay({ DATABASE_URL: proxy.url(db.url) });
    await r.waitForLog('active: shipping events');
    await db.sql`insert into restart_t values ('before', 1)`;
    await waitFor('the first event shipped', async () => (await queueDepth()) === 0);
    const logsBefore = r.logs.length;
    proxy.goDown();
    let attemptsBy: [string, number][];
    try {
      await db.sql`insert into restart_t values ('during', 1)`;
      await sleep(6_000);
      attemptsBy = [...proxy.attemptsBy];
      t.diagnostic(`attempts while down: ${JSON.stringify(attemptsBy)}`);
    } finally {
      proxy.goUp();
    }
    // Each pool backs off from 100 ms doubling: about 6 attempts in 6 s per connection
    // chain. The floods this replaced: about 35 a second for LISTEN, and about 350 a
    // second for the relay's own pool (postgres.js reconnecting queries in flight).
    const listenerAttempts = new Map(attemptsBy).get('pg2kafka listener') ?? 0;
    assert.ok(listenerAttempts <= 10, `${listenerAttempts} LISTEN connection attempts in 6 s`);
    const total = attemptsBy.reduce((sum, [, n]) => sum + n, 0);
    assert.ok(total <= 40, `${total} connection attempts in 6 s: ${JSON.stringify(attemptsBy)}`);
    const listenerLines = r.logs
      .slice(logsBefore)
      .filter((l) => l.msg.includes('cannot LISTEN')).length;
    assert.ok(listenerLines <= 8, `${listenerLines} "cannot LISTEN" lines in 6 s`);
    await waitFor(
      'the queue drained after the outage',
      async () => (await queueDepth()) === 0,
      30_000,
    );
    const messages = await kafka.consume(`pg2kafka.${db.name}.restart_t`, 2, 30_000);
    assert.deepEqual(
      messages.map((m) => m.key),
      ['before', 'during'],
    );
    assert.equal((await r.stop()).code, 0);
  },
);

test('SIGTERM while PostgreSQL is down: exit 0 within 10 s', { timeout: 90_000 }, async () => {
  const proxy = await startProxy();
  const r = relay({ DATABASE_URL: proxy.url(db.url) });
  await r.waitForLog('active: shipping events');
  proxy.goDown();
  await sleep(2_000);
  const stoppedAt = Date.now();
  const { code } = await r.stop();
  assert.equal(code, 0, r.stderrText.slice(-40).join('\n'));
  assert.ok(Date.now() - stoppedAt < 10_000, `exited after ${Date.now() - stoppedAt} ms`);
});

test(
  'SIGTERM after PostgreSQL went down while a connection started: exit 0 within 10 s',
  { timeout: 90_000 },
  async () => {
    const proxy = await startProxy();
    const r = relay({ DATABASE_URL: proxy.url(db.url) });
    await r.waitForLog('active: shipping events');
    // postgres.js keeps the array-types query of a connection cut during it, and rejects it
    // later with nobody to catch it (porsager/postgres#1223): at shutdown, POOL_CLOSING.
    proxy.goDownAtNextTypesQuery();
    await waitFor(
      'a connection cut during its array-types query',
      () => proxy.wentDownAtTypesQuery,
    );
    await sleep(2_000);
    const stoppedAt = Date.now();
    const { code } = await r.stop();
    assert.equal(code, 0, r.stderrText.slice(-40).join('\n'));
    assert.ok(Date.now() - stoppedAt < 10_000, `exited after ${Date.now() - stoppedAt} ms`);
  },
);

test('SIGTERM while the relay waits for its first answer from PostgreSQL: exit 0 at once', async () => {
  const proxy = await startProxy();
  proxy.goSilent();
  const r = relay({ DATABASE_URL: proxy.url(db.url) });
  await r.waitForLog('pg2kafka relay starting');
  await waitFor('the relay connecting', () => proxy.attempts > 0);
  const stoppedAt = Date.now();
  const { code } = await r.stop();
  const ms = Date.now() - stoppedAt;
  assert.equal(code, 0, r.stderrText.slice(-40).join('\n'));
  assert.ok(ms < 3_000, `exited after ${ms} ms`);
});

test(
  'a leader that cannot reach Kafka gives the lease up, and a standby that can ships',
  { timeout: 90_000 },
  async () => {
    await db.sql`create table yield_t (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup('yield_t', 'k')`;
    await db.sql`insert into yield_t values ('a', 1)`;
    const broken = relay({ KAFKA_BROKERS: NO_BROKER, LEADER_YIELD_AFTER_MS: '3000' });
    await broken.waitForLog('active: shipping events');
    const healthy = relay();
    await healthy.waitForLog('pg2kafka relay starting');
    const line = await broken.waitForLog('giving the lease up', 30_000);
    assert.ok(line.level >= 40, 'logged as a warning');
    await healthy.waitForLog('active: shipping events', 20_000);
    const [message] = await kafka.consume(`pg2kafka.${db.name}.yield_t`, 1, 30_000);
    assert.equal(message?.key, 'a');
    await waitFor('an empty queue', async () => (await queueDepth()) === 0);
    assert.equal((await healthy.stop()).code, 0);
    assert.equal((await broken.stop()).code, 0);
  },
);

test(
  'a transaction holding vacuum back for long: the active relay names it in a warning',
  { timeout: 90_000 },
  async () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = createLogger('info', {
      write: (line: string) => {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    });
    const config = parseConfig({
      DATABASE_URL: db.url,
      KAFKA_BROKERS: kafka.brokers.join(','),
      HTTP_PORT: '0',
    });
    const running = await startRelay(config, logger, {
      vacuumWatch: { checkMs: 200, warnAfterMs: 1_000 },
    });
    assert.ok(running);
    const holder = db.connect({ max: 1, connection: { application_name: 'nightly report' } });
    try {
      await waitFor('the relay active', () =>
        lines.some((l) => l.msg === 'active: shipping events'),
      );
      await holder.begin('isolation level repeatable read', async (tx) => {
        const [me] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
        const warning = await waitFor('the vacuum warning', () =>
          lines.find((l) => String(l.msg).includes('holds vacuum back')),
        );
        assert.equal(warning.level, 40);
        assert.equal(warning.pid, me?.pid);
        assert.match(String(warning.msg), /application "nightly report"/);
        assert.match(String(warning.msg), /state "idle in transaction"/);
        const status = await runCli(['status', '--json'], cliEnv(db.url));
        assert.equal(status.code, 0, status.stderr);
        const { vacuumHolder } = JSON.parse(status.stdout) as Status;
        assert.equal(vacuumHolder?.pid, me?.pid);
        assert.equal(vacuumHolder?.applicationName, 'nightly report');
      });
      const count = lines.filter((l) => String(l.msg).includes('holds vacuum back')).length;
      assert.equal(count, 1, 'one line per holder');
    } finally {
      await running.shutdown();
      await holder.end();
    }
  },
);

// Last: it drops the schema the other tests use.
test(
  'the schema dropped under a running relay: it says so, keeps running, and resumes once migrated',
  { timeout: 90_000 },
  async () => {
    await db.sql`create table dropped_t (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup('dropped_t', 'k')`;
    const r = relay({ POLL_INTERVAL_MS: '200' });
    await r.waitForLog('active: shipping events');
    // Enough shipped for the queue floor to rise well above the ids a new schema starts at.
    await db.sql`insert into dropped_t select 'k' || i, i from generate_series(1, 500) i`;
    await waitFor('the floor above 300', async () => {
      const [row] = await db.sql<{ floor: number }[]>`
        select queue_floor::int as floor from pg2kafka.relay_lease`;
      return (row?.floor ?? 0) > 300;
    });
    await db.sql`drop schema pg2kafka cascade`;
    const line = await r.waitForLog('pg2kafka migrate', 20_000);
    assert.ok(line.level >= 50, `logged as an error: ${JSON.stringify(line)}`);
    await sleep(1_000);
    assert.equal(r.logs.filter((l) => l.msg.includes('pg2kafka migrate')).length <= 3, true);
    await migrate({ databaseUrl: db.url });
    // The relay takes the new lease and looks at its (new) floor while the queue is empty:
    // what it knew of the old queue's ids must not raise the new floor past new ids.
    await waitFor(
      'the relay active again',
      () => r.logs.filter((l) => l.msg === 'active: shipping events').length >= 2,
      20_000,
    );
    await sleep(12_000);
    await db.sql`create table resumed_t (k text primary key, v int not null)`;
    await db.sql`select pg2kafka.setup('resumed_t', 'k')`;
    await db.sql`insert into resumed_t values ('after', 1)`;
    const [message] = await kafka.consume(`pg2kafka.${db.name}.resumed_t`, 1, 30_000);
    assert.equal(message?.key, 'after');
    assert.equal((await r.stop()).code, 0);
  },
);
