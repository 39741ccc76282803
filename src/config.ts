/**
 * Configuration: every environment variable pg2kafka reads, parsed once, from an `env`
 * object passed in, before anything connects. Every problem is collected and reported
 * together, naming the variable and what it accepts; nothing malformed silently becomes
 * a default. `VARIABLES` is the one source of truth for names, defaults and meanings:
 * `--help`, `.env.example` and the README table are checked against it by a test.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from './errors.ts';
import { MESSAGE_FORMATS, type MessageFormat } from './relay/debezium.ts';

export type SaslMechanism = 'plain' | 'scram-sha-256' | 'scram-sha-512';
export const DEAD_LETTER_POLICIES = ['park-key', 'hold-table', 'skip'] as const;
export type DeadLetterPolicy = (typeof DEAD_LETTER_POLICIES)[number];

/** The Kafka clients the relay can produce with. */
export const KAFKA_CLIENTS = ['kafkajs', 'rdkafka'] as const;
export type KafkaClient = (typeof KAFKA_CLIENTS)[number];
/** At least once (the default), or exactly once for read_committed consumers. */
export const DELIVERIES = ['at-least-once', 'exactly-once'] as const;
export type Delivery = (typeof DELIVERIES)[number];
/** Topic names: pg2kafka's `<prefix>.<database>.<table>` or Debezium's `<prefix>.<schema>.<table>`. */
export const TOPIC_NAMINGS = ['pg2kafka', 'debezium'] as const;
export type TopicNamingStyle = (typeof TOPIC_NAMINGS)[number];

export interface Config {
  databaseUrl: string;
  kafkaBrokers: string[];
  kafkaClientId: string;
  topicPrefix: string;
  topicNamespace: string | undefined;
  /** How topics are named. */
  topicNaming: TopicNamingStyle;
  /** The message format of tables that name none (setup's message_format). */
  messageFormat: MessageFormat;
  performMigrations: boolean;
  dryRun: boolean;
  batchSize: number;
  /** Most bytes of row data read per batch; one larger row still ships alone. */
  batchBytes: number;
  /** The producer: kafkajs (JavaScript) or rdkafka (librdkafka, @confluentinc/kafka-javascript). */
  kafkaClient: KafkaClient;
  /** exactly-once: each batch is one Kafka transaction (KAFKA_CLIENT=rdkafka only). */
  delivery: Delivery;
  /** The transactional.id of exactly-once delivery; undefined: derived from the topics' names. */
  kafkaTransactionalId: string | undefined;
  /** What happens to an event Kafka refuses for good (see README "Dead letters"). */
  deadLetterPolicy: DeadLetterPolicy;
  /** Whether an idle relay asks writers to wake it with NOTIFY (off for two-phase commit). */
  wakeNotify: boolean;
  /** Longest wait between two polls of an idle queue. */
  pollIntervalMs: number;
  /** A leader that delivered nothing for this long while failing gives the lease up for a while. */
  leaderYieldAfterMs: number;
  /** The port of /healthz, /readyz, /metrics and /status; 0: any free port; undefined: none. */
  httpPort: number | undefined;
  /** Whether HTTP_PORT was set (the default port in use is then not fatal). */
  httpPortSet: boolean;
  /** The address the endpoints listen on; undefined: every interface. */
  httpHost: string | undefined;
  logLevel: string;
  autoCreateTopics: boolean;
  /** undefined: the broker's default. */
  topicPartitions: number | undefined;
  topicReplicationFactor: number | undefined;
  sasl: { mechanism: SaslMechanism; username: string; password: string } | undefined;
  tls:
    | {
        ca: string | undefined;
        cert: string | undefined;
        key: string | undefined;
        rejectUnauthorized: boolean;
      }
    | undefined;
}

/** Where the relay's HTTP endpoints listen unless HTTP_PORT says otherwise. */
export const DEFAULT_HTTP_PORT = 9898;

export interface VariableSpec {
  name: string;
  /** The default as written in .env.example and the README; '' when there is none. */
  default: string;
  meaning: string;
  secret?: boolean;
}

