/**
 * The relay's container image, built from the Dockerfile and run for real with podman
 * (`npm run test:container`; CI runs it). Against the machine's PostgreSQL and the run's
 * broker, over the host network: `migrate` and `setup` as docker-compose.yml's setup
 * service runs them, then the relay with only environment variables (those of the compose
 * relay service, pointed here); a real consumer reads what arrived. Also what the image
 * holds, who it runs as, its health check, and that docker-compose.yml parses and sets only
 * variables the relay knows.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import {
  buildImage,
  ensureTools,
  podman,
  podmanOk,
  spawnPodman,
  type BuiltImage,
} from '../../scripts/container.ts';
import { freePort, splitLines } from '../../scripts/kafka-broker.ts';
import { VARIABLES } from '../../src/config.ts';
import { uniqueName, useKafka, useTestDatabase, waitFor } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** Every container a test started, removed after the file (before its database is dropped). */
const containers: string[] = [];
after(() => {
  for (const name of containers) podman(['rm', '--force', '--time', '0', name]);
});
const db = useTestDatabase();
const kafka = useKafka();
let image: BuiltImage;

interface ComposeService {
  image?: string;
  build?: string | { context?: string };
  entrypoint?: string[] | string;
  command?: string[] | string;
  environment?: Record<string, string> | string[];
  depends_on?: Record<string, { condition: string }>;
}
const compose = parse(readFileSync(`${ROOT}/docker-compose.yml`, 'utf8')) as {
  services: Record<string, ComposeService>;
};

function service(name: string): ComposeService {
  const found = compose.services[name];
  assert.ok(found, `docker-compose.yml has a ${name} service`);
  return found;
}

function environmentOf(name: string): Record<string, string> {
  const env = service(name).environment ?? {};
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((entry) => entry.split(/=(.*)/s, 2) as [string, string]));
  }
  return env;
}

before(
  async () => {
    image = await buildImage();
    const mb = (image.sizeBytes / 1e6).toFixed(0);
    process.stderr.write(
      `[container] ${image.tag}: ${mb} MB, built in ${(image.buildMs / 1000).toFixed(0)} s on ${image.base}${image.standIn ? ' (stand-in base)' : ''}\n`,
    );
  },
  { timeout: 20 * 60_000 },
);

/** `--env NAME` for each variable: the value travels in podman's environment, not its arguments. */
function envArgs(env: Record<string, string>): string[] {
  return Object.keys(env).flatMap((name) => ['--env', name]);
}

/** A name for a container of this file, removed after it even if the test fails. */
function containerName(role: string): string {
  const name = uniqueName(`pg2kafka-${role}`);
  containers.push(name);
  return name;
}

/**
 * Runs a one-shot container on the host network and returns its exit code and output.
 * `entrypoint`, if given, replaces the image's (as a compose service's does).
 */
