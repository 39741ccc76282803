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
 * Once the pool is ending, a connection that would follow a failure is never opened (its
 * query fails when sql.end's timeout destroys the pool), so an ended pool cannot keep the
 * process alive by reconnecting. On a healthy server (no failure) an ending pool still
 * connects, so that sql.end() can let queued queries finish.
 */
import { Socket } from 'node:net';
import { backoffDelay } from './relay/backoff.ts';

/** How long a new connection must stay open to count as a success. */
export const PROVEN_AFTER_MS = 1_000;

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
  private ending = false;
  private hostIndex = 0;
  /** Connections opened less than PROVEN_AFTER_MS ago, not yet counted either way. */
  private readonly recent = new Set<Socket>();
  private readonly waits = new Set<NodeJS.Timeout>();

  /** For postgres.js's `socket` option. */
  readonly open = async (target: SocketTarget): Promise<Socket> => {
    this.countEnded();
    if (this.failures > 0) {
      if (this.ending) return never();
      // end() during the wait cancels it: this connection is then never opened.
      await this.wait(backoffDelay(this.failures));
    }
    return this.connect(target);
  };

  /** The pool is ending: stop reconnecting after failures, cancel the waits. */
  end(): void {
    this.ending = true;
    for (const timer of this.waits) clearTimeout(timer);
    this.waits.clear();
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

  /** A delay that end() cancels (the promise then never settles). */
  private wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.waits.delete(timer);
        resolve();
      }, ms);
      this.waits.add(timer);
    });
  }
}

/** A connection that is never opened: postgres.js waits on it until the pool is destroyed. */
function never(): Promise<Socket> {
  return new Promise<Socket>(() => undefined);
}