export const VARIABLES: VariableSpec[] = [
  {
    name: 'DATABASE_URL',
    default: '',
    meaning: 'PostgreSQL connection URL of the database to stream (required)',
    secret: true,
  },
  {
    name: 'KAFKA_BROKERS',
    default: '',
    meaning:
      'Kafka bootstrap brokers, comma separated host:port (required unless DRY_RUN=true; KAFKA_BROKER is accepted too)',
  },
  { name: 'TOPIC_PREFIX', default: 'pg2kafka', meaning: 'first part of every topic name' },
  {
    name: 'TOPIC_NAMESPACE',
    default: '',
    meaning: 'optional part after the prefix, giving topics prefix.namespace.database.table',
  },
  {
    name: 'TOPIC_NAMING',
    default: 'pg2kafka',
    meaning:
      "pg2kafka (prefix.database.table, schema.table outside public) or debezium (prefix.schema.table, as Debezium's PostgreSQL connector names them)",
  },
  {
    name: 'MESSAGE_FORMAT',
    default: 'pg2kafka',
    meaning:
      "pg2kafka (the original's JSON), debezium (Debezium's change events with Kafka Connect's schema, for Connect sinks) or debezium-schemaless (the same without the schema); a table's own format (setup --format) wins",
  },
  {
    name: 'PERFORM_MIGRATIONS',
    default: 'false',
    meaning: 'install or upgrade the pg2kafka schema when the relay starts',
  },
  {
    name: 'DRY_RUN',
    default: 'false',
    meaning: 'print events as JSON lines on stdout instead of sending them; nothing is deleted',
  },
  {
    name: 'BATCH_SIZE',
    default: '1000',
    meaning: 'most captured changes read and sent per batch (1 to 100000)',
  },
  {
    name: 'BATCH_BYTES',
    default: '8388608',
    meaning:
      'most bytes of row data read per batch (65536 to 1073741824); a larger row ships alone',
  },
  {
    name: 'DEAD_LETTER_POLICY',
    default: 'park-key',
    meaning:
      "an event Kafka refuses for good: park-key (set aside with its key's later events), hold-table (keep the table waiting) or skip (set aside alone)",
  },
  {
    name: 'WAKE_NOTIFY',
    default: 'true',
    meaning:
      'an idle relay asks writers to NOTIFY it; set false if writers use PREPARE TRANSACTION (then it polls)',
  },
  {
    name: 'POLL_INTERVAL_MS',
    default: '500',
    meaning:
      'longest wait between polls of an idle queue; polling speeds up while events flow (10 to 60000)',
  },
  {
    name: 'LEADER_YIELD_AFTER_MS',
    default: '60000',
    meaning:
      'an active relay that fails to ship for this long gives the lease up for a while, so a standby can try (1000 to 3600000)',
  },
  {
    name: 'HTTP_PORT',
    default: '9898',
    meaning:
      "port of the relay's /healthz, /readyz, /metrics (Prometheus) and /status; off: no HTTP endpoint (0: any free port)",
  },
  {
    name: 'HTTP_HOST',
    default: '',
    meaning:
      'the address the HTTP endpoints listen on, e.g. 127.0.0.1 to serve this host only (default: every interface)',
  },
  {
    name: 'LOG_LEVEL',
    default: 'info',
    meaning: 'fatal, error, warn, info, debug, trace or silent',
  },
  {
    name: 'KAFKA_CLIENT',
    default: 'rdkafka',
    meaning:
      'the producer: rdkafka (librdkafka through @confluentinc/kafka-javascript, encoding in C; needed for DELIVERY=exactly-once; an optional dependency that scripts/setup.sh builds where no prebuilt binary downloads), or kafkajs (pure JavaScript, nothing to build)',
  },
  {
    name: 'DELIVERY',
    default: 'at-least-once',
    meaning:
      'at-least-once, or exactly-once: each batch is one Kafka transaction, so read_committed consumers see each event once even across a crash or a failover (needs KAFKA_CLIENT=rdkafka; see README "Exactly-once delivery")',
  },
  {
    name: 'KAFKA_TRANSACTIONAL_ID',
    default: '',
    meaning:
      "exactly-once: the producer's transactional.id, the same for every relay of one install, since a relay that takes over fences the one before with it (default: the marker topic's name, <prefix>.<database>.pg2kafka.commits)",
  },
  {
    name: 'KAFKA_CLIENT_ID',
    default: 'pg2kafka',
    meaning: 'client id the producer reports to Kafka',
  },
  {
    name: 'AUTO_CREATE_TOPICS',
    default: 'true',
    meaning: 'create missing topics; when false, events of tables without a topic stay queued',
  },
  {
    name: 'TOPIC_PARTITIONS',
    default: '',
    meaning: "partitions of created topics (default: the broker's num.partitions)",
  },
  {
    name: 'TOPIC_REPLICATION_FACTOR',
    default: '',
    meaning:
      "replication factor of created topics (default: the broker's default.replication.factor)",
  },
  {
    name: 'KAFKA_SASL_MECHANISM',
    default: '',
    meaning:
      'plain, scram-sha-256 or scram-sha-512 (needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)',
  },
  { name: 'KAFKA_SASL_USERNAME', default: '', meaning: 'SASL user name' },
  { name: 'KAFKA_SASL_PASSWORD', default: '', meaning: 'SASL password', secret: true },
  {
    name: 'KAFKA_TLS',
    default: 'false',
    meaning: 'connect to Kafka over TLS (implied by any KAFKA_TLS_* file)',
  },
  {
    name: 'KAFKA_TLS_CA_FILE',
    default: '',
    meaning: "PEM file of the CA that signed the brokers' certificates (default: the system CAs)",
  },
  {
    name: 'KAFKA_TLS_CERT_FILE',
    default: '',
    meaning: 'PEM client certificate, for mutual TLS (with KAFKA_TLS_KEY_FILE)',
  },
  {
    name: 'KAFKA_TLS_KEY_FILE',
    default: '',
    meaning: 'PEM private key of the client certificate',
    secret: true,
  },
  {
    name: 'KAFKA_TLS_REJECT_UNAUTHORIZED',
    default: 'true',
    meaning: "verify the brokers' certificates; set false only to test, it is logged as a warning",
  },
];

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const SASL_MECHANISMS: SaslMechanism[] = ['plain', 'scram-sha-256', 'scram-sha-512'];
/** What Kafka accepts in a topic name. */
export const TOPIC_NAME_CHARS = /^[a-zA-Z0-9._-]+$/;
export const TOPIC_NAME_MAX = 249;

