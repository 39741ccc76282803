/**
 * A TCP proxy in front of the test PostgreSQL that counts connection attempts and plays
 * an outage the way a restarting server does: while `down`, every new connection gets
 * PostgreSQL's own "the database system is starting up" FATAL (SQLSTATE 57P03) and is
 * closed, and going down cuts the connections already open. Gone silent, it accepts new
 * connections and never answers them (a host whose packets are dropped after the
 * handshake). What the relay does to the server during an outage is then countable:
 * `attempts` since a moment.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { after } from 'node:test';
import { ARRAY_TYPES_QUERY } from '../src/database.ts';

/** An ErrorResponse message: severity FATAL, the given SQLSTATE and text. */
function errorResponse(sqlstate: string, message: string): Buffer {
  const fields = Buffer.concat([
    Buffer.from(`SFATAL\0VFATAL\0C${sqlstate}\0M${message}\0`, 'utf8'),
    Buffer.from([0]),
  ]);
  const header = Buffer.alloc(5);
  header.write('E', 0, 'latin1');
  header.writeInt32BE(fields.length + 4, 1);
  return Buffer.concat([header, fields]);
}

/** The application_name of a StartupMessage (length, version, then name/value pairs). */
function applicationName(startup: Buffer): string {
  const fields = startup.subarray(8).toString('utf8').split('\0');
  const at = fields.indexOf('application_name');
  return at >= 0 ? (fields[at + 1] ?? '') : '(none)';
}

const TYPES_QUERY = Buffer.from(ARRAY_TYPES_QUERY);

const STARTING_UP = errorResponse('57P03', 'the database system is starting up');

export class PgProxy {
  /** Connections accepted so far (answered or refused). */
  attempts = 0;
  /** Connections accepted so far by the application_name of their startup message. */
  readonly attemptsBy = new Map<string, number>();
  private down = false;
  private silent = false;
  private downAtTypesQuery = false;
  /** goDownAtNextTypesQuery() went down: a connection sent that query after it was armed. */
  wentDownAtTypesQuery = false;
  private readonly open = new Set<Socket>();

  private readonly server: Server;
  private port_ = 0;

  private constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {
    this.server = createServer((client) => {
      this.accept(client);
    });
  }

  get port(): number {
    return this.port_;
  }

  static async start(targetUrl: string): Promise<PgProxy> {
    const target = new URL(targetUrl);
    const proxy = new PgProxy(target.hostname || '127.0.0.1', Number(target.port || 5432));
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.port_ = (proxy.server.address() as AddressInfo).port;
    return proxy;
  }

  /** `url` with its host and port replaced by the proxy's. */
  url(url: string): string {
    const parsed = new URL(url);
    parsed.hostname = '127.0.0.1';
    parsed.port = String(this.port);
    return parsed.toString();
  }

  private accept(client: Socket): void {
    this.attempts += 1;
    client.on('error', () => undefined);
    this.open.add(client);
    client.on('close', () => this.open.delete(client));
    if (this.silent) return;
    if (this.down) {
      client.once('data', (startup: Buffer) => {
        const name = applicationName(startup);
        this.attemptsBy.set(name, (this.attemptsBy.get(name) ?? 0) + 1);
        client.end(STARTING_UP);
      });
      return;
    }
    const upstream = connect(this.targetPort, this.targetHost);
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('data', (chunk: Buffer) => {
      if (!this.downAtTypesQuery || !chunk.includes(TYPES_QUERY)) return;
      this.downAtTypesQuery = false;
      this.wentDownAtTypesQuery = true;
      this.goDown();
    });
    client.pipe(upstream).pipe(client);
  }

  /**
   * Cuts every open connection now, lets them reconnect, and goes down the moment one of
   * them sends postgres.js's array-types query (every new connection's first): that query
   * is then in flight when its connection is cut.
   */
  goDownAtNextTypesQuery(): void {
    this.downAtTypesQuery = true;
    for (const socket of this.open) socket.destroy();
  }

  /** Cuts every open connection; new ones are refused as by a server starting up. */
  goDown(): void {
    this.down = true;
    for (const socket of this.open) socket.destroy();
  }

  goUp(): void {
    this.down = false;
    this.silent = false;
  }

  /** New connections are accepted and never answered; open ones carry on. */
  goSilent(): void {
    this.silent = true;
  }

  async close(): Promise<void> {
    this.goDown();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}

/**
 * For a test file: `startProxy()` starts a proxy in front of `db` (its URL is read when
 * called, once the database exists); every proxy is closed after the file.
 */
export function useProxies(db: { url: string }): { startProxy: () => Promise<PgProxy> } {
  const proxies: PgProxy[] = [];
  after(async () => {
    await Promise.all(proxies.map((p) => p.close()));
  });
  return {
    async startProxy() {
      const proxy = await PgProxy.start(db.url);
      proxies.push(proxy);
      return proxy;
    },
  };
}
