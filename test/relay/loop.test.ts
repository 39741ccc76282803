/**
 * The relay loop in-process, on real PostgreSQL, with a fake sink whose timing and
 * answers the test controls: the races inside one batch (read-ahead, lease checks
 * between produce requests). The same behaviour is tested on the real broker in
 * edges.test.ts; these tests pin the timing that a broker cannot be made to produce.
 */
import assert from 'node:assert/strict';
import { afterEach, before, beforeEach, test } from 'node:test';
import postgres from 'postgres';
import { migrate } from '../../src/capture/migrate.ts';
import type { EventSink, OutboundMessage, SendResult } from '../../src/kafka/sink.ts';
import { DeadLetterStore } from '../../src/relay/dead-letters.ts';
import { EventQueue } from '../../src/relay/queue.ts';
import { Relay, type RelayEvent, type RelayOptions } from '../../src/relay/relay.ts';
import { deferred, sleep, useTestDatabase, waitFor, type Sql } from '../helpers.ts';

const db = useTestDatabase();
let sql: Sql;

before(async () => {
  await db.ready;
  await migrate({ databaseUrl: db.url });
});

// The relay's pool (column names in camelCase, as the relay's own), one per test.
beforeEach(() => {
  sql = db.connect({ transform: { column: { from: postgres.toCamel } }, max: 3 });
});

afterEach(async () => {
  await sql.end();
});

/** A sink that records every send and answers through `answer` (default: all acked). */
class FakeSink implements EventSink {
  readonly sends: OutboundMessage[][] = [];
  readonly acked: OutboundMessage[] = [];
  answer: (messages: OutboundMessage[], call: number) => Promise<SendResult[]> = (messages) =>
    Promise.resolve(messages.map(() => ({ status: 'acked' })));

  prepareTopics(): Promise<[]> {
    return Promise.resolve([]);
  }

