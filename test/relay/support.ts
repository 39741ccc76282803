/** Runs the relay as a real child process (`pg2kafka relay`), as a user or container would. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before } from 'node:test';
import kafkajs, { type Kafka } from 'kafkajs';
import { splitLines } from '../../scripts/kafka-broker.ts';
import { migrate } from '../../src/capture/migrate.ts';
import { startRelay, type RunningRelay } from '../../src/commands/relay.ts';
import { parseConfig } from '../../src/config.ts';
import { createLogger } from '../../src/logger.ts';
import { deferred, uniqueName, waitFor, type Sql, type TestKafka } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export class RelayProcess {
  readonly stdout: string[] = [];
  readonly logs: LogLine[] = [];
  readonly stderrText: string[] = [];
  private readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(env: Record<string, string>, args: string[] = ['relay']) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
      cwd: ROOT,
      // Relays run side by side in tests: each serves its endpoints on a free port.
      env: { ...process.env, LOG_LEVEL: 'debug', HTTP_PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = deferred<{ code: number | null; signal: NodeJS.Signals | null }>();
    this.exited = exited.promise;
    this.child.once('exit', (code, signal) => {
      exited.resolve({ code, signal });
    });
    splitLines(this.child.stdout, (line) => this.stdout.push(line));
    splitLines(this.child.stderr, (line) => {
      this.stderrText.push(line);
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        // not a log line (a usage error, a crash trace): kept in stderrText
      }
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Waits for a log line whose message includes `text` (and matches `where`). */
  async waitForLog(
    text: string,
    timeoutMs = 20_000,
    where: (line: LogLine) => boolean = () => true,
  ): Promise<LogLine> {
    return waitFor(
      () => `relay log "${text}"; last lines:\n${this.stderrText.slice(-10).join('\n')}`,
      () => this.logs.find((l) => l.msg.includes(text) && where(l)),
      timeoutMs,
    );
  }

  async stop(
    signal: NodeJS.Signals = 'SIGTERM',
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }

  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.stop('SIGKILL');
  }
}

/**
 * The environment of a pg2kafka command on `databaseUrl`. Variables that would change its
 * output are unset explicitly: runCli starts from process.env.
 */
export function cliEnv(
  databaseUrl: string,
  extra: Record<string, string | undefined> = {},
): Record<string, string | undefined> {
  return {
    DATABASE_URL: databaseUrl,
    // A relay started through the CLI serves its endpoints on a free port.
    HTTP_PORT: '0',
    TOPIC_PREFIX: undefined,
    TOPIC_NAMESPACE: undefined,
    LOG_LEVEL: undefined,
    ...extra,
  };
}

/** Runs a pg2kafka command to completion (killed with SIGKILL after `killAfterMs`, if given). */
export async function runCli(
  args: string[],
  env: Record<string, string | undefined>,
  killAfterMs?: number,
): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const timer =
    killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  return { code, stdout, stderr, ms: Date.now() - started };
}

/**
 * For relay test files: migrates the file's database before its tests, starts relays on
 * it (killed after the file if a test left one running), and reads the queue depth.
 */
export function useRelays(
  db: { url: string; sql: Sql; ready: Promise<void> },
  kafka: { brokers: string[] },
): { relay: (env?: Record<string, string>) => RelayProcess; queueDepth: () => Promise<number> } {
  const running: RelayProcess[] = [];
  before(async () => {
    await db.ready;
    await migrate({ databaseUrl: db.url });
  });
  // A test that fails before it stops its relays must not leave them holding the lease
  // for the next test.
  afterEach(async () => {
    await Promise.all(running.splice(0).map((r) => r.kill()));
  });
  return {
    relay(env = {}) {
      const r = new RelayProcess({
        DATABASE_URL: db.url,
        KAFKA_BROKERS: kafka.brokers.join(','),
        ...env,
      });
      running.push(r);
      return r;
    },
    async queueDepth() {
      const [row] = await db.sql<
        { n: number }[]
      >`select count(*)::int as n from pg2kafka.captured_changes`;
      return row?.n ?? -1;
    },
  };
}

/** A relay event as it arrived on Kafka: where it landed, its key and its value's fields. */
export interface ArrivedEvent {
  partition: number;
  offset: string;
  key: string | null;
  uuid: string;
  statement: string;
  data: Record<string, unknown>;
}

