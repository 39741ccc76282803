/**
 * The TCP (or unix socket) connections of a pool, opened here rather than by postgres.js,
 * so that a server that keeps ending new connections is not flooded.
 *
 * Why: postgres.js 3.4 reconnects without any delay when a connection ends before its
 * startup completed while a query waits for it. Against a server that is starting up
 * (every connection answered with 57P03 and closed), a pool of three with queries in
 * flight made about 800 connection attempts a second (test/database-reconnect.test.ts).
 * Its `backoff` option does not help: that path never reaches it.
 *
 * The rule, per pool: a connection that is gone within PROVEN_AFTER_MS of being opened
 * counts as a failure; one still open then proves the server healthy and ends the streak.
 * After n failures in a row the next connection waits backoffDelay(n) (backoff.ts) before
 * it is opened. Nothing is parsed: with TLS, postgres.js upgrades the socket it gets.
 *
 * The steps stop growing at MAX_BACKOFF_STEP (0.8 to 1.6 s): a server back from a restart
 * is found within that.
 *
 * A pool being closed (close(): at sql.end(), or earlier when the relay shuts down) stops
 * reconnecting after a failure: such a connection fails at once (POOL_CLOSING), so the
 * queries waiting on a server that is down fail instead of keeping the process alive.
 * On a healthy server (no failure) a closing pool still connects, so that sql.end() can
 * let queued queries finish.
 */
import { Socket } from 'node:net';
import { backoffDelay } from './relay/backoff.ts';

/** How long a new connection must stay open to count as a success. */
export const PROVEN_AFTER_MS = 1_000;
/** The backoff step (backoff.ts) the delay stops growing at: 0.8 to 1.6 s. */
export const MAX_BACKOFF_STEP = 4;
/** The code of the error a closing pool's connections fail with. */
export const POOL_CLOSING = 'POOL_CLOSING';

/** What postgres.js passes to its `socket` option: the parsed target. */
export interface SocketTarget {
  host: string[];
  port: number[];
  path?: string | false;
}

/** A socket with the fields postgres.js reads for errors and TLS server names. */
type PgSocket = Socket & { host?: string; port?: number };

export class Dialer {
  /** Connections in a row that were gone before PROVEN_AFTER_MS. */
  private failures = 0;
  private closing = false;
  private hostIndex = 0;
  /** Connections opened less than PROVEN_AFTER_MS ago, not yet counted either way. */
  private readonly recent = new Set<Socket>();
  /** Every connection opened that may still be open. */
  private readonly sockets = new Set<Socket>();
  /** The backoff waits in progress, and how to end each early. */
  private readonly waits = new Map<NodeJS.Timeout, () => void>();

  /** For postgres.js's `socket` option. */
  readonly open = async (target: SocketTarget): Promise<Socket> => {
    this.countEnded();
    if (this.failures > 0) {
      if (!this.closing) await this.wait(backoffDelay(Math.min(this.failures, MAX_BACKOFF_STEP)));
      // close() during the wait ends it: the connection then fails as closing.
      if (this.closing) return failing(target);
    }
    return this.connect(target);
  };

  /** The pool is closing: no more reconnecting after a failure, the waits end now. */
  close(): void {
    this.closing = true;
    for (const [timer, resolve] of this.waits) {
      clearTimeout(timer);
      resolve();
    }
    this.waits.clear();
  }

  /**
   * After sql.end(): destroys what is left. postgres.js ends a connection by sending
   * Terminate and half-closing; a server that never answered keeps it open, and with it
   * the process, until postgres.js's connect timeout.
   */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }

  private connect(target: SocketTarget): Socket {
    const socket: PgSocket = new Socket();
    if (target.path) {
      socket.connect(target.path);
    } else {
      const index = this.hostIndex % target.host.length;
      this.hostIndex = index + 1;
      const host = target.host[index] ?? 'localhost';
      const port = target.port[index] ?? target.port[0] ?? 5432;
      socket.connect(port, host);
      socket.host = host;
      socket.port = port;
    }
    for (const old of this.sockets) if (old.destroyed) this.sockets.delete(old);
    this.sockets.add(socket);
    this.recent.add(socket);
    setTimeout(() => {
      if (!this.recent.delete(socket)) return;
      if (socket.destroyed) this.failures += 1;
      else this.failures = 0;
    }, PROVEN_AFTER_MS).unref();
    return socket;
  }

  /** Counts the recent connections that are already gone as failures. */
  private countEnded(): void {
    for (const socket of this.recent) {
      if (!socket.destroyed) continue;
      this.recent.delete(socket);
      this.failures += 1;
    }
  }

  /** A delay that close() ends early. */
  private wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.waits.delete(timer);
        resolve();
      }, ms);
      this.waits.set(timer, resolve);
    });
  }
}

/**
 * A socket that fails without connecting: postgres.js rejects the query waiting for it.
 * The error comes after postgres.js has attached its listeners (setImmediate runs after
 * the promise callbacks that do).
 */
function failing(target: SocketTarget): Socket {
  const socket = new Socket();
  const where = target.path || `${target.host.join(',')}:${target.port.join(',')}`;
  setImmediate(() => {
    socket.destroy(
      Object.assign(
        new Error(`not reconnecting to ${where}: the pool is closing after failed connections`),
        { code: POOL_CLOSING },
      ),
    );
  });
  return socket;
}
