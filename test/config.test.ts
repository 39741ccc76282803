/**
 * Configuration: parseConfig's defaults, one exact message per bad value, every problem
 * reported together, secrets kept out of describeConfig, and VARIABLES as the one source
 * of truth for .env.example, the README table and `pg2kafka --help`.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parse as parseDotenv } from 'dotenv';
import { envExample, README_END, README_START } from '../scripts/config-docs.ts';
import { describeConfig, parseConfig, redactUrl, VARIABLES, type Config } from '../src/config.ts';
import { UsageError } from '../src/errors.ts';
import { runCli } from './relay/support.ts';

const ROOT = new URL('..', import.meta.url);
const DATABASE_URL = 'postgres://shop:db-s3cret@127.0.0.1:5432/shop';
const BASE = { DATABASE_URL, KAFKA_BROKERS: '127.0.0.1:9092' };

type Env = Record<string, string | undefined>;

/** The problems parseConfig reports for `env`; fails if it does not throw a UsageError. */
function problemsOf(env: Env, options?: { needsKafka?: boolean }): string[] {
  try {
    parseConfig(env, options);
  } catch (error) {
    assert.ok(error instanceof UsageError, `expected a UsageError, got ${String(error)}`);
    assert.equal(error.message, `invalid configuration: ${error.problems.length} problem(s)`);
    return error.problems;
  }
  assert.fail(`parseConfig accepted ${JSON.stringify(env)}`);
}

/** Asserts that setting `name` to `value` (on top of a valid env) gives exactly `message`. */
function rejects(name: string, value: string, message: string): void {
  assert.deepEqual(problemsOf({ ...BASE, [name]: value }), [message], `${name}=${value}`);
}

const tempDir = mkdtempSync(join(tmpdir(), 'pg2kafka-config-'));
after(() => {
  rmSync(tempDir, { recursive: true, force: true });
});

const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIB-test-ca\n-----END CERTIFICATE-----\n';
const CERT_PEM = '-----BEGIN CERTIFICATE-----\nMIIB-test-client\n-----END CERTIFICATE-----\n';
const KEY_SECRET = 'MIIE-very-secret-key-material';
const KEY_PEM = `-----BEGIN PRIVATE KEY-----\n${KEY_SECRET}\n-----END PRIVATE KEY-----\n`;

function pemFile(name: string, content: string): string {
  const path = join(tempDir, name);
  writeFileSync(path, content);
  return path;
}

const DEFAULTS: Config = {
  databaseUrl: DATABASE_URL,
  kafkaBrokers: ['127.0.0.1:9092'],
  kafkaClientId: 'pg2kafka',
  kafkaClient: 'rdkafka',
  delivery: 'at-least-once',
  kafkaTransactionalId: undefined,
  topicPrefix: 'pg2kafka',
  topicNamespace: undefined,
  topicNaming: 'pg2kafka',
  messageFormat: 'pg2kafka',
  performMigrations: false,
  dryRun: false,
  batchSize: 1000,
  batchBytes: 8_388_608,
  deadLetterPolicy: 'park-key',
  wakeNotify: true,
  pollIntervalMs: 500,
  leaderYieldAfterMs: 60_000,
  httpPort: 9898,
  httpPortSet: false,
  httpHost: undefined,
  logLevel: 'info',
  autoCreateTopics: true,
  topicPartitions: undefined,
  topicReplicationFactor: undefined,
  sasl: undefined,
  tls: undefined,
};

test('a minimal environment gives the documented defaults', () => {
  assert.deepEqual(parseConfig(BASE), DEFAULTS);
});