export interface Collector {
  readonly topic: string;
  /** Every message so far, in arrival order, copies included. */
  readonly received: ArrivedEvent[];
  /** Disconnects the consumer; a second call waits for the same disconnect. */
  stop(): Promise<void>;
}

/**
 * A consumer (its own group, from the beginning) that keeps collecting `topic` through
 * `client` until stopped. Waits first for the topic to exist: the relay may create it.
 */
export async function collect(client: Kafka, topic: string): Promise<Collector> {
  const admin = client.admin();
  await admin.connect();
  try {
    await waitFor(
      `topic ${topic}`,
      async () => (await admin.listTopics()).includes(topic),
      60_000,
      200,
    );
  } finally {
    await admin.disconnect();
  }
  const consumer = client.consumer({
    groupId: uniqueName('pg2kafka-collect'),
    allowAutoTopicCreation: false,
  });
  const received: ArrivedEvent[] = [];
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= consumer.disconnect());
  try {
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachMessage: ({ partition, message }) => {
        const value = JSON.parse(message.value?.toString() ?? '{}') as {
          uuid: string;
          statement: string;
          data: Record<string, unknown>;
        };
        received.push({
          partition,
          offset: message.offset,
          key: message.key?.toString() ?? null,
          uuid: value.uuid,
          statement: value.statement,
          data: value.data,
        });
        return Promise.resolve();
      },
    });
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
  return { topic, received, stop };
}

/** Drops copies by uuid, keeping first arrivals. */
export function dedupe<T extends { uuid: string }>(
  received: readonly T[],
): { unique: T[]; duplicates: number } {
  const seen = new Set<string>();
  const unique = received.filter((r) => !seen.has(r.uuid) && seen.add(r.uuid));
  return { unique, duplicates: received.length - unique.length };
}

/** From the default export: kafkajs's exports spread a module, so ESM sees no named one. */
const TOPIC_RESOURCE = kafkajs.ConfigResourceTypes.TOPIC;

/** Sets the topic's max.message.bytes and waits until the broker reports it. */
export async function setMaxMessageBytes(
  kafka: TestKafka,
  topic: string,
  maxMessageBytes: number,
): Promise<void> {
  const admin = await kafka.admin();
  try {
    await admin.alterConfigs({
      validateOnly: false,
      resources: [
        {
          type: TOPIC_RESOURCE,
          name: topic,
          configEntries: [{ name: 'max.message.bytes', value: String(maxMessageBytes) }],
        },
      ],
    });
    await waitFor(`max.message.bytes=${maxMessageBytes} on ${topic}`, async () => {
      const { resources } = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: TOPIC_RESOURCE, name: topic, configNames: ['max.message.bytes'] }],
      });
      return resources[0]?.configEntries[0]?.configValue === String(maxMessageBytes);
    });
  } finally {
    await admin.disconnect();
  }
}

/**
 * For test files that collect topics: `collectTopic` starts a collector; whatever a test
 * leaves running stops after the file. `collectors` lists them all.
 */
export function useCollectors(client: Kafka): {
  collectTopic: (topic: string) => Promise<Collector>;
  collectors: Collector[];
} {
  const collectors: Collector[] = [];
  after(async () => {
    await Promise.all(collectors.map((c) => c.stop()));
  });
  return {
    collectors,
    async collectTopic(topic) {
      const collector = await collect(client, topic);
      collectors.push(collector);
      return collector;
    },
  };
}

/**
 * A relay in this process, shipping to the test broker, its log lines collected (info and
 * above) in `lines`; `env` adds to or overrides the configuration.
 */
export async function inProcessRelay(
  databaseUrl: string,
  kafka: TestKafka,
  options: Parameters<typeof startRelay>[2] = {},
  env: Record<string, string | undefined> = {},
): Promise<{ running: RunningRelay; lines: LogLine[] }> {
  const lines: LogLine[] = [];
  const logger = createLogger('info', {
    write: (line: string) => {
      lines.push(JSON.parse(line) as LogLine);
    },
  });
  const config = parseConfig({
    DATABASE_URL: databaseUrl,
    KAFKA_BROKERS: kafka.brokers.join(','),
    HTTP_PORT: '0',
    // npm run test:rdkafka runs the relay tests with the librdkafka client.
    KAFKA_CLIENT: process.env.KAFKA_CLIENT,
    ...env,
  });
  const running = await startRelay(config, logger, options);
  if (!running) throw new Error('the relay stopped while starting');
  return { running, lines };
}
