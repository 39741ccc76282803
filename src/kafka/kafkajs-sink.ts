/**
 * The Kafka side, on kafkajs: topic preparation with an admin client and ordered,
 * acks=all sends with one producer. kafkajs retries a send a couple of times itself; the
 * relay loop owns the longer backoff, so a broker outage never ends the process.
 */
import net from 'node:net';
import tls from 'node:tls';
import {
  Kafka,
  type ISocketFactory,
  Partitioners,
  logLevel as KafkaLogLevel,
  type Admin,
  type ICustomPartitioner,
  type LogEntry,
  type PartitionMetadata,
  type Producer,
  type SASLOptions,
} from 'kafkajs';
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';
import { classifyKafkaError, SPLIT_AND_RETRY } from './errors.ts';
import { prepareTopics } from './prepare-topics.ts';
import {
  ACKED,
  type EventSink,
  type OutboundMessage,
  type SendResult,
  type TopicProblem,
} from './sink.ts';

/**
 * How long the broker may take to acknowledge a request (acks = all). Together with
 * requestTimeout and the single kafkajs retry it bounds one send to about 15 s; the relay
 * checks its lease before every send, and a send cut off by an outage is simply retried.
 */
const ACK_TIMEOUT_MS = 5_000;
/** Partition counts are re-read this often (kafkajs's own metadata age), and after errors. */
const METADATA_MAX_AGE_MS = 300_000;
/** How long a new topic may take until its partitions are served (see untilServed). */
const TOPIC_READY_TIMEOUT_MS = 10_000;
const TOPIC_READY_POLL_MS = 100;

function saslOptions(config: Config): SASLOptions | undefined {
  const { sasl } = config;
  if (!sasl) return undefined;
  const { username, password } = sasl;
  switch (sasl.mechanism) {
    case 'plain':
      return { mechanism: 'plain', username, password };
    case 'scram-sha-256':
      return { mechanism: 'scram-sha-256', username, password };
    case 'scram-sha-512':
      return { mechanism: 'scram-sha-512', username, password };
  }
}

/**
 * Routes kafkajs's own log lines into pino, at debug whatever their kafkajs level. Every
 * failure they describe also reaches the relay as the error of a send, which the relay
 * logs once per retry; at warn they added several lines to every attempt (connection
 * errors, "failed to connect to seed broker", kafkajs's own retries) and made the normal
 * "no leader yet" of a new topic look like a fault. `kafkaLevel` keeps what kafkajs thought of the line.
 */
function kafkaLogCreator(logger: Logger) {
  return () =>
    ({ namespace, level, log }: LogEntry): void => {
      const fields: Record<string, unknown> = { ...log };
      // pino stamps the time and writes the message; the component says kafkajs wrote it.
      for (const key of ['timestamp', 'logger', 'message']) Reflect.deleteProperty(fields, key);
      logger.debug({ namespace, kafkaLevel: KafkaLogLevel[level], ...fields }, log.message);
    };
}

/** Node's codes for a broker certificate that no trusted CA vouches for. */
const UNTRUSTED_CERTIFICATE = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
]);
const CERTIFICATE_NOT_VALID_NOW = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID']);

/**
 * What a failed TLS handshake means, in words an operator can act on, or undefined for
 * other socket errors. Node's own text ("self-signed certificate in certificate chain")
 * says neither that TLS failed nor which setting to look at; it is kept in parentheses.
 */
export function explainTlsFailure(error: unknown, host: string): string | undefined {
  const { code, message, cert } = error as {
    code?: unknown;
    message?: unknown;
    cert?: { subjectaltname?: string; subject?: { CN?: unknown } };
  };
  if (typeof code !== 'string' || typeof message !== 'string') return undefined;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const names = cert?.subjectaltname ?? (cert?.subject?.CN as string | undefined);
    return (
      `TLS: the broker's certificate does not name the host ${host}` +
      `${names ? ` (it names ${names})` : ''}: list in KAFKA_BROKERS a host name the ` +
      `certificate names, or have the certificate name this host (${message})`
    );
  }
  if (UNTRUSTED_CERTIFICATE.has(code)) {
    return (
      `TLS: the broker's certificate at ${host} is not signed by a trusted CA: set ` +
      `KAFKA_TLS_CA_FILE to the CA that signed it (${message})`
    );
  }
  if (CERTIFICATE_NOT_VALID_NOW.has(code)) {
    return `TLS: the broker's certificate at ${host} is not valid now (${message})`;
  }
  return undefined;
}