test('blank values count as unset, and values are trimmed', () => {
  const blanks = Object.fromEntries(VARIABLES.map((v) => [v.name, '  ']));
  assert.deepEqual(parseConfig({ ...blanks, ...BASE }), DEFAULTS);
  assert.deepEqual(
    parseConfig({
      ...BASE,
      BATCH_SIZE: ' 42 ',
      DRY_RUN: ' Yes ',
      AUTO_CREATE_TOPICS: 'OFF',
      TOPIC_NAMESPACE: 'staging',
      TOPIC_PARTITIONS: '6',
      TOPIC_REPLICATION_FACTOR: '3',
      POLL_INTERVAL_MS: '10',
      LOG_LEVEL: 'silent',
      KAFKA_CLIENT_ID: 'shop-relay',
      PERFORM_MIGRATIONS: '1',
    }),
    {
      ...DEFAULTS,
      batchSize: 42,
      dryRun: true,
      autoCreateTopics: false,
      topicNamespace: 'staging',
      topicPartitions: 6,
      topicReplicationFactor: 3,
      pollIntervalMs: 10,
      logLevel: 'silent',
      kafkaClientId: 'shop-relay',
      performMigrations: true,
    },
  );
});

test('a .env copied from .env.example, as its header says to, is a valid configuration', () => {
  const env = parseDotenv(readFileSync(new URL('.env.example', ROOT), 'utf8'));
  let config: Config | { problems: string[] };
  try {
    config = parseConfig(env);
  } catch (error) {
    assert.ok(error instanceof UsageError);
    config = { problems: error.problems };
  }
  assert.deepEqual(config, {
    ...DEFAULTS,
    databaseUrl: 'postgres://postgres@127.0.0.1:5432/postgres',
    // Written out in the file: set, though to the default.
    httpPortSet: true,
  });
});

test('numbers out of range or not whole are rejected with the accepted range', () => {
  for (const value of ['abc', '0', '1.5', '100001', '-1', '1e3']) {
    rejects(
      'BATCH_SIZE',
      value,
      `BATCH_SIZE must be a whole number from 1 to 100000, got "${value}"`,
    );
  }
  assert.equal(parseConfig({ ...BASE, BATCH_SIZE: '100000' }).batchSize, 100_000);
  assert.equal(parseConfig({ ...BASE, BATCH_SIZE: '1' }).batchSize, 1);
  for (const value of ['9', '60001', 'fast']) {
    rejects(
      'POLL_INTERVAL_MS',
      value,
      `POLL_INTERVAL_MS must be a whole number from 10 to 60000, got "${value}"`,
    );
  }
  for (const value of ['0', '10001', 'many']) {
    rejects(
      'TOPIC_PARTITIONS',
      value,
      `TOPIC_PARTITIONS must be a whole number from 1 to 10000, got "${value}"`,
    );
  }
  for (const value of ['0', '101', '2.0']) {
    rejects(
      'TOPIC_REPLICATION_FACTOR',
      value,
      `TOPIC_REPLICATION_FACTOR must be a whole number from 1 to 100, got "${value}"`,
    );
  }
});

test('booleans accept true/false, 1/0, yes/no, on/off and nothing else', () => {
  for (const name of ['DRY_RUN', 'PERFORM_MIGRATIONS', 'AUTO_CREATE_TOPICS', 'KAFKA_TLS']) {
    for (const value of ['maybe', 'enabled', '2']) {
      assert.deepEqual(
        problemsOf({ ...BASE, [name]: value }),
        [`${name} must be true or false, got "${value}"`],
        `${name}=${value}`,
      );
    }
  }
  assert.deepEqual(
    problemsOf({ ...BASE, KAFKA_TLS: 'true', KAFKA_TLS_REJECT_UNAUTHORIZED: 'nope' }),
    ['KAFKA_TLS_REJECT_UNAUTHORIZED must be true or false, got "nope"'],
  );
  for (const [value, expected] of [
    ['TRUE', true],
    ['on', true],
    ['1', true],
    ['False', false],
    ['no', false],
    ['0', false],
  ] as const) {
    assert.equal(parseConfig({ ...BASE, PERFORM_MIGRATIONS: value }).performMigrations, expected);
  }
});

