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
  /** null: a tombstone. */
  value: string | null;
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
   * message counts as sent. `trusted`: a sink that sends in several rounds asks it before
   * each round after the first, and leaves the rest unsent once it says no.
   */
  send(messages: OutboundMessage[], trusted?: () => boolean): Promise<SendResult[]>;
  /** DELIVERY=exactly-once: each batch is one Kafka transaction (see Transactions). */
  transactions?: Transactions;
  /** Reaches Kafka now, for a readiness probe; throws when it cannot. None: nothing to reach. */
  check?(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Exactly-once delivery: the messages sent between begin() and commit() become visible to
 * read_committed consumers together with a marker record holding the batch's queue ids,
 * or not at all. The relay deletes the ids after the commit; a relay that takes over
 * reads the last committed marker first and deletes its ids, so a crash between commit
 * and delete sends nothing twice.
 */
export interface Transactions {
  /**
   * Called before each batch. Under a new lease (`epoch`), or after a commit whose outcome
   * is unknown: fences every earlier producer of this install at the broker (a paused
   * former leader's next request fails), and returns the queue ids of the last committed
   * transaction, which the relay deletes before it fetches. Otherwise returns [].
   * `trusted`: whether the lease is still trusted (no fencing by a relay that lost it).
   */
  recover(markerTopic: string, epoch: string, trusted: () => boolean): Promise<string[]>;
  begin(): Promise<void>;
  /**
   * Commits what was sent since begin(), with a marker holding `ids`. False: it was
   * aborted, and nothing sent since begin() counts as delivered.
   */
  commit(ids: string[]): Promise<boolean>;
  /** Aborts what was sent since begin() (nothing to abort: nothing happens). */
  abort(): Promise<void>;
}

/** Bytes a message adds to a produce request: key, value, headers, record framing. */
export function messageBytes(m: OutboundMessage): number {
  let bytes = RECORD_OVERHEAD_BYTES + (m.value === null ? 0 : Buffer.byteLength(m.value));
  if (m.key !== null) bytes += Buffer.byteLength(m.key);
  for (const name in m.headers) bytes += name.length + Buffer.byteLength(m.headers[name] ?? '');
  return bytes;
}

/** A record's framing in a record batch (lengths, deltas, attributes), rounded up. */
const RECORD_OVERHEAD_BYTES = 32;
