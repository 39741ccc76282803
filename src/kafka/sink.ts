/**
 * Where events go: Kafka, or stdout for DRY_RUN. The relay loop sees only this interface,
 * so another Kafka client can be measured behind it.
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

export interface EventSink {
  /**
   * Makes sure the topics exist (creating them when allowed). Returns the topics that
   * cannot be used now; the relay keeps their tables' events queued.
   */
  prepareTopics(topics: string[]): Promise<TopicProblem[]>;
  /**
   * Sends the messages in order (per topic) and resolves once the broker acknowledged
   * them (acks = all), except for the topics it returns: those refused the messages for
   * good (too large, not authorized, ...), and none of their messages counts as sent.
   * Rejects on a transient failure; then none of the messages counts as sent.
   */
  send(messages: OutboundMessage[]): Promise<TopicProblem[]>;
  close(): Promise<void>;
}
