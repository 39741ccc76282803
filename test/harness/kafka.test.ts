/**
 * Canary of the test harness: a kafkajs producer and a real consumer group on the run's
 * broker. Also proves that kafkajs 2.2.4 and the broker agree on protocol versions.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { uniqueName, useKafka } from '../helpers.ts';

const kafka = useKafka();

test('a message with key and headers is read back by a consumer', async () => {
  const topic = uniqueName('harness.roundtrip');
  await kafka.createTopic(topic);
  const producer = await kafka.producer();
  const timestamp = '1509639276709';
  try {
    const [meta] = await producer.send({
      topic,
      acks: -1,
      messages: [
        {
          key: 'CM01-B',
          value: '{"uuid":"2f1d7a5e-0000-4000-8000-000000000001","statement":"SNAPSHOT"}',
          timestamp,
          headers: { statement: 'SNAPSHOT', table: 'public.products' },
        },
      ],
    });
    assert.equal(meta?.errorCode, 0);
  } finally {
    await producer.disconnect();
  }

  const [message, ...rest] = await kafka.consume(topic, 1);
  assert.equal(rest.length, 0);
  assert.deepEqual(message, {
    topic,
    partition: 0,
    offset: '0',
    key: 'CM01-B',
    value: '{"uuid":"2f1d7a5e-0000-4000-8000-000000000001","statement":"SNAPSHOT"}',
    timestamp,
    headers: { statement: 'SNAPSHOT', table: 'public.products' },
  });
});

test('messages of one key keep their order on a multi-partition topic', async () => {
  const topic = uniqueName('harness.order');
  await kafka.createTopic(topic, 3);
  const producer = await kafka.producer();
  try {
    await producer.send({
      topic,
      acks: -1,
      messages: Array.from({ length: 30 }, (_, i) => ({ key: `k${i % 3}`, value: String(i) })),
    });
  } finally {
    await producer.disconnect();
  }
  const messages = await kafka.consume(topic, 30);
  for (const key of ['k0', 'k1', 'k2']) {
    const values = messages.filter((m) => m.key === key).map((m) => Number(m.value));
    assert.deepEqual(
      values,
      Array.from({ length: 10 }, (_, i) => i * 3 + Number(key.slice(1))),
    );
    const partitions = new Set(messages.filter((m) => m.key === key).map((m) => m.partition));
    assert.equal(
      partitions.size,
      1,
      `key ${key} spread over partitions ${[...partitions].join(',')}`,
    );
  }
});
