/**
 * TLS to PostgreSQL: the same DATABASE_URL gives the same verification in both clients,
 * postgres.js (every command and the relay) and node-postgres (node-pg-migrate inside
 * `migrate`), against a real server with `ssl = on` and a certificate made for the test
 * (tls-postgres.ts: it lets in only TLS connections over TCP). A plain server (the
 * machine's, ssl off) checks the modes that may or may not use TLS.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { migrate, nodePostgresConfig } from '../src/capture/migrate.ts';
import { databaseTls } from '../src/database-tls.ts';
import { checkConnection, openPool } from '../src/database.ts';
import { UsageError } from '../src/errors.ts';
import { useTestDatabase, waitFor } from './helpers.ts';
import { cliEnv, RelayProcess, runCli } from './relay/support.ts';
import { TlsPostgres } from './tls-postgres.ts';

/** A database on the machine's own PostgreSQL, which has no TLS. */
const plain = useTestDatabase();
let server: TlsPostgres;

before(async () => {
  server = await TlsPostgres.start();
});

after(async () => {
  await server.stop();
});

const SESSION_TLS =
  'select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false) as ssl';

function failure(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return `fails ${typeof code === 'string' ? code : `(${error instanceof Error ? error.message : String(error)})`}`;
}

/** What postgres.js makes of the URL, through the pool every command opens: 'tls', 'plain' or 'fails <code>'. */
async function viaPostgresJs(url: string): Promise<string> {
  const sql = openPool(url);
  try {
    await checkConnection(sql, url);
    const [row] = await sql.unsafe<{ ssl: boolean }[]>(SESSION_TLS);
    return row?.ssl ? 'tls' : 'plain';
  } catch (error) {
    return failure(error);
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** What node-postgres makes of it with migrate's configuration; `serverUsesTls` as migrate learns it. */
async function viaNodePostgres(url: string, serverUsesTls: boolean): Promise<string> {
  const client = new pg.Client(nodePostgresConfig(url, serverUsesTls));
  // A failed connect also emits 'error'; the rejection is what counts.
  client.on('error', () => undefined);
  try {
    await client.connect();
    const { rows } = await client.query<{ ssl: boolean }>(SESSION_TLS);
    return rows[0]?.ssl ? 'tls' : 'plain';
  } catch (error) {
    return failure(error);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function viaMigrate(url: string): Promise<string> {
  try {
    await migrate({ databaseUrl: url });
    return 'ok';
  } catch (error) {
    return failure(error);
  }
}

interface Case {
  name: string;
  url: () => string;
  /** 'tls', 'plain', or how it fails. */
  expected: string | RegExp;
}

const cases: Case[] = [
  {
    name: 'verify-full with the CA, by the name in the certificate',
    url: () => server.url({ sslmode: 'verify-full', sslrootcert: server.caFile }),
    expected: 'tls',
  },
  {
    name: 'verify-full with the CA, by an address the certificate does not list',
    url: () => server.url({ sslmode: 'verify-full', sslrootcert: server.caFile }, '127.0.0.1'),
    expected: 'fails ERR_TLS_CERT_ALTNAME_INVALID',
  },
  {
    name: 'verify-ca with the CA, by that address: the name is not checked',
    url: () => server.url({ sslmode: 'verify-ca', sslrootcert: server.caFile }, '127.0.0.1'),
    expected: 'tls',
  },
  {
    name: 'verify-full with a CA that did not sign the certificate',
    url: () => server.url({ sslmode: 'verify-full', sslrootcert: server.otherCaFile }),
    expected: 'fails UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  },
  {
    name: 'verify-ca with a CA that did not sign the certificate',
    url: () => server.url({ sslmode: 'verify-ca', sslrootcert: server.otherCaFile }),
    expected: 'fails UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  },
  {
    name: "verify-full without sslrootcert: Node's public CAs do not know the test CA",
    url: () => server.url({ sslmode: 'verify-full' }),
    expected: 'fails UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  },
  {
    name: 'require: encrypted, not verified',
    url: () => server.url({ sslmode: 'require' }),
    expected: 'tls',
  },
  {
    name: 'require with sslrootcert verifies the CA, as in libpq',
    url: () => server.url({ sslmode: 'require', sslrootcert: server.otherCaFile }),
    expected: 'fails UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  },
  {
    name: 'prefer, on a server with TLS',
    url: () => server.url({ sslmode: 'prefer' }),
    expected: 'tls',
  },
  {
    name: 'disable, on a server that lets in only TLS',
    url: () => server.url({ sslmode: 'disable' }),
    expected: 'fails 28000',
  },
  {
    name: 'no sslmode: plain, as before',
    url: () => server.url({}),
    expected: 'fails 28000',
  },
  {
    name: 'prefer, on a server without TLS',
    url: () => withParams(plain.url, { sslmode: 'prefer' }),
    expected: 'plain',
  },
  {
    name: 'require, on a server without TLS',
    url: () => withParams(plain.url, { sslmode: 'require' }),
    expected: /^fails /,
  },
  {
    name: 'disable, on a server without TLS',
    url: () => withParams(plain.url, { sslmode: 'disable' }),
    expected: 'plain',
  },
];

function withParams(url: string, params: Record<string, string>): string {
  const parsed = new URL(url);
  for (const [name, value] of Object.entries(params)) parsed.searchParams.set(name, value);
  return parsed.toString();
}

test('postgres.js, node-postgres and migrate verify the same way for every sslmode', async () => {
  await plain.ready;
  const seen: Record<string, { postgresJs: string; nodePostgres: string; migrate: string }> = {};
  const wanted: typeof seen = {};
  for (const c of cases) {
    const url = c.url();
    const postgresJs = await viaPostgresJs(url);
    const nodePostgres = await viaNodePostgres(url, postgresJs === 'tls');
    const migrated = await viaMigrate(url);
    seen[c.name] = { postgresJs, nodePostgres, migrate: migrated };
    const { expected } = c;
    if (typeof expected === 'string') {
      const ok = expected === 'tls' || expected === 'plain';
      wanted[c.name] = {
        postgresJs: expected,
        nodePostgres: expected,
        migrate: ok ? 'ok' : expected,
      };
    } else {
      // Only that it fails: the two clients word "the server has no TLS" differently.
      for (const [client, outcome] of Object.entries(seen[c.name] ?? {})) {
        assert.match(outcome, expected, `${c.name}: ${client}`);
      }
      wanted[c.name] = seen[c.name] ?? { postgresJs: '', nodePostgres: '', migrate: '' };
    }
  }
  assert.deepEqual(seen, wanted);
});

test('a certificate that is not accepted: the message names the server and what to check', async () => {
  const wrongCa = server.url({ sslmode: 'verify-full', sslrootcert: server.otherCaFile });
  const byAddress = server.url({ sslmode: 'verify-full', sslrootcert: server.caFile }, '127.0.0.1');
  for (const [url, hint] of [
    [wrongCa, /sslrootcert names the PEM file of the CA that signed the server certificate/],
    [byAddress, /use sslmode=verify-ca/],
  ] as const) {
    const sql = openPool(url);
    const fromCheck = await checkConnection(sql, url).then(
      () => assert.fail('connected'),
      (error: unknown) => error,
    );
    await sql.end({ timeout: 1 });
    const fromMigrate = await migrate({ databaseUrl: url }).then(
      () => assert.fail('migrated'),
      (error: unknown) => error,
    );
    for (const error of [fromCheck, fromMigrate]) {
      assert.ok(error instanceof UsageError, `a configuration error (exit 2): ${String(error)}`);
      assert.match(
        error.message,
        /presented a certificate that sslmode=verify-full does not accept/,
      );
      assert.match(error.message, hint);
      assert.match(
        error.message,
        new RegExp(`PostgreSQL at (localhost|127\\.0\\.0\\.1):${server.port}`),
      );
    }
  }
});

test('pg2kafka migrate and a DRY_RUN relay over verify-full; the wrong CA exits 2', async () => {
  const url = server.url({ sslmode: 'verify-full', sslrootcert: server.caFile });
  const migrated = await runCli(['migrate'], cliEnv(url));
  assert.equal(migrated.code, 0, migrated.stderr);
  const refused = await runCli(
    ['migrate'],
    cliEnv(server.url({ sslmode: 'verify-full', sslrootcert: server.otherCaFile })),
  );
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /does not accept.*sslrootcert/);

  const sql = openPool(url);
  try {
    await sql`create table if not exists tls_items (sku text primary key, n int)`;
    await sql`select pg2kafka.setup('tls_items', 'sku')`;
    await sql`insert into tls_items values ('over-tls', 1)`;
  } finally {
    await sql.end({ timeout: 1 });
  }
  const relay = new RelayProcess({ DATABASE_URL: url, DRY_RUN: 'true', LOG_LEVEL: 'info' });
  try {
    const line = await waitFor(
      `the event on stdout; stderr:\n${relay.stderrText.join('\n')}`,
      () => relay.stdout.find((l) => l.includes('over-tls')),
      20_000,
    );
    assert.equal((JSON.parse(line) as { key: string }).key, 'over-tls');
    assert.equal((await relay.stop()).code, 0);
  } finally {
    await relay.kill();
  }
});

test('TLS parameters that cannot work are refused before connecting, all at once', () => {
  const base = 'postgres://postgres@localhost:5432/postgres';
  assert.throws(
    () => databaseTls(`${base}?sslmode=verify_full&sslrootcert=/nonexistent/ca.pem&ssl=true`),
    (error: unknown) => {
      assert.ok(error instanceof UsageError);
      assert.equal(error.problems.length, 3, error.message);
      assert.match(
        error.message,
        /sslmode=verify_full is not one of disable, allow, prefer, require, verify-ca, verify-full/,
      );
      assert.match(error.message, /sslrootcert=\/nonexistent\/ca\.pem cannot be read \(ENOENT\)/);
      assert.match(error.message, /the ssl parameter is not supported/);
      return true;
    },
  );
  assert.throws(
    () => databaseTls(`${base}?sslmode=require&sslrootcert=system`),
    /needs sslmode=verify-full/,
  );
  assert.throws(
    () => databaseTls(`${base}?sslmode=require&sslcert=/x`),
    /sslcert and sslkey go together/,
  );
  assert.equal(databaseTls(`${base}?sslrootcert=system`).mode, 'verify-full');
  assert.equal(
    databaseTls(`${base}?sslmode=verify-full&application_name=x`).url,
    `${base}?application_name=x`,
    'the clients get the URL without the TLS parameters',
  );
});