test('BATCH_BYTES, DEAD_LETTER_POLICY and WAKE_NOTIFY accept only what they document', () => {
  for (const value of ['65535', '1073741825', '8M']) {
    rejects(
      'BATCH_BYTES',
      value,
      `BATCH_BYTES must be a whole number from 65536 to 1073741824, got "${value}"`,
    );
  }
  assert.equal(parseConfig({ ...BASE, BATCH_BYTES: '65536' }).batchBytes, 65_536);
  rejects(
    'DEAD_LETTER_POLICY',
    'drop',
    'DEAD_LETTER_POLICY must be one of park-key, hold-table, skip, got "drop"',
  );
  for (const policy of ['park-key', 'hold-table', 'skip', 'SKIP'] as const) {
    assert.equal(
      parseConfig({ ...BASE, DEAD_LETTER_POLICY: policy }).deadLetterPolicy,
      policy.toLowerCase(),
    );
  }
  assert.equal(parseConfig({ ...BASE, WAKE_NOTIFY: 'false' }).wakeNotify, false);
  rejects('WAKE_NOTIFY', 'sometimes', 'WAKE_NOTIFY must be true or false, got "sometimes"');
});

test('HTTP_PORT: a port, 0 for any free one, or off', () => {
  assert.equal(parseConfig(BASE).httpPort, 9898);
  assert.equal(parseConfig({ ...BASE, HTTP_PORT: '8080' }).httpPort, 8080);
  assert.equal(parseConfig({ ...BASE, HTTP_PORT: '0' }).httpPort, 0);
  assert.equal(parseConfig({ ...BASE, HTTP_PORT: 'OFF' }).httpPort, undefined);
  for (const value of ['65536', 'http', '-1', '80.5']) {
    rejects(
      'HTTP_PORT',
      value,
      `HTTP_PORT must be a port number (0 to 65535) or off, got "${value}"`,
    );
  }
});

test('LOG_LEVEL must be one of the pino levels', () => {
  rejects(
    'LOG_LEVEL',
    'verbose',
    'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "verbose"',
  );
  assert.equal(parseConfig({ ...BASE, LOG_LEVEL: 'debug' }).logLevel, 'debug');
  assert.equal(
    parseConfig({ ...BASE, LOG_LEVEL: 'WARN' }).logLevel,
    'warn',
    'case does not matter',
  );
});

test('TOPIC_PREFIX and TOPIC_NAMESPACE only take characters Kafka accepts in a topic name', () => {
  for (const name of ['TOPIC_PREFIX', 'TOPIC_NAMESPACE']) {
    for (const value of ['my prefix', 'a/b', 'ä', 'x:y']) {
      rejects(
        name,
        value,
        `${name} may only contain letters, digits, ".", "_" and "-", got "${value}"`,
      );
    }
  }
  const config = parseConfig({ ...BASE, TOPIC_PREFIX: 'cdc-v2', TOPIC_NAMESPACE: 'eu_west.1' });
  assert.equal(config.topicPrefix, 'cdc-v2');
  assert.equal(config.topicNamespace, 'eu_west.1');
});

test('KAFKA_BROKERS entries must be host:port with a valid port', () => {
  for (const broker of ['localhost', 'a:99999', 'kafka:', ':9092', 'a b:9092', 'host:port']) {
    rejects(
      'KAFKA_BROKERS',
      broker,
      `KAFKA_BROKERS entries must be host:port, got "${broker}" (example: KAFKA_BROKERS=kafka-1:9092,kafka-2:9092)`,
    );
  }
  assert.deepEqual(problemsOf({ ...BASE, KAFKA_BROKERS: 'kafka-1:9092,localhost' }), [
    'KAFKA_BROKERS entries must be host:port, got "localhost" (example: KAFKA_BROKERS=kafka-1:9092,kafka-2:9092)',
  ]);
  assert.deepEqual(
    parseConfig({ ...BASE, KAFKA_BROKERS: 'kafka-1:9092, kafka-2:65535' }).kafkaBrokers,
    ['kafka-1:9092', 'kafka-2:65535'],
  );
});

test('KAFKA_BROKER is an alias of KAFKA_BROKERS; both set and different is an error', () => {
  assert.deepEqual(
    parseConfig({ DATABASE_URL, KAFKA_BROKER: 'kafka-1:9092,kafka-2:9092' }).kafkaBrokers,
    ['kafka-1:9092', 'kafka-2:9092'],
  );
  assert.deepEqual(parseConfig({ ...BASE, KAFKA_BROKER: BASE.KAFKA_BROKERS }).kafkaBrokers, [
    '127.0.0.1:9092',
  ]);
  assert.deepEqual(problemsOf({ ...BASE, KAFKA_BROKER: 'other:9092' }), [
    'KAFKA_BROKERS and KAFKA_BROKER are both set and differ: set only KAFKA_BROKERS',
  ]);
});

