/**
 * Classifies Kafka errors by their protocol error type (never by message text). kafkajs
 * wraps causes (retries exceeded, aggregate errors), so every nested type counts.
 * What is not listed is treated as transient: wait, back off, try again.
 */

/** Refusals that no retry can change, for a topic as a whole or for one record. */
const PERMANENT: Record<string, string> = {
  TOPIC_AUTHORIZATION_FAILED:
    'the Kafka user may not write to (or create) this topic: grant it, or remove the table',
  INVALID_TOPIC_EXCEPTION: 'Kafka rejects this topic name',
  INVALID_REPLICATION_FACTOR: 'TOPIC_REPLICATION_FACTOR is larger than the number of brokers',
  INVALID_PARTITIONS: 'TOPIC_PARTITIONS is not accepted by the broker',
  POLICY_VIOLATION: "the broker's topic creation policy rejects this topic",
  INVALID_CONFIG: 'the broker rejects the topic configuration',
  MESSAGE_TOO_LARGE:
    'the event is larger than the topic accepts (max.message.bytes): raise it for this topic',
  RECORD_LIST_TOO_LARGE: 'the batch is larger than the topic accepts',
  INVALID_RECORD:
    'the broker rejects this record (a null key on a compacted topic: use a non-compacted topic, or a NOT NULL key)',
  INVALID_TIMESTAMP: "the event's timestamp is outside what the topic accepts",
  CORRUPT_MESSAGE: 'the broker found the record corrupt',
};

interface ErrorLike {
  type?: unknown;
  name?: unknown;
  cause?: unknown;
  originalError?: unknown;
  errors?: unknown;
}

/** All Kafka protocol error types found in an error and its causes. */
export function kafkaErrorTypes(error: unknown, seen = new Set<unknown>()): string[] {
  if (error === null || typeof error !== 'object' || seen.has(error)) return [];
  seen.add(error);
  const e = error as ErrorLike;
  const types = typeof e.type === 'string' ? [e.type] : [];
  const nested = [
    e.cause,
    e.originalError,
    ...(Array.isArray(e.errors) ? (e.errors as unknown[]) : []),
  ];
  return [...types, ...nested.flatMap((n) => kafkaErrorTypes(n, seen))];
}

/** Why a topic cannot be used, if the error says so; undefined for transient errors. */
export function permanentTopicProblem(error: unknown): string | undefined {
  const refusal = classifyKafkaError(error);
  return refusal.retriable ? undefined : `${refusal.reason} (${refusal.code})`;
}

export interface KafkaRefusal {
  /** The Kafka error type, or the client's error name when there is none. */
  code: string;
  retriable: boolean;
  reason: string;
}

/** What a failed produce request means: the first permanent type found wins. */
export function classifyKafkaError(error: unknown): KafkaRefusal {
  const types = kafkaErrorTypes(error);
  for (const code of types) {
    const reason = PERMANENT[code];
    if (reason !== undefined) return { code, retriable: false, reason };
  }
  const name = (error as ErrorLike | null)?.name;
  const code = types[0] ?? (typeof name === 'string' ? name : 'UNKNOWN');
  const message = error instanceof Error ? error.message : String(error);
  return { code, retriable: true, reason: `Kafka did not take the events now: ${message}` };
}

/**
 * Permanent refusals that concern one record, not its topic: such an event can be set
 * aside as a dead letter while the topic's other events flow. The other permanent
 * refusals (no permission, a bad topic) would refuse every event of the topic alike: the
 * topic is held back instead, and nothing becomes a dead letter.
 */
export const RECORD_REFUSALS = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'INVALID_TIMESTAMP',
  'CORRUPT_MESSAGE',
]);

/**
 * A request of several records refused for one of these says nothing about which record
 * (the whole batch may be too large, or one record in it invalid; kafkajs does not
 * report the broker's per-record errors): split it and resend the halves.
 */
export const SPLIT_AND_RETRY = RECORD_REFUSALS;
