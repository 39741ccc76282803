/**
 * Classifies Kafka errors by their protocol error type (never by message text). kafkajs
 * wraps causes (retries exceeded, aggregate errors), so every nested type counts.
 * What is not listed is treated as transient: wait, back off, try again.
 */
const PERMANENT_FOR_TOPIC: Record<string, string> = {
  TOPIC_AUTHORIZATION_FAILED:
    'the Kafka user may not write to (or create) this topic: grant it, or remove the table',
  INVALID_TOPIC_EXCEPTION: 'Kafka rejects this topic name',
  INVALID_REPLICATION_FACTOR: 'TOPIC_REPLICATION_FACTOR is larger than the number of brokers',
  INVALID_PARTITIONS: 'TOPIC_PARTITIONS is not accepted by the broker',
  POLICY_VIOLATION: "the broker's topic creation policy rejects this topic",
  INVALID_CONFIG: 'the broker rejects the topic configuration',
  MESSAGE_TOO_LARGE:
    'an event is larger than the topic accepts (max.message.bytes): raise it for this topic',
  RECORD_LIST_TOO_LARGE: 'a batch is larger than the topic accepts',
  INVALID_RECORD: 'the broker rejects an event of this topic',
};

interface ErrorLike {
  type?: unknown;
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
  for (const type of kafkaErrorTypes(error)) {
    const reason = PERMANENT_FOR_TOPIC[type];
    if (reason !== undefined) return `${reason} (${type})`;
  }
  return undefined;
}
