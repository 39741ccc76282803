/**
 * SASL: the relay authenticates to a broker that requires SASL/PLAIN, and with a wrong
 * password it keeps its events queued and keeps retrying instead of exiting.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { KafkaBroker } from '../../scripts/kafka-broker.ts';
import { sleep, uniqueName, useTestDatabase, waitFor } from '../helpers.ts';
import { useRelays } from './support.ts';

const db = useTestDatabase();
let broker: KafkaBroker;
const brokers: string[] = [];
const { relay, queueDepth } = useRelays(db, { brokers });

before(async () => {
  broker = await KafkaBroker.start({ saslUsers: { alice: 'alice-secret' } });
  brokers.push(broker.brokers);
});

after(async () => {
  await broker.destroy();
});

test('the relay ships to a SASL/PLAIN broker with the right credentials, and waits with wrong ones', async () => {
  await db.sql`create table secured (id int primary key, v text)`;
  await db.sql`select pg2kafka.setup('secured', 'id')`;
  await db.sql`insert into secured values (1, 'a'), (2, 'b')`;

  const wrong = relay({
    KAFKA_SASL_MECHANISM: 'plain',
    KAFKA_SASL_USERNAME: 'alice',
    KAFKA_SASL_PASSWORD: 'nope',
  });
  await wrong.waitForLog('cannot ship events now, retrying', 30_000);
  await sleep(1000);
  assert.equal(await queueDepth(), 2, 'nothing shipped or deleted without authentication');
  assert.ok(
    await Promise.race([wrong.exited.then(() => false), sleep(10).then(() => true)]),
    'still running',
  );
  assert.equal((await wrong.stop()).code, 0);

  const right = relay({
    KAFKA_SASL_MECHANISM: 'PLAIN',
    KAFKA_SASL_USERNAME: 'alice',
    KAFKA_SASL_PASSWORD: 'alice-secret',
  });
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  await right.stop();

  const kafka = new Kafka({
    clientId: uniqueName('sasl'),
    brokers,
    sasl: { mechanism: 'plain', username: 'alice', password: 'alice-secret' },
    logLevel: logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(`pg2kafka.${db.name}.secured`);
    assert.equal(
      offsets.reduce((n, o) => n + Number(o.high), 0),
      2,
    );
  } finally {
    await admin.disconnect();
  }
});