function runOnce(
  env: Record<string, string>,
  args: string[],
  entrypoint?: string,
): { code: number | null; output: string } {
  const result = podman(
    [
      'run',
      '--rm',
      '--name',
      containerName('once'),
      '--network',
      'host',
      '--no-healthcheck',
      ...envArgs(env),
      ...(entrypoint ? ['--entrypoint', entrypoint] : []),
      image.tag,
      ...args,
    ],
    120_000,
    env,
  );
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

/** A shell script run in the image (as its user, without network), its output lines. */
function inImage(script: string): string[] {
  const result = podman([
    'run',
    '--rm',
    '--name',
    containerName('look'),
    '--network',
    'none',
    '--no-healthcheck',
    '--entrypoint',
    'sh',
    image.tag,
    '-c',
    script,
  ]);
  assert.equal(result.status, 0, result.stderr);
  return result.stdout.split('\n');
}

test('the image: runs as a non-root user, holds the built relay and its runtime only', () => {
  const pkg = JSON.parse(readFileSync(`${ROOT}/package.json`, 'utf8')) as {
    devDependencies: Record<string, string>;
  };
  const devDependencies = Object.keys(pkg.devDependencies);
  const [uid, appEntries, sources, devInImage, tools, librdkafka] = inImage(
    [
      'id -u',
      'ls /app | tr "\\n" " "; echo',
      "find /app -name '*.ts' -not -path '/app/node_modules/*' | head -5 | tr '\\n' ' '; echo",
      `for d in ${devDependencies.join(' ')}; do [ -e "node_modules/$d" ] && printf '%s ' "$d"; done; echo`,
      'for t in gcc cc make python3; do command -v "$t" >/dev/null && printf "%s " "$t"; done; echo',
      'node -e "console.log(require(\'@confluentinc/kafka-javascript\').librdkafkaVersion)"',
    ].join('; '),
  );
  assert.equal(uid, '1000', 'runs as uid 1000 (user node)');
  const env = JSON.parse(
    podmanOk(['image', 'inspect', '--format', '{{json .Config.Env}}', image.tag]),
  ) as string[];
  assert.ok(env.includes('NODE_ENV=production'), env.join(' '));
  const relayVariables = new Set(VARIABLES.map((v) => v.name));
  assert.deepEqual(
    env.filter((e) => relayVariables.has(e.split('=')[0] ?? '')),
    [],
    'the image sets none of the relay variables: the user does',
  );
  assert.deepEqual(appEntries?.trim().split(' ').sort(), [
    'dist',
    'migrations',
    'node_modules',
    'package.json',
    'sql',
  ]);
  assert.equal(sources?.trim(), '', 'no TypeScript sources or tests outside node_modules');
  assert.equal(devInImage?.trim(), '', 'no dev dependency in the image');
  assert.equal(tools?.trim(), '', 'no compiler or build tool in the final stage');
  assert.match(librdkafka ?? '', /^2\.\d+\.\d+/, 'the librdkafka client loads');
});

test(
  'migrate and setup as compose runs them, then the relay with only environment variables: events arrive, SIGTERM exits 0',
  { timeout: 180_000 },
  async () => {
    await db.sql.file(`${ROOT}/examples/products.sql`);
    // As the README writes it: docker run --rm --no-healthcheck -e DATABASE_URL pg2kafka migrate
    const migrated = runOnce({ DATABASE_URL: db.url }, ['migrate']);
    assert.equal(migrated.code, 0, migrated.output);
    // As the compose setup service runs it: its entrypoint (migrate again, then setup).
    const [entrypoint, ...entrypointArgs] = service('setup').entrypoint ?? [];
    assert.ok(entrypoint, 'the setup service has an entrypoint list');
    const setupRun = runOnce({ DATABASE_URL: db.url }, [...entrypointArgs], entrypoint);
    assert.equal(setupRun.code, 0, setupRun.output);
    // And the README's setup line again: the table is set up already, so nothing changes.
    const again = runOnce({ DATABASE_URL: db.url }, ['setup', 'products', 'sku']);
    assert.equal(again.code, 0, again.output);
    assert.match(again.output, /already/);

    const httpPort = await freePort();
    const env = {
      ...environmentOf('relay'),
      DATABASE_URL: db.url,
      KAFKA_BROKERS: kafka.brokers.join(','),
      HTTP_PORT: String(httpPort),
    };
    const name = containerName('relay');
    const child = spawnPodman(
      ['run', '--name', name, '--network', 'host', ...envArgs(env), image.tag],
      env,
    );
    const lines: string[] = [];
    splitLines(child.stdout, (line) => lines.push(line));
    splitLines(child.stderr, (line) => lines.push(line));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    await waitFor(
      `the relay in the container active; its lines:\n${lines.slice(-10).join('\n')}`,
      () => lines.some((l) => l.includes('active: shipping events')),
      60_000,
    );
    assert.ok(
      lines.some((l) => l.includes('producing with librdkafka')),
      'it produces with librdkafka',
    );

    await db.sql`update products set name = 'Big Red Coffee Mug' where sku = 'CM01-R'`;
    await db.sql`insert into products (sku, name, price) values ('CM02-G', 'Green Coffee Mug', 8.25)`;
    await db.sql`delete from products where sku = 'CM01-B'`;
    const topic = `pg2kafka.${db.name}.products`;
    const messages = await kafka.consume(topic, 5, 60_000, 1_000);
    const seen = messages.map((m) => {
      const value = JSON.parse(m.value ?? 'null') as {
        external_id: string;
        statement: string;
        data: unknown;
      };
      return { key: m.key, statement: value.statement, id: value.external_id, data: value.data };
    });
    const snapshot = seen
      .filter((s) => s.statement === 'SNAPSHOT')
      .sort((a, b) => String(a.key).localeCompare(String(b.key)));
    assert.deepEqual(snapshot, [
      {
        key: 'CM01-B',
        statement: 'SNAPSHOT',
        id: 'CM01-B',
        data: { id: 1, sku: 'CM01-B', name: 'Blue Coffee Mug', price: 7.5 },
      },
      {
        key: 'CM01-R',
        statement: 'SNAPSHOT',
        id: 'CM01-R',
        data: { id: 2, sku: 'CM01-R', name: 'Red Coffee Mug', price: 7.5 },
      },
    ]);
    assert.deepEqual(
      seen.filter((s) => s.statement !== 'SNAPSHOT'),
      [
        { key: 'CM01-R', statement: 'UPDATE', id: 'CM01-R', data: { name: 'Big Red Coffee Mug' } },
        {
          key: 'CM02-G',
          statement: 'INSERT',
          id: 'CM02-G',
          data: { id: 3, sku: 'CM02-G', name: 'Green Coffee Mug', price: 8.25 },
        },
        { key: 'CM01-B', statement: 'DELETE', id: 'CM01-B', data: {} },
      ],
    );
    assert.ok(messages.every((m) => m.topic === topic));
    await waitFor(
      'an empty queue',
      async () =>
        (await db.sql`select count(*)::int as n from pg2kafka.outbound_event_queue`)[0]?.n === 0,
    );

    // The image's HEALTHCHECK, run by podman as an orchestrator would.
    const health = podman(['healthcheck', 'run', name]);
    assert.equal(health.status, 0, `healthcheck: ${health.stdout}${health.stderr}`);
    const status = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
    assert.equal(status.status, 200, 'ready: PostgreSQL and Kafka reachable');

    // As an orchestrator stops it: the image's STOPSIGNAL, SIGKILL after 10 s (exit 137).
    const stoppedAt = Date.now();
    podmanOk(['stop', '--time', '10', name], 30_000);
    const code = await exited;
    const ms = Date.now() - stoppedAt;
    assert.equal(code, 0, lines.slice(-10).join('\n'));
    assert.ok(ms < 10_000, `stopped after ${ms} ms`);
    process.stderr.write(`[container] stop to exit: ${ms} ms\n`);
  },
);

test('docker-compose.yml: parses, sets only variables the relay knows, uses the image built here', () => {
  const known = new Set(VARIABLES.map((v) => v.name));
  for (const name of ['setup', 'relay']) {
    const unknown = Object.keys(environmentOf(name)).filter((v) => !known.has(v));
    assert.deepEqual(unknown, [], `${name} sets variables the relay does not know`);
    const { build } = service(name);
    const context = typeof build === 'string' ? build : build?.context;
    assert.equal(context, '.', `${name} builds the Dockerfile of this folder`);
    assert.equal(service(name).image, 'pg2kafka', `${name} is tagged pg2kafka`);
  }
  assert.equal(service('relay').depends_on?.setup?.condition, 'service_completed_successfully');
  // podman-compose parses the file and prints the podman commands it would run.
  ensureTools(['podman-compose'], 'checking docker-compose.yml');
  const validated = spawnSync(
    'podman-compose',
    ['-f', `${ROOT}/docker-compose.yml`, '--project-name', 'pg2kafka', '--dry-run', 'up'],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(validated.status, 0, validated.stderr);
  const creates = validated.stdout.split('\n').filter((l) => l.startsWith('podman create '));
  for (const name of ['postgres', 'kafka', 'setup', 'relay']) {
    assert.ok(
      creates.some((l) => l.includes(`--name=pg2kafka_${name}_1 `)),
      `podman-compose would create the ${name} service:\n${validated.stdout}`,
    );
  }
  for (const name of ['setup', 'relay']) {
    const line = creates.find((l) => l.includes(`--name=pg2kafka_${name}_1 `)) ?? '';
    assert.match(line, / pg2kafka$/, `${name} runs the pg2kafka image`);
  }
});