test('KAFKA_BROKERS is required, except with DRY_RUN=true or for commands without Kafka', () => {
  const required =
    'KAFKA_BROKERS is required unless DRY_RUN=true (example: KAFKA_BROKERS=127.0.0.1:9092)';
  assert.deepEqual(problemsOf({ DATABASE_URL }), [required]);
  assert.deepEqual(problemsOf({ DATABASE_URL, DRY_RUN: 'false' }), [required]);
  assert.deepEqual(parseConfig({ DATABASE_URL, DRY_RUN: 'true' }), {
    ...DEFAULTS,
    kafkaBrokers: [],
    dryRun: true,
  });
  assert.deepEqual(parseConfig({ DATABASE_URL }, { needsKafka: false }), {
    ...DEFAULTS,
    kafkaBrokers: [],
  });
  // Without Kafka, a broker list that is given is still checked.
  assert.deepEqual(
    problemsOf({ DATABASE_URL, KAFKA_BROKERS: 'localhost' }, { needsKafka: false }),
    [
      'KAFKA_BROKERS entries must be host:port, got "localhost" (example: KAFKA_BROKERS=kafka-1:9092,kafka-2:9092)',
    ],
  );
});

test('DATABASE_URL is required and must be a postgres:// URL, never echoed back', () => {
  const withoutUrl = { KAFKA_BROKERS: BASE.KAFKA_BROKERS };
  assert.deepEqual(problemsOf(withoutUrl), [
    'DATABASE_URL is required (example: DATABASE_URL=postgres://user:password@127.0.0.1:5432/shop)',
  ]);
  assert.deepEqual(problemsOf(withoutUrl, { needsKafka: false }), [
    'DATABASE_URL is required (example: DATABASE_URL=postgres://user:password@127.0.0.1:5432/shop)',
  ]);
  const notAUrl = problemsOf({ ...BASE, DATABASE_URL: 'host=db password=s3cret dbname=shop' });
  assert.deepEqual(notAUrl, [
    'DATABASE_URL is not a valid URL (example: postgres://user:password@127.0.0.1:5432/shop)',
  ]);
  assert.deepEqual(problemsOf({ ...BASE, DATABASE_URL: 'mysql://root:s3cret@db:3306/shop' }), [
    'DATABASE_URL must start with postgres:// or postgresql://, got "mysql://"',
  ]);
  assert.equal(
    parseConfig({ ...BASE, DATABASE_URL: 'postgresql://db/shop' }).databaseUrl,
    'postgresql://db/shop',
  );
});

test('SASL: each mechanism, case-insensitive, and what goes with it', () => {
  for (const [written, mechanism] of [
    ['PLAIN', 'plain'],
    ['plain', 'plain'],
    ['SCRAM-SHA-256', 'scram-sha-256'],
    ['Scram-Sha-512', 'scram-sha-512'],
  ] as const) {
    assert.deepEqual(
      parseConfig({
        ...BASE,
        KAFKA_SASL_MECHANISM: written,
        KAFKA_SASL_USERNAME: 'relay',
        KAFKA_SASL_PASSWORD: 'sasl-s3cret',
      }).sasl,
      { mechanism, username: 'relay', password: 'sasl-s3cret' },
    );
  }
  rejects(
    'KAFKA_SASL_MECHANISM',
    'gssapi',
    'KAFKA_SASL_MECHANISM must be one of plain, scram-sha-256, scram-sha-512, got "gssapi"',
  );
  assert.deepEqual(problemsOf({ ...BASE, KAFKA_SASL_MECHANISM: 'scram-sha-256' }), [
    'KAFKA_SASL_MECHANISM=scram-sha-256 needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD',
  ]);
  assert.deepEqual(
    problemsOf({ ...BASE, KAFKA_SASL_MECHANISM: 'plain', KAFKA_SASL_USERNAME: 'relay' }),
    ['KAFKA_SASL_MECHANISM=plain needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD'],
  );
  const needsMechanism =
    'KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD need KAFKA_SASL_MECHANISM (plain, scram-sha-256 or scram-sha-512)';
  assert.deepEqual(problemsOf({ ...BASE, KAFKA_SASL_USERNAME: 'relay' }), [needsMechanism]);
  assert.deepEqual(
    problemsOf({ ...BASE, KAFKA_SASL_USERNAME: 'relay', KAFKA_SASL_PASSWORD: 'x' }),
    [needsMechanism],
  );
});

