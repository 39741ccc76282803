/**
 * Online snapshots end to end: a table set up while writers keep changing it is copied
 * by the active relay in chunks, and what a consumer reads obeys the version oracle: per
 * key, a SNAPSHOT is never older (nor newer) than the changes already received for that
 * key, every change after it follows it, every row arrives as exactly one SNAPSHOT, and
 * replaying the topic gives the table. The same with the relay SIGKILLed at chunks along
 * the way: the next relay resumes where the last committed chunk ended.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { sleep, uniqueName, useKafka, useTestDatabase, waitFor, type Sql } from '../helpers.ts';
import { snapshotViolations } from '../capture/support.ts';
import { dedupe, inProcessRelay, useCollectors, useRelays, type ArrivedEvent } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);
const client = new Kafka({
  clientId: uniqueName('online-snapshot'),
  brokers: kafka.brokers,
  logLevel: logLevel.NOTHING,
});
const { collectTopic } = useCollectors(client);

/**
 * Twelve chunks of the default 5,000 rows; `npm run test:snapshot-1m` runs this file with
 * a million (SNAPSHOT_TEST_ROWS).
 */
const ROWS = Number(process.env.SNAPSHOT_TEST_ROWS ?? 60_000);
/** Waits and test timeouts grow with the table: about 20k events/s through the relay. */
const WAIT_MS = 120_000 + ROWS / 5;
const TEST_MS = 2 * WAIT_MS + 60_000;

/**
 * How a test table is keyed: by k alone, or by the primary key (g, k) with g = k % 7, which
 * the snapshot walks as a row, in an order that is not k's. Every row has its own k.
 */
interface Shape {
  columns: string;
  /** The select list that makes row k = g of generate_series. */
  row: string;
  /** Finds the row of k = $1. */
  where: string;
  /** Inserts the row of k = $1 at v = 1. */
  insert: string;
  /** The external id of a row (g, when the row is not read from the table, from k). */
  keyOf: (row: { k: number; g?: number }) => string;
}
const BY_K: Shape = {
  columns: 'k int primary key, v int not null',
  row: 'g, 1',
  where: 'k = $1',
  insert: '(k, v) values ($1, 1)',
  keyOf: ({ k }) => String(k),
};
const BY_G_K: Shape = {
  columns: 'k int not null, g int not null, v int not null, primary key (g, k)',
  row: 'g, g % 7, 1',
  where: 'g = $1::int % 7 and k = $1',
  insert: '(k, g, v) values ($1, $1::int % 7, 1)',
  keyOf: ({ k, g = k % 7 }) => `[${g},${k}]`,
};
/** Partitioned by list (g), keyed (k, g); the rows set up have g = 0, writers change those. */
const BY_K_IN_G0: Shape = {
  columns: 'k int not null, g int not null, v int not null, primary key (k, g)',
  row: 'g, 0, 1',
  where: 'k = $1 and g = 0',
  insert: '(k, g, v) values ($1, 0, 1)',
  keyOf: ({ k, g = 0 }) => `[${k},${g}]`,
};
/** The rows of the partition g = 1 (attached later: odd k only). */
const BY_K_IN_G1: Shape = {
  ...BY_K_IN_G0,
  where: 'k = $1 and g = 1',
  insert: '(k, g, v) values ($1, 1, 1)',
};

interface WriterTotals {
  updates: number;
  inserts: number;
  /** The longest single statement of any writer, ms. */
  longestMs: number;
}

/**
 * `count` writers, each in a loop of short transactions: mostly `v = v + 1` on a random
 * existing key, sometimes a new key above ROWS; each holds its transaction `holdMs`
 * after its statement, as application transactions do other work.
 */
function startWriters(sql: Sql, table: string, count: number, shape = BY_K, holdMs = 2) {
  let running = true;
  let nextKey = ROWS + 1;
  const totals: WriterTotals = { updates: 0, inserts: 0, longestMs: 0 };
  const loops = Array.from({ length: count }, async () => {
    while (running) {
      await sql.begin(async (tx) => {
        const started = performance.now();
        if (Math.random() < 0.05) {
          const k = nextKey++;
          await tx.unsafe(`insert into ${table} ${shape.insert}`, [k]);
          totals.inserts += 1;
        } else {
          const k = 1 + Math.floor(Math.random() * ROWS);
          const rows = await tx.unsafe(
            `update ${table} set v = v + 1 where ${shape.where} returning v`,
            [k],
          );
          totals.updates += rows.length;
        }
        totals.longestMs = Math.max(totals.longestMs, performance.now() - started);
        if (holdMs > 0) await tx`select pg_sleep(${holdMs / 1000})`;
      });
    }
  });
  return {
    totals,
    async stop(): Promise<WriterTotals> {
      running = false;
      await Promise.all(loops);
      return totals;
    },
  };
}