  /** As the EventSink contract says: a topic (one partition here) stops at its first refusal. */
  async send(messages: OutboundMessage[]): Promise<SendResult[]> {
    this.sends.push(messages);
    const answers = await this.answer(messages, this.sends.length);
    const stopped = new Set<string>();
    return messages.map((m, i) => {
      if (stopped.has(m.topic)) return { status: 'unsent' };
      const answer = answers[i] ?? { status: 'unsent' };
      if (answer.status === 'acked') this.acked.push(m);
      else stopped.add(m.topic);
      return answer;
    });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Every key acked, in order, as "table:key". */
  ackedKeys(): string[] {
    return this.acked.map((m) => `${m.topic.split('.').at(-1) ?? ''}:${m.key ?? ''}`);
  }
}

function relayWith(sink: FakeSink, options: Partial<RelayOptions> = {}): Relay {
  return new Relay({
    queue: new EventQueue(sql),
    deadLetters: new DeadLetterStore(sql),
    sink,
    batchSize: 1000,
    batchBytes: 8 << 20,
    deadLetterPolicy: 'park-key',
    pollIntervalMs: 50,
    topicPrefix: 'pg2kafka',
    topicNamespace: undefined,
    dryRun: false,
    ...options,
  });
}

async function queued(): Promise<number> {
  const [row] = await sql<
    { n: number }[]
  >`select count(*)::int as n from pg2kafka.captured_changes`;
  return row?.n ?? -1;
}

/** A captured table `name` keyed by `id`, with rows 1 to 5 queued. */
async function fiveQueued(name: string): Promise<void> {
  await sql`create table ${sql(name)} (id int primary key)`;
  await sql`select pg2kafka.setup(${name}::regclass, 'id')`;
  await sql`insert into ${sql(name)} select generate_series(1, 5)`;
}

/** Runs the relay until the queue is empty, then stops it. */
async function runUntilEmpty(relay: Relay): Promise<void> {
  const running = relay.start();
  await waitFor('an empty queue', async () => (await queued()) === 0);
  await relay.stop();
  await running;
}

test('a batch partly held back drops the batch read ahead: a key never overtakes its held event', async () => {
  await sql`create table held (id int primary key, v int)`;
  await sql`create table flowing (id int primary key)`;
  await sql`select pg2kafka.setup('held', 'id')`;
  await sql`select pg2kafka.setup('flowing', 'id')`;
  // Batch 1 (BATCH_SIZE 2): held:1 INSERT, flowing:1. Read ahead: held:1 UPDATE, flowing:2.
  await sql`insert into held values (1, 0)`;
  await sql`insert into flowing values (1)`;
  await sql`update held set v = 1 where id = 1`;
  await sql`insert into flowing values (2)`;

  const sink = new FakeSink();
  const refused = new Set<string>();
  sink.answer = (messages, call) =>
    Promise.resolve(
      messages.map((m) => {
        // The first send: Kafka has no leader for topic "held" (retriable) once.
        if (call === 1 && m.topic.endsWith('.held')) {
          refused.add(m.value ?? '');
          return {
            status: 'refused',
            retriable: true,
            code: 'LEADER_NOT_AVAILABLE',
            reason: 'no leader',
          };
        }
        return { status: 'acked' };
      }),
    );
  // The hold ends at once: the read-ahead batch would then be shipped with the held
  // topic released, ahead of the held event.
  const relay = relayWith(sink, { batchSize: 2, holdBackoff: () => 0 });
  await runUntilEmpty(relay);

  const held = sink.sends
    .flat()
    .filter((m) => m.topic.endsWith('.held') && !(sink.sends[0]?.includes(m) ?? false))
    .map((m) => (JSON.parse(m.value ?? 'null') as { statement: string }).statement);
  assert.equal(refused.size, 1);
  assert.deepEqual(held, ['INSERT', 'UPDATE'], 'held:1 INSERT must ship again before its UPDATE');
  await sql`select pg2kafka.teardown('held')`;
  await sql`select pg2kafka.teardown('flowing')`;
});

test('the lease is checked before every produce request: a relay that lost it sends no more', async () => {
  await fiveQueued('leased');

  const sink = new FakeSink();
  const firstSend = deferred();
  const release = deferred();
  sink.answer = async (messages, call) => {
    if (call === 1) {
      firstSend.resolve();
      await release.promise; // the relay is "paused" inside its first request
    }
    return messages.map(() => ({ status: 'acked' }));
  };
  const events: RelayEvent[] = [];
  // One message per request; a lease of 3 s renewed every 200 ms.
  const relay = relayWith(sink, {
    maxRequestBytes: 1,
    leaseTiming: { ttlMs: 3_000, renewMs: 200, safetyMs: 500 },
  });
  relay.on((e) => events.push(e));
  const running = relay.start();
  await firstSend.promise;
  // Another relay takes the lease (as after this one's lease expired during a pause).
  await sql`update pg2kafka.relay_lease set holder = 'the other relay', epoch = epoch + 1,
            expires_at = clock_timestamp() + interval '1 hour'`;
  await waitFor('the heartbeat to notice', () =>
    events.some((e) => e.type === 'leadership' && !e.active),
  );
  release.resolve();
  await sleep(300);
  await relay.stop();
  await running;

  assert.equal(sink.sends.length, 1, 'no request after the lease was lost');
  assert.deepEqual(
    sink.sends.flat().map((m) => m.key),
    ['1'],
  );
  assert.equal(await queued(), 5, 'nothing deleted: the new leader ships all five');
  await sql`update pg2kafka.relay_lease set expires_at = '-infinity'`;
  await sql`delete from pg2kafka.captured_changes`;
  await sql`select pg2kafka.teardown('leased')`;
});

test('a refused event parks its key: later events of that key follow it into dead letters, other keys flow', async () => {
  await sql`create table parking (id int primary key, v int)`;
  await sql`select pg2kafka.setup('parking', 'id')`;
  await sql`insert into parking values (1, 0), (2, 0)`;
  await sql`update parking set v = 1 where id = 1`;

  const sink = new FakeSink();
  sink.answer = (messages) =>
    Promise.resolve(
      messages.map((m) =>
        m.key === '1' &&
        (JSON.parse(m.value ?? 'null') as { statement: string }).statement === 'INSERT'
          ? {
              status: 'refused',
              retriable: false,
              code: 'MESSAGE_TOO_LARGE',
              reason: 'too large',
            }
          : { status: 'acked' },
      ),
    );
  const relay = relayWith(sink);
  const running = relay.start();
  await waitFor('an empty queue', async () => (await queued()) === 0);
  await sql`insert into parking values (3, 0)`;
  await sql`update parking set v = 2 where id = 1`;
  await waitFor('an empty queue again', async () => (await queued()) === 0);
  await relay.stop();
  await running;

  // Key 1 never reached Kafka after its refused INSERT; other keys did.
  assert.deepEqual(sink.ackedKeys(), ['parking:2', 'parking:3']);
  const letters = await sql<
    { externalId: string; statement: string; errorCode: string; parked: boolean }[]
  >`
    select external_id, statement, error_code, parked from pg2kafka.dead_letters order by id`;
  assert.deepEqual(
    letters.map((l) => [l.externalId, l.statement, l.errorCode, l.parked]),
    [
      ['1', 'INSERT', 'MESSAGE_TOO_LARGE', true],
      ['1', 'UPDATE', 'KEY_PARKED', true],
      ['1', 'UPDATE', 'KEY_PARKED', true],
    ],
  );
  await sql`delete from pg2kafka.dead_letters`;
  await sql`select pg2kafka.teardown('parking')`;
});

test('Kafka lost mid-batch: what it acknowledged before is deleted, so only the rest is sent again', async () => {
  await fiveQueued('midway');

  const sink = new FakeSink();
  sink.answer = (messages, call) =>
    call === 3
      ? Promise.reject(new Error('connection to the broker lost'))
      : Promise.resolve(messages.map(() => ({ status: 'acked' })));
  const events: RelayEvent[] = [];
  const relay = relayWith(sink, { maxRequestBytes: 1 });
  relay.on((e) => events.push(e));
  await runUntilEmpty(relay);

  assert.deepEqual(sink.ackedKeys(), ['midway:1', 'midway:2', 'midway:3', 'midway:4', 'midway:5']);
  assert.equal(events.filter((e) => e.type === 'error').length, 1);
  // What the metrics count: every event published once, the two acked before the loss too.
  const batches = events.flatMap((e) => (e.type === 'batch' ? [e] : []));
  assert.deepEqual(
    {
      published: batches.flatMap((b) => b.published).reduce((n, p) => n + p.events, 0),
      events: batches.reduce((n, b) => n + b.events, 0),
      lags: batches.reduce((n, b) => n + b.lagsMs.length, 0),
    },
    { published: 5, events: 5, lags: 5 },
  );
  await sql`select pg2kafka.teardown('midway')`;
});

test('a key change half acknowledged is counted once, when both halves are', async () => {
  await sql`create table rekey (id int primary key)`;
  await sql`select pg2kafka.setup('rekey', 'id')`;
  await sql`insert into rekey values (1)`;
  const sink = new FakeSink();
  const events: RelayEvent[] = [];
  const first = relayWith(sink);
  first.on((e) => events.push(e));
  await runUntilEmpty(first);
  await sql`update rekey set id = 2`;
  // The DELETE of key 1 is acknowledged, the INSERT of key 2 refused (retriable) once.
  sink.answer = (messages, call) =>
    Promise.resolve(
      messages.map((_, i) =>
        call === 2 && i === 1
          ? { status: 'refused', retriable: true, code: 'NOT_ENOUGH_REPLICAS', reason: 'test' }
          : { status: 'acked' },
      ),
    );
  const relay = relayWith(sink, { holdBackoff: () => 10 });
  relay.on((e) => events.push(e));
  await runUntilEmpty(relay);

  // Both halves are sent again: the DELETE of key 1 arrives twice (at least once).
  assert.deepEqual(sink.ackedKeys(), ['rekey:1', 'rekey:1', 'rekey:1', 'rekey:2']);
  const batches = events.flatMap((e) => (e.type === 'batch' ? [e] : []));
  assert.deepEqual(
    {
      published: batches.flatMap((b) => b.published).map((p) => `${p.statement} ${p.events}`),
      events: batches.reduce((n, b) => n + b.events, 0),
    },
    { published: ['INSERT 1', 'DELETE 1', 'INSERT 1'], events: 3 },
  );
  await sql`select pg2kafka.teardown('rekey')`;
});

test('a leader whose loop is stuck stops renewing its lease: a standby takes over and ships', async () => {
  await fiveQueued('wedged');
  const stuck = new FakeSink();
  const inside = deferred();
  const never = deferred();
  stuck.answer = async () => {
    inside.resolve();
    await never.promise; // a send that never returns: the loop is wedged
    return [];
  };
  const timing = { ttlMs: 2_000, renewMs: 200, safetyMs: 500 };
  const wedged = relayWith(stuck, { leaseTiming: timing, stuckAfterMs: 1_000 });
  const wedgedEvents: RelayEvent[] = [];
  wedged.on((e) => wedgedEvents.push(e));
  const wedgedRun = wedged.start();
  await inside.promise;

  const healthy = new FakeSink();
  const standby = relayWith(healthy, { leaseTiming: timing });
  const standbyRun = standby.start();
  try {
    await waitFor('the standby shipping all five', () => healthy.acked.length === 5, 15_000);
    assert.deepEqual(
      healthy.acked.map((m) => m.key),
      ['1', '2', '3', '4', '5'],
    );
    assert.ok(
      wedgedEvents.some((e) => e.type === 'leadership' && !e.active),
      'the stuck leader gave the lease up',
    );
  } finally {
    never.resolve();
    await standby.stop();
    await wedged.stop();
    await Promise.all([standbyRun, wedgedRun]);
    await sql`update pg2kafka.relay_lease set expires_at = '-infinity'`;
    await sql`delete from pg2kafka.captured_changes`;
    await sql`select pg2kafka.teardown('wedged')`;
  }
});