test('TLS: files are read, any KAFKA_TLS_*_FILE implies TLS, verification on by default', () => {
  const ca = pemFile('ca.pem', CA_PEM);
  const cert = pemFile('client.pem', CERT_PEM);
  const key = pemFile('client.key', KEY_PEM);

  assert.deepEqual(parseConfig({ ...BASE, KAFKA_TLS: 'true' }).tls, {
    ca: undefined,
    cert: undefined,
    key: undefined,
    rejectUnauthorized: true,
  });
  assert.equal(parseConfig({ ...BASE, KAFKA_TLS: 'false' }).tls, undefined);
  assert.deepEqual(parseConfig({ ...BASE, KAFKA_TLS_CA_FILE: ca }).tls, {
    ca: CA_PEM,
    cert: undefined,
    key: undefined,
    rejectUnauthorized: true,
  });
  // A file wins over an explicit KAFKA_TLS=false: TLS is never dropped silently.
  assert.deepEqual(
    parseConfig({ ...BASE, KAFKA_TLS: 'false', KAFKA_TLS_CERT_FILE: cert, KAFKA_TLS_KEY_FILE: key })
      .tls,
    { ca: undefined, cert: CERT_PEM, key: KEY_PEM, rejectUnauthorized: true },
  );
  assert.deepEqual(
    parseConfig({
      ...BASE,
      KAFKA_TLS_CA_FILE: ca,
      KAFKA_TLS_CERT_FILE: cert,
      KAFKA_TLS_KEY_FILE: key,
      KAFKA_TLS_REJECT_UNAUTHORIZED: 'false',
    }).tls,
    { ca: CA_PEM, cert: CERT_PEM, key: KEY_PEM, rejectUnauthorized: false },
  );
});

test('TLS: unreadable files, a certificate without its key, and verification settings without TLS', () => {
  const missing = join(tempDir, 'missing.pem');
  rejects(
    'KAFKA_TLS_CA_FILE',
    missing,
    `KAFKA_TLS_CA_FILE names a file that cannot be read: ${missing} (ENOENT)`,
  );
  const cert = pemFile('only-cert.pem', CERT_PEM);
  rejects(
    'KAFKA_TLS_CERT_FILE',
    cert,
    'KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE go together: set both for mutual TLS, or neither',
  );
  const key = pemFile('only-key.pem', KEY_PEM);
  rejects(
    'KAFKA_TLS_KEY_FILE',
    key,
    'KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE go together: set both for mutual TLS, or neither',
  );
  rejects(
    'KAFKA_TLS_REJECT_UNAUTHORIZED',
    'false',
    'KAFKA_TLS_REJECT_UNAUTHORIZED=false has no effect without KAFKA_TLS=true',
  );
  assert.deepEqual(
    problemsOf({ ...BASE, KAFKA_TLS: 'false', KAFKA_TLS_REJECT_UNAUTHORIZED: 'false' }),
    ['KAFKA_TLS_REJECT_UNAUTHORIZED=false has no effect without KAFKA_TLS=true'],
  );
});