/**
 * kafkajs's own socket factory, plus TCP_NODELAY: without it Nagle's algorithm may hold a
 * small produce request back until the previous segment is acknowledged (kafkajs leaves it
 * on; the broker turns it off on its side). A refused TLS handshake gets a message that
 * says what to fix (explainTlsFailure): this listener runs before kafkajs's own, which
 * turns the message into its connection error.
 */
export const socketFactory: ISocketFactory = ({ host, port, ssl: sslOption, onConnect }) => {
  // Typed as always present, but undefined when the client has no TLS settings.
  const ssl = sslOption as tls.ConnectionOptions | undefined;
  const socket = ssl
    ? tls.connect(
        { host, port, ...(net.isIP(host) ? {} : { servername: host }), ...ssl },
        onConnect,
      )
    : net.connect({ host, port }, onConnect);
  if (ssl) {
    socket.on('error', (error: Error) => {
      const explained = explainTlsFailure(error, host);
      if (explained !== undefined) error.message = explained;
    });
  }
  socket.setKeepAlive(true, 60_000);
  socket.setNoDelay(true);
  return socket;
};

export function createKafka(config: Config, logger: Logger): Kafka {
  const { tls } = config;
  return new Kafka({
    clientId: config.kafkaClientId,
    brokers: config.kafkaBrokers,
    ssl: tls && {
      rejectUnauthorized: tls.rejectUnauthorized,
      ...(tls.ca === undefined ? {} : { ca: [tls.ca] }),
      ...(tls.cert === undefined ? {} : { cert: tls.cert }),
      ...(tls.key === undefined ? {} : { key: tls.key }),
    },
    sasl: saslOptions(config),
    socketFactory,
    connectionTimeout: 3000,
    requestTimeout: ACK_TIMEOUT_MS + 2_500,
    retry: { retries: 1, initialRetryTime: 100, maxRetryTime: 1000 },
    // kafkajs's warnings and errors, at debug (see kafkaLogCreator); nothing below debug.
    logLevel: logger.isLevelEnabled('debug') ? KafkaLogLevel.WARN : KafkaLogLevel.NOTHING,
    logCreator: kafkaLogCreator(logger.child({ component: 'kafkajs' })),
  });
}

export class KafkajsSink implements EventSink {
  private readonly producer: Producer;
  private readonly admin: Admin;
  private connected = false;
  private readonly knownTopics = new Set<string>();
  private readonly partitions = new Map<string, { list: PartitionMetadata[]; readAt: number }>();
  /** Java-compatible murmur2 on the key bytes, so every client agrees on partitions. */
  private readonly partitioner: ReturnType<ICustomPartitioner> = Partitioners.DefaultPartitioner();

