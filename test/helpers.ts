/**
 * Shared test helpers: a fresh PostgreSQL database per test file, Kafka clients on the
 * run's broker, unique topic names, `waitFor` and `deferred`, and a leak check that
 * fails the file when a client it opened was not closed.
 *
 * Tests run under `npm test`, which provides DATABASE_URL (admin connection) and
 * KAFKA_BROKERS. A missing value fails loudly: nothing here skips a test.
 */
import { randomBytes } from 'node:crypto';
import { after, before } from 'node:test';
import {
  Kafka,
  logLevel,
  type Admin,
  type Consumer,
  type KafkaMessage,
  type Producer,
} from 'kafkajs';
import postgres from 'postgres';

export type Sql = postgres.Sql;

function requiredEnv(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run the tests with "npm test", which provides it`);
  }
  return value;
}

export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string | (() => string),
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const reason = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      const description = typeof what === 'function' ? what() : what;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}${reason}`);
    }
    await sleep(intervalMs);
  }
}

/** Closes what a test file opened; fails the file if anything was left open. */
class OpenResources {
  private readonly open = new Map<string, () => Promise<void>>();

  track(name: string, close: () => Promise<void>): () => Promise<void> {
    this.open.set(name, close);
    return async () => {
      this.open.delete(name);
      await close();
    };
  }

  async closeAll(): Promise<string[]> {
    const leaked = [...this.open.keys()];
    for (const [name, close] of [...this.open].reverse()) {
      this.open.delete(name);
      await close().catch(() => undefined);
    }
    return leaked;
  }
}

export interface TestDatabase {
  /** The database's name, unique to this test file. */
  readonly name: string;
  /** Connection URL of the test database. */
  readonly url: string;
  /** A connection pool on the test database, closed after the file. */
  readonly sql: Sql;
  /**
   * Resolves once the database exists. Node 20 runs a file's top-level `before` hooks
   * concurrently, so a hook that needs the database awaits this first.
   */
  readonly ready: Promise<void>;
  /** Opens another pool on the test database, tracked by the leak check. */
  connect(options?: postgres.Options<Record<string, postgres.PostgresType>>): Sql;
}

/**
 * Registers before/after hooks that create a fresh database for this test file and drop
 * it afterwards. Use the returned object inside tests (its fields exist once `before` ran).
 */
export function useTestDatabase(): TestDatabase {
  const adminUrl = requiredEnv('DATABASE_URL');
  const name = uniqueName('pg2kafka_test');
  const url = (() => {
    const u = new URL(adminUrl);
    u.pathname = `/${name}`;
    return u.toString();
  })();
  const resources = new OpenResources();
  let pool: Sql | undefined;
  let connections = 0;
  const ready = deferred();
  // Without a test that awaits it, a failed creation must not become an unhandled rejection.
  ready.promise.catch(() => undefined);

  const connect: TestDatabase['connect'] = (options) => {
    connections += 1;
    const sql = postgres(url, { onnotice: () => undefined, ...options });
    const end = sql.end.bind(sql);
    sql.end = resources.track(`postgres pool #${connections}`, () => end({ timeout: 5 }));
    return sql;
  };

  before(async () => {
    const admin = postgres(adminUrl, { max: 1, onnotice: () => undefined });
    try {
      await admin.unsafe(`create database "${name}"`);
      pool = postgres(url, { onnotice: () => undefined });
      ready.resolve();
    } catch (error) {
      ready.reject(error);
      throw error;
    } finally {
      await admin.end({ timeout: 5 });
    }
  });

  after(async () => {
    const leaked = await resources.closeAll();
    await pool?.end({ timeout: 5 });
    const admin = postgres(adminUrl, { max: 1, onnotice: () => undefined });
    try {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
    } finally {
      await admin.end({ timeout: 5 });
    }
    if (leaked.length > 0) throw new Error(`test file left open: ${leaked.join(', ')}`);
  });

  return {
    name,
    url,
    ready: ready.promise,
    get sql(): Sql {
      if (!pool) throw new Error('the test database is ready only inside tests and hooks');
      return pool;
    },
    connect,
  };
}

export interface TestKafka {
  readonly brokers: string[];
  readonly kafka: Kafka;
  admin(): Promise<Admin>;
  producer(): Promise<Producer>;
  /**
   * Creates a topic and waits until it has a leader. `config`: topic configuration
   * entries, as `{ 'max.message.bytes': '2000' }` (default: the broker's).
   */
  createTopic(topic: string, partitions?: number, config?: Record<string, string>): Promise<void>;
  /**
   * Reads `count` messages from the start of `topic` with a real consumer group, then
   * disconnects. Fails with what it got so far if they do not arrive within `timeoutMs`.
   * With `settleMs`, keeps listening that long after the count is reached, so that extra
   * messages show up in the result (and fail an exact comparison).
   */
  consume(
    topic: string,
    count: number,
    timeoutMs?: number,
    settleMs?: number,
  ): Promise<ConsumedMessage[]>;
}

