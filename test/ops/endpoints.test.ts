/**
 * The relay's HTTP endpoints over real HTTP, against relays shipping to the real broker:
 * metrics after known work, liveness and readiness through a broker outage and a
 * PostgreSQL outage, relay_active through a failover.
 */
import assert from 'node:assert/strict';
import { createServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import { useProxies } from '../pg-proxy.ts';
import { inProcessRelay, useRelays, type LogLine, type RelayProcess } from '../relay/support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);
const { startProxy } = useProxies(db);

/** A port where nothing listens: a broker that is down. */
const NO_BROKER = '127.0.0.1:1';

/** The port `r` serves its endpoints on (it logs it at start). */
async function portOf(r: RelayProcess): Promise<number> {
  const line = await r.waitForLog('HTTP endpoints on');
  const port = Number(/ port (\d+)/.exec(line.msg)?.[1]);
  assert.ok(port > 0, line.msg);
  return port;
}

async function get(
  port: number,
  path: string,
  host = '127.0.0.1',
): Promise<{ status: number; body: string; type: string | null }> {
  const response = await fetch(`http://${host}:${port}${path}`);
  return {
    status: response.status,
    body: await response.text(),
    type: response.headers.get('content-type'),
  };
}

async function getJson(
  port: number,
  path: string,
  host?: string,
): Promise<{ status: number; json: unknown }> {
  const { status, body } = await get(port, path, host);
  return { status, json: JSON.parse(body) as unknown };
}

/** One sample of the Prometheus text: `name{labels}` exactly as written, or undefined. */
async function sample(port: number, series: string): Promise<number | undefined> {
  const { body } = await get(port, '/metrics');
  for (const line of body.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

test('metrics after known work: N events published, lag observed, the queue empty, relay active', async () => {
  await db.sql`create table orders (id int primary key, total numeric)`;
  await db.sql`select pg2kafka.setup('orders')`;
  const r = relay();
  const port = await portOf(r);
  await r.waitForLog('active: shipping events');
  await db.sql`insert into orders select g, g from generate_series(1, 25) g`;
  await db.sql`update orders set total = 0 where id <= 5`;
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  const published = (statement: string) =>
    sample(port, `pg2kafka_events_published_total{table="public.orders",statement="${statement}"}`);
  await waitFor('the counters', async () => (await published('UPDATE')) === 5);
  assert.equal(await published('INSERT'), 25);
  assert.equal(await sample(port, 'pg2kafka_relay_active'), 1);
  assert.equal(await sample(port, 'pg2kafka_queued_events'), 0);
  assert.equal(await sample(port, 'pg2kafka_oldest_event_age_seconds'), 0);
  assert.equal(await sample(port, 'pg2kafka_event_lag_seconds_count'), 30);
  assert.ok((await sample(port, 'pg2kafka_batch_events_sum')) === 30);
  const text = await get(port, '/metrics');
  assert.match(text.type ?? '', /^text\/plain/);
  // Node's default metrics too; no label carries a key.
  assert.match(text.body, /^process_cpu_user_seconds_total /m);
  assert.doesNotMatch(text.body, /external_id|key="/);

  const health = await getJson(port, '/healthz');
  assert.equal(health.status, 200);
  assert.equal((health.json as { alive: boolean }).alive, true);
  const ready = await getJson(port, '/readyz');
  assert.deepEqual(ready, { status: 200, json: { ready: true, role: 'active', problems: [] } });
  const status = (await getJson(port, '/status')).json as {
    relay: { role: string; epoch: string; heldTopics: unknown[] };
    status: { tables: Array<{ table: string }> };
  };
  assert.equal(status.relay.role, 'active');
  assert.ok(Number(status.relay.epoch) >= 1);
  assert.deepEqual(status.relay.heldTopics, []);
  assert.ok(status.status.tables.some((t) => t.table === 'public.orders'));
  assert.equal((await get(port, '/nothing')).status, 404);
  assert.equal((await r.stop()).code, 0);
});

test('HTTP_HOST serves one address only; /status leaves out query text and reads once per 2 s', async () => {
  // All of 127.0.0.0/8 is this host: 127.0.0.2 is an address the relay can bind alone.
  const r = relay({ HTTP_HOST: '127.0.0.2' });
  const port = await portOf(r);
  await r.waitForLog('active: shipping events');
  const holder = await db.sql.reserve();
  try {
    // A transaction holding vacuum back, whose query text carries a value.
    await holder`begin isolation level repeatable read`;
    await holder`select 'secret-value-42' as s`;
    const first = await getJson(port, '/status', '127.0.0.2');
    const second = await getJson(port, '/status', '127.0.0.2');
    const status = first.json as {
      status: { vacuumHolder: Record<string, unknown> | null; relay: { expiresInMs: number } };
    };
    assert.equal(first.status, 200);
    assert.equal(typeof status.status.vacuumHolder?.pid, 'number', JSON.stringify(first.json));
    assert.doesNotMatch(JSON.stringify(first.json), /secret-value-42/);
    // The second request, within 2 s, is answered from the same read.
    assert.deepEqual(second.json, first.json);
    await assert.rejects(get(port, '/healthz', '127.0.0.1'), 'nothing answers on 127.0.0.1');
  } finally {
    await holder`rollback`;
    holder.release();
  }
  assert.equal((await r.stop()).code, 0);
});

test('a broker outage: alive, not ready, the oldest event ages, errors are counted', async () => {
  await db.sql`create table pings (id int primary key)`;
  await db.sql`select pg2kafka.setup('pings')`;
  const r = relay({ KAFKA_BROKERS: NO_BROKER });
  const port = await portOf(r);
  await r.waitForLog('active: shipping events');
  await db.sql`insert into pings values (1)`;
  await waitFor('a failed attempt', async () => {
    const { body } = await get(port, '/metrics');
    return /^pg2kafka_publish_errors_total\{stage="ship",reason="[^"]+"\} [1-9]/m.test(body);
  });
  const first = (await sample(port, 'pg2kafka_oldest_event_age_seconds')) ?? 0;
  await new Promise((resolve) => setTimeout(resolve, 1_100));
  const second = (await sample(port, 'pg2kafka_oldest_event_age_seconds')) ?? 0;
  assert.ok(first > 0 && second > first + 1, `oldest age ${first} s, then ${second} s`);
  assert.equal(await sample(port, 'pg2kafka_queued_events'), 1);
  assert.equal(
    (await get(port, '/healthz')).status,
    200,
    'alive: an outage is no reason to restart',
  );
  const ready = (await getJson(port, '/readyz')) as {
    status: number;
    json: { ready: boolean; role: string; problems: string[] };
  };
  assert.equal(ready.status, 503);
  assert.equal(ready.json.role, 'active');
  assert.match(ready.json.problems.join(' | '), /^Kafka: /);
  assert.equal((await r.stop()).code, 0);
  await db.sql`delete from pg2kafka.captured_changes`;
});

test('a PostgreSQL outage: alive, not ready; ready again once it is back', async () => {
  const proxy = await startProxy();
  const r = relay({ DATABASE_URL: proxy.url(db.url) });
  const port = await portOf(r);
  await r.waitForLog('active: shipping events');
  assert.equal((await get(port, '/readyz')).status, 200);
  proxy.goDown();
  await waitFor('not ready', async () => (await get(port, '/readyz')).status === 503, 20_000);
  const down = (await getJson(port, '/readyz')).json as { problems: string[] };
  assert.match(down.problems.join(' | '), /^PostgreSQL: /);
  assert.equal((await get(port, '/healthz')).status, 200, 'alive while PostgreSQL is down');
  // A scrape is still answered; what only the database knows keeps its last value.
  const scrape = await get(port, '/metrics');
  assert.equal(scrape.status, 200);
  assert.match(scrape.body, /^pg2kafka_database_read_ok 0$/m);
  assert.match(scrape.body, /^pg2kafka_relay_active [01]$/m);
  proxy.goUp();
  await waitFor('ready again', async () => (await get(port, '/readyz')).status === 200, 30_000);
  assert.equal((await r.stop()).code, 0);
});

test('relay_active flips on failover; a standby is ready, and says so', async () => {
  const first = relay();
  const firstPort = await portOf(first);
  await first.waitForLog('active: shipping events');
  const second = relay();
  const secondPort = await portOf(second);
  await waitFor(
    'the standby serving',
    async () => (await get(secondPort, '/readyz')).status === 200,
  );
  assert.deepEqual((await getJson(secondPort, '/readyz')).json, {
    ready: true,
    role: 'standby',
    problems: [],
  });
  assert.equal(await sample(secondPort, 'pg2kafka_relay_active'), 0);
  assert.equal(await sample(firstPort, 'pg2kafka_relay_active'), 1);
  await first.kill();
  // The killed relay's lease goes at once rather than after its TTL.
  await db.sql`update pg2kafka.relay_lease set expires_at = clock_timestamp()`;
  await waitFor(
    'the standby active',
    async () => (await sample(secondPort, 'pg2kafka_relay_active')) === 1,
    30_000,
  );
  assert.equal(await sample(secondPort, 'pg2kafka_leadership_changes_total'), 1);
  assert.equal(((await getJson(secondPort, '/readyz')).json as { role: string }).role, 'active');
  assert.equal((await second.stop()).code, 0);
});

test('HTTP_PORT taken by another process: the relay says so and exits 2 before shipping', async () => {
  const other = createServer();
  await new Promise<void>((resolve) => other.listen(0, resolve));
  const { port } = other.address() as AddressInfo;
  try {
    const r = relay({ HTTP_PORT: String(port) });
    const exit = await r.exited;
    assert.equal(exit.code, 2);
    assert.match(
      r.stderrText.join('\n'),
      new RegExp(
        `cannot serve HTTP_PORT ${port} \\(listen EADDRINUSE.*\\): another process listens on it; set HTTP_PORT to a free port, or HTTP_PORT=off`,
      ),
    );
    assert.equal(
      r.logs.some((l) => l.msg === 'active: shipping events'),
      false,
    );
  } finally {
    other.close();
  }
});

test('while events flow the relay logs a line per interval: events, rate, lag, queue depth', async () => {
  await db.sql`create table flows (id int primary key)`;
  await db.sql`select pg2kafka.setup('flows')`;
  // A line after every batch instead of every FLOW_LOG_MS.
  const { running, lines } = await inProcessRelay(
    db.url,
    kafka,
    { flowLogEveryMs: 0 },
    { HTTP_PORT: 'off' },
  );
  try {
    await waitFor('the relay active', () => lines.some((l) => l.msg === 'active: shipping events'));
    await db.sql`insert into flows select generate_series(1, 40)`;
    const flow = () =>
      lines.filter((l) => l.msg.startsWith('shipped ')) as Array<
        LogLine & {
          events: number;
          perSecond: number;
          lagMeanMs: number;
          lagMaxMs: number;
          queued?: number;
        }
      >;
    await waitFor(
      '40 events logged',
      () => flow().reduce((n, l) => n + l.events, 0) === 40,
      20_000,
    );
    for (const line of flow()) {
      assert.match(
        line.msg,
        /^shipped \d+ events in [\d.]+ s \(\d+\/s\), lag \d+ ms mean, \d+ ms most; \d+ queued$/,
      );
      assert.ok(line.lagMaxMs >= line.lagMeanMs && typeof line.queued === 'number', line.msg);
    }
    assert.equal(
      lines.some((l) => l.msg.startsWith('HTTP endpoints')),
      false,
      'HTTP_PORT=off serves nothing',
    );
  } finally {
    await running.shutdown();
  }
});

test('while the relay waits for PostgreSQL at start it is alive and not ready ("starting")', async () => {
  const proxy = await startProxy();
  proxy.goDown();
  const r = relay({ DATABASE_URL: proxy.url(db.url) });
  const port = await portOf(r);
  assert.deepEqual(await getJson(port, '/healthz'), {
    status: 200,
    json: { alive: true, starting: true },
  });
  assert.deepEqual(await getJson(port, '/readyz'), {
    status: 503,
    json: {
      ready: false,
      role: 'starting',
      problems: ['starting: waiting for PostgreSQL, or migrating'],
    },
  });
  proxy.goUp();
  await r.waitForLog('active: shipping events', 30_000);
  await waitFor('ready', async () => (await get(port, '/readyz')).status === 200);
  assert.equal((await r.stop()).code, 0);
});

test('the default port in use: a warning, and the relay ships without endpoints', async () => {
  const other = createServer();
  // Taken here, or already taken by someone else: either way in use.
  await new Promise<void>((resolve) => {
    other.once('error', () => {
      resolve();
    });
    other.listen(9898, resolve);
  });
  try {
    const { running, lines } = await inProcessRelay(db.url, kafka, {}, { HTTP_PORT: undefined });
    try {
      await waitFor('the relay active', () =>
        lines.some((l) => l.msg === 'active: shipping events'),
      );
      assert.ok(
        lines.some(
          (l) =>
            l.level === 40 &&
            l.msg.startsWith('no HTTP endpoints: cannot serve the default port 9898'),
        ),
        lines.map((l) => l.msg).join('\n'),
      );
    } finally {
      await running.shutdown();
    }
  } finally {
    other.close();
  }
});
