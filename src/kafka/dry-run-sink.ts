import {
  ACKED,
  type EventSink,
  type OutboundMessage,
  type SendResult,
  type TopicProblem,
} from './sink.ts';

/**
 * DRY_RUN: writes each event as one JSON line `{"topic","key","headers","value"}` on
 * stdout (the value as its JSON text) and sends nothing. Logs go to stderr, so stdout
 * stays machine-readable.
 */
export class DryRunSink implements EventSink {
  constructor(private readonly out: NodeJS.WritableStream = process.stdout) {}

  prepareTopics(): Promise<TopicProblem[]> {
    return Promise.resolve([]);
  }

  async send(messages: OutboundMessage[]): Promise<SendResult[]> {
    const text = messages
      .map((m) =>
        JSON.stringify({
          topic: m.topic,
          key: m.key,
          timestamp: m.timestamp,
          headers: m.headers,
          value: m.value,
        }),
      )
      .join('\n');
    await new Promise<void>((resolve, reject) => {
      this.out.write(`${text}\n`, (error) => {
        if (error) reject(error);
        else resolve();
      });
    });
    return messages.map(() => ACKED);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
