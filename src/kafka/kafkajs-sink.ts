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
  type LogEntry,
  type Producer,
  type SASLOptions,
} from 'kafkajs';
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';
import { kafkaErrorTypes, permanentTopicProblem } from './errors.ts';
import type { EventSink, OutboundMessage, TopicProblem } from './sink.ts';

/**
 * How long the broker may take to acknowledge a request (acks = all). Together with
 * requestTimeout and the single kafkajs retry it bounds one send to about 15 s; the relay
 * checks its lease before every send, and a send cut off by an outage is simply retried.
 */
const ACK_TIMEOUT_MS = 5_000;
/**
 * Most bytes of keys and values in one produce request: every partition's record batch
 * stays well under the broker's default max.message.bytes (1 MiB), whatever BATCH_SIZE.
 */
const MAX_REQUEST_BYTES = 512 * 1024;

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

/** Routes kafkajs's own log lines into pino, one level down: kafkajs is loud about retries. */
function kafkaLogCreator(logger: Logger) {
  return () =>
    ({ level, log }: LogEntry): void => {
      const { message, ...fields } = log;
      if (level <= KafkaLogLevel.ERROR) logger.warn(fields, message);
      else if (level === KafkaLogLevel.WARN) logger.info(fields, message);
      else logger.debug(fields, message);
    };
}

/**
 * kafkajs's own socket factory, plus TCP_NODELAY: without it Nagle's algorithm may hold a
 * small produce request back until the previous segment is acknowledged (kafkajs leaves it
 * on; the broker turns it off on its side).
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
    logLevel: KafkaLogLevel.WARN,
    logCreator: kafkaLogCreator(logger.child({ component: 'kafkajs' })),
  });
}

export class KafkajsSink implements EventSink {
  private readonly producer: Producer;
  private readonly admin: Admin;
  private connected = false;
  private readonly knownTopics = new Set<string>();

  constructor(
    kafka: Kafka,
    private readonly config: Config,
    private readonly logger: Logger,
  ) {
    this.producer = kafka.producer({
      allowAutoTopicCreation: false,
      // Java-compatible murmur2 on the key bytes, so every client agrees on partitions.
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

  async prepareTopics(topics: string[]): Promise<TopicProblem[]> {
    const unknown = topics.filter((t) => !this.knownTopics.has(t));
    if (unknown.length === 0) return [];
    await this.connect();
    const existing = new Set(await this.admin.listTopics());
    const missing = unknown.filter((t) => !existing.has(t));
    for (const t of unknown) if (existing.has(t)) this.knownTopics.add(t);
    if (missing.length === 0) return [];
    if (!this.config.autoCreateTopics) {
      return missing.map((topic) => ({
        topic,
        retriable: true,
        reason: `topic "${topic}" does not exist and AUTO_CREATE_TOPICS=false: create it, or set AUTO_CREATE_TOPICS=true`,
      }));
    }
    const problems: TopicProblem[] = [];
    for (const topic of missing) {
      try {
        await this.admin.createTopics({
          waitForLeaders: true,
          topics: [
            {
              topic,
              numPartitions: this.config.topicPartitions ?? -1,
              replicationFactor: this.config.topicReplicationFactor ?? -1,
            },
          ],
        });
        this.logger.info({ topic }, 'created topic');
        this.knownTopics.add(topic);
      } catch (error) {
        const reason = permanentTopicProblem(error);
        if (reason === undefined) throw error;
        problems.push({
          topic,
          retriable: false,
          reason: `cannot create topic "${topic}": ${reason}`,
        });
      }
    }
    return problems;
  }

  async send(messages: OutboundMessage[]): Promise<TopicProblem[]> {
    if (messages.length === 0) return [];
    await this.connect();
    const problems: TopicProblem[] = [];
    const refused = new Set<string>();
    // Requests in order; within one, kafkajs keeps each partition's messages in order.
    for (const chunk of chunkByBytes(messages, MAX_REQUEST_BYTES)) {
      const pending = chunk.filter((m) => !refused.has(m.topic));
      try {
        await this.sendRequest(pending);
      } catch (error) {
        if (kafkaErrorTypes(error).includes('UNKNOWN_TOPIC_OR_PARTITION')) this.knownTopics.clear();
        if (permanentTopicProblem(error) === undefined) throw error;
        // Some topic refused its messages for good: find which, one topic at a time.
        for (const [topic, list] of groupByTopic(pending)) {
          try {
            await this.sendRequest(list);
          } catch (topicError) {
            const reason = permanentTopicProblem(topicError);
            if (reason === undefined) throw topicError;
            refused.add(topic);
            problems.push({
              topic,
              retriable: false,
              reason: `topic "${topic}" refused events: ${reason}`,
            });
          }
        }
      }
    }
    return problems;
  }

  private async sendRequest(messages: OutboundMessage[]): Promise<void> {
    if (messages.length === 0) return;
    await this.producer.sendBatch({
      acks: -1,
      timeout: ACK_TIMEOUT_MS,
      topicMessages: [...groupByTopic(messages)].map(([topic, list]) => ({
        topic,
        messages: list.map((m) => ({
          key: m.key,
          value: m.value,
          timestamp: m.timestamp,
          headers: m.headers,
        })),
      })),
    });
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.producer.disconnect(), this.admin.disconnect()]);
    this.connected = false;
  }
}

function groupByTopic(messages: OutboundMessage[]): Map<string, OutboundMessage[]> {
  const byTopic = new Map<string, OutboundMessage[]>();
  for (const m of messages) {
    const list = byTopic.get(m.topic);
    if (list) list.push(m);
    else byTopic.set(m.topic, [m]);
  }
  return byTopic;
}

/** Consecutive slices of at most `maxBytes` of keys and values (at least one message each). */
function chunkByBytes(messages: OutboundMessage[], maxBytes: number): OutboundMessage[][] {
  const chunks: OutboundMessage[][] = [];
  let current: OutboundMessage[] = [];
  let bytes = 0;
  for (const m of messages) {
    const size = Buffer.byteLength(m.value) + (m.key === null ? 0 : Buffer.byteLength(m.key));
    if (current.length > 0 && bytes + size > maxBytes) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(m);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}
