/**
 * The relay with the Kafka send replaced by nothing (BENCH_SINK=discard), for the drain
 * benchmark: fetch + delete only, so the report shows how much of the time is PostgreSQL
 * and the loop, and how much is Kafka. Built with the package (dist/bench/relay-child.js)
 * so it runs on plain node like the CLI, and configured from the environment like the CLI.
 */
import { parseConfig } from '../src/config.ts';
import { startRelay } from '../src/commands/relay.ts';
import { ACKED, type EventSink } from '../src/kafka/sink.ts';
import { createLogger } from '../src/logger.ts';

const discard: EventSink = {
  prepareTopics: () => Promise.resolve([]),
  send: (messages) => Promise.resolve(messages.map(() => ACKED)),
  close: () => Promise.resolve(),
};

const config = parseConfig(process.env);
const logger = createLogger(config.logLevel);
const kind = process.env.BENCH_SINK;
if (kind !== 'discard') {
  throw new Error(`BENCH_SINK must be discard, got "${String(kind)}"`);
}
const running = await startRelay(config, logger, { sink: discard });
if (!running) throw new Error('the relay stopped while starting');
const stop = (): void => void running.shutdown();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
await running.done;
await running.shutdown();