async function createTable(table: string, shape = BY_K): Promise<void> {
  await db.sql.unsafe(`create table ${table} (${shape.columns})`);
  await db.sql.unsafe(
    `insert into ${table} select ${shape.row} from generate_series(1, ${ROWS}) g`,
  );
  await db.sql.unsafe(`analyze ${table}`);
}

async function snapshotState(table: string) {
  const [row] = await db.sql<{ done: string; outcome: string | null; chunks: string }[]>`
    select rows_done::text as done, outcome, chunks_done::text as chunks
    from pg2kafka.snapshots where table_oid = ${table}::regclass`;
  return row && { rowsDone: Number(row.done), outcome: row.outcome, chunks: Number(row.chunks) };
}

/** Waits until the collector holds `expected` distinct events; returns them deduplicated. */
async function arrived(
  collector: { received: ArrivedEvent[] },
  expected: number,
): Promise<{ unique: ArrivedEvent[]; duplicates: number }> {
  await waitFor(
    `${expected} distinct events (have ${dedupe(collector.received).unique.length})`,
    () => dedupe(collector.received).unique.length >= expected,
    WAIT_MS,
    200,
  );
  await sleep(500);
  return dedupe(collector.received);
}

/** Every original key exactly once as a SNAPSHOT, new keys at most once, the table replayed. */
async function assertSnapshotHistory(
  table: string,
  events: readonly ArrivedEvent[],
  shape = BY_K,
  originals: ReadonlyArray<{ k: number; g?: number }> = Array.from({ length: ROWS }, (_, i) => ({
    k: i + 1,
  })),
) {
  const { violations, snapshots, state } = snapshotViolations(events);
  assert.deepEqual(violations.slice(0, 10), [], `${violations.length} oracle violations`);
  const missing: string[] = [];
  const twice: string[] = [];
  for (const row of originals) {
    const key = shape.keyOf(row);
    if (!snapshots.has(key)) missing.push(key);
  }
  for (const [key, n] of snapshots) if (n > 1) twice.push(key);
  assert.deepEqual(missing.slice(0, 10), [], `${missing.length} rows never arrived as a SNAPSHOT`);
  assert.deepEqual(twice.slice(0, 10), [], `${twice.length} rows arrived as two SNAPSHOTs`);
  const rows = await db.sql.unsafe<{ k: number; g?: number; v: number }[]>(
    `select * from ${table}`,
  );
  assert.equal(state.size, rows.length, 'keys on the topic = rows in the table');
  const differing = rows.filter((r) => state.get(shape.keyOf(r)) !== r.v).slice(0, 10);
  assert.deepEqual(differing, [], 'replaying the topic gives the table');
}

/**
 * `table` set up while `count` writers change it; the active relay copies it online. What
 * the consumer reads obeys the oracle, every row arrives once, and the topic replays the
 * table.
 */
async function snapshotUnderWriters(
  t: TestContext,
  table: string,
  shape: Shape,
  count: number,
): Promise<void> {
  await createTable(table, shape);
  const r = relay();
  await r.waitForLog('active: shipping events');
  // Without a key column: the primary key, of one column or two.
  await db.sql.unsafe(`select pg2kafka.setup('${table}')`);
  // From here on every write is captured; the relay starts copying within seconds.
  const writerPool = db.connect({ max: count });
  const writers = startWriters(writerPool, table, count, shape);
  const collector = await collectTopic(`pg2kafka.${db.name}.${table}`);
  await waitFor(
    'the relay finished the snapshot',
    async () => (await snapshotState(table))?.outcome === 'done',
    WAIT_MS,
    100,
  );
  await sleep(300);
  const totals = await writers.stop();
  await writerPool.end();
  t.diagnostic(
    `writers during the snapshot: ${totals.updates} updates, ${totals.inserts} inserts; longest statement ${totals.longestMs.toFixed(1)} ms; ${JSON.stringify(await snapshotState(table))}`,
  );
  assert.ok(totals.updates > 1_000, `writers kept writing (${totals.updates} updates)`);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, WAIT_MS, 200);
  const { unique } = await arrived(collector, ROWS + totals.updates + totals.inserts);
  await assertSnapshotHistory(table, unique, shape);
  const progress = r.logs.filter((l) => l.msg.includes(`snapshot of ${table}`));
  assert.ok(
    progress.some((l) => /^snapshot of \S+ done: \d+ rows in \d+ s$/.test(l.msg)),
    `a done line: ${progress.map((l) => l.msg).join(' | ')}`,
  );
  assert.equal((await r.stop()).code, 0);
}

