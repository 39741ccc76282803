/**
 * Where events go: Kafka, or stdout for DRY_RUN. The relay loop sees only this interface,
 * so another Kafka client can be measured behind it.
 *
 * The sink reports per message what happened; the loop decides what that means (delete,
 * hold the topic back, set the event aside as a dead letter).
 */
export interface OutboundMessage {
  topic: string;
  key: string | null;
  value: string;
  /** Epoch milliseconds, as a decimal string. */
  timestamp: string;
  headers: Record<string, string>;
}

export interface TopicProblem {
  topic: string;
  /** Whether trying again later may help (a topic being created) or not (auth, bad name). */
  retriable: boolean;
  reason: string;
}

/**
 * What became of one message of a send:
 * - acked: the broker acknowledged it (acks = all);
 * - refused: the broker refused it. `retriable` refusals (no leader, not enough replicas,
 *   a timeout) may pass later; the others never will (too large, invalid record, not
 *   authorized). `code` is the Kafka error type, `reason` says what to do;
 * - unsent: not sent, because an earlier message of its partition was refused (so that
 *   no later event of a key overtakes an earlier one).
 */
export type SendResult =
  | { status: 'acked' }
  | { status: 'refused'; retriable: boolean; code: string; reason: string }
  | { status: 'unsent' };

/** The one "acked" result, shared: a batch's results allocate nothing per message. */
export const ACKED: SendResult = Object.freeze({ status: 'acked' });

export interface EventSink {
  /**
   * Makes sure the topics exist (creating them when allowed). Returns the topics that
   * cannot be used now; the relay keeps their tables' events queued.
   */
  prepareTopics(topics: string[]): Promise<TopicProblem[]>;
  /**
   * Sends one produce request's worth of messages, in order per topic and partition, and
   * resolves with one result per message, in the same order. Each partition stops at its
   * first refused message: the rest of that partition is unsent, other partitions go on.
   * Rejects only when nothing could be sent at all (no connection to Kafka); then no
   * message counts as sent.
   */
  send(messages: OutboundMessage[]): Promise<SendResult[]>;
  /** Reaches Kafka now, for a readiness probe; throws when it cannot. None: nothing to reach. */
  check?(): Promise<void>;
  close(): Promise<void>;
}

/** Bytes a message adds to a produce request: key, value, headers, record framing. */
export function messageBytes(m: OutboundMessage): number {
  let bytes = RECORD_OVERHEAD_BYTES + Buffer.byteLength(m.value);
  if (m.key !== null) bytes += Buffer.byteLength(m.key);
  for (const name in m.headers) bytes += name.length + Buffer.byteLength(m.headers[name] ?? '');
  return bytes;
}

/** A record's framing in a record batch (lengths, deltas, attributes), rounded up. */
const RECORD_OVERHEAD_BYTES = 32;
