/**
 * Connections to PostgreSQL, in one place: every command and the relay open their pools
 * here, so that the connect deadline, TLS and the errors a user sees are the same
 * everywhere.
 *
 * Why a deadline of our own: postgres.js 3.4 retries a connection the server (or a
 * proxy in front of it) accepts and then closes before answering, forever, and never
 * rejects the query waiting for it (its connect_timeout restarts with every attempt).
 * `checkConnection()` bounds the first round trip and names the host. Those retries (and
 * every other connection) go through a Dialer (database-socket.ts), which backs off
 * where postgres.js would reconnect at once.
 *
 * Errors are sorted by what the user must do:
 * - `DatabaseUnreachableError`: nothing answered in time, or the connection was refused.
 *   A runtime failure (exit 1): the server may come back; the relay waits for it.
 * - `DatabaseRefusedError`: the server answered and refused this role, password or
 *   database (SQLSTATE class 28, 3D000). Configuration (exit 2): retrying cannot help.
 * - `DatabaseCertificateError` (database-tls.ts): the server's TLS certificate was not
 *   accepted under DATABASE_URL's sslmode and sslrootcert. Configuration too (exit 2).
 */
import postgres from 'postgres';
import {
  DatabaseCertificateError,
  databaseTls,
  explainCertificateError,
  postgresJsSsl,
} from './database-tls.ts';
import { Dialer } from './database-socket.ts';
import { UsageError } from './errors.ts';

/** How long a command waits for PostgreSQL's first answer. */
export const CONNECT_TIMEOUT_MS = 10_000;