export interface ConsumedMessage {
  topic: string;
  partition: number;
  offset: string;
  key: string | null;
  value: string | null;
  timestamp: string;
  headers: Record<string, string>;
}

function decodeMessage(topic: string, partition: number, message: KafkaMessage): ConsumedMessage {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(message.headers ?? {})) {
    if (value !== undefined) headers[name] = value.toString();
  }
  return {
    topic,
    partition,
    offset: message.offset,
    key: message.key?.toString() ?? null,
    value: message.value?.toString() ?? null,
    timestamp: message.timestamp,
    headers,
  };
}

/** Kafka clients on the run's broker; every client is disconnected after the file. */
export function useKafka(): TestKafka {
  const brokers = requiredEnv('KAFKA_BROKERS').split(',');
  const kafka = new Kafka({
    clientId: uniqueName('pg2kafka-test'),
    brokers,
    logLevel: logLevel.ERROR,
  });
  const resources = new OpenResources();
  let counter = 0;

  after(async () => {
    const leaked = await resources.closeAll();
    if (leaked.length > 0) throw new Error(`test file left open: ${leaked.join(', ')}`);
  });

  const admin = async (): Promise<Admin> => {
    const client = kafka.admin();
    await client.connect();
    const original = client.disconnect.bind(client);
    const disconnect = resources.track(`kafka admin #${++counter}`, original);
    return Object.assign(client, { disconnect });
  };

  const producer = async (): Promise<Producer> => {
    // Idempotent: kafkajs retries a whole request when one of its partitions fails
    // (NOT_LEADER just after a topic is created), and without idempotence the partitions
    // that had succeeded get the batch twice.
    const client = kafka.producer({
      allowAutoTopicCreation: false,
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await client.connect();
    const original = client.disconnect.bind(client);
    const disconnect = resources.track(`kafka producer #${++counter}`, original);
    return Object.assign(client, { disconnect });
  };

  const createTopic = async (
    topic: string,
    partitions = 1,
    config: Record<string, string> = {},
  ): Promise<void> => {
    const client = await admin();
    try {
      await client.createTopics({
        topics: [
          {
            topic,
            numPartitions: partitions,
            configEntries: Object.entries(config).map(([name, value]) => ({ name, value })),
          },
        ],
        waitForLeaders: false,
      });
      // kafkajs's waitForLeaders fails when the broker does not list the new topic yet
      // (UNKNOWN_TOPIC_OR_PARTITION, just after the broker started): ask until it has
      // leaders.
      await waitFor(
        `topic ${topic} with leaders`,
        async () => {
          const { topics } = await client.fetchTopicMetadata({ topics: [topic] }).catch(() => ({
            topics: [],
          }));
          const partitionsFound = topics[0]?.partitions ?? [];
          return (
            partitionsFound.length === partitions && partitionsFound.every((p) => p.leader >= 0)
          );
        },
        30_000,
        100,
      );
    } finally {
      await client.disconnect();
    }
  };

  const consume = async (
    topic: string,
    count: number,
    timeoutMs = 30_000,
    settleMs = 0,
  ): Promise<ConsumedMessage[]> => {
    const consumer: Consumer = kafka.consumer({
      groupId: uniqueName('pg2kafka-test-group'),
      allowAutoTopicCreation: false,
    });
    const disconnect = resources.track(`kafka consumer #${++counter}`, () => consumer.disconnect());
    const received: ConsumedMessage[] = [];
    const done = deferred();
    try {
      // The code under test creates its topics: wait for it rather than fail at once.
      const probe = await admin();
      try {
        await waitFor(
          `topic ${topic} to exist`,
          async () => (await probe.listTopics()).includes(topic),
          timeoutMs,
        );
      } finally {
        await probe.disconnect();
      }
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      await consumer.run({
        eachMessage: ({ topic: t, partition, message }) => {
          received.push(decodeMessage(t, partition, message));
          if (received.length >= count) done.resolve();
          return Promise.resolve();
        },
      });
      const timer = setTimeout(() => {
        done.reject(
          new Error(
            `expected ${count} message(s) on ${topic} within ${timeoutMs} ms, got ${received.length}`,
          ),
        );
      }, timeoutMs);
      try {
        await done.promise;
      } finally {
        clearTimeout(timer);
      }
      if (settleMs > 0) await sleep(settleMs);
      return [...received];
    } finally {
      await disconnect();
    }
  };

  return { brokers, kafka, admin, producer, createTopic, consume };
}
