/**
 * The Kafka side on librdkafka (@confluentinc/kafka-javascript, KAFKA_CLIENT=rdkafka): one
 * idempotent producer (acks = all, so a retry never duplicates or reorders a partition),
 * Java's murmur2 partitioner (keys land where kafkajs and the Java client put them), and
 * a delivery report per message, so that the relay deletes exactly what was acknowledged.
 * Encoding and batching happen in C, on librdkafka's own threads.
 *
 * librdkafka retries on its own until message.timeout.ms; a message it gives up on comes
 * back with its error. Its reports are turned into the EventSink contract: a partition
 * stops at its first refused message, and nothing after it may be written.
 *
 * librdkafka forms broker batches as messages come (linger.ms) and sends a partition's
 * next batch while the one before is in flight: a batch the broker refuses for good can
 * be followed by a later one it accepts, so a key's later event would be written ahead
 * of an earlier one that stays queued. So one send is one broker batch per partition:
 * the linger is long, the batch limits are above what one send may hold, and the send
 * is flushed once every message is queued. A batch is refused whole (the broker checks
 * a batch's size against the topic's max.message.bytes, and refuses a batch holding an
 * invalid record), and a refused one is sent again in halves, each again one batch, so
 * that only the message that is refused by itself is.
 *
 * The native module is optional: it is loaded only when this sink is chosen, and a
 * machine where it cannot be loaded gets a message that says what to do.
 */
