/**
 * The Kafka side on librdkafka (@confluentinc/kafka-javascript, KAFKA_CLIENT=rdkafka): one
 * idempotent producer (acks = all, so a retry never duplicates or reorders a partition),
 * Java's murmur2 partitioner (keys land where kafkajs and the Java client put them), and
 * a delivery report per message, so that the relay deletes exactly what was acknowledged.
 * Encoding and batching happen in C, on librdkafka's own threads.
 *
 * librdkafka retries on its own until message.timeout.ms; a message it gives up on comes
 * back with its error. Its reports are turned into the EventSink contract: a partition
 * stops at its first refused message, and what was acknowledged after it in the same
 * partition counts as unsent (it is sent again, after the refused one: a copy, never a
 * key's later event ahead of its earlier one). A record-level refusal of a message that
 * travelled with others (too large: librdkafka refuses a whole broker batch) is tried
 * again alone, so that only the message that is refused by itself is.
 *
 * The native module is optional: it is loaded only when this sink is chosen, and a
 * machine where it cannot be loaded gets a message that says what to do.
 */
import { createRequire } from 'node:module';
import type * as Rdkafka from '@confluentinc/kafka-javascript';
import type { Config } from '../config.ts';
import { UsageError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { classifyKafkaError, RECORD_REFUSALS } from './errors.ts';
import { prepareTopics } from './prepare-topics.ts';
import {
  ACKED,
  type EventSink,
  type OutboundMessage,
  type SendResult,
  type TopicProblem,
} from './sink.ts';

type Module = typeof Rdkafka;

/**
 * How long librdkafka keeps trying to deliver a message before it reports the failure
 * (it retries within that time itself); the relay checks its lease before each send.
 */
const MESSAGE_TIMEOUT_MS = 10_000;
/** How long a metadata or admin request may take. */
const REQUEST_TIMEOUT_MS = 3_000;
/** How long a new topic may take until its partitions have leaders. */
const TOPIC_READY_TIMEOUT_MS = 10_000;
const TOPIC_READY_POLL_MS = 100;
/** librdkafka's errors for a message that found no broker to take it. */
const UNREACHABLE = new Set(['_MSG_TIMED_OUT', '_TRANSPORT', '_ALL_BROKERS_DOWN', '_TIMED_OUT']);
/** How long close() waits for messages still in librdkafka's queue. */
const CLOSE_FLUSH_MS = 5_000;

const PACKAGE = '@confluentinc/kafka-javascript';
let loaded: Module | undefined;

/**
 * The native client, or a UsageError that says why it cannot be used and what to do.
 * `name`: the package (tests name one that is not there).
 */
export function loadRdkafka(name = PACKAGE): Module {
  if (loaded && name === PACKAGE) return loaded;
  try {
    const require = createRequire(import.meta.url);
    const module = require(name) as Module;
    if (name === PACKAGE) loaded = module;
    return module;
  } catch (error) {
    const why = error instanceof Error ? error.message.split('\n')[0] : String(error);
    const problem = `KAFKA_CLIENT=rdkafka, but the librdkafka client (${name}) cannot be loaded: ${String(why)}`;
    throw new UsageError(problem, [
      problem,
      'install it: bash scripts/setup.sh (it installs the build packages and builds it when no prebuilt binary can be downloaded)',
      'or use the other client: KAFKA_CLIENT=kafkajs',
    ]);
  }
}

/**
 * librdkafka's error names, as the Kafka protocol spells them (errors.ts classifies
 * those); the rest keep librdkafka's name without its ERR_ prefix (`_MSG_TIMED_OUT`).
 */
const PROTOCOL_NAMES: Record<string, string> = {
  MSG_SIZE_TOO_LARGE: 'MESSAGE_TOO_LARGE',
  INVALID_MSG: 'CORRUPT_MESSAGE',
  TOPIC_EXCEPTION: 'INVALID_TOPIC_EXCEPTION',
  UNKNOWN_TOPIC_OR_PART: 'UNKNOWN_TOPIC_OR_PARTITION',
  NOT_LEADER_FOR_PARTITION: 'NOT_LEADER_OR_FOLLOWER',
  TOPIC_ALREADY_EXISTS: 'TOPIC_ALREADY_EXISTS',
};

/** The error of a librdkafka report or call, as errors.ts reads errors (`type`). */
function asKafkaError(rd: Module, error: unknown): Error {
  const code = (error as { code?: unknown } | null)?.code;
  const message =
    error instanceof Error
      ? error.message
      : String((error as { message?: unknown } | null)?.message ?? error);
  const wrapped = new Error(message);
  if (typeof code === 'number') {
    const name = Object.entries(rd.CODES.ERRORS).find(([, value]) => value === code)?.[0];
    const bare = name?.replace(/^ERR_/, '') ?? `CODE_${code}`;
    Object.assign(wrapped, { type: PROTOCOL_NAMES[bare] ?? bare, code });
  }
  return wrapped;
}

/** librdkafka's configuration from ours: the same variables mean the same for both clients. */
export function producerConfig(config: Config): Record<string, string | number | boolean> {
  const settings: Record<string, string | number | boolean> = {
    'bootstrap.servers': config.kafkaBrokers.join(','),
    'client.id': config.kafkaClientId,
    'enable.idempotence': true,
    acks: 'all',
    // Java's partitioner (murmur2 of the key); librdkafka's default is CRC32.
    partitioner: 'murmur2_random',
    // The relay hands over whole batches: little to gain from waiting for more.
    'linger.ms': 1,
    'message.timeout.ms': MESSAGE_TIMEOUT_MS,
    // Reconnect attempts at most a second apart: a message's timeout then fires on time.
    'reconnect.backoff.max.ms': 1_000,
    'socket.nagle.disable': true,
    'socket.keepalive.enable': true,
    // The broker's (per topic) max.message.bytes decides, not a client-side limit.
    'message.max.bytes': 1_000_000_000,
    // Never create a topic by producing to it: AUTO_CREATE_TOPICS decides (prepareTopics).
    'allow.auto.create.topics': false,
    dr_cb: true,
  };
  const { sasl, tls } = config;
  if (sasl || tls) {
    settings['security.protocol'] = `${sasl ? 'sasl_' : ''}${tls ? 'ssl' : 'plaintext'}`;
  }
  if (sasl) {
    settings['sasl.mechanisms'] = sasl.mechanism.toUpperCase();
    settings['sasl.username'] = sasl.username;
    settings['sasl.password'] = sasl.password;
  }
  if (tls) {
    if (tls.ca !== undefined) settings['ssl.ca.pem'] = tls.ca;
    if (tls.cert !== undefined) settings['ssl.certificate.pem'] = tls.cert;
    if (tls.key !== undefined) settings['ssl.key.pem'] = tls.key;
    if (!tls.rejectUnauthorized) {
      settings['enable.ssl.certificate.verification'] = false;
      settings['ssl.endpoint.identification.algorithm'] = 'none';
    }
  }
  return settings;
}

/** One send's messages awaiting their delivery reports. */
interface Pending {
  results: SendResult[];
  partitions: number[];
  left: number;
  done: () => void;
}

export class RdkafkaSink implements EventSink {
  private readonly rd: Module;
  private readonly producer: Rdkafka.Producer;
  private admin: Rdkafka.IAdminClient | undefined;
  private connecting: Promise<void> | undefined;
  private readonly knownTopics = new Set<string>();

  constructor(
    private readonly config: Config,
    private readonly logger: Logger,
    /** Where librdkafka's own complaints go, at debug. */
    clientLogger: Logger = logger,
  ) {
    this.rd = loadRdkafka();
    this.producer = new this.rd.Producer(producerConfig(config));
    // The library's types say an error always comes; it is null for a delivered message.
    this.producer.on('delivery-report', (error: Rdkafka.LibrdKafkaError | null, report) => {
      const { pending, index } = report.opaque as { pending: Pending; index: number };
      pending.partitions[index] = report.partition;
      pending.results[index] = error
        ? { status: 'refused', ...classifyKafkaError(asKafkaError(this.rd, error)) }
        : ACKED;
      pending.left -= 1;
      if (pending.left === 0) pending.done();
    });
    // librdkafka's own complaints (a broker down, a failed connection): its reports say
    // what became of each message, so these are for debugging only.
    this.producer.on('event.error', (error) => {
      clientLogger.debug({ err: error }, error.message);
    });
  }

  private connect(): Promise<void> {
    this.connecting ??= new Promise<void>((resolve, reject) => {
      this.producer.connect(
        { timeout: REQUEST_TIMEOUT_MS },
        (error: Rdkafka.LibrdKafkaError | null) => {
          if (error) reject(asKafkaError(this.rd, error));
          else resolve();
        },
      );
    }).then(
      () => {
        // Delivery reports are dispatched by a thread of librdkafka's, as they come.
        this.producer.setPollInBackground(true);
        this.admin = this.rd.AdminClient.createFrom(this.producer);
      },
      (error: unknown) => {
        this.connecting = undefined;
        throw error;
      },
    );
    return this.connecting;
  }

  private metadata(topic?: string): Promise<Rdkafka.Metadata> {
    return new Promise((resolve, reject) => {
      this.producer.getMetadata(
        topic === undefined
          ? { allTopics: true, timeout: REQUEST_TIMEOUT_MS }
          : { topic, allTopics: false, timeout: REQUEST_TIMEOUT_MS },
        (error: Rdkafka.LibrdKafkaError | null, data) => {
          if (error) reject(asKafkaError(this.rd, error));
          else resolve(data);
        },
      );
    });
  }

  /** Reaches the cluster now (a metadata request); throws when it cannot. */
  async check(): Promise<void> {
    await this.connect();
    await this.metadata();
  }

  async prepareTopics(topics: string[]): Promise<TopicProblem[]> {
    if (topics.every((t) => this.knownTopics.has(t))) return [];
    await this.connect();
    return prepareTopics({
      topics,
      known: this.knownTopics,
      admin: {
        listTopics: async () => (await this.metadata()).topics.map((t) => t.name),
        createTopic: (topic) => this.createTopic(topic),
        untilServed: (topic) => this.untilServed(topic),
      },
      config: this.config,
      logger: this.logger,
    });
  }

  /** Creates a topic; false when it exists already (another relay was first). */
  private createTopic(topic: string): Promise<boolean> {
    const { admin } = this;
    if (!admin) return Promise.reject(new Error('the Kafka admin client is not connected'));
    return new Promise((resolve, reject) => {
      admin.createTopic(
        {
          topic,
          num_partitions: this.config.topicPartitions ?? -1,
          replication_factor: this.config.topicReplicationFactor ?? -1,
        },
        REQUEST_TIMEOUT_MS,
        (error: Rdkafka.LibrdKafkaError | null) => {
          if (!error) resolve(true);
          else if (error.code === this.rd.CODES.ERRORS.ERR_TOPIC_ALREADY_EXISTS) resolve(false);
          else reject(asKafkaError(this.rd, error));
        },
      );
    });
  }

  /** Waits until every partition of a new topic has a leader (or the timeout passed). */
  private async untilServed(topic: string): Promise<void> {
    const deadline = performance.now() + TOPIC_READY_TIMEOUT_MS;
    for (;;) {
      const partitions = await this.metadata(topic)
        .then((m) => m.topics.find((t) => t.name === topic)?.partitions ?? [])
        .catch(() => []);
      if (partitions.length > 0 && partitions.every((p) => p.leader >= 0)) return;
      if (performance.now() > deadline) {
        this.logger.debug({ topic }, 'new topic not served yet: sending anyway');
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, TOPIC_READY_POLL_MS));
    }
  }

  async send(messages: OutboundMessage[]): Promise<SendResult[]> {
    if (messages.length === 0) return [];
    await this.connect();
    const { results, partitions } = await this.produceAll(messages);
    // Nothing delivered, and only for want of a broker: Kafka is unreachable, which the
    // relay backs off from as a whole (and reports), rather than a problem of these topics.
    for (const [i, r] of results.entries()) {
      // A topic that failed for want of a leader or a broker is looked up again next time
      // (prepareTopics then fails fast while no broker answers).
      if (r.status === 'refused' && r.retriable) this.knownTopics.delete(messages[i]?.topic ?? '');
    }
    const [first] = results;
    if (
      first?.status === 'refused' &&
      results.every((r) => r.status === 'refused' && UNREACHABLE.has(r.code))
    ) {
      throw Object.assign(
        new Error(`Kafka acknowledged none of ${messages.length} message(s): ${first.reason}`),
        {
          type: first.code,
        },
      );
    }
    // Per partition, in order: the first message not acknowledged stops it.
    const stopped = new Map<string, number>();
    const unsent: SendResult = { status: 'unsent' };
    for (const [i, m] of messages.entries()) {
      const partition = `${m.topic}\u0000${String(partitions[i] ?? -1)}`;
      const first = stopped.get(partition);
      if (first !== undefined) {
        results[i] = unsent;
        continue;
      }
      const result = results[i] as SendResult;
      if (result.status !== 'acked') stopped.set(partition, i);
    }
    // A record-level refusal of a message that shared its partition's batch with others:
    // it and the rest of that partition are tried again, one at a time, until the one
    // refused alone.
    for (const [, first] of stopped) {
      const result = results[first] as SendResult;
      if (result.status !== 'refused' || !RECORD_REFUSALS.has(result.code)) continue;
      const sameBatch = messages.some(
        (m, i) =>
          i !== first && m.topic === messages[first]?.topic && partitions[i] === partitions[first],
      );
      if (!sameBatch) continue;
      await this.oneByOne(messages, partitions, first, results);
    }
    return results;
  }

  /** Sends the messages of `first`'s partition from `first` on, alone each, stopping at a refusal. */
  private async oneByOne(
    messages: OutboundMessage[],
    partitions: number[],
    first: number,
    results: SendResult[],
  ): Promise<void> {
    const topic = messages[first]?.topic;
    const partition = partitions[first];
    for (let i = first; i < messages.length; i += 1) {
      const m = messages[i] as OutboundMessage;
      if (m.topic !== topic || (i !== first && partitions[i] !== partition)) continue;
      const [result = { status: 'unsent' }] = (await this.produceAll([m])).results;
      results[i] = result;
      if (result.status !== 'acked') {
        for (let j = i + 1; j < messages.length; j += 1) {
          if (messages[j]?.topic === topic && partitions[j] === partition) {
            results[j] = { status: 'unsent' };
          }
        }
        return;
      }
    }
  }

  /** Produces every message and waits for all their delivery reports. */
  private produceAll(
    messages: OutboundMessage[],
  ): Promise<{ results: SendResult[]; partitions: number[] }> {
    return new Promise((resolve) => {
      const pending: Pending = {
        results: new Array<SendResult>(messages.length),
        partitions: new Array<number>(messages.length).fill(-1),
        left: messages.length,
        done: () => {
          resolve({ results: pending.results, partitions: pending.partitions });
        },
      };
      for (const [index, m] of messages.entries()) {
        try {
          this.producer.produce(
            m.topic,
            null,
            Buffer.from(m.value),
            m.key,
            Number(m.timestamp),
            { pending, index },
            Object.entries(m.headers).map(([name, value]) => ({ [name]: value })),
          );
        } catch (error) {
          // Refused before it was queued (a full queue, a message over every limit).
          pending.results[index] = {
            status: 'refused',
            ...classifyKafkaError(asKafkaError(this.rd, error)),
          };
          pending.left -= 1;
        }
      }
      if (pending.left === 0) pending.done();
    });
  }

  async close(): Promise<void> {
    if (!this.connecting) return;
    await this.connecting.catch(() => undefined);
    this.admin?.disconnect();
    await new Promise<void>((resolve) => {
      this.producer.flush(CLOSE_FLUSH_MS, () => {
        this.producer.disconnect(CLOSE_FLUSH_MS, () => {
          resolve();
        });
      });
    });
    this.connecting = undefined;
  }
}
