/**
 * The relay with its Kafka send replaced by nothing: it fetches, "ships" and deletes like
 * `pg2kafka relay`, so the drain benchmark can show how much of the time is PostgreSQL and
 * the loop, and how much is Kafka. Built with the package (dist/bench/relay-child.js) so it
 * runs on plain node like the CLI. Configured from the environment like the CLI.
 */
import { parseConfig } from '../src/config.ts';
import { startRelay } from '../src/commands/relay.ts';
import type { EventSink } from '../src/kafka/sink.ts';
import { createLogger } from '../src/logger.ts';

const discard: EventSink = {
  prepareTopics: () => Promise.resolve([]),
  send: () => Promise.resolve([]),
  close: () => Promise.resolve(),
};

const config = parseConfig(process.env);
const running = await startRelay(config, createLogger(config.logLevel), { sink: discard });
const stop = (): void => void running.shutdown();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
await running.done;
await running.shutdown();
