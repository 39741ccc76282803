/**
 * TLS to PostgreSQL, read from DATABASE_URL's `sslmode`, `sslrootcert`, `sslcert` and
 * `sslkey` as libpq reads them, and handed to both clients the same way: postgres.js (every
 * command and the relay) and node-postgres (node-pg-migrate, in `migrate`). Left to
 * themselves they disagree: postgres.js ignores `sslrootcert` (and sends it to the server
 * as a setting), node-postgres treats `require` and `verify-ca` as `verify-full` and cannot
 * fall back to plain text for `prefer`.
 *
 * | sslmode       | TLS                              | certificate chain | host name |
 * | ------------- | -------------------------------- | ----------------- | --------- |
 * | disable (default) | never                        |                   |           |
 * | allow, prefer | when the server offers it        | not verified      |           |
 * | require       | always                           | not verified *    |           |
 * | verify-ca     | always                           | verified          |           |
 * | verify-full   | always                           | verified          | verified  |
 *
 * (*) as in libpq, `require` with an `sslrootcert` file verifies the chain like verify-ca.
 * The chain is verified against the `sslrootcert` PEM file, or Node's trusted CAs when it
 * is absent or `system` (which, as in libpq, needs verify-full and implies it when no
 * sslmode is given). `sslcert` + `sslkey` give a client certificate. Without sslmode the
 * connection is plain, as it always was here (libpq would try TLS first: sslmode=prefer).
 */
import { readFileSync } from 'node:fs';
import { checkServerIdentity, type ConnectionOptions } from 'node:tls';
import { UsageError } from './errors.ts';

export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];
export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

/** The parameters read here and removed from the URL the clients get. */
const TLS_PARAMETERS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey'];

export interface DatabaseTls {
  /** The sslmode in effect. */
  mode: SslMode;
  /** What a TLS connection is given (CA, client certificate, what is verified); undefined for disable. */
  options: ConnectionOptions | undefined;
  /** DATABASE_URL without the TLS parameters, for the clients. */
  url: string;
}

function isSslMode(value: string): value is SslMode {
  return SSL_MODES.includes(value);
}

/**
 * The TLS settings of a DATABASE_URL, files read. Throws a UsageError naming every
 * problem (an unknown sslmode, a file that cannot be read, a weak mode with
 * sslrootcert=system). A string that is not a URL is returned as it is, without TLS.
 */
