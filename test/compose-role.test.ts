/**
 * The docker-compose.yml sample runs pg2kafka as a dedicated role, not as a superuser
 * (README "Security"). Docker does not run here, so what the sample does is done by hand
 * on the machine's PostgreSQL: its init scripts (examples/*.sql, with psql, as the
 * superuser), then the setup service's `migrate` and `setup products sku` and a relay
 * (DRY_RUN) as that role; the events must come out, with nothing but the sample's grants.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { uniqueName, useTestDatabase, waitFor } from './helpers.ts';
import { cliEnv, RelayProcess, runCli } from './relay/support.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const db = useTestDatabase();
/** Roles are shared by the whole server: this file's own name for the sample's "pg2kafka". */
const role = uniqueName('pg2kafka_role');

after(async () => {
  // The test database may already be gone; DROP OWNED there also revokes the database grant.
  const inDb = postgres(db.url, { max: 1, onnotice: () => undefined });
  await inDb.unsafe(`drop owned by "${role}" cascade`).catch(() => undefined);
  await inDb.end({ timeout: 1 });
  const admin = postgres(process.env.DATABASE_URL ?? '', { max: 1, onnotice: () => undefined });
  try {
    await admin.unsafe(`drop role if exists "${role}"`);
  } finally {
    await admin.end({ timeout: 1 });
  }
});

function psql(file: string, variables: Record<string, string> = {}): void {
  const result = spawnSync(
    'psql',
    [
      '-X',
      '-q',
      '-v',
      'ON_ERROR_STOP=1',
      ...Object.entries(variables).flatMap(([name, value]) => ['-v', `${name}=${value}`]),
      '-d',
      db.url,
      '-f',
      `${ROOT}/${file}`,
    ],
    { encoding: 'utf8' },
  );
  if (result.error) {
    assert.fail(`psql is needed (apt-get install postgresql-client): ${result.error.message}`);
  }
  assert.equal(result.status, 0, `psql -f ${file}:\n${result.stderr}`);
}

function asRole(url: string): string {
  const parsed = new URL(url);
  parsed.username = role;
  parsed.password = 'sample-password';
  return parsed.toString();
}

test('the compose sample mounts both init scripts, in order, and connects as the role', () => {
  const compose = readFileSync(`${ROOT}/docker-compose.yml`, 'utf8');
  const mounted = [
    ...compose.matchAll(/\.\/(examples\/\S+\.sql):\/docker-entrypoint-initdb\.d\/(\S+?):ro/g),
  ];
  assert.deepEqual(
    mounted.map((m) => [m[1], m[2]]).sort((a, b) => String(a[1]).localeCompare(String(b[1]))),
    [
      ['examples/products.sql', '10-products.sql'],
      ['examples/pg2kafka-role.sql', '20-pg2kafka-role.sql'],
    ],
  );
  const urls = [...compose.matchAll(/DATABASE_URL: (\S+)/g)].map((m) => m[1]);
  assert.deepEqual(urls, [
    'postgres://pg2kafka:pg2kafka@postgres:5432/shop',
    'postgres://pg2kafka:pg2kafka@postgres:5432/shop',
  ]);
});

test('migrate, setup and the relay work as the sample role and nothing more', async () => {
  await db.ready;
  psql('examples/products.sql');
  psql('examples/pg2kafka-role.sql', { pg2kafka_role: role, pg2kafka_password: 'sample-password' });
  const url = asRole(db.url);

  const migrated = await runCli(['migrate'], cliEnv(url));
  assert.equal(migrated.code, 0, migrated.stderr);
  const setUp = await runCli(['setup', 'products', 'sku'], cliEnv(url));
  assert.equal(setUp.code, 0, setUp.stderr);
  assert.match(setUp.stdout, /2 existing row\(s\) queued/);

  const [facts] = await db.sql<{ superuser: boolean; owner: string }[]>`
    select r.rolsuper as superuser, n.nspowner::regrole::text as owner
    from pg_roles r, pg_namespace n where r.rolname = ${role} and n.nspname = 'pg2kafka'`;
  assert.deepEqual(facts, { superuser: false, owner: role }, 'schema pg2kafka belongs to the role');

  // The application writes as the table's owner, as in the sample.
  await db.sql`insert into products (sku, name, price) values ('CM01-G', 'Green Coffee Mug', 8)`;
  const relay = new RelayProcess({ DATABASE_URL: url, DRY_RUN: 'true', LOG_LEVEL: 'info' });
  try {
    await waitFor(
      `three events; stderr:\n${relay.stderrText.join('\n')}`,
      () => relay.stdout.length >= 3,
      20_000,
    );
    assert.deepEqual(
      relay.stdout.map((line) => {
        const { key, headers } = JSON.parse(line) as {
          key: string;
          headers: { statement: string };
        };
        return `${headers.statement} ${key}`;
      }),
      ['SNAPSHOT CM01-B', 'SNAPSHOT CM01-R', 'INSERT CM01-G'],
    );
    assert.equal((await relay.stop()).code, 0);
    assert.deepEqual(
      relay.stderrText.filter((l) => /"level":[4-6]0/.test(l)),
      [],
      'no warning or error',
    );
  } finally {
    await relay.kill();
  }
});
