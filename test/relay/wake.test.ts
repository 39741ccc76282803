/**
 * The wake-up: writers NOTIFY only while the relay sleeps, and never with WAKE_NOTIFY=false
 * (two-phase commit refuses PREPARE TRANSACTION after a NOTIFY). Read back as a user would:
 * a LISTEN on the channel, and the events arriving in Kafka.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IDLE_FLAG_SESSION, WAKE_CHANNEL } from '../../src/relay/listener.ts';
import { sleep, useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import { useRelays } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const { relay, queueDepth } = useRelays(db, kafka);

/** Inserts one row into `table` while a LISTEN counts the wake-up notifications it causes. */
async function notificationsOfOneInsert(table: string, id: number): Promise<number> {
  const listener = db.connect({ max: 1 });
  let count = 0;
  try {
    await listener.listen(WAKE_CHANNEL, () => {
      count += 1;
    });
    await db.sql`insert into ${db.sql(table)} values (${id})`;
    await sleep(500);
    return count;
  } finally {
    await listener.end();
  }
}

test('an idle relay is woken by NOTIFY; with WAKE_NOTIFY=false writers never notify and events still arrive', async () => {
  await db.sql`create table woken (id int primary key)`;
  await db.sql`select pg2kafka.setup('woken', 'id')`;
  const topic = `pg2kafka.${db.name}.woken`;

  const notifying = relay({ POLL_INTERVAL_MS: '2000' });
  await notifying.waitForLog('active: shipping events');
  await sleep(1500); // idle: the flag is up
  assert.equal(await notificationsOfOneInsert('woken', 1), 1, 'an idle relay asks for a NOTIFY');
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await notifying.stop()).code, 0);

  const polling = relay({ POLL_INTERVAL_MS: '200', WAKE_NOTIFY: 'false' });
  await polling.waitForLog('active: shipping events');
  await sleep(1000);
  assert.equal(await notificationsOfOneInsert('woken', 2), 0, 'WAKE_NOTIFY=false: no NOTIFY');
  const messages = await kafka.consume(topic, 2);
  assert.deepEqual(
    messages.map((m) => m.key),
    ['1', '2'],
  );
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await polling.stop()).code, 0);
});

test("the idle flag's connection asks the server to drop it soon after its client vanished", async () => {
  // Start-up parameters the server refuses would fail the connection; read them back.
  const sql = db.connect({ max: 1, connection: IDLE_FLAG_SESSION });
  try {
    const [row] = await sql<{ idle: string; interval: string; count: string; user: string }[]>`
      select current_setting('tcp_keepalives_idle') as idle,
             current_setting('tcp_keepalives_interval') as interval,
             current_setting('tcp_keepalives_count') as count,
             current_setting('tcp_user_timeout') as user`;
    assert.deepEqual(row, { idle: '10', interval: '5', count: '3', user: '20000' });
  } finally {
    await sql.end();
  }
});