test('every problem is reported together, not only the first', () => {
  const missing = join(tempDir, 'nowhere.pem');
  const problems = problemsOf({
    BATCH_SIZE: 'abc',
    POLL_INTERVAL_MS: '5',
    DRY_RUN: 'maybe',
    LOG_LEVEL: 'loud',
    TOPIC_PREFIX: 'a/b',
    KAFKA_SASL_MECHANISM: 'kerberos',
    KAFKA_TLS_CA_FILE: missing,
  });
  assert.deepEqual(
    [...problems].sort(),
    [
      'BATCH_SIZE must be a whole number from 1 to 100000, got "abc"',
      'POLL_INTERVAL_MS must be a whole number from 10 to 60000, got "5"',
      'DRY_RUN must be true or false, got "maybe"',
      'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "loud"',
      'TOPIC_PREFIX may only contain letters, digits, ".", "_" and "-", got "a/b"',
      'KAFKA_SASL_MECHANISM must be one of plain, scram-sha-256, scram-sha-512, got "kerberos"',
      `KAFKA_TLS_CA_FILE names a file that cannot be read: ${missing} (ENOENT)`,
      'DATABASE_URL is required (example: DATABASE_URL=postgres://user:password@127.0.0.1:5432/shop)',
      'KAFKA_BROKERS is required unless DRY_RUN=true (example: KAFKA_BROKERS=127.0.0.1:9092)',
    ].sort(),
  );
});

test('describeConfig never shows the database password, the SASL password or the TLS key', () => {
  const cert = pemFile('redact-cert.pem', CERT_PEM);
  const key = pemFile('redact-key.pem', KEY_PEM);
  const config = parseConfig({
    DATABASE_URL:
      'postgres://shop:db-s3cret@db.internal:5432/shop?sslmode=require&password=q-s3cret',
    KAFKA_BROKERS: 'kafka-1:9093',
    KAFKA_SASL_MECHANISM: 'scram-sha-512',
    KAFKA_SASL_USERNAME: 'relay',
    KAFKA_SASL_PASSWORD: 'sasl-s3cret',
    KAFKA_TLS_CERT_FILE: cert,
    KAFKA_TLS_KEY_FILE: key,
  });
  assert.equal(config.tls?.key, KEY_PEM, 'the key itself is read');
  const described = JSON.stringify(describeConfig(config));
  for (const secret of ['db-s3cret', 'q-s3cret', 'sasl-s3cret', KEY_SECRET, 'PRIVATE KEY']) {
    assert.ok(!described.includes(secret), `${secret} leaked: ${described}`);
  }
  // What is not secret stays, so the log line is still useful.
  const shown = describeConfig(config);
  assert.equal(
    shown.databaseUrl,
    'postgres://shop:***@db.internal:5432/shop?sslmode=require&password=***',
  );
  assert.deepEqual(shown.sasl, { mechanism: 'scram-sha-512', username: 'relay', password: '***' });
  assert.deepEqual(shown.tls, {
    ca: undefined,
    cert: '(file)',
    key: '***',
    rejectUnauthorized: true,
  });
  assert.deepEqual(shown.kafkaBrokers, ['kafka-1:9093']);
});

test('redactUrl hides the password and secret-looking query parameters', () => {
  assert.equal(redactUrl('postgres://u:s3cret@h:5432/db'), 'postgres://u:***@h:5432/db');
  assert.equal(redactUrl('postgres://u@h/db'), 'postgres://u@h/db');
  const redacted = redactUrl(
    'postgres://h/db?user=u&password=s3cret&sslpassword=k3y&client_secret=x9&sslmode=verify-full',
  );
  for (const secret of ['s3cret', 'k3y', 'x9']) assert.ok(!redacted.includes(secret), redacted);
  assert.equal(
    redacted,
    'postgres://h/db?user=u&password=***&sslpassword=***&client_secret=***&sslmode=verify-full',
  );
  assert.equal(redactUrl('not a url s3cret'), '(unparseable URL)');
});