test(
  'an online snapshot under 16 writers: no SNAPSHOT older than a change sent, every row once, the table replayed',
  { timeout: TEST_MS },
  (t) => snapshotUnderWriters(t, 'busy_t', BY_K, 16),
);

test(
  'a primary key of two columns, walked as a row under 8 writers: keys are [g,k], the oracle holds, every row once',
  { timeout: TEST_MS },
  (t) => snapshotUnderWriters(t, 'pair_t', BY_G_K, 8),
);

test(
  'the relay SIGKILLed twice mid-snapshot: the next one resumes, every row once, nothing reordered',
  { timeout: TEST_MS },
  async (t) => {
    const table = 'killed_t';
    await createTable(table);
    await db.sql.unsafe(`select pg2kafka.setup('${table}', 'k')`);
    const writerPool = db.connect({ max: 8 });
    const writers = startWriters(writerPool, table, 8);
    const killedAt: number[] = [];
    for (const atLeast of [Math.round(ROWS / 4), Math.round((ROWS * 3) / 5)]) {
      const r = relay();
      await waitFor(
        `the snapshot past ${atLeast} rows`,
        async () => ((await snapshotState(table))?.rowsDone ?? 0) >= atLeast,
        WAIT_MS,
        20,
      );
      await r.kill();
      killedAt.push((await snapshotState(table))?.rowsDone ?? -1);
      // The killed relay is gone: its lease may go at once rather than after its TTL.
      await db.sql`update pg2kafka.relay_lease set expires_at = clock_timestamp()`;
    }
    const last = relay();
    await waitFor(
      'the last relay finished the snapshot',
      async () => (await snapshotState(table))?.outcome === 'done',
      WAIT_MS,
      100,
    );
    const totals = await writers.stop();
    await writerPool.end();
    t.diagnostic(
      `killed after ${killedAt.join(' and ')} rows; writers: ${totals.updates} updates, ${totals.inserts} inserts; ${JSON.stringify(await snapshotState(table))}`,
    );
    assert.ok(
      killedAt.every((n) => n > 0 && n < ROWS),
      `killed mid-snapshot: ${killedAt.join(', ')}`,
    );
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, WAIT_MS, 200);
    const resumed = last.logs.find((l) => l.msg.startsWith(`resuming the snapshot of ${table}`));
    assert.ok(
      resumed,
      `the last relay says it resumed: ${last.logs
        .filter((l) => l.component === 'relay.snapshot')
        .map((l) => l.msg)
        .join(' | ')}`,
    );
    const collector = await collectTopic(`pg2kafka.${db.name}.${table}`);
    const { unique } = await arrived(collector, ROWS + totals.updates + totals.inserts);
    await assertSnapshotHistory(table, unique);
    assert.equal((await last.stop()).code, 0);
  },
);

test(
  'a partition attached mid-snapshot under writers: its rows arrive once each, the oracle holds, the table replayed',
  { timeout: TEST_MS },
  async (t) => {
    const table = 'parted_t';
    await db.sql.unsafe(`create table ${table} (${BY_K_IN_G0.columns}) partition by list (g)`);
    await db.sql.unsafe(`create table ${table}_0 partition of ${table} for values in (0)`);
    await db.sql.unsafe(
      `insert into ${table} select ${BY_K_IN_G0.row} from generate_series(1, ${ROWS}) g`,
    );
    await db.sql.unsafe(`analyze ${table}`);
    const r = relay();
    await r.waitForLog('active: shipping events');
    await db.sql.unsafe(`select pg2kafka.setup('${table}')`);
    const writerPool = db.connect({ max: 10 });
    const writers = startWriters(writerPool, table, 6, BY_K_IN_G0);
    const collector = await collectTopic(`pg2kafka.${db.name}.${table}`);
    await waitFor(
      'the snapshot a third of the way',
      async () => ((await snapshotState(table))?.rowsDone ?? 0) >= ROWS / 3,
      WAIT_MS,
      20,
    );
    // A partition with rows of its own, keyed between the rows already walked and those not.
    await db.sql.unsafe(`create table ${table}_1 (${BY_K_IN_G0.columns})`);
    await db.sql.unsafe(
      `insert into ${table}_1 select g, 1, 1 from generate_series(1, ${ROWS}, 2) g`,
    );
    await db.sql.unsafe(`alter table ${table} attach partition ${table}_1 for values in (1)`);
    const attachedAt = await snapshotState(table);
    const partitionWriters = startWriters(writerPool, table, 4, BY_K_IN_G1);
    await waitFor(
      'the relay noticed the partition and copied it',
      async () => {
        const [row] = await db.sql<{ copied: boolean }[]>`
          select t.partition_triggers = pg2kafka.partition_triggers(t.table_oid) and p.outcome = 'done'
                 and p.rows_done > 0 as copied
          from pg2kafka.tracked_tables t join pg2kafka.snapshots p using (table_oid)
          where t.table_oid = ${table}::regclass`;
        return row?.copied ?? false;
      },
      WAIT_MS,
      100,
    );
    // The partition's copy can be done before its writers wrote much: they go on until
    // both partitions have seen a hundred updates since the attach.
    await waitFor(
      'writers on both partitions past 100 updates',
      () => [writers, partitionWriters].every((w) => w.totals.updates > 100),
      WAIT_MS,
      50,
    );
    const totals = [await writers.stop(), await partitionWriters.stop()];
    await writerPool.end();
    const writes = totals.reduce((n, w) => n + w.updates + w.inserts, 0);
    t.diagnostic(
      `attached at ${JSON.stringify(attachedAt)}; writers: ${JSON.stringify(totals)}; ${JSON.stringify(await snapshotState(table))}`,
    );
    assert.equal(attachedAt?.outcome, null, 'attached while the snapshot ran');
    await waitFor('an empty queue', async () => (await queueDepth()) === 0, WAIT_MS, 200);
    const partitionRows = Math.ceil(ROWS / 2);
    const { unique } = await arrived(collector, ROWS + partitionRows + writes);
    await assertSnapshotHistory(table, unique, BY_K_IN_G0, [
      ...Array.from({ length: ROWS }, (_, i) => ({ k: i + 1, g: 0 })),
      ...Array.from({ length: partitionRows }, (_, i) => ({ k: 2 * i + 1, g: 1 })),
    ]);
    assert.equal((await r.stop()).code, 0);
  },
);

