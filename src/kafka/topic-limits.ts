/**
 * What a topic's configuration lets through, known before sending: librdkafka (unlike
 * kafkajs) may write a partition's later broker batch after the broker refused an
 * earlier one for good, so a message the broker would refuse must not travel with
 * later messages of its topic. A message that may be refused travels alone; a send is
 * cut into produce rounds so that no round holds more of a topic than it accepts.
 *
 * Read with the admin API's DescribeConfigs (kafkajs: librdkafka's Node client does not
 * offer it). Where it cannot be read (not authorized), the broker defaults stand in.
 */
import kafkajs, { type Admin } from 'kafkajs';
import { messageBytes, type OutboundMessage } from './sink.ts';

// kafkajs is CommonJS, and Node cannot find this name among its exports.
const { ConfigResourceTypes } = kafkajs;

export interface TopicLimits {
  /** The topic's max.message.bytes: the largest record batch it accepts. */
  maxBatchBytes: number;
  /** cleanup.policy holds compact: a null key is refused. */
  compacted: boolean;
  /**
   * For CreateTime topics: how far a record's timestamp may be behind and ahead of the
   * broker's clock (message.timestamp.before/after.max.ms); Infinity when unbounded.
   */
  behindMs: number;
  aheadMs: number;
}

/** The broker defaults: what a topic accepts when its configuration cannot be read. */
export const DEFAULT_TOPIC_LIMITS: TopicLimits = Object.freeze({
  maxBatchBytes: 1_048_588,
  compacted: false,
  behindMs: Infinity,
  aheadMs: 3_600_000,
});

/** A record batch's own framing (header, CRC, producer id and epoch). */
const BATCH_OVERHEAD_BYTES = 61;
/** A timestamp this close to a bound is treated as past it (clocks differ). */
const CLOCK_MARGIN_MS = 60_000;

/** A topic's limits from its DescribeConfigs entries. */
export function topicLimits(entries: Array<{ name: string; value: string | null }>): TopicLimits {
  const value = (name: string): string | undefined =>
    entries.find((e) => e.name === name)?.value ?? undefined;
  const number = (name: string): number | undefined => {
    const v = value(name);
    const n = v === undefined ? NaN : Number(v);
    return Number.isFinite(n) && n >= 0 ? n : undefined;
  };
  const unbounded = (n: number | undefined): number =>
    n === undefined || n >= Number.MAX_SAFE_INTEGER ? Infinity : n;
  const createTime = (value('message.timestamp.type') ?? 'CreateTime') === 'CreateTime';
  const difference = unbounded(number('message.timestamp.difference.max.ms'));
  return {
    maxBatchBytes: number('max.message.bytes') ?? DEFAULT_TOPIC_LIMITS.maxBatchBytes,
    compacted: (value('cleanup.policy') ?? '').split(',').some((p) => p.trim() === 'compact'),
    behindMs: createTime
      ? Math.min(unbounded(number('message.timestamp.before.max.ms')), difference)
      : Infinity,
    aheadMs: createTime
      ? Math.min(unbounded(number('message.timestamp.after.max.ms')), difference)
      : Infinity,
  };
}

/**
 * Reads the limits of `topics`. `failed`: the topics whose configuration cannot be read,
 * with the broker's error (UNKNOWN_TOPIC_OR_PARTITION, TOPIC_AUTHORIZATION_FAILED...).
 * kafkajs fails a whole request for one topic's error, so after a failed request each
 * topic is asked alone: one missing or denied topic leaves the others' limits known.
 * Rejects when Kafka does not answer (an error without a protocol type).
 */
export async function describeTopicLimits(
  admin: Admin,
  topics: string[],
): Promise<{ limits: Map<string, TopicLimits>; failed: Map<string, string> }> {
  const limits = new Map<string, TopicLimits>();
  const failed = new Map<string, string>();
  const describe = async (names: string[]): Promise<void> => {
    const { resources } = await admin.describeConfigs({
      resources: names.map((name) => ({ type: ConfigResourceTypes.TOPIC, name })),
      includeSynonyms: false,
    });
    for (const r of resources) {
      if (r.errorCode !== 0) continue;
      limits.set(
        r.resourceName,
        topicLimits(r.configEntries.map((e) => ({ name: e.configName, value: e.configValue }))),
      );
    }
  };
  try {
    await describe(topics);
  } catch (error) {
    if (typeof protocolError(error) !== 'string') throw error;
    for (const topic of topics) {
      try {
        await describe([topic]);
      } catch (alone) {
        const type = protocolError(alone);
        if (typeof type !== 'string') throw alone;
        failed.set(topic, type);
      }
    }
  }
  return { limits, failed };
}

/** The Kafka error type of a refused request; undefined when Kafka did not answer. */
function protocolError(error: unknown): string | undefined {
  const type = (error as { type?: unknown } | null)?.type;
  return typeof type === 'string' ? type : undefined;
}

/** Whether the broker may refuse this message by itself: then it travels alone. */
export function mayBeRefused(m: OutboundMessage, limits: TopicLimits, now: number): boolean {
  if (messageBytes(m) + BATCH_OVERHEAD_BYTES > limits.maxBatchBytes) return true;
  if (limits.compacted && m.key === null) return true;
  const timestamp = Number(m.timestamp);
  return (
    timestamp < now - limits.behindMs + CLOCK_MARGIN_MS ||
    timestamp > now + limits.aheadMs - CLOCK_MARGIN_MS
  );
}

/**
 * Cuts a send into produce rounds (indexes, in order): a message the broker may refuse
 * is a round of its own, and a round ends before a message that would take its topic
 * over the topic's max.message.bytes or `topicMessages(topic)` messages, or the round
 * over `maxBytes` or `maxMessages`.
 */
export function produceRounds(
  messages: OutboundMessage[],
  limitsOf: (topic: string) => TopicLimits,
  options: {
    maxBytes: number;
    maxMessages: number;
    now: number;
    topicMessages?: (topic: string) => number;
  },
): number[][] {
  const rounds: number[][] = [];
  let round: number[] = [];
  let bytes = 0;
  const topicBytes = new Map<string, number>();
  const topicCount = new Map<string, number>();
  const cut = (): void => {
    if (round.length > 0) rounds.push(round);
    round = [];
    bytes = 0;
    topicBytes.clear();
    topicCount.clear();
  };
  for (const [i, m] of messages.entries()) {
    const limits = limitsOf(m.topic);
    if (mayBeRefused(m, limits, options.now)) {
      cut();
      round.push(i);
      cut();
      continue;
    }
    const size = messageBytes(m);
    const inTopic = (topicBytes.get(m.topic) ?? BATCH_OVERHEAD_BYTES) + size;
    if (
      round.length > 0 &&
      (inTopic > limits.maxBatchBytes ||
        bytes + size > options.maxBytes ||
        round.length >= options.maxMessages ||
        (topicCount.get(m.topic) ?? 0) >= (options.topicMessages?.(m.topic) ?? Infinity))
    ) {
      cut();
    }
    round.push(i);
    bytes += size;
    topicBytes.set(m.topic, (topicBytes.get(m.topic) ?? BATCH_OVERHEAD_BYTES) + size);
    topicCount.set(m.topic, (topicCount.get(m.topic) ?? 0) + 1);
  }
  cut();
  return rounds;
}
