/**
 * The `pg2kafka` commands when the database is not what they need: a host that does not
 * answer or closes every connection, a port nothing listens on, a role or database the
 * server does not know, a database nobody migrated. Each command must come back within a
 * bounded time with one line naming the host and what to check, and the exit code says
 * who must act: 1 for a runtime failure (the server may come back), 2 for configuration.
 */
import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { CONNECT_TIMEOUT_MS } from '../src/database.ts';
import { useTestDatabase } from './helpers.ts';
import { cliEnv, runCli } from './relay/support.ts';

/** A database nobody migrated: every command but migrate must say to migrate it. */
const bare = useTestDatabase();

/** Every command that connects to PostgreSQL (relay has tests of its own). */
const COMMANDS = [
  ['status'],
  ['setup', 'products', 'sku'],
  ['teardown', 'products'],
  ['dead-letters'],
  ['migrate'],
];

/** Enough above the connect deadline for a loaded two-core machine to start the command. */
// Generous: five commands start at once, on a loaded machine too. Unbounded was 400 s.
const BOUND_MS = CONNECT_TIMEOUT_MS + 15_000;

const PASSWORD = 's3cret';

/** A TCP server standing in for PostgreSQL, with what it does to each connection. */
async function listen(onConnection: (socket: Socket) => void): Promise<{
  port: number;
  close: () => Promise<void>;
}> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
    },
  };
}

let closing: Awaited<ReturnType<typeof listen>>;
let silent: Awaited<ReturnType<typeof listen>>;
/** A port that was just free: nothing listens on it. */
let refusedPort: number;

before(async () => {
  closing = await listen((socket) => {
    socket.destroy();
  });
  silent = await listen(() => undefined);
  const probe = await listen(() => undefined);
  refusedPort = probe.port;
  await probe.close();
});

after(async () => {
  await closing.close();
  await silent.close();
});

interface Outcome {
  command: string;
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs every command against `url` at once (the slow cases wait out the deadline together). */
async function runEach(url: string): Promise<Outcome[]> {
  return Promise.all(
    COMMANDS.map(async (args) => ({
      command: args.join(' '),
      ...(await runCli(args, cliEnv(url, { LOG_LEVEL: 'silent' }), BOUND_MS + 10_000)),
    })),
  );
}

/** Each command exited `code` within the bound, printing one line that matches `message`. */
function assertEach(outcomes: Outcome[], code: number, message: RegExp): void {
  for (const o of outcomes) {
    const what = `pg2kafka ${o.command} (${o.ms} ms): ${o.stderr}`;
    assert.equal(o.code, code, what);
    assert.match(o.stderr, message, what);
    assert.equal(o.stderr.split('\n').length, 2, `one line: ${what}`);
    assert.equal(o.stdout, '', what);
    assert.ok(!o.stderr.includes(PASSWORD), `password leaked: ${what}`);
    assert.ok(o.ms < BOUND_MS, `returned after ${o.ms} ms, more than ${BOUND_MS}: ${what}`);
  }
}

const CHECK_HOST = /; check the host and port in DATABASE_URL, that the server is running/;

test('a server that accepts and closes every connection: each command gives up within the bound, exit 1', async () => {
  const outcomes = await runEach(`postgres://app:${PASSWORD}@127.0.0.1:${closing.port}/shop`);
  assertEach(
    outcomes,
    1,
    new RegExp(
      `^pg2kafka: (no answer from|cannot reach) PostgreSQL at 127\\.0\\.0\\.1:${closing.port} \\(database "shop", user "app"\\)`,
    ),
  );
  assertEach(outcomes, 1, CHECK_HOST);
});

test('a server that accepts and never answers: each command gives up within the bound, exit 1', async () => {
  const outcomes = await runEach(`postgres://app:${PASSWORD}@127.0.0.1:${silent.port}/shop`);
  assertEach(
    outcomes,
    1,
    new RegExp(
      `^pg2kafka: (no answer from|cannot reach) PostgreSQL at 127\\.0\\.0\\.1:${silent.port} \\(database "shop", user "app"\\)`,
    ),
  );
  assertEach(outcomes, 1, CHECK_HOST);
});

test('a port nothing listens on: connection refused is a runtime failure, exit 1', async () => {
  const outcomes = await runEach(`postgres://app:${PASSWORD}@127.0.0.1:${refusedPort}/shop`);
  assertEach(
    outcomes,
    1,
    new RegExp(
      `^pg2kafka: cannot reach PostgreSQL at 127\\.0\\.0\\.1:${refusedPort} \\(database "shop", user "app"\\): connect ECONNREFUSED 127\\.0\\.0\\.1:${refusedPort}; check the host and port in DATABASE_URL`,
    ),
  );
});

test('a role the server does not know: configuration, exit 2, says to check the user', async () => {
  await bare.ready;
  const url = new URL(bare.url);
  url.username = 'no_such_role';
  url.password = PASSWORD;
  const outcomes = await runEach(url.toString());
  assertEach(
    outcomes,
    2,
    new RegExp(
      `^pg2kafka: PostgreSQL at ${url.host.replace(/\./g, '\\.')} \\(database "${bare.name}", user "no_such_role"\\) refused the connection: role "no_such_role" does not exist; check the user and password in DATABASE_URL`,
    ),
  );
});

test('a database the server does not have: configuration, exit 2, says to check its name', async () => {
  const url = new URL(bare.url);
  url.pathname = '/no_such_database';
  const outcomes = await runEach(url.toString());
  assertEach(
    outcomes,
    2,
    new RegExp(
      `^pg2kafka: PostgreSQL at ${url.host.replace(/\./g, '\\.')} \\(database "no_such_database", user "${decodeURIComponent(url.username)}"\\) refused the connection: database "no_such_database" does not exist; .*check the database name in DATABASE_URL`,
    ),
  );
});

test('a database without the pg2kafka schema: every command but migrate says to migrate, exit 2; then migrate fixes it', async () => {
  await bare.ready;
  await bare.sql`create table products (sku text primary key)`;
  const env = cliEnv(bare.url);
  const commands = [
    ['status'],
    ['status', '--json'],
    ['setup', 'products', 'sku'],
    ['teardown', 'products'],
    ['dead-letters'],
    ['dead-letters', 'retry', '--all'],
    ['dead-letters', 'discard', '1'],
  ];
  const message = new RegExp(
    `^pg2kafka: the pg2kafka schema is not installed in database "${bare.name}": run "pg2kafka migrate" \\(or start the relay with PERFORM_MIGRATIONS=true\\)\\n$`,
  );
  for (const args of commands) {
    const result = await runCli(args, env);
    const what = `pg2kafka ${args.join(' ')}: ${result.stderr}`;
    assert.equal(result.code, 2, what);
    assert.match(result.stderr, message, what);
    assert.equal(result.stdout, '', what);
  }
  const [schema] = await bare.sql<{ exists: boolean }[]>`
    select to_regnamespace('pg2kafka') is not null as exists`;
  assert.equal(schema?.exists, false, 'no command installed anything');

  const migrate = await runCli(['migrate'], env);
  assert.equal(migrate.code, 0, migrate.stderr);
  const status = await runCli(['status'], env);
  assert.deepEqual(
    { code: status.code, stderr: status.stderr, first: status.stdout.split('\n')[0] },
    { code: 0, stderr: '', first: 'relay: none active' },
  );
});