/** `host:port` (or the socket path) and database of a DATABASE_URL, for messages; never the password. */
export function describeTarget(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    const host = url.hostname === '' ? '(local socket)' : url.host;
    const database = decodeURIComponent(url.pathname.replace(/^\//, '')) || '(default)';
    const user = decodeURIComponent(url.username) || '(default user)';
    return `PostgreSQL at ${host} (database "${database}", user "${user}")`;
  } catch {
    return 'PostgreSQL at DATABASE_URL';
  }
}

/** Nothing answered in time, or the connection was refused: exit 1, the server may come back. */
export class DatabaseUnreachableError extends Error {
  override readonly name = 'DatabaseUnreachableError';
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** The server refused the role, password or database: configuration, exit 2. */
export class DatabaseRefusedError extends UsageError {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** SQLSTATEs that say the connection settings are wrong: retrying cannot help. */
const REFUSED_SQLSTATE = /^(28...|3D000)$/;

export function isRefusedConnection(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && REFUSED_SQLSTATE.test(code);
}

const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_DESTROYED',
  'ECONNRESET',
]);

/**
 * A connection failure turned into an error that names the target and what to check;
 * any other error is returned as it is.
 */
export function explainConnectionError(error: unknown, databaseUrl: string): unknown {
  if (
    error instanceof DatabaseUnreachableError ||
    error instanceof DatabaseRefusedError ||
    error instanceof DatabaseCertificateError
  ) {
    return error;
  }
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return error;
  const target = describeTarget(databaseUrl);
  const certificate = explainCertificateError(error, databaseUrl, target);
  if (certificate) return certificate;
  const detail = error instanceof Error ? error.message : String(error);
  if (REFUSED_SQLSTATE.test(code)) {
    const what =
      code === '3D000'
        ? 'check the database name in DATABASE_URL'
        : 'check the user and password in DATABASE_URL, and that pg_hba.conf lets this role connect from here';
    return new DatabaseRefusedError(`${target} refused the connection: ${detail}; ${what}`, code);
  }
  if (UNREACHABLE_CODES.has(code)) {
    const what =
      code === 'ENOTFOUND' || code === 'EAI_AGAIN'
        ? 'check the host name in DATABASE_URL'
        : 'check the host and port in DATABASE_URL, that the server is running and accepts TCP connections from here (listen_addresses, firewall)';
    return new DatabaseUnreachableError(`cannot reach ${target}: ${detail}; ${what}`, code);
  }
  return error;
}

export interface PoolOptions {
  /** Connections in the pool (default 1). */
  max?: number;
  /** Session settings (application_name, TimeZone, ...). */
  connection?: Record<string, string | number | boolean>;
  /** Notices from the server (default: ignored). */
  onnotice?: (notice: postgres.Notice) => void;
  /** Column names to camelCase (the relay's pool). */
  camelCase?: boolean;
  idleTimeoutS?: number;
  maxLifetimeS?: number;
  /** A notification arrived (postgres.js supports it; its types leave it out). */
  onnotify?: (channel: string, payload: string) => void;
  /** A connection of the pool closed. */
  onclose?: () => void;
}

/** Part of the query postgres.js sends on each new connection to learn the array types. */
export const ARRAY_TYPES_QUERY = "typcategory = 'A'";

/**
 * Whether `reason` is the failure of postgres.js's own array-types query. postgres.js 3.4
 * sends it on every new connection and drops its promise; when the connection is cut
 * during it, the query stays pending through the reconnects and is rejected later
 * (POOL_CLOSING at shutdown, CONNECTION_DESTROYED at sql.end()) with nobody to catch it
 * (porsager/postgres#1223). Nothing waits on it: the next connection asks again.
 */
export function isArrayTypesQueryFailure(reason: unknown): boolean {
  if (!(reason instanceof Error)) return false;
  const query: unknown = Reflect.get(reason, 'query');
  return typeof query === 'string' && query.includes(ARRAY_TYPES_QUERY);
}

let guarded = false;

/**
 * Once per process: an unhandled rejection that is postgres.js's dropped array-types query
 * is ignored; any other is thrown again, as an uncaught exception, so that Node ends the
 * process (exit 1) as it would without this listener. Where another listener handles
 * unhandled rejections (node:test's, in tests), that one decides for the others, and it
 * sees the dropped query too: only the CLI's processes are protected from it.
 */
function guardArrayTypesQuery(): void {
  if (guarded) return;
  guarded = true;
  process.on('unhandledRejection', (reason) => {
    if (isArrayTypesQueryFailure(reason)) return;
    if (process.listenerCount('unhandledRejection') > 1) return;
    throw reason;
  });
}

/** A postgres.js pool with pg2kafka's defaults; the first query is not bounded: see checkConnection(). */
export function openPool(databaseUrl: string, options: PoolOptions = {}): postgres.Sql {
  guardArrayTypesQuery();
  const hooks: Record<string, unknown> = {};
  if (options.onnotify) hooks.onnotify = options.onnotify;
  if (options.onclose) hooks.onclose = options.onclose;
  // TLS as DATABASE_URL's sslmode and sslrootcert say, the same for node-postgres (database-tls.ts).
  const tls = databaseTls(databaseUrl);
  // Connections are opened by a Dialer, which backs off where postgres.js would flood a
  // server that keeps ending them (database-socket.ts). Not in postgres.js's types.
  const dialer = new Dialer();
  hooks.socket = dialer.open;
  const sql = postgres(tls.url, {
    ...hooks,
    ssl: postgresJsSsl(tls),
    max: options.max ?? 1,
    connect_timeout: CONNECT_TIMEOUT_MS / 1000,
    ...(options.idleTimeoutS === undefined ? {} : { idle_timeout: options.idleTimeoutS }),
    ...(options.maxLifetimeS === undefined ? {} : { max_lifetime: options.maxLifetimeS }),
    ...(options.connection ? { connection: options.connection } : {}),
    ...(options.camelCase ? { transform: { column: { from: postgres.toCamel } } } : {}),
    onnotice: options.onnotice ?? (() => undefined),
  });
  dialers.set(sql, dialer);
  const end = sql.end.bind(sql);
  sql.end = async (endOptions) => {
    dialer.close();
    try {
      await end(endOptions);
    } finally {
      dialer.destroyAll();
    }
  };
  return sql;
}

const dialers = new WeakMap<postgres.Sql, Dialer>();

/**
 * A pool about to be ended (the relay shutting down): from now on a query that would need
 * a new connection after failed ones fails at once (POOL_CLOSING) instead of waiting for
 * the server, so a loop waiting on a database that is down can stop. Queries on a healthy
 * server are not affected.
 */
export function stopReconnecting(sql: postgres.Sql): void {
  dialers.get(sql)?.close();
}

/**
 * One round trip within `timeoutMs`, or a DatabaseUnreachableError / DatabaseRefusedError
 * naming the target. On timeout the pool's connections are closed, so nothing keeps
 * retrying in the background.
 */
export async function checkConnection(
  sql: postgres.Sql,
  databaseUrl: string,
  timeoutMs = CONNECT_TIMEOUT_MS,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new DatabaseUnreachableError(
          `no answer from ${describeTarget(databaseUrl)} within ${timeoutMs / 1000} s; check the host and port in DATABASE_URL, that the server is running and accepts TCP connections from here (listen_addresses, firewall)`,
          'CONNECT_TIMEOUT',
        ),
      );
    }, timeoutMs);
  });
  try {
    await Promise.race([sql`select 1`, deadline]);
  } catch (error) {
    if (error instanceof DatabaseUnreachableError) await sql.end({ timeout: 0 });
    throw explainConnectionError(error, databaseUrl);
  } finally {
    clearTimeout(timer);
  }
}
