/**
 * `npm test [-- file-or-folder ...]`: checks PostgreSQL, provides Kafka, runs the test files with
 * node's test runner, and always stops the broker it started.
 *
 * - DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) is the admin
 *   connection; each test file creates and drops its own database through it.
 * - KAFKA_BROKERS, when set, is used as it is; otherwise a local broker is started for the
 *   run (KAFKA_VERSION picks its version) and stopped afterwards, also on failure or ^C.
 * - Neither missing database nor missing broker skips a test: the run fails and says
 *   what to start.
 */
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import {
  checkKafka,
  checkPostgres,
  DEFAULT_ADMIN_DATABASE_URL,
  warmUpConsumerGroups,
} from './infrastructure.ts';
import { redactUrl } from '../src/config.ts';
import { KafkaBroker } from './kafka-broker.ts';

const TEST_ROOT = 'test';

function findTestFiles(dir: string): string[] {
  return readdirSync(dir)
    .sort()
    .flatMap((name) => {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) return findTestFiles(path);
      return name.endsWith('.test.ts') ? [path] : [];
    });
}

function log(message: string): void {
  process.stderr.write(`[test] ${message}\n`);
}

async function main(): Promise<number> {
  const started = Date.now();
  const databaseUrl = process.env.DATABASE_URL ?? DEFAULT_ADMIN_DATABASE_URL;
  const version = await checkPostgres(databaseUrl);
  log(`PostgreSQL ${version} at ${redactUrl(databaseUrl)}`);

  let broker: KafkaBroker | undefined;
  let brokers = process.env.KAFKA_BROKERS;
  if (brokers) {
    await checkKafka(brokers.split(','));
    log(`Kafka at ${brokers} (KAFKA_BROKERS)`);
  } else {
    const t0 = Date.now();
    broker = await KafkaBroker.start();
    brokers = broker.brokers;
    const { runtime } = broker;
    log(
      `Kafka ${runtime.version} started at ${brokers} in ${Date.now() - t0} ms ` +
        (runtime.fromCache
          ? '(runtime cached)'
          : `(runtime resolved with Maven in ${runtime.resolveMs} ms)`),
    );
  }

  try {
    if (broker) {
      const t0 = Date.now();
      await warmUpConsumerGroups([broker.brokers]);
      log(`consumer groups ready in ${Date.now() - t0} ms`);
    }
    return await runTests(databaseUrl, brokers, started);
  } finally {
    if (broker) {
      await broker.destroy();
      log('Kafka broker stopped and its data removed');
    }
  }
}

async function runTests(databaseUrl: string, brokers: string, started: number): Promise<number> {
  const requested = process.argv.slice(2);
  // A folder stands for the test files under it.
  const files =
    requested.length > 0
      ? requested.flatMap((r) => (statSync(r).isDirectory() ? findTestFiles(r) : [r]))
      : findTestFiles(TEST_ROOT);
  log(`running ${files.length} test file(s)`);
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '--test',
      '--test-reporter=spec',
      '--test-concurrency=2',
      ...files.map((f) => relative(process.cwd(), f)),
    ],
    {
      stdio: 'inherit',
      env: { ...process.env, DATABASE_URL: databaseUrl, KAFKA_BROKERS: brokers },
    },
  );

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    log(`${signal}: stopping the tests${signals > 1 ? ' (forced)' : ''}`);
    child.kill(signals > 1 ? 'SIGKILL' : 'SIGTERM');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const code = await new Promise<number>((resolve) => {
    child.once('exit', (exitCode, signal) => {
      resolve(exitCode ?? (signal ? 130 : 1));
    });
  });
  log(`finished in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return code;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    log(error instanceof Error ? error.message : String(error));
    process.exit(1);
  },
);