test('.env.example lists every variable, in order, with its default and meaning', () => {
  const text = readFileSync(new URL('.env.example', ROOT), 'utf8');
  assert.equal(text, envExample(), '.env.example is out of date: run npm run docs:config');
  const lines = text.split('\n');
  const listed: Array<{ name: string; value: string; meaning: string }> = [];
  lines.forEach((line, i) => {
    const match = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line);
    if (!match) return;
    const comment = lines[i - 1] ?? '';
    assert.match(comment, /^# /, `no "# meaning" line above ${line}`);
    listed.push({ name: match[1] ?? '', value: match[2] ?? '', meaning: comment.slice(2) });
  });
  assert.deepEqual(
    listed.map((v) => v.name),
    VARIABLES.map((v) => v.name),
  );
  const examples: Record<string, string> = {
    DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres',
    KAFKA_BROKERS: '127.0.0.1:9092',
  };
  assert.deepEqual(
    listed,
    VARIABLES.map((v) => ({
      name: v.name,
      value: examples[v.name] ?? v.default,
      meaning: v.meaning,
    })),
  );
});

test("the README's configuration table lists every variable with its default and meaning", () => {
  const readme = readFileSync(new URL('README.md', ROOT), 'utf8');
  const start = readme.indexOf(README_START);
  const end = readme.indexOf(README_END);
  assert.ok(start >= 0 && end > start, 'README.md lacks the config-table markers');
  const rows = readme
    .slice(start + README_START.length, end)
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('|'))
    .map((line) =>
      line
        .replace(/^\|/, '')
        .replace(/(?<!\\)\|$/, '')
        .split(/(?<!\\)\|/)
        .map((cell) => cell.trim().replace(/`/g, '').replace(/\\\|/g, '|')),
    );
  const [header, separator, ...body] = rows;
  assert.deepEqual(header, ['variable', 'default', 'meaning']);
  assert.ok(
    separator?.every((cell) => /^:?-+:?$/.test(cell)),
    'second row is not a separator',
  );
  assert.deepEqual(
    body,
    VARIABLES.map((v) => [v.name, v.default, v.meaning]),
  );
});

test('pg2kafka --help lists every variable and exits 0', async () => {
  const { code, stdout, stderr } = await runCli(['--help'], {});
  assert.equal(code, 0, stderr);
  assert.match(stdout, /^pg2kafka \d+\.\d+\.\d+/);
  for (const v of VARIABLES) {
    assert.match(stdout, new RegExp(`^  ${v.name} +\\S`, 'm'), `${v.name} missing from --help`);
    assert.ok(stdout.includes(v.meaning), `meaning of ${v.name} missing from --help`);
  }
});

test('KAFKA_CLIENT picks the producer (rdkafka unless kafkajs is asked for); HTTP_HOST is passed as given', () => {
  assert.equal(parseConfig(BASE).kafkaClient, 'rdkafka');
  assert.equal(parseConfig({ ...BASE, KAFKA_CLIENT: 'KAFKAJS' }).kafkaClient, 'kafkajs');
  rejects(
    'KAFKA_CLIENT',
    'librdkafka',
    'KAFKA_CLIENT must be one of kafkajs, rdkafka, got "librdkafka"',
  );
  assert.equal(parseConfig(BASE).httpHost, undefined);
  assert.equal(parseConfig({ ...BASE, HTTP_HOST: '127.0.0.1' }).httpHost, '127.0.0.1');
});

test('DELIVERY: at least once unless exactly-once is asked for, which needs KAFKA_CLIENT=rdkafka (the default)', () => {
  assert.equal(parseConfig(BASE).delivery, 'at-least-once');
  const exactly = parseConfig({
    ...BASE,
    DELIVERY: 'Exactly-Once',
    KAFKA_CLIENT: 'rdkafka',
    KAFKA_TRANSACTIONAL_ID: 'shop-relay',
  });
  assert.deepEqual(
    [exactly.delivery, exactly.kafkaTransactionalId],
    ['exactly-once', 'shop-relay'],
  );
  assert.equal(parseConfig({ ...BASE, DELIVERY: 'exactly-once' }).delivery, 'exactly-once');
  assert.deepEqual(problemsOf({ ...BASE, DELIVERY: 'exactly-once', KAFKA_CLIENT: 'kafkajs' }), [
    'DELIVERY=exactly-once needs KAFKA_CLIENT=rdkafka (its transactional producer); kafkajs delivers at least once',
  ]);
  rejects('DELIVERY', 'once', 'DELIVERY must be one of at-least-once, exactly-once, got "once"');
});