  constructor(
    kafka: Kafka,
    private readonly config: Config,
    private readonly logger: Logger,
  ) {
    this.producer = kafka.producer({
      allowAutoTopicCreation: false,
      // Partitions are chosen by this.partitioner (the same murmur2) before sending.
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    this.admin = kafka.admin();
  }

  private async connect(): Promise<void> {
    if (this.connected) return;
    await this.admin.connect();
    await this.producer.connect();
    this.connected = true;
  }

  /** Reaches the cluster now (a metadata request); throws when it cannot. */
  async check(): Promise<void> {
    await this.connect();
    await this.admin.describeCluster();
  }

  async prepareTopics(topics: string[]): Promise<TopicProblem[]> {
    if (topics.every((t) => this.knownTopics.has(t))) return [];
    await this.connect();
    return prepareTopics({
      topics,
      known: this.knownTopics,
      admin: {
        listTopics: () => this.admin.listTopics(),
        createTopic: (topic) =>
          this.admin.createTopics({
            topics: [
              {
                topic,
                numPartitions: this.config.topicPartitions ?? -1,
                replicationFactor: this.config.topicReplicationFactor ?? -1,
              },
            ],
          }),
        untilServed: (topic) => this.untilServed(topic),
      },
      config: this.config,
      logger: this.logger,
    });
  }

  /**
   * Waits until every partition of a topic just created is served by its leader. The
   * controller answers CreateTopics (and Metadata may list leaders) before the brokers
   * host the partitions: a produce request then fails with UNKNOWN_TOPIC_OR_PARTITION or
   * NOT_LEADER_OR_FOLLOWER, normal for a new topic but logged as a failure. ListOffsets is
   * answered by the same partition leaders as Produce, so its success means they are
   * ready. After TOPIC_READY_TIMEOUT_MS the relay simply goes on: a send that is refused
   * then holds the topic back and is retried like any other.
   */
  private async untilServed(topic: string): Promise<void> {
    const deadline = performance.now() + TOPIC_READY_TIMEOUT_MS;
    for (;;) {
      try {
        await this.admin.fetchTopicOffsets(topic);
        return;
      } catch (error) {
        if (!classifyKafkaError(error).retriable) throw error;
        if (performance.now() > deadline) {
          this.logger.debug({ topic, err: error }, 'new topic not served yet: sending anyway');
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, TOPIC_READY_POLL_MS));
      }
    }
  }

  /** Partitions of a topic, re-read after METADATA_MAX_AGE_MS or after a refusal. */
  private async partitionsOf(topic: string): Promise<PartitionMetadata[]> {
    const cached = this.partitions.get(topic);
    if (cached && performance.now() - cached.readAt < METADATA_MAX_AGE_MS) return cached.list;
    const { topics } = await this.admin.fetchTopicMetadata({ topics: [topic] });
    const list = topics.find((t) => t.name === topic)?.partitions ?? [];
    if (list.length === 0) throw new Error(`Kafka reports no partitions for topic "${topic}"`);
    list.sort((a, b) => a.partitionId - b.partitionId);
    this.partitions.set(topic, { list, readAt: performance.now() });
    return list;
  }

  async send(messages: OutboundMessage[]): Promise<SendResult[]> {
    const results = new Array<SendResult>(messages.length).fill(UNSENT);
    if (messages.length === 0) return results;
    await this.connect();
    // One request per topic partition, all at once: a produce response that carries an
    // error for one partition makes kafkajs throw for the whole request, hiding which
    // partitions were appended, so partitions must not share a request.
    const byPartition = new Map<string, { topic: string; partition: number; indexes: number[] }>();
    const metadata = new Map<string, PartitionMetadata[] | SendResult>();
    const refusedTopics = new Set<string>();
    for (const topic of new Set(messages.map((m) => m.topic))) {
      metadata.set(topic, await this.partitionsOf(topic).catch(refusedResult));
    }
    for (const [index, m] of messages.entries()) {
      const partitionMetadata = metadata.get(m.topic);
      if (!Array.isArray(partitionMetadata)) {
        // No partitions known: the topic's first message is refused, the rest unsent.
        if (partitionMetadata && !refusedTopics.has(m.topic)) results[index] = partitionMetadata;
        refusedTopics.add(m.topic);
        continue;
      }
      const partition = this.partitioner({
        topic: m.topic,
        partitionMetadata,
        message: { key: m.key, value: m.value },
      });
      const id = `${m.topic}\u0000${partition}`;
      const group = byPartition.get(id);
      if (group) group.indexes.push(index);
      else byPartition.set(id, { topic: m.topic, partition, indexes: [index] });
    }
    await Promise.all(
      [...byPartition.values()].map(({ topic, partition, indexes }) =>
        this.sendPartition(topic, partition, indexes, messages, results),
      ),
    );
    return results;
  }

  /**
   * Sends one partition's messages in order; stops at the first refused one. A request
   * refused as too large is split in halves and each half sent on its own, so that only
   * the message that is too large by itself is refused.
   */
  private async sendPartition(
    topic: string,
    partition: number,
    indexes: number[],
    messages: OutboundMessage[],
    results: SendResult[],
  ): Promise<boolean> {
    try {
      await this.producer.sendBatch({
        acks: -1,
        timeout: ACK_TIMEOUT_MS,
        topicMessages: [
          {
            topic,
            messages: indexes.map((i) => {
              const m = messages[i] as OutboundMessage;
              return {
                key: m.key,
                value: m.value,
                partition,
                timestamp: m.timestamp,
                headers: m.headers,
              };
            }),
          },
        ],
      });
      for (const i of indexes) results[i] = ACKED;
      return true;
    } catch (error) {
      const refusal = classifyKafkaError(error);
      if (refusal.retriable) {
        // The topic may have been deleted, or its partitions moved: look again next time.
        this.partitions.delete(topic);
        this.knownTopics.delete(topic);
      }
      if (indexes.length > 1 && SPLIT_AND_RETRY.has(refusal.code)) {
        const half = Math.ceil(indexes.length / 2);
        return (
          (await this.sendPartition(topic, partition, indexes.slice(0, half), messages, results)) &&
          this.sendPartition(topic, partition, indexes.slice(half), messages, results)
        );
      }
      const [first] = indexes;
      if (first !== undefined) results[first] = { status: 'refused', ...refusal };
      return false;
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.producer.disconnect(), this.admin.disconnect()]);
    this.connected = false;
  }
}

const UNSENT: SendResult = Object.freeze({ status: 'unsent' });

function refusedResult(error: unknown): SendResult {
  return { status: 'refused', ...classifyKafkaError(error) };
}