type Env = Record<string, string | undefined>;

/** Reads one variable; blank counts as unset. */
function read(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

class Problems {
  readonly list: string[] = [];
  add(message: string): undefined {
    this.list.push(message);
    return undefined;
  }
}

function parseBoolean(env: Env, name: string, fallback: boolean, problems: Problems): boolean {
  const value = read(env, name);
  if (value === undefined) return fallback;
  const lower = value.toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(lower)) return true;
  if (['false', '0', 'no', 'off'].includes(lower)) return false;
  problems.add(`${name} must be true or false, got "${value}"`);
  return fallback;
}

function parseWholeNumber(
  env: Env,
  name: string,
  min: number,
  max: number,
  problems: Problems,
): number | undefined {
  const value = read(env, name);
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
    problems.add(`${name} must be a whole number from ${min} to ${max}, got "${value}"`);
    return;
  }
  return n;
}

function parseHttpPort(env: Env, problems: Problems): number | undefined {
  const value = read(env, 'HTTP_PORT');
  if (value === undefined) return DEFAULT_HTTP_PORT;
  if (value.toLowerCase() === 'off') return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65_535) {
    problems.add(`HTTP_PORT must be a port number (0 to 65535) or off, got "${value}"`);
    return undefined;
  }
  return n;
}

function parseTopicPart(
  env: Env,
  name: string,
  fallback: string | undefined,
  problems: Problems,
): string | undefined {
  const value = read(env, name) ?? fallback;
  if (value !== undefined && !TOPIC_NAME_CHARS.test(value)) {
    problems.add(`${name} may only contain letters, digits, ".", "_" and "-", got "${value}"`);
    return;
  }
  return value;
}

function parseDatabaseUrl(env: Env, problems: Problems): string {
  const value = read(env, 'DATABASE_URL');
  if (value === undefined) {
    problems.add(
      'DATABASE_URL is required (example: DATABASE_URL=postgres://user:password@127.0.0.1:5432/shop)',
    );
    return '';
  }
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    problems.add(
      'DATABASE_URL is not a valid URL (example: postgres://user:password@127.0.0.1:5432/shop)',
    );
    return '';
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    problems.add(
      `DATABASE_URL must start with postgres:// or postgresql://, got "${parsed.protocol}//"`,
    );
  }
  return value;
}

function parseBrokers(env: Env, dryRun: boolean, problems: Problems): string[] {
  const brokers = read(env, 'KAFKA_BROKERS');
  const alias = read(env, 'KAFKA_BROKER');
  if (brokers !== undefined && alias !== undefined && brokers !== alias) {
    problems.add('KAFKA_BROKERS and KAFKA_BROKER are both set and differ: set only KAFKA_BROKERS');
    return [];
  }
  const value = brokers ?? alias;
  const name = brokers === undefined && alias !== undefined ? 'KAFKA_BROKER' : 'KAFKA_BROKERS';
  if (value === undefined) {
    if (!dryRun) {
      problems.add(
        'KAFKA_BROKERS is required unless DRY_RUN=true (example: KAFKA_BROKERS=127.0.0.1:9092)',
      );
    }
    return [];
  }
  const list = value.split(',').map((b) => b.trim());
  for (const broker of list) {
    if (!/^[^\s:/]+:\d{1,5}$/.test(broker) || Number(broker.split(':').pop()) > 65535) {
      problems.add(
        `${name} entries must be host:port, got "${broker}" (example: ${name}=kafka-1:9092,kafka-2:9092)`,
      );
    }
  }
  return list;
}

