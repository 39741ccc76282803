/**
 * A throwaway PostgreSQL cluster with TLS for tests: initdb in a temporary folder, a CA
 * and a server certificate made with openssl, started with pg_ctl on a free port of
 * localhost. Only TLS connections over TCP are let in (pg_hba `hostssl`), so a client
 * that connects at all used TLS. Run as root, the cluster runs as the `postgres` user
 * (initdb refuses root), as the machine's own PostgreSQL does.
 *
 * Nothing is skipped: a missing initdb, openssl or postgres user fails with what to install.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { appendFile, chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../scripts/kafka-broker.ts';

/** The folder holding initdb and pg_ctl: pg_config's, the PATH's, or the newest Debian one. */
function postgresBinDir(): string {
  const configured = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const candidates = [
    ...(configured.status === 0 ? [configured.stdout.trim()] : []),
    ...(process.env.PATH ?? '').split(':'),
    ...(existsSync('/usr/lib/postgresql')
      ? readdirSync('/usr/lib/postgresql')
          .sort((a, b) => Number(b) - Number(a))
          .map((v) => `/usr/lib/postgresql/${v}/bin`)
      : []),
  ];
  const found = candidates.find((dir) => dir && existsSync(join(dir, 'initdb')));
  if (!found) {
    throw new Error(
      'initdb and pg_ctl are needed for the TLS tests: install the PostgreSQL server (apt-get install postgresql)',
    );
  }
  return found;
}

function run(command: string, args: string[], what: string, asUser?: string): string {
  const [cmd, argv] = asUser
    ? ['runuser', ['-u', asUser, '--', command, ...args]]
    : [command, args];
  const result = spawnSync(cmd, argv, { encoding: 'utf8' });
  if (result.error || result.status !== 0) {
    throw new Error(
      `${what} failed (${result.error?.message ?? `exit ${String(result.status)}`}): ${cmd} ${argv.join(' ')}\n${result.stdout}${result.stderr}`,
    );
  }
  return result.stdout;
}

export class TlsPostgres {
  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly binDir: string,
    private readonly user: string | undefined,
  ) {}

  /** The PEM file of the CA that signed the server certificate. */
  get caFile(): string {
    return join(this.dir, 'ca.crt');
  }

  /** The PEM file of a CA that signed nothing here. */
  get otherCaFile(): string {
    return join(this.dir, 'other-ca.crt');
  }

  /**
   * A connection URL. `host`: localhost is the only name the server certificate lists;
   * 127.0.0.1 reaches the same server under a name the certificate does not list.
   */
  url(params: Record<string, string>, host = 'localhost', database = 'postgres'): string {
    const url = new URL(`postgres://postgres@${host}:${this.port}/${database}`);
    for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
    return url.toString();
  }

  static async start(): Promise<TlsPostgres> {
    if (spawnSync('openssl', ['version']).status !== 0) {
      throw new Error('openssl is needed for the TLS tests: install it (apt-get install openssl)');
    }
    const binDir = postgresBinDir();
    const user = userInfo().uid === 0 ? 'postgres' : undefined;
    if (user && spawnSync('id', ['-u', user]).status !== 0) {
      throw new Error(
        'run as root, the TLS tests start PostgreSQL as the "postgres" user, which does not exist: install the PostgreSQL server or run the tests as another user',
      );
    }
    const dir = await mkdtemp(join(tmpdir(), 'pg2kafka-tls-'));
    const server = new TlsPostgres(dir, await freePort(), binDir, user);
    try {
      await server.init();
    } catch (error) {
      await server.stop();
      throw error;
    }
    return server;
  }

  private async init(): Promise<void> {
    const { dir } = this;
    const at = (name: string): string => join(dir, name);
    const openssl = (args: string[], what: string): void => {
      run('openssl', args, what);
    };
    const selfSigned = (name: string, subject: string): void => {
      openssl(
        ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', subject].concat([
          '-keyout',
          at(`${name}.key`),
          '-out',
          at(`${name}.crt`),
        ]),
        `making the ${name} certificate`,
      );
    };
    selfSigned('ca', '/CN=pg2kafka test CA');
    selfSigned('other-ca', '/CN=pg2kafka unrelated CA');
    openssl(
      ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost'].concat([
        '-keyout',
        at('server.key'),
        '-out',
        at('server.csr'),
      ]),
      'making the server key',
    );
    await writeFile(at('server.ext'), 'subjectAltName=DNS:localhost\n');
    openssl(
      ['x509', '-req', '-in', at('server.csr'), '-CA', at('ca.crt'), '-CAkey', at('ca.key')]
        .concat(['-CAcreateserial', '-days', '2', '-extfile', at('server.ext')])
        .concat(['-out', at('server.crt')]),
      'signing the server certificate',
    );
    await chmod(at('server.key'), 0o600);
    if (this.user) {
      const uid = Number(run('id', ['-u', this.user], 'id').trim());
      const gid = Number(run('id', ['-g', this.user], 'id').trim());
      for (const name of readdirSync(dir)) await chown(at(name), uid, gid);
      await chown(dir, uid, gid);
    }
    run(
      join(this.binDir, 'initdb'),
      ['-D', at('data'), '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'],
      'initdb',
      this.user,
    );
    await appendFile(
      at('data/postgresql.conf'),
      [
        `port = ${this.port}`,
        "listen_addresses = 'localhost'",
        `unix_socket_directories = '${dir}'`,
        'ssl = on',
        `ssl_cert_file = '${at('server.crt')}'`,
        `ssl_key_file = '${at('server.key')}'`,
        'fsync = off',
        'max_connections = 30',
        '',
      ].join('\n'),
    );
    // TCP only with TLS: a client that got in used it.
    await writeFile(
      at('data/pg_hba.conf'),
      'local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n',
    );
    run(
      join(this.binDir, 'pg_ctl'),
      ['-D', at('data'), '-l', at('server.log'), '-w', '-t', '60', 'start'],
      'starting the TLS PostgreSQL',
      this.user,
    );
  }

  async stop(): Promise<void> {
    if (existsSync(join(this.dir, 'data', 'postmaster.pid'))) {
      run(
        join(this.binDir, 'pg_ctl'),
        ['-D', join(this.dir, 'data'), '-m', 'immediate', '-w', 'stop'],
        'stopping the TLS PostgreSQL',
        this.user,
      );
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