export function databaseTls(databaseUrl: string): DatabaseTls {
  let url: URL;
  try {
    url = new URL(databaseUrl);
  } catch {
    return { mode: 'disable', options: undefined, url: databaseUrl };
  }
  const params = url.searchParams;
  const problems: string[] = [];
  const rootCert = params.get('sslrootcert');
  const requested = params.get('sslmode');
  let mode: SslMode = rootCert === 'system' ? 'verify-full' : 'disable';
  if (requested !== null) {
    if (isSslMode(requested)) mode = requested;
    else {
      problems.push(
        `DATABASE_URL: sslmode=${requested} is not one of ${SSL_MODES.join(', ')} (example: sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem)`,
      );
    }
  }
  if (params.has('ssl')) {
    problems.push(
      'DATABASE_URL: the ssl parameter is not supported, the two PostgreSQL clients read it differently: use sslmode (disable, prefer, require, verify-ca or verify-full)',
    );
  }
  if (rootCert === 'system' && requested !== null && mode !== 'verify-full') {
    problems.push(
      `DATABASE_URL: sslrootcert=system needs sslmode=verify-full (got sslmode=${mode}): trusting every public CA is only safe when the host name is checked too`,
    );
  }
  // libpq: with a root certificate, require verifies the chain as verify-ca does.
  if (mode === 'require' && rootCert !== null) mode = 'verify-ca';
  const read = (name: string): string | undefined => {
    const path = params.get(name);
    if (path === null || (name === 'sslrootcert' && path === 'system')) return undefined;
    try {
      return readFileSync(path, 'utf8');
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      problems.push(
        `DATABASE_URL: ${name}=${path} cannot be read (${typeof code === 'string' ? code : String(error)}): give the path of a PEM file this user may read`,
      );
      return undefined;
    }
  };
  const ca = read('sslrootcert');
  const cert = read('sslcert');
  const key = read('sslkey');
  if (params.has('sslcert') !== params.has('sslkey')) {
    problems.push(
      'DATABASE_URL: sslcert and sslkey go together (a client certificate and its key)',
    );
  }
  if (problems.length > 0) throw new UsageError(problems.join('\n'), problems);

  for (const name of TLS_PARAMETERS) params.delete(name);
  // An IPv6 address is written in brackets in a URL, not in a certificate.
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const client = {
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
  };
  const trusted = ca === undefined ? {} : { ca };
  const options: Record<SslMode, ConnectionOptions | undefined> = {
    disable: undefined,
    allow: { rejectUnauthorized: false, ...client },
    prefer: { rejectUnauthorized: false, ...client },
    require: { rejectUnauthorized: false, ...client },
    // The chain, not the name: the server may be reached by any name or address.
    'verify-ca': {
      rejectUnauthorized: true,
      ...trusted,
      ...client,
      checkServerIdentity: () => undefined,
    },
    // The host of the URL, checked explicitly: postgres.js gives Node no name to check
    // for an IP address (it would check "localhost"); node-postgres gives the host.
    'verify-full': {
      rejectUnauthorized: true,
      ...trusted,
      ...client,
      checkServerIdentity: (_servername, certificate) => checkServerIdentity(host, certificate),
    },
  };
  return { mode, options: options[mode], url: url.toString() };
}

/** Whether the mode may fall back to a plain connection when the server offers no TLS. */
export function tlsOptional(mode: SslMode): boolean {
  return mode === 'allow' || mode === 'prefer';
}

/** postgres.js's `ssl` option: it falls back to plain text only for the string 'prefer'. */
export function postgresJsSsl(tls: DatabaseTls): false | 'prefer' | ConnectionOptions {
  if (!tls.options) return false;
  if (tlsOptional(tls.mode) && tls.options.cert === undefined) return 'prefer';
  return tls.options;
}

/**
 * node-postgres's `ssl` option. It cannot fall back to plain text, so for allow and prefer
 * the caller says whether the server took TLS on another connection (pg_stat_ssl).
 */
export function nodePostgresSsl(
  tls: DatabaseTls,
  serverUsesTls: boolean,
): false | ConnectionOptions {
  if (!tls.options) return false;
  if (tlsOptional(tls.mode) && !serverUsesTls) return false;
  return tls.options;
}

/** Node's codes for a server certificate that was not accepted. */
const CERTIFICATE_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** The server's certificate was not accepted: configuration (or an impostor), exit 2. */
export class DatabaseCertificateError extends UsageError {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/**
 * A certificate refusal, said in terms of DATABASE_URL's parameters; undefined for any
 * other error. `target` names the server (see describeTarget).
 */
export function explainCertificateError(
  error: unknown,
  databaseUrl: string,
  target: string,
): DatabaseCertificateError | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !CERTIFICATE_CODES.has(code)) return undefined;
  let mode = 'verify-full';
  try {
    mode = databaseTls(databaseUrl).mode;
  } catch {
    // the URL's own problems are reported where it is read
  }
  const detail = error instanceof Error ? error.message : String(error);
  const what =
    code === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? 'the host in DATABASE_URL is not a name the certificate lists: connect by one of its names, or use sslmode=verify-ca to verify only who signed it'
      : 'check that sslrootcert names the PEM file of the CA that signed the server certificate (without it, Node.js trusts only public CAs)';
  return new DatabaseCertificateError(
    `${target} presented a certificate that sslmode=${mode} does not accept: ${detail} (${code}); ${what}`,
    code,
  );
}
