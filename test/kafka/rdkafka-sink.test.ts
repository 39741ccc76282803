/**
 * The librdkafka sink (KAFKA_CLIENT=rdkafka) against the real broker, beside the kafkajs
 * sink: keys land on the same partitions (Java's murmur2), messages arrive whole (key,
 * value, timestamp, headers), a refusal inside a batch stops only its partition and
 * refuses only the message that is refused alone, and a broker that cannot be reached
 * rejects the send. The whole relay suite also runs with it (npm run test:rdkafka).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { parseConfig, type Config } from '../../src/config.ts';
import { createKafka, KafkajsSink } from '../../src/kafka/kafkajs-sink.ts';
import { UsageError } from '../../src/errors.ts';
import { loadRdkafka, RdkafkaSink } from '../../src/kafka/rdkafka-sink.ts';
import type { EventSink, OutboundMessage } from '../../src/kafka/sink.ts';
import { createLogger } from '../../src/logger.ts';
import { uniqueName, useKafka } from '../helpers.ts';

const kafka = useKafka();
const logger = createLogger('silent');
const sinks: EventSink[] = [];
after(async () => {
  await Promise.all(sinks.map((s) => s.close()));
});

function config(env: Record<string, string> = {}): Config {
  return parseConfig({
    DATABASE_URL: 'postgres://127.0.0.1/unused',
    KAFKA_BROKERS: kafka.brokers.join(','),
    ...env,
  });
}

function rdkafka(env: Record<string, string> = {}): RdkafkaSink {
  const sink = new RdkafkaSink(config(env), logger);
  sinks.push(sink);
  return sink;
}

function message(topic: string, key: string | null, value: string): OutboundMessage {
  return {
    topic,
    key,
    value,
    timestamp: '1700000000123',
    headers: { uuid: `u-${String(key)}`, statement: 'INSERT', table: 'public.t', database: 'db' },
  };
}

test('keys land on the partitions kafkajs (and the Java client) puts them on; messages arrive whole', async () => {
  const viaRdkafka = uniqueName('rdk');
  const viaKafkajs = uniqueName('kjs');
  await kafka.createTopic(viaRdkafka, 6);
  await kafka.createTopic(viaKafkajs, 6);
  const keys = Array.from({ length: 100 }, (_, i) => `k${i}`);
  const rd = rdkafka();
  const kjs = new KafkajsSink(createKafka(config(), logger), config(), logger);
  sinks.push(kjs);
  const rdResults = await rd.send(keys.map((k) => message(viaRdkafka, k, `{"key":"${k}"}`)));
  const kjsResults = await kjs.send(keys.map((k) => message(viaKafkajs, k, `{"key":"${k}"}`)));
  assert.ok(
    rdResults.every((r) => r.status === 'acked'),
    JSON.stringify(rdResults[0]),
  );
  assert.ok(kjsResults.every((r) => r.status === 'acked'));

  const partitionOf = async (topic: string): Promise<Map<string, number>> =>
    new Map((await kafka.consume(topic, 100)).map((m) => [String(m.key), m.partition]));
  const rdPartitions = await partitionOf(viaRdkafka);
  const kjsPartitions = await partitionOf(viaKafkajs);
  assert.deepEqual(
    keys.filter((k) => rdPartitions.get(k) !== kjsPartitions.get(k)),
    [],
    'keys on another partition',
  );
  assert.ok(new Set(rdPartitions.values()).size > 1, 'the keys spread over the partitions');

  const [first] = (await kafka.consume(viaRdkafka, 100)).filter((m) => m.key === 'k7');
  assert.deepEqual(
    first && { value: first.value, timestamp: first.timestamp, headers: first.headers },
    {
      value: '{"key":"k7"}',
      timestamp: '1700000000123',
      headers: { uuid: 'u-k7', statement: 'INSERT', table: 'public.t', database: 'db' },
    },
  );
});

test('a message too large among others: only it is refused, what follows in its partition is unsent, other partitions go on', async () => {
  const topic = uniqueName('rdk_large');
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '2000' });
  const other = uniqueName('rdk_other');
  await kafka.createTopic(other, 1);
  const rd = rdkafka();
  const results = await rd.send([
    message(topic, 'a', '{"n":1}'),
    message(topic, 'b', `{"blob":"${'x'.repeat(5000)}"}`),
    message(topic, 'a', '{"n":2}'),
    message(other, 'c', '{"n":3}'),
  ]);
  assert.deepEqual(
    results.map((r) =>
      r.status === 'refused' ? `refused ${r.code} ${String(r.retriable)}` : r.status,
    ),
    ['acked', 'refused MESSAGE_TOO_LARGE false', 'unsent', 'acked'],
  );
  const arrived = await kafka.consume(topic, 1, 10_000, 1_500);
  assert.deepEqual(
    arrived.map((m) => m.value),
    ['{"n":1}'],
  );
});

test('a missing topic is created when AUTO_CREATE_TOPICS allows it, and reported when it does not', async () => {
  const created = uniqueName('rdk_created');
  const absent = uniqueName('rdk_absent');
  assert.deepEqual(await rdkafka().prepareTopics([created]), []);
  const admin = await kafka.admin();
  try {
    assert.ok((await admin.listTopics()).includes(created));
  } finally {
    await admin.disconnect();
  }
  const problems = await rdkafka({ AUTO_CREATE_TOPICS: 'false' }).prepareTopics([absent]);
  assert.deepEqual(
    problems.map((p) => [p.topic, p.retriable, /AUTO_CREATE_TOPICS=false/.test(p.reason)]),
    [[absent, true, true]],
  );
});

test('a broker that cannot be reached: the send rejects, and check() throws', async () => {
  const sink = rdkafka({ KAFKA_BROKERS: '127.0.0.1:1' });
  await assert.rejects(sink.send([message('anything', 'k', '{}')]), /transport|timed out|broker/i);
  await assert.rejects(sink.check());
});

test('a client that cannot be loaded: a usage error (exit 2) that says how to install it, or to use kafkajs', () => {
  assert.throws(
    () => loadRdkafka('@confluentinc/no-such-client'),
    (error: unknown) => {
      assert.ok(error instanceof UsageError);
      assert.match(
        error.message,
        /KAFKA_CLIENT=rdkafka, but the librdkafka client .* cannot be loaded/,
      );
      assert.match(error.problems.join(' | '), /scripts\/setup\.sh.* \| .*KAFKA_CLIENT=kafkajs/);
      return true;
    },
  );
});

test('a null key on a compacted topic among other records: only it is refused (INVALID_RECORD), the records before it are acknowledged', async () => {
  const topic = uniqueName('rdk_compacted');
  await kafka.createTopic(topic, 1, { 'cleanup.policy': 'compact' });
  const rd = rdkafka();
  const results = await rd.send([
    message(topic, 'a', '{"n":1}'),
    message(topic, 'b', '{"n":2}'),
    message(topic, null, '{"n":3}'),
    message(topic, 'c', '{"n":4}'),
  ]);
  assert.deepEqual(
    results.map((r) =>
      r.status === 'refused' ? `refused ${r.code} ${String(r.retriable)}` : r.status,
    ),
    ['acked', 'acked', 'refused INVALID_RECORD false', 'unsent'],
  );
  const arrived = await kafka.consume(topic, 2, 10_000, 1_500);
  assert.deepEqual(
    arrived.map((m) => m.value),
    ['{"n":1}', '{"n":2}'],
  );
});

test('after close() a send is refused at once: nothing is produced by a sink that stopped', async () => {
  const topic = uniqueName('rdk_closed');
  await kafka.createTopic(topic, 1);
  const rd = rdkafka();
  assert.deepEqual(await rd.send([message(topic, 'a', '{}')]), [{ status: 'acked' }]);
  await rd.close();
  await assert.rejects(rd.send([message(topic, 'b', '{}')]), /closed/);
});