import { createRequire } from 'node:module';
import type * as Rdkafka from '@confluentinc/kafka-javascript';
import type { Admin } from 'kafkajs';
import type { Config } from '../config.ts';
import { UsageError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { classifyKafkaError, RECORD_REFUSALS } from './errors.ts';
import { encodeMarker, MARKER_PARTITION, readLastMarker } from './commit-marker.ts';
import { createKafka } from './kafkajs-sink.ts';
import { prepareTopics } from './prepare-topics.ts';
import {
  DEFAULT_TOPIC_LIMITS,
  describeTopicLimits,
  produceRounds,
  type TopicLimits,
} from './topic-limits.ts';
import {
  ACKED,
  type EventSink,
  type OutboundMessage,
  type SendResult,
  type TopicProblem,
  type Transactions,
} from './sink.ts';

type Module = typeof Rdkafka;

/**
 * How long librdkafka keeps trying to deliver a message before it reports the failure
 * (it retries within that time itself); the relay checks its lease before each send.
 */
const MESSAGE_TIMEOUT_MS = 10_000;
/**
 * Longest wait before librdkafka sends what it holds: never reached, since every send is
 * flushed at once (a shorter linger would cut a partition's messages into batches).
 */
const LINGER_MS = 1_000;
/**
 * Most bytes (estimated from above, messageBytes) and messages one send produces: the
 * batch limits are set to these, so a partition's messages of one send make one batch.
 * What is over them is left unsent (the relay's requests stay far below).
 */
const SEND_BYTES_LIMIT = 8 * 1024 * 1024;
const SEND_MESSAGES_LIMIT = 1_000_000;
/**
 * Exactly-once: how long the broker lets a transaction stay open before it aborts it
 * (a relay that died mid-batch); within the broker's transaction.max.timeout.ms (15 min).
 */
const TRANSACTION_TIMEOUT_MS = 60_000;
/** How long initTransactions, a commit or an abort may take. */
const TRANSACTION_CALL_TIMEOUT_MS = 10_000;
/** How long a topic's limits are trusted before they are read again. */
const LIMITS_MAX_AGE_MS = 5 * 60_000;
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
    const problem = `KAFKA_CLIENT=rdkafka (the default), but the librdkafka client (${name}) cannot be loaded: ${String(why)}`;
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

/** How the client reaches the cluster (brokers, SASL, TLS), for producer and consumer alike. */
export function connectionConfig(config: Config): Record<string, string | number | boolean> {
  const settings: Record<string, string | number | boolean> = {
    'bootstrap.servers': config.kafkaBrokers.join(','),
    'client.id': config.kafkaClientId,
    // Reconnect attempts at most a second apart: a message's timeout then fires on time.
    'reconnect.backoff.max.ms': 1_000,
    'socket.nagle.disable': true,
    'socket.keepalive.enable': true,
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

/**
 * librdkafka's configuration from ours: the same variables mean the same for both clients.
 * `transactionalId`: exactly-once delivery's producer.
 */
export function producerConfig(
  config: Config,
  transactionalId?: string,
): Record<string, string | number | boolean> {
  return {
    ...connectionConfig(config),
    'enable.idempotence': true,
    acks: 'all',
    // Java's partitioner (murmur2 of the key); librdkafka's default is CRC32.
    partitioner: 'murmur2_random',
    // One broker batch per partition per send (see the top of this file).
    'linger.ms': LINGER_MS,
    'batch.size': SEND_BYTES_LIMIT,
    'batch.num.messages': SEND_MESSAGES_LIMIT,
    'queue.buffering.max.messages': SEND_MESSAGES_LIMIT,
    'message.timeout.ms': MESSAGE_TIMEOUT_MS,
    // The broker's (per topic) max.message.bytes decides, not a client-side limit.
    'message.max.bytes': 1_000_000_000,
    // Never create a topic by producing to it: AUTO_CREATE_TOPICS decides (prepareTopics).
    'allow.auto.create.topics': false,
    dr_cb: true,
    ...(transactionalId === undefined
      ? {}
      : {
          'transactional.id': transactionalId,
          'transaction.timeout.ms': TRANSACTION_TIMEOUT_MS,
        }),
  };
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

/** A message, and for a marker the partition it goes to (else librdkafka's partitioner). */
type Outbound = OutboundMessage & { partition?: number };

interface Produced {
  results: SendResult[];
  partitions: number[];
  fatal: boolean;
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
  /** Each topic's limits, and when they were read (performance.now()). */
  private readonly limits = new Map<string, TopicLimits & { readAt: number }>();
  /** Why librdkafka's last broker connection failed (its log line), if one did. */
  private lastFailure: string | undefined;
  /** The last send reached no broker at all. */
  private unreachable = false;
  /** A kafkajs admin client, for DescribeConfigs only. */
  private describer: Admin | undefined;
  /** The last flush (see produceAll): the next round of several messages waits for it. */
  private flushed: Promise<void> = Promise.resolve();
  /** Exactly-once: most messages of a topic per produce round, after a refusal (narrow()). */
  private readonly roundCaps = new Map<string, number>();
  /** DELIVERY=exactly-once (see Transactions in sink.ts); undefined: at least once. */
  readonly transactions: Transactions | undefined;
  /**
   * The transactional producer's state: its transactional.id and marker topic, the lease
   * it was set up under, whether initTransactions succeeded for the current producer,
   * whether a transaction is open, and whether a message of it was not acknowledged.
   */
  private transaction:
    | {
        id: string;
        markerTopic: string;
        epoch: string;
        ready: boolean;
        open: boolean;
        failed: boolean;
      }
    | undefined;

  constructor(
    private readonly config: Config,
    private readonly logger: Logger,
    /** Where librdkafka's own complaints go, at debug. */
    private readonly clientLogger: Logger = logger,
  ) {
    this.rd = loadRdkafka();
    this.producer = this.newProducer();
    this.transactions =
      config.delivery === 'exactly-once'
        ? {
            recover: (markerTopic, epoch, trusted) => this.recover(markerTopic, epoch, trusted),
            begin: () => this.begin(),
            commit: (ids) => this.commit(ids),
            abort: () => this.abort(),
          }
        : undefined;
  }

  private newProducer(): Rdkafka.Producer {
    const producer = new this.rd.Producer(producerConfig(this.config, this.transaction?.id));
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
    // Why a broker connection failed (a refused login, an untrusted certificate) comes
    // only as a log line of librdkafka's; its errors then just say "transport failure".
    producer.on('event.log', (log: { severity: number; fac: string; message: string }) => {
      if (log.fac === 'FAIL' && log.severity <= 4) {
        this.lastFailure = log.message.replace(/^\[thrd:[^\]]*\]: /, '');
      }
    });
    return producer;
  }

  /** `error`, with why librdkafka's last broker connection failed, and what to check. */
  private withLastFailure(error: Error): Error {
    const why = this.lastFailure;
    if (why === undefined || error.message.includes(why)) return error;
    const hint = /certificate verify failed/i.test(why)
      ? " (KAFKA_TLS_CA_FILE must hold the CA that signed the broker's certificate, and the certificate must name the host in KAFKA_BROKERS)"
      : '';
    error.message = `${error.message}: ${why}${hint}`;
    return error;
  }

  private connect(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the Kafka producer is closed'));
    if (this.connecting) return this.connecting;
    // The producer this connect is for: a fatal error may replace it before it connects.
    const { producer } = this;
    const connecting = new Promise<void>((resolve, reject) => {
      producer.connect({ timeout: REQUEST_TIMEOUT_MS }, (error: Rdkafka.LibrdKafkaError | null) => {
        if (producer !== this.producer) {
          // replaceProducer() left it alone while it was not connected yet.
          if (!error) producer.disconnect(0, () => undefined);
          reject(new Error('the Kafka producer was replaced while it connected'));
          return;
        }
        if (error) {
          reject(this.withLastFailure(asKafkaError(this.rd, error)));
          return;
        }
        this.lastFailure = undefined;
        try {
          // Delivery reports are dispatched by a thread of librdkafka's, as they come.
          producer.setPollInBackground(true);
          this.admin = this.rd.AdminClient.createFrom(producer);
          resolve();
        } catch (caught) {
          reject(caught instanceof Error ? caught : new Error(String(caught)));
        }
      });
    }).catch((error: unknown) => {
      if (this.connecting === connecting) this.connecting = undefined;
      throw error;
    });
    this.connecting = connecting;
    return connecting;
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
    if (this.transaction) {
      // A new producer must call initTransactions first (recover() does).
      this.transaction.ready = false;
      this.transaction.open = false;
    }
    this.producer = this.newProducer();
    this.flushed = Promise.resolve();
    try {
      // Throws when it never connected (its flush refuses).
      if (old.isConnected()) old.disconnect(0, () => undefined);
    } catch (error) {
      this.logger.debug({ err: error }, 'the replaced producer did not disconnect');
    }
  }

  /** Calls a librdkafka function that ends in a callback; rejects with its error. */
  private call(run: (cb: (error: Rdkafka.LibrdKafkaError | null) => void) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      run((error) => {
        if (!error) {
          resolve();
          return;
        }
        // The transaction calls' flags say what to do next: retry, abort, or start over.
        const { isRetriable, isTxnRequiresAbort, isFatal } = error as {
          isRetriable?: boolean;
          isTxnRequiresAbort?: boolean;
          isFatal?: boolean;
        };
        reject(
          Object.assign(asKafkaError(this.rd, error), { isRetriable, isTxnRequiresAbort, isFatal }),
        );
      });
    });
  }

  private async recover(
    markerTopic: string,
    epoch: string,
    trusted: () => boolean,
  ): Promise<string[]> {
    const current = this.transaction;
    if (current?.ready && current.epoch === epoch) return [];
    const id = this.config.kafkaTransactionalId ?? markerTopic;
    this.transaction = { id, markerTopic, epoch, ready: false, open: false, failed: false };
    // A producer with the transactional.id (any earlier one of this process is dropped).
    this.replaceProducer();
    await this.connect();
    const [problem] = await this.prepareTopics([markerTopic]);
    if (problem) {
      throw new Error(`exactly-once delivery needs its marker topic: ${problem.reason}`);
    }
    // Fences every earlier producer with this transactional.id, and completes or aborts
    // the transaction one of them left open: never by a relay that may have lost the
    // lease meanwhile (it would fence the leader that took it).
    if (!trusted()) throw new Error('exactly-once: the lease is not trusted any more');
    await this.call((cb) => {
      this.producer.initTransactions(TRANSACTION_CALL_TIMEOUT_MS, cb);
    });
    const ids = await readLastMarker({
      rd: this.rd,
      settings: connectionConfig(this.config),
      topic: markerTopic,
      transactionalId: id,
    });
    this.transaction.ready = true;
    this.logger.info(
      { transactionalId: id, markerTopic, lastCommitted: ids.length },
      'exactly-once: earlier producers of this install are fenced; the queue ids of the last committed transaction are deleted before shipping',
    );
    return ids;
  }

  private async begin(): Promise<void> {
    const t = this.transaction;
    if (!t?.ready) {
      throw new Error('exactly-once: the transactional producer is not set up yet');
    }
    if (t.open) await this.abort();
    try {
      await this.call((cb) => {
        this.producer.beginTransaction(cb);
      });
    } catch (error) {
      if ((error as { isFatal?: boolean }).isFatal === true) this.replaceProducer();
      throw error;
    }
    t.open = true;
    t.failed = false;
  }

  private async commit(ids: string[]): Promise<boolean> {
    const t = this.transaction;
    if (!t?.open) return false;
    if (t.failed || ids.length === 0) {
      await this.abort();
      return false;
    }
    const marker: Outbound = {
      topic: t.markerTopic,
      key: t.id,
      value: encodeMarker(ids, t.epoch),
      timestamp: String(Date.now()),
      headers: {},
      partition: MARKER_PARTITION,
    };
    const [written] = (await this.produce([marker])).results;
    if (written?.status !== 'acked') {
      this.logger.warn(
        { markerTopic: t.markerTopic, reason: written?.status === 'refused' ? written.reason : '' },
        'exactly-once: the marker was not written; the transaction is aborted and sent again',
      );
      await this.abort();
      return false;
    }
    const deadline = performance.now() + TRANSACTION_CALL_TIMEOUT_MS;
    for (;;) {
      try {
        await this.call((cb) => {
          this.producer.commitTransaction(TRANSACTION_CALL_TIMEOUT_MS, cb);
        });
        t.open = false;
        // A batch (several sends) went through whole: what a refusal narrowed (narrow())
        // was found and set aside, or passes now.
        this.roundCaps.clear();
        return true;
      } catch (error) {
        const flags = error as { isRetriable?: boolean; isTxnRequiresAbort?: boolean };
        if (flags.isTxnRequiresAbort === true) {
          await this.abort();
          return false;
        }
        if (flags.isRetriable !== true || performance.now() > deadline) {
          // Whether it committed is not known: recover() reads the marker to find out
          // before the next batch (its ids are then deleted, or sent again).
          this.logger.warn(
            { err: error },
            'exactly-once: the commit did not complete; the last committed transaction is read again before the next batch',
          );
          this.replaceProducer();
          return false;
        }
      }
    }
  }

  private async abort(): Promise<void> {
    const t = this.transaction;
    if (!t?.open) return;
    t.open = false;
    try {
      await this.call((cb) => {
        this.producer.abortTransaction(TRANSACTION_CALL_TIMEOUT_MS, cb);
      });
    } catch (error) {
      // A fenced or failed producer: the broker aborts its transaction (or its timeout does).
      this.logger.debug({ err: error }, 'exactly-once: the abort failed; the producer is replaced');
      this.replaceProducer();
    }
  }

  private metadata(topic?: string): Promise<Rdkafka.Metadata> {
    return new Promise((resolve, reject) => {
      this.producer.getMetadata(
        topic === undefined
          ? { allTopics: true, timeout: REQUEST_TIMEOUT_MS }
          : { topic, allTopics: false, timeout: REQUEST_TIMEOUT_MS },
        (error: Rdkafka.LibrdKafkaError | null, data) => {
          if (error) {
            reject(this.withLastFailure(asKafkaError(this.rd, error)));
            return;
          }
          this.lastFailure = undefined;
          resolve(data);
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

  async send(messages: OutboundMessage[], trusted?: () => boolean): Promise<SendResult[]> {
    if (messages.length === 0) return [];
    // A transaction with a refusal can only be aborted: librdkafka refuses to add to it.
    if (this.transaction?.open && this.transaction.failed) return messages.map(() => UNSENT);
    await this.connect();
    if (this.unreachable) {
      // The last send found no broker: ask one first (a few seconds) rather than wait a
      // message timeout for each retry while Kafka is still down.
      await this.metadata();
      this.unreachable = false;
    }
    await this.readLimits(messages.map((m) => m.topic));
    const results = new Array<SendResult>(messages.length).fill(UNSENT);
    // A topic with a message not acknowledged sends nothing in the rounds after.
    const stopped = new Set<string>();
    let nothingAcked = true;
    const rounds = produceRounds(messages, (topic) => this.limitsOf(topic), {
      maxBytes: SEND_BYTES_LIMIT,
      maxMessages: SEND_MESSAGES_LIMIT,
      now: Date.now(),
      topicMessages: (topic) => this.roundCaps.get(topic) ?? Infinity,
    });
    for (const [n, round] of rounds.entries()) {
      const indexes = round.filter((i) => !stopped.has((messages[i] as OutboundMessage).topic));
      if (indexes.length === 0) continue;
      // A round can take a message timeout: a relay paused or cut off past its lease
      // meanwhile sends nothing more (a standby may be shipping these events).
      if (n > 0 && trusted && !trusted()) break;
      const sent = await this.sendRound(
        indexes.map((i) => messages[i] as OutboundMessage),
        nothingAcked,
        trusted,
      );
      for (const [n, i] of indexes.entries()) {
        const result = sent[n] ?? UNSENT;
        results[i] = result;
        if (result.status === 'acked') nothingAcked = false;
        else stopped.add((messages[i] as OutboundMessage).topic);
      }
      if (this.transaction && sent.some((r) => r.status !== 'acked')) {
        // A transaction with a message not acknowledged can only be aborted: nothing of
        // it counts. Its first refusal is what the relay acts on; the rest goes again.
        this.transaction.failed = true;
        const first = indexes.find((i) => results[i]?.status !== 'acked');
        for (const i of indexes)
          if (i !== first && results[i]?.status !== 'acked') results[i] = UNSENT;
        break;
      }
    }
    for (const [i, r] of results.entries()) {
      if (r.status !== 'refused') continue;
      const topic = (messages[i] as OutboundMessage).topic;
      // Read the topic's configuration again: it may have changed.
      this.limits.delete(topic);
      // A topic that failed for want of a leader or a broker is looked up again next time
      // (prepareTopics then fails fast while no broker answers).
      if (r.retriable) this.knownTopics.delete(topic);
    }
    return results;
  }

  /**
   * One produce round: one broker batch per partition. `first`: nothing of the send was
   * acknowledged yet, so a round that reaches no broker at all rejects the send.
   */
  private async sendRound(
    messages: OutboundMessage[],
    first: boolean,
    trusted: (() => boolean) | undefined,
  ): Promise<SendResult[]> {
    const { results, partitions } = await this.produce(messages);
    const [head] = results;
    if (
      first &&
      head?.status === 'refused' &&
      results.every((r) => r.status === 'refused' && UNREACHABLE.has(r.code)) &&
      !(await this.metadata().then(
        () => true,
        () => false,
      ))
    ) {
      // Nothing delivered, and no broker answers: Kafka is unreachable, which the relay
      // backs off from as a whole (and reports). A broker that answers means a problem of
      // these partitions (no leader, not enough replicas): their topics are held back.
      this.unreachable = true;
      throw Object.assign(
        this.withLastFailure(
          new Error(`Kafka acknowledged none of ${messages.length} message(s): ${head.reason}`),
        ),
        { type: head.code },
      );
    }
    this.stopAtFirstRefusal(messages, partitions, results);
    // A partition's batch refused for a record-level reason that the topic's limits did
    // not foresee (too large, an invalid record, or librdkafka's "another record of the
    // batch was invalid"): from its first message on, it is sent again in halves, so
    // that only the message refused by itself is. In a transaction that is across
    // transactions (a refusal aborts one): see narrow().
    const refusedBatches: number[][] = [];
    for (const [i, r] of results.entries()) {
      if (r.status !== 'refused' || !SPLIT.has(r.code)) continue;
      const batch = messages
        .map((_, j) => j)
        .filter(
          (j) =>
            j >= i && messages[j]?.topic === messages[i]?.topic && partitions[j] === partitions[i],
        );
      if (batch.length > 1 || r.code === INVALID_DIFFERENT_RECORD) refusedBatches.push(batch);
    }
    if (this.transaction) {
      for (const batch of refusedBatches) this.narrow(messages, batch, results);
      return results;
    }
    for (const batch of refusedBatches) await this.inHalves(messages, batch, results, trusted);
    return results;
  }

  /**
   * Exactly-once: a partition's batch of `indexes` was refused whole, so its first message
   * is not known to be at fault, and the transaction can only be aborted. They all go
   * again, in the next transaction, in rounds of at most half as many of the topic's
   * messages (and with its limits read again): halving from one transaction to the next
   * until the message refused alone is found, which the relay then sets aside. The
   * narrowing ends once a transaction is committed.
   */
  private narrow(messages: OutboundMessage[], indexes: number[], results: SendResult[]): void {
    const topic = (messages[indexes[0] as number] as OutboundMessage).topic;
    for (const i of indexes) results[i] = UNSENT;
    this.limits.delete(topic);
    const cap = Math.max(1, Math.ceil(indexes.length / 2));
    this.roundCaps.set(topic, Math.min(cap, this.roundCaps.get(topic) ?? Infinity));
    this.logger.info(
      { topic, messages: indexes.length, nextRound: cap },
      'exactly-once: Kafka refused a batch whole; the transaction is aborted, and the next sends this topic in smaller rounds to find the refused event',
    );
  }

  /** Reads the limits of the topics not read lately (see topic-limits.ts). */
  private async readLimits(topics: string[]): Promise<void> {
    const now = performance.now();
    const unread = [...new Set(topics)].filter(
      (t) => now - (this.limits.get(t)?.readAt ?? -Infinity) > LIMITS_MAX_AGE_MS,
    );
    if (unread.length === 0) return;
    // Rejects when Kafka does not answer: the send fails like any other, and is tried again.
    this.describer ??= createKafka(this.config, this.clientLogger).admin();
    await this.describer.connect();
    const { limits, failed } = await describeTopicLimits(this.describer, unread);
    const denied = new Map<string, string>();
    for (const t of unread) {
      const code = failed.get(t);
      // A topic that does not exist: its messages are refused as such; read it next time.
      if (code === 'UNKNOWN_TOPIC_OR_PARTITION') continue;
      if (code !== undefined) denied.set(t, code);
      this.limits.set(t, { ...(limits.get(t) ?? DEFAULT_TOPIC_LIMITS), readAt: now });
    }
    if (denied.size > 0) {
      this.logger.warn(
        { topics: [...denied.keys()], codes: [...new Set(denied.values())] },
        "cannot read these topics' configuration (DescribeConfigs): the broker's defaults stand in, so an event a topic refuses may be written after later events of its partition; allow DescribeConfigs on the topics",
      );
    }
  }

  private limitsOf(topic: string): TopicLimits {
    return this.limits.get(topic) ?? DEFAULT_TOPIC_LIMITS;
  }

  /** Produces, and replaces the producer (then throws) when librdkafka failed for good. */
  private async produce(messages: Outbound[]): Promise<Produced> {
    const produced = await this.produceAll(messages);
    if (produced.fatal) {
      this.replaceProducer();
      throw new Error(
        'the librdkafka producer failed for good (a fatal error): a new one is started; see the debug log for its reason',
      );
    }
    return produced;
  }

  /**
   * The EventSink contract: per partition, in order, the first message not acknowledged
   * stops it. A message refused without a partition (before librdkafka chose one) stops
   * its whole topic, since a key's later message may have found one. What librdkafka
   * acknowledged after a stop (it should not: one batch per partition) counts as unsent,
   * and is sent again after the refused one: a copy, never a key's later event first.
   */
  private stopAtFirstRefusal(
    messages: OutboundMessage[],
    partitions: number[],
    results: SendResult[],
  ): void {
    const stopped = new Set<string>();
    const stoppedTopics = new Set<string>();
    let writtenPastRefusal = 0;
    for (const [i, m] of messages.entries()) {
      const partition = `${m.topic}\u0000${String(partitions[i])}`;
      if (stoppedTopics.has(m.topic) || stopped.has(partition)) {
        if (results[i]?.status === 'acked') writtenPastRefusal += 1;
        results[i] = UNSENT;
        continue;
      }
      if (results[i]?.status === 'acked') continue;
      if (partitions[i] === -1) stoppedTopics.add(m.topic);
      else stopped.add(partition);
    }
    if (writtenPastRefusal > 0) {
      this.logger.warn(
        { messages: writtenPastRefusal },
        'librdkafka wrote messages after a refused one of their partition: they are sent again after it, so consumers see them twice',
      );
    }
  }

  /**
   * Sends again `indexes` (one partition's messages, in order, refused whole as one
   * batch): in halves, each sent as one batch the same way, until the message refused
   * alone is found; a lone message (not at fault) goes again alone. Says whether all were
   * acknowledged; after the first that was not, the rest are unsent.
   */
  private async inHalves(
    messages: OutboundMessage[],
    indexes: number[],
    results: SendResult[],
    trusted: (() => boolean) | undefined,
  ): Promise<boolean> {
    if (indexes.length === 1) return this.sendAgain(messages, indexes, results, trusted);
    const half = Math.ceil(indexes.length / 2);
    return (
      (await this.sendAgain(messages, indexes.slice(0, half), results, trusted)) &&
      this.sendAgain(messages, indexes.slice(half), results, trusted)
    );
  }

  /** Sends `indexes` as one batch; what is refused whole from a message on goes in halves. */
  private async sendAgain(
    messages: OutboundMessage[],
    indexes: number[],
    results: SendResult[],
    trusted: (() => boolean) | undefined,
  ): Promise<boolean> {
    if (trusted && !trusted()) {
      for (const i of indexes) results[i] = UNSENT;
      return false;
    }
    const sent = await this.produce(indexes.map((i) => messages[i] as OutboundMessage));
    const stop = sent.results.findIndex((r) => r.status !== 'acked');
    for (const [n, i] of indexes.entries()) if (stop === -1 || n < stop) results[i] = ACKED;
    if (stop === -1) return true;
    const refused = sent.results[stop] as SendResult;
    const rest = indexes.slice(stop);
    if (rest.length > 1 && refused.status === 'refused' && SPLIT.has(refused.code)) {
      return this.inHalves(messages, rest, results, trusted);
    }
    // Alone and "another record was invalid": it is not at fault, it goes again later.
    const lone =
      refused.status === 'refused' && refused.code === INVALID_DIFFERENT_RECORD ? UNSENT : refused;
    for (const [n, i] of rest.entries()) results[i] = n === 0 ? lone : UNSENT;
    return false;
  }

  /**
   * Produces every message, flushes (librdkafka sends what it holds now, one batch per
   * partition), and waits for all their delivery reports: at most MESSAGE_TIMEOUT_MS
   * plus REPORT_GRACE_MS, after which a message without a report counts as refused
   * (retriable), so that a send can never hang. A message refused before it was queued
   * stops its topic: nothing after it is produced.
   *
   * While a flush runs, librdkafka sends what it is given at once, without linger: a
   * round of several messages is produced only once the flush before it returned, or its
   * first messages would leave as a batch of their own. The flush returns up to 10 ms
   * after the last report (it polls; the reports are served by the background thread).
   * A round of one message goes at once, without waiting for the flush before it.
   */
  private async produceAll(messages: Outbound[]): Promise<Produced> {
    if (messages.length > 1) await this.flushed;
    return this.produceNow(messages);
  }

  private produceNow(messages: Outbound[]): Promise<Produced> {
    return new Promise((resolve) => {
      const deadline: { timer?: NodeJS.Timeout } = {};
      const pending: Pending = {
        results: new Array<SendResult>(messages.length),
        partitions: new Array<number>(messages.length).fill(-1),
        left: messages.length,
        fatal: false,
        done: () => {
          clearTimeout(deadline.timer);
          const result = {
            results: pending.results,
            partitions: pending.partitions,
            fatal: pending.fatal,
          };
          // At least once, a round of several ends with its flush (measured: the next
          // batch then arrives sooner than when it overlaps the flush's last poll). In a
          // transaction, and for a lone message, a round ends with its reports: the
          // marker and the commit (which flushes again) follow at once.
          if (messages.length === 1 || this.transaction) {
            resolve(result);
            return;
          }
          void this.flushed.then(() => {
            resolve(result);
          });
        },
      };
      let stoppedTopics: Set<string> | undefined;
      for (const [index, m] of messages.entries()) {
        if (stoppedTopics?.has(m.topic)) {
          pending.results[index] = UNSENT;
          pending.left -= 1;
          continue;
        }
        try {
          this.producer.produce(
            m.topic,
            m.partition ?? null,
            m.value === null ? null : Buffer.from(m.value),
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
          (stoppedTopics ??= new Set()).add(m.topic);
        }
      }
      if (pending.left === 0) {
        pending.done();
        return;
      }
      // The reports say what became of each message; the flush's own outcome adds nothing.
      // librdkafka sends without linger while any flush runs: the next round of several
      // waits for every flush still running, not only the last.
      const flush = new Promise<void>((flushed) => {
        try {
          this.producer.flush(MESSAGE_TIMEOUT_MS + REPORT_GRACE_MS, () => {
            flushed();
          });
        } catch (error) {
          this.logger.debug({ err: error }, 'the flush after a produce round failed');
          flushed();
        }
      });
      this.flushed = Promise.all([this.flushed, flush]).then(() => undefined);
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
      await Promise.all([
        this.describer?.disconnect().catch(() => undefined),
        new Promise<void>((resolve) => {
          this.producer.disconnect(CLOSE_FLUSH_MS, () => {
            resolve();
          });
        }),
      ]);
    })();
    return this.closing;
  }
}