function readPemFile(env: Env, name: string, problems: Problems): string | undefined {
  const path = read(env, name);
  if (path === undefined) return undefined;
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    problems.add(
      `${name} names a file that cannot be read: ${path} (${(error as NodeJS.ErrnoException).code ?? 'error'})`,
    );
    return;
  }
}

function parseChoice<T extends string>(
  env: Env,
  name: string,
  choices: readonly T[],
  fallback: T,
  problems: Problems,
): T {
  const value = read(env, name)?.toLowerCase();
  if (value === undefined) return fallback;
  if (!choices.includes(value as T)) {
    problems.add(`${name} must be one of ${choices.join(', ')}, got "${value}"`);
    return fallback;
  }
  return value as T;
}

function parseDeadLetterPolicy(env: Env, problems: Problems): DeadLetterPolicy {
  const value = read(env, 'DEAD_LETTER_POLICY')?.toLowerCase();
  if (value === undefined) return 'park-key';
  if (!DEAD_LETTER_POLICIES.includes(value as DeadLetterPolicy)) {
    problems.add(
      `DEAD_LETTER_POLICY must be one of ${DEAD_LETTER_POLICIES.join(', ')}, got "${value}"`,
    );
    return 'park-key';
  }
  return value as DeadLetterPolicy;
}

function parseSasl(env: Env, problems: Problems): Config['sasl'] {
  const mechanism = read(env, 'KAFKA_SASL_MECHANISM')?.toLowerCase();
  const username = read(env, 'KAFKA_SASL_USERNAME');
  const password = read(env, 'KAFKA_SASL_PASSWORD');
  if (mechanism === undefined) {
    if (username !== undefined || password !== undefined) {
      problems.add(
        'KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD need KAFKA_SASL_MECHANISM (plain, scram-sha-256 or scram-sha-512)',
      );
    }
    return undefined;
  }
  if (!SASL_MECHANISMS.includes(mechanism as SaslMechanism)) {
    problems.add(
      `KAFKA_SASL_MECHANISM must be one of ${SASL_MECHANISMS.join(', ')}, got "${mechanism}"`,
    );
    return;
  }
  if (username === undefined || password === undefined) {
    problems.add(
      `KAFKA_SASL_MECHANISM=${mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD`,
    );
    return;
  }
  return { mechanism: mechanism as SaslMechanism, username, password };
}

function parseTls(env: Env, problems: Problems): Config['tls'] {
  const ca = readPemFile(env, 'KAFKA_TLS_CA_FILE', problems);
  const cert = readPemFile(env, 'KAFKA_TLS_CERT_FILE', problems);
  const key = readPemFile(env, 'KAFKA_TLS_KEY_FILE', problems);
  const anyFile = ['KAFKA_TLS_CA_FILE', 'KAFKA_TLS_CERT_FILE', 'KAFKA_TLS_KEY_FILE'].some(
    (n) => read(env, n) !== undefined,
  );
  const enabled = parseBoolean(env, 'KAFKA_TLS', false, problems) || anyFile;
  const rejectUnauthorized = parseBoolean(env, 'KAFKA_TLS_REJECT_UNAUTHORIZED', true, problems);
  if (
    (read(env, 'KAFKA_TLS_CERT_FILE') === undefined) !==
    (read(env, 'KAFKA_TLS_KEY_FILE') === undefined)
  ) {
    problems.add(
      'KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE go together: set both for mutual TLS, or neither',
    );
  }
  if (!enabled) {
    // Only a request to skip verification is suspicious without TLS; the default is harmless.
    if (!rejectUnauthorized) {
      problems.add('KAFKA_TLS_REJECT_UNAUTHORIZED=false has no effect without KAFKA_TLS=true');
    }
    return undefined;
  }
  return { ca, cert, key, rejectUnauthorized };
}

/**
 * Parses the whole configuration; throws a UsageError listing every problem. Commands
 * that never talk to Kafka (migrate, setup, teardown, status) pass `needsKafka: false`.
 */
