/**
 * The relay with another sink behind the same `EventSink` interface, for the drain and
 * latency benchmarks (BENCH_SINK):
 *   discard       the Kafka send does nothing: fetch + delete only, so the report shows
 *                 how much of the time is PostgreSQL and the loop, and how much is Kafka;
 *   platformatic  sends with @platformatic/kafka instead of kafkajs (topics are still
 *                 prepared with kafkajs's admin client): the alternative client, measured
 *                 in the same run.
 * Built with the package (dist/bench/relay-child.js) so it runs on plain node like the
 * CLI, and configured from the environment like the CLI.
 */
import {
  Producer,
  ProduceAcks,
  compatibilityPartitioner,
  stringSerializers,
} from '@platformatic/kafka';
import { parseConfig } from '../src/config.ts';
import { startRelay } from '../src/commands/relay.ts';
import { createKafka, KafkajsSink } from '../src/kafka/kafkajs-sink.ts';
import { ACKED, type EventSink } from '../src/kafka/sink.ts';
import { createLogger, type Logger } from '../src/logger.ts';
import type { Config } from '../src/config.ts';

const discard: EventSink = {
  prepareTopics: () => Promise.resolve([]),
  send: (messages) => Promise.resolve(messages.map(() => ACKED)),
  close: () => Promise.resolve(),
};

/**
 * Sends like KafkajsSink (acks = all, Java-compatible murmur2 partitions), without its
 * per-partition accounting: a failure rejects the whole send.
 */
function platformaticSink(config: Config, logger: Logger): EventSink {
  const topics = new KafkajsSink(createKafka(config, logger), config, logger);
  const producer = new Producer({
    clientId: config.kafkaClientId,
    bootstrapBrokers: config.kafkaBrokers,
    serializers: stringSerializers,
    partitioner: compatibilityPartitioner,
  });
  return {
    prepareTopics: (list) => topics.prepareTopics(list),
    async send(messages) {
      await producer.send({
        acks: ProduceAcks.ALL,
        messages: messages.map((m) => ({
          topic: m.topic,
          ...(m.key === null ? {} : { key: m.key }),
          value: m.value,
          timestamp: BigInt(m.timestamp),
          headers: new Map(Object.entries(m.headers)),
        })),
      });
      return messages.map(() => ACKED);
    },
    async close() {
      await producer.close();
      await topics.close();
    },
  };
}

const config = parseConfig(process.env);
const logger = createLogger(config.logLevel);
const kind = process.env.BENCH_SINK;
if (kind !== 'discard' && kind !== 'platformatic') {
  throw new Error(`BENCH_SINK must be discard or platformatic, got "${String(kind)}"`);
}
const sink = kind === 'discard' ? discard : platformaticSink(config, logger);
const running = await startRelay(config, logger, { sink });
if (!running) throw new Error('the relay stopped while starting');
const stop = (): void => void running.shutdown();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
await running.done;
await running.shutdown();