test('the relay logs the snapshot: a start line, progress with rate and time left, a done line', async () => {
  const table = 'logged_t';
  await db.sql.unsafe(`create table ${table} (k int primary key, v int not null)`);
  await db.sql.unsafe(`insert into ${table} select g, 1 from generate_series(1, 20000) g`);
  await db.sql.unsafe(`analyze ${table}`);
  // A progress line after every chunk instead of every PROGRESS_EVERY_MS.
  const { running, lines } = await inProcessRelay(db.url, kafka, {
    snapshots: { progressEveryMs: 0 },
  });
  try {
    await waitFor('the relay active', () => lines.some((l) => l.msg === 'active: shipping events'));
    await db.sql.unsafe(`select pg2kafka.setup('${table}')`);
    await waitFor(
      'the done line',
      () => lines.some((l) => l.msg.startsWith(`snapshot of ${table} done`)),
      60_000,
    );
  } finally {
    await running.shutdown();
  }
  const messages = lines.filter((l) => l.component === 'relay.snapshot').map((l) => l.msg);
  assert.equal(messages[0], `copying the existing rows of ${table} online (about 20000)`);
  assert.match(
    messages[1] ?? '',
    new RegExp(
      `^snapshot of ${table}: 5000 of about 20000 rows \\(25%\\), \\d+ rows/s, about \\d+ s left$`,
    ),
  );
  assert.match(
    messages.at(-1) ?? '',
    new RegExp(`^snapshot of ${table} done: 20000 rows in \\d+ s$`),
  );
  // Chunks end at 5,000, 10,000, 15,000 and 20,000; the fifth finds nothing and is done.
  assert.equal(messages.filter((m) => m.includes(' of about ')).length, 4, messages.join('\n'));
});

test('a snapshot whose chunks keep failing does not keep the relay from copying the others', async () => {
  for (const table of ['failing_t', 'after_t']) {
    await db.sql.unsafe(`create table ${table} (k int primary key, v int not null)`);
    await db.sql.unsafe(`insert into ${table} select g, 1 from generate_series(1, 12000) g`);
  }
  await db.sql`select pg2kafka.setup('failing_t', snapshot => 'none')`;
  // Compiles, so resnapshot takes it; fails on every row it reads.
  await db.sql`select pg2kafka.resnapshot('failing_t', 'k / (k - k) > 0')`;
  await db.sql`select pg2kafka.setup('after_t')`;
  const { running, lines } = await inProcessRelay(db.url, kafka);
  try {
    await waitFor(
      'after_t copied',
      async () => (await snapshotState('after_t'))?.outcome === 'done',
      60_000,
      100,
    );
  } finally {
    await running.shutdown();
    await db.sql`select pg2kafka.cancel_snapshot('failing_t')`;
  }
  const warning = lines.find((l) => l.msg.startsWith('cannot copy the snapshot of failing_t now'));
  assert.ok(warning, 'the failing table is named');
  assert.match(warning.msg, /division by zero/);
});
