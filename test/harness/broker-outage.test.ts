/**
 * The broker harness can simulate an outage: a broker of this file's own is stopped and
 * started again on the same port with its data kept, and leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { KafkaBroker } from '../../scripts/kafka-broker.ts';
import { uniqueName } from '../helpers.ts';

let broker: KafkaBroker;

before(async () => {
  broker = await KafkaBroker.start();
});

after(async () => {
  await broker.destroy();
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('a stopped broker comes back on the same port with its messages', async () => {
  const kafka = new Kafka({
    clientId: uniqueName('outage'),
    brokers: [broker.brokers],
    logLevel: logLevel.NOTHING,
    retry: { retries: 1, initialRetryTime: 100 },
  });
  const topic = uniqueName('harness.outage');
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic }], waitForLeaders: true });
  await admin.disconnect();
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, acks: -1, messages: [{ key: 'a', value: 'before the outage' }] });
  await producer.disconnect();

  const firstPid = broker.pid;
  assert.ok(firstPid !== undefined && isAlive(firstPid));
  await broker.stop();
  assert.equal(broker.running, false);
  assert.equal(isAlive(firstPid), false, 'the stopped broker process is gone');

  const down = kafka.admin();
  await assert.rejects(down.connect(), 'nothing answers while the broker is stopped');
  await down.disconnect();

  await broker.start();
  assert.equal(broker.brokers, `127.0.0.1:${broker.port}`);
  const admin2 = kafka.admin();
  await admin2.connect();
  const offsets = await admin2.fetchTopicOffsets(topic);
  await admin2.disconnect();
  assert.deepEqual(
    offsets.map((o) => ({ partition: o.partition, high: o.high })),
    [{ partition: 0, high: '1' }],
    'the message written before the outage is still there',
  );
});

test('destroy stops the process and removes its data', async () => {
  const other = await KafkaBroker.start();
  const pid = other.pid;
  assert.ok(pid !== undefined && isAlive(pid));
  assert.ok(existsSync(other.dataDir));
  await other.destroy();
  assert.equal(isAlive(pid), false);
  assert.equal(existsSync(other.dataDir), false);
});