export function parseConfig(
  env: Env,
  { needsKafka = true }: { needsKafka?: boolean } = {},
): Config {
  const problems = new Problems();
  const dryRun = parseBoolean(env, 'DRY_RUN', false, problems);
  const logLevel = (read(env, 'LOG_LEVEL') ?? 'info').toLowerCase();
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.add(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  }
  const config: Config = {
    databaseUrl: parseDatabaseUrl(env, problems),
    kafkaBrokers: parseBrokers(env, dryRun || !needsKafka, problems),
    kafkaClientId: read(env, 'KAFKA_CLIENT_ID') ?? 'pg2kafka',
    kafkaClient: parseChoice(env, 'KAFKA_CLIENT', KAFKA_CLIENTS, 'rdkafka', problems),
    delivery: parseChoice(env, 'DELIVERY', DELIVERIES, 'at-least-once', problems),
    kafkaTransactionalId: read(env, 'KAFKA_TRANSACTIONAL_ID'),
    topicPrefix: parseTopicPart(env, 'TOPIC_PREFIX', 'pg2kafka', problems) ?? 'pg2kafka',
    topicNamespace: parseTopicPart(env, 'TOPIC_NAMESPACE', undefined, problems),
    topicNaming: parseChoice(env, 'TOPIC_NAMING', TOPIC_NAMINGS, 'pg2kafka', problems),
    messageFormat: parseChoice(env, 'MESSAGE_FORMAT', MESSAGE_FORMATS, 'pg2kafka', problems),
    performMigrations: parseBoolean(env, 'PERFORM_MIGRATIONS', false, problems),
    dryRun,
    batchSize: parseWholeNumber(env, 'BATCH_SIZE', 1, 100_000, problems) ?? 1000,
    batchBytes: parseWholeNumber(env, 'BATCH_BYTES', 65_536, 1_073_741_824, problems) ?? 8_388_608,
    deadLetterPolicy: parseDeadLetterPolicy(env, problems),
    wakeNotify: parseBoolean(env, 'WAKE_NOTIFY', true, problems),
    pollIntervalMs: parseWholeNumber(env, 'POLL_INTERVAL_MS', 10, 60_000, problems) ?? 500,
    leaderYieldAfterMs:
      parseWholeNumber(env, 'LEADER_YIELD_AFTER_MS', 1_000, 3_600_000, problems) ?? 60_000,
    httpPort: parseHttpPort(env, problems),
    httpPortSet: read(env, 'HTTP_PORT') !== undefined,
    httpHost: read(env, 'HTTP_HOST'),
    logLevel,
    autoCreateTopics: parseBoolean(env, 'AUTO_CREATE_TOPICS', true, problems),
    topicPartitions: parseWholeNumber(env, 'TOPIC_PARTITIONS', 1, 10_000, problems),
    topicReplicationFactor: parseWholeNumber(env, 'TOPIC_REPLICATION_FACTOR', 1, 100, problems),
    sasl: parseSasl(env, problems),
    tls: parseTls(env, problems),
  };
  if (config.delivery === 'exactly-once' && config.kafkaClient !== 'rdkafka') {
    problems.add(
      'DELIVERY=exactly-once needs KAFKA_CLIENT=rdkafka (its transactional producer); kafkajs delivers at least once',
    );
  }
  if (problems.list.length > 0) {
    throw new UsageError(
      `invalid configuration: ${problems.list.length} problem(s)`,
      problems.list,
    );
  }
  return config;
}

/** The database URL without its password, for logs and errors. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    for (const key of [...parsed.searchParams.keys()]) {
      if (/pass|secret|key/i.test(key)) parsed.searchParams.set(key, '***');
    }
    return parsed.toString();
  } catch {
    return '(unparseable URL)';
  }
}

/** The effective configuration as logged at startup: secrets redacted. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    databaseUrl: redactUrl(config.databaseUrl),
    sasl: config.sasl && {
      mechanism: config.sasl.mechanism,
      username: config.sasl.username,
      password: '***',
    },
    tls: config.tls && {
      ca: config.tls.ca === undefined ? undefined : '(file)',
      cert: config.tls.cert === undefined ? undefined : '(file)',
      key: config.tls.key === undefined ? undefined : '***',
      rejectUnauthorized: config.tls.rejectUnauthorized,
    },
  };
}

/** The environment section of `pg2kafka --help`. */
export function environmentHelp(): string {
  const width = Math.max(...VARIABLES.map((v) => v.name.length)) + 2;
  return VARIABLES.map(
    (v) =>
      `  ${v.name.padEnd(width)}${v.meaning}${v.default === '' ? '' : ` (default: ${v.default})`}`,
  ).join('\n');
}
