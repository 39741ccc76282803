/**
 * The librdkafka sink (KAFKA_CLIENT=rdkafka) against the real broker, beside the kafkajs
 * sink: keys land on the partitions kafkajs and the Java client give them (Java's
 * murmur2), messages arrive whole (key, value, timestamp, headers), nothing of a
 * partition is written after a refused message, only the message refused alone is
 * refused, and a broker that cannot be reached rejects the send. The whole relay suite also runs with it (npm run test:rdkafka).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, test } from 'node:test';
import { resolveKafkaRuntime } from '../../scripts/kafka-broker.ts';
import { parseConfig, type Config } from '../../src/config.ts';
import { createKafka, KafkajsSink } from '../../src/kafka/kafkajs-sink.ts';
import { UsageError } from '../../src/errors.ts';
import { loadRdkafka, RdkafkaSink } from '../../src/kafka/rdkafka-sink.ts';
import type { EventSink, OutboundMessage } from '../../src/kafka/sink.ts';
import { createLogger } from '../../src/logger.ts';
import { uniqueName, useKafka } from '../helpers.ts';

const run = promisify(execFile);
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

/**
 * The partitions the Java client gives these keys: its own partitioner for keyed records
 * (BuiltInPartitioner.partitionForKey, in the broker's kafka-clients jar), run by Java.
 */
async function javaPartitionsOf(keys: string[], partitions: number): Promise<Map<string, number>> {
  const { libDir } = await resolveKafkaRuntime();
  const dir = mkdtempSync(join(tmpdir(), 'pg2kafka-partitioner-'));
  try {
    const source = join(dir, 'Partitions.java');
    writeFileSync(
      source,
      `import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
public class Partitions {
  public static void main(String[] args) {
    int n = Integer.parseInt(args[0]);
    for (int i = 1; i < args.length; i++) {
      byte[] key = args[i].getBytes(java.nio.charset.StandardCharsets.UTF_8);
      System.out.println(args[i] + " " + BuiltInPartitioner.partitionForKey(key, n));
    }
  }
}
`,
    );
    const { stdout } = await run('java', [
      '-cp',
      join(libDir, '*'),
      source,
      String(partitions),
      ...keys,
    ]);
    return new Map(
      stdout
        .trim()
        .split('\n')
        .map((line) => {
          const [key = '', partition = ''] = line.split(' ');
          return [key, Number(partition)];
        }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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

test('keys land on the partitions kafkajs and the Java client put them on; messages arrive whole', async () => {
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
  const javaPartitions = await javaPartitionsOf(keys, 6);
  assert.deepEqual(
    keys.filter((k) => rdPartitions.get(k) !== javaPartitions.get(k)),
    [],
    "keys on another partition than the Java client's partitioner puts them",
  );

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
        /KAFKA_CLIENT=rdkafka \(the default\), but the librdkafka client .* cannot be loaded/,
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

test('a refused message among many of its partition: nothing after it is written, whatever batches librdkafka would form', async () => {
  // Enough small messages after the refused one that producing them takes longer than
  // librdkafka's linger: sent as they come, they would travel in later broker batches
  // that the broker accepts after it refused the big one (a key's later event ahead of
  // an earlier one that stays queued, and a copy when it is sent again).
  const topic = uniqueName('rdk_many');
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '100000' });
  const rd = rdkafka();
  const small = (n: number): OutboundMessage =>
    message(topic, `k${n % 10}`, `{"n":${n},"pad":"${'p'.repeat(300)}"}`);
  for (let round = 0; round < 3; round += 1) {
    const messages = [
      small(0),
      message(topic, 'k1', `{"blob":"${'x'.repeat(150_000)}"}`),
      ...Array.from({ length: 1000 }, (_, i) => small(i + 1)),
    ];
    const results = await rd.send(messages);
    const statuses = results.map((r) => (r.status === 'refused' ? r.code : r.status));
    assert.deepEqual(
      [statuses[0], statuses[1], new Set(statuses.slice(2))],
      ['acked', 'MESSAGE_TOO_LARGE', new Set(['unsent'])],
      `round ${String(round)}`,
    );
  }
  const arrived = await kafka.consume(topic, 3, 10_000, 2_000);
  assert.deepEqual(
    arrived.map((m) => (JSON.parse(m.value ?? '{}') as { n?: number }).n),
    [0, 0, 0],
    'only the message before the refused one, once per round',
  );
});

test('a topic with a small max.message.bytes: many small messages all arrive, in order, once', async () => {
  const topic = uniqueName('rdk_small_limit');
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '3000' });
  const rd = rdkafka();
  const messages = Array.from({ length: 60 }, (_, n) =>
    message(topic, `k${n % 3}`, `{"n":${n},"pad":"${'p'.repeat(150)}"}`),
  );
  const results = await rd.send(messages);
  assert.deepEqual(new Set(results.map((r) => r.status)), new Set(['acked']));
  const arrived = await kafka.consume(topic, 60, 10_000, 1_500);
  assert.deepEqual(
    arrived.map((m) => (JSON.parse(m.value ?? '{}') as { n?: number }).n),
    messages.map((_, n) => n),
  );
});

test('a timestamp older than the topic accepts: only it is refused, what follows in its topic is unsent', async () => {
  const topic = uniqueName('rdk_old');
  await kafka.createTopic(topic, 1, { 'message.timestamp.before.max.ms': '3600000' });
  const rd = rdkafka();
  const now = Date.now();
  const at = (key: string, ms: number): OutboundMessage => ({
    ...message(topic, key, `{"key":"${key}"}`),
    timestamp: String(ms),
  });
  const results = await rd.send([
    at('a', now),
    at('b', now - 2 * 3_600_000),
    ...Array.from({ length: 200 }, (_, n) => at(`c${n}`, now)),
  ]);
  const statuses = results.map((r) => (r.status === 'refused' ? r.code : r.status));
  assert.deepEqual(
    [statuses[0], statuses[1], new Set(statuses.slice(2))],
    ['acked', 'INVALID_TIMESTAMP', new Set(['unsent'])],
  );
  const arrived = await kafka.consume(topic, 1, 10_000, 1_500);
  assert.deepEqual(
    arrived.map((m) => m.key),
    ['a'],
  );
});

test('a send of several rounds asks whether the lease is still trusted before each round after the first, and sends nothing more once it is not', async () => {
  const topic = uniqueName('rdk_untrusted');
  await kafka.createTopic(topic, 1, { 'max.message.bytes': '3000' });
  const rd = rdkafka();
  let asked = 0;
  // Three rounds: the 5 kB message goes alone (the topic takes 3,000 bytes at most).
  const results = await rd.send(
    [
      message(topic, 'a', '{"n":1}'),
      message(topic, 'b', `{"blob":"${'x'.repeat(5000)}"}`),
      message(topic, 'c', '{"n":3}'),
    ],
    () => {
      asked += 1;
      return false;
    },
  );
  assert.deepEqual(
    { results: results.map((r) => r.status), asked },
    { results: ['acked', 'unsent', 'unsent'], asked: 1 },
  );
  const arrived = await kafka.consume(topic, 1, 10_000, 1_500);
  assert.deepEqual(
    arrived.map((m) => m.value),
    ['{"n":1}'],
  );
});
