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
const CLOSE_FLUSH_MS = 500;
/** How long after its message timeout a delivery report may still come. */
const REPORT_GRACE_MS = 5_000;
/**
 * librdkafka 2.x's report for the other records of a broker batch that held an invalid
 * one (the invalid one gets INVALID_RECORD): they were not written, and are not at fault.
 */
const INVALID_DIFFERENT_RECORD = '_INVALID_DIFFERENT_RECORD';
/** Refusals that call for sending a shared batch again in parts. */
const SPLIT = new Set([...RECORD_REFUSALS, INVALID_DIFFERENT_RECORD]);
const UNSENT: SendResult = Object.freeze({ status: 'unsent' });
const NO_REPORT: SendResult = Object.freeze({
  status: 'refused',
  retriable: true,
  code: 'NO_DELIVERY_REPORT',
  reason: 'librdkafka reported nothing for the message in time: it is sent again',
});

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
  /** A report said the producer failed for good (it is then replaced). */
  fatal: boolean;
  done: () => void;
}

/** A refusal, and whether librdkafka called it fatal (the producer is unusable). */
function refusalOf(rd: Module, error: unknown): { result: SendResult; fatal: boolean } {
  const kafkaError = asKafkaError(rd, error);
  const fatal =
    (error as { isFatal?: unknown } | null)?.isFatal === true ||
    (kafkaError as { type?: unknown }).type === '_FATAL';
  return { result: { status: 'refused', ...classifyKafkaError(kafkaError) }, fatal };
}

export class RdkafkaSink implements EventSink {
  private readonly rd: Module;
  private producer: Rdkafka.Producer;
  private admin: Rdkafka.IAdminClient | undefined;
  private connecting: Promise<void> | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly knownTopics = new Set<string>();

  constructor(
    private readonly config: Config,
    private readonly logger: Logger,
    /** Where librdkafka's own complaints go, at debug. */
    private readonly clientLogger: Logger = logger,
  ) {
    this.rd = loadRdkafka();
    this.producer = this.newProducer();
  }

  private newProducer(): Rdkafka.Producer {
    const producer = new this.rd.Producer(producerConfig(this.config));
    // The library's types say an error always comes; it is null for a delivered message.
    producer.on('delivery-report', (error: Rdkafka.LibrdKafkaError | null, report) => {
      const { pending, index } = report.opaque as { pending: Pending; index: number };
      if (pending.results[index] !== undefined) return; // already given up on
      pending.partitions[index] = report.partition;
      if (error) {
        const { result, fatal } = refusalOf(this.rd, error);
        pending.results[index] = result;
        pending.fatal ||= fatal;
      } else {
        pending.results[index] = ACKED;
      }
      pending.left -= 1;
      if (pending.left === 0) pending.done();
    });
    // librdkafka's own complaints (a broker down, a failed connection): its reports say
    // what became of each message, so these are for debugging only.
    producer.on('event.error', (error) => {
      this.clientLogger.debug({ err: error }, error.message);
    });
    return producer;
  }

  private connect(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the Kafka producer is closed'));
    this.connecting ??= new Promise<void>((resolve, reject) => {
      this.producer.connect(
        { timeout: REQUEST_TIMEOUT_MS },
        (error: Rdkafka.LibrdKafkaError | null) => {
          if (error) {
            reject(asKafkaError(this.rd, error));
            return;
          }
          try {
            // Delivery reports are dispatched by a thread of librdkafka's, as they come.
            this.producer.setPollInBackground(true);
            this.admin = this.rd.AdminClient.createFrom(this.producer);
            resolve();
          } catch (caught) {
            reject(caught instanceof Error ? caught : new Error(String(caught)));
          }
        },
      );
    }).catch((error: unknown) => {
      this.connecting = undefined;
      throw error;
    });
    return this.connecting;
  }

