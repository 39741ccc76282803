/**
 * Sending one batch: its events go out in produce requests of at most `maxRequestBytes`
 * (keys, values, headers, framing), one request after the other, in id order.
 *
 * - Before each request the caller's `trusted()` is asked: a relay paused past its lease
 *   between two requests sends nothing more (a standby may be shipping these events).
 * - Once an event of a topic is not acknowledged (refused, or unsent behind a refusal of
 *   its partition), no later event of that topic is sent in this batch: a key's later
 *   event must not overtake one that stays queued.
 * - A send that rejects (no connection to Kafka) stops the batch; what earlier requests
 *   got acknowledged still counts, so the caller deletes it before backing off.
 *
 * Acknowledgements are recorded in the ledger; refusals are returned for the relay to
 * decide on (hold the topic back, or set the event aside).
 */
import {
  messageBytes,
  type EventSink,
  type OutboundMessage,
  type SendResult,
} from '../kafka/sink.ts';
import { splitRequests, type BatchLedger } from './batch.ts';

export type Refusal = Extract<SendResult, { status: 'refused' }>;

export interface SendReport {
  refusals: Array<{ index: number; refusal: Refusal }>;
  /** `trusted()` said no before a request: the rest was not sent. */
  untrusted: boolean;
  /** The sink rejected a request: nothing of it was sent. */
  error?: Error;
}

export async function sendInRequests(options: {
  sink: EventSink;
  ledger: BatchLedger;
  messages: OutboundMessage[];
  /** Indexes of the events to send, in order. */
  sendable: number[];
  maxRequestBytes: number;
  trusted: () => boolean;
}): Promise<SendReport> {
  const { sink, ledger, messages, sendable, maxRequestBytes, trusted } = options;
  const report: SendReport = { refusals: [], untrusted: false };
  const stopped = new Set<string>();
  for (const request of splitRequests(sendable, messages, messageBytes, maxRequestBytes)) {
    const pending = request.filter((i) => !stopped.has(ledger.topics[i] as string));
    if (pending.length === 0) continue;
    if (!trusted()) {
      report.untrusted = true;
      break;
    }
    let results: SendResult[];
    try {
      results = await sink.send(
        pending.map((i) => messages[i] as OutboundMessage),
        trusted,
      );
    } catch (error) {
      report.error =
        error instanceof Error ? error : new Error('the Kafka client failed', { cause: error });
      break;
    }
    for (const [n, result] of results.entries()) {
      const index = pending[n] as number;
      if (result.status === 'acked') {
        ledger.record(index, result);
        continue;
      }
      stopped.add(ledger.topics[index] as string);
      if (result.status === 'refused') report.refusals.push({ index, refusal: result });
    }
  }
  return report;
}