  /**
   * A fatal error (librdkafka's idempotent producer can no longer guarantee order, or the
   * cluster refused it an id): the producer is dropped and a new one connects next time.
   */
  private replaceProducer(): void {
    const old = this.producer;
    this.admin?.disconnect();
    this.admin = undefined;
    this.connecting = undefined;
    this.knownTopics.clear();
    this.producer = this.newProducer();
    old.disconnect(0, () => undefined);
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
    const sent = await this.produceAll(messages);
    if (sent.fatal) {
      this.replaceProducer();
      throw new Error(
        'the librdkafka producer failed for good (a fatal error): a new one is started; see the debug log for its reason',
      );
    }
    const { results, partitions } = sent;
    for (const [i, r] of results.entries()) {
      // A topic that failed for want of a leader or a broker is looked up again next time
      // (prepareTopics then fails fast while no broker answers).
      if (r.status === 'refused' && r.retriable) this.knownTopics.delete(messages[i]?.topic ?? '');
    }
    const [first] = results;
    if (
      first?.status === 'refused' &&
      results.every((r) => r.status === 'refused' && UNREACHABLE.has(r.code)) &&
      !(await this.metadata().then(
        () => true,
        () => false,
      ))
    ) {
      // Nothing delivered, and no broker answers: Kafka is unreachable, which the relay
      // backs off from as a whole (and reports). A broker that answers means a problem of
      // these partitions (no leader, not enough replicas): their topics are held back.
      throw Object.assign(
        new Error(`Kafka acknowledged none of ${messages.length} message(s): ${first.reason}`),
        { type: first.code },
      );
    }
    this.stopAtFirstRefusal(messages, partitions, results);
    // A record-level refusal (or librdkafka's "another record of the batch was invalid")
    // of a message that shared its partition's batch: from it on, that partition's
    // messages are sent again one at a time, so that only the message refused by itself
    // is. One at a time, not in halves: a resent group can be batched differently by
    // librdkafka, and whatever of it is acknowledged past a refusal arrives twice.
    for (const [i, r] of results.entries()) {
      if (r.status !== 'refused' || !SPLIT.has(r.code)) continue;
      const rest = messages
        .map((_, j) => j)
        .filter(
          (j) =>
            j >= i && messages[j]?.topic === messages[i]?.topic && partitions[j] === partitions[i],
        );
      if (rest.length > 1 || r.code === INVALID_DIFFERENT_RECORD) {
        await this.oneByOne(messages, rest, results);
      }
    }
    return results;
  }

  /**
   * The EventSink contract: per partition, in order, the first message not acknowledged
   * stops it; what was acknowledged after it counts as unsent (it is sent again after
   * the refused one). A message refused without a partition (before librdkafka chose
   * one) stops its whole topic, since a key's later message may have found one.
   */
  private stopAtFirstRefusal(
    messages: OutboundMessage[],
    partitions: number[],
    results: SendResult[],
  ): void {
    const stopped = new Set<string>();
    const stoppedTopics = new Set<string>();
    for (const [i, m] of messages.entries()) {
      const partition = `${m.topic}\u0000${String(partitions[i])}`;
      if (stoppedTopics.has(m.topic) || stopped.has(partition)) {
        results[i] = UNSENT;
        continue;
      }
      if (results[i]?.status === 'acked') continue;
      if (partitions[i] === -1) stoppedTopics.add(m.topic);
      else stopped.add(partition);
    }
  }

  /** Sends `indexes` (one partition's messages, in order) again, alone each, until one is refused. */
  private async oneByOne(
    messages: OutboundMessage[],
    indexes: number[],
    results: SendResult[],
  ): Promise<void> {
    for (const [n, i] of indexes.entries()) {
      const [result = UNSENT] = (await this.produceAll([messages[i] as OutboundMessage])).results;
      results[i] = result;
      if (result.status !== 'acked') {
        for (const j of indexes.slice(n + 1)) results[j] = UNSENT;
        return;
      }
    }
  }

  /**
   * Produces every message and waits for all their delivery reports: at most
   * MESSAGE_TIMEOUT_MS plus REPORT_GRACE_MS, after which a message without a report
   * counts as refused (retriable), so that a send can never hang.
   */
  private produceAll(
    messages: OutboundMessage[],
  ): Promise<{ results: SendResult[]; partitions: number[]; fatal: boolean }> {
    return new Promise((resolve) => {
      const deadline: { timer?: NodeJS.Timeout } = {};
      const pending: Pending = {
        results: new Array<SendResult>(messages.length),
        partitions: new Array<number>(messages.length).fill(-1),
        left: messages.length,
        fatal: false,
        done: () => {
          clearTimeout(deadline.timer);
          resolve({
            results: pending.results,
            partitions: pending.partitions,
            fatal: pending.fatal,
          });
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
          const { result, fatal } = refusalOf(this.rd, error);
          pending.results[index] = result;
          pending.fatal ||= fatal;
          pending.left -= 1;
        }
      }
      if (pending.left === 0) {
        pending.done();
        return;
      }
      deadline.timer = setTimeout(() => {
        for (let i = 0; i < messages.length; i += 1) {
          pending.results[i] ??= NO_REPORT;
        }
        pending.left = 0;
        pending.done();
      }, MESSAGE_TIMEOUT_MS + REPORT_GRACE_MS);
    });
  }

  /**
   * Stops: what librdkafka still holds gets CLOSE_FLUSH_MS to be delivered (the relay
   * deletes only what was reported acknowledged, so the rest simply stays queued); no
   * send after this.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      const { connecting } = this;
      if (!connecting) return;
      await connecting.catch(() => undefined);
      this.admin?.disconnect();
      await new Promise<void>((resolve) => {
        this.producer.disconnect(CLOSE_FLUSH_MS, () => {
          resolve();
        });
      });
    })();
    return this.closing;
  }
}
