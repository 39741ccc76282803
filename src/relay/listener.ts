/**
 * Wake-ups: LISTEN makes the relay fast, polling stays the guarantee.
 *
 * Writers pay for a NOTIFY only while the relay sleeps on an idle queue: the relay then
 * holds the advisory lock pg2kafka.wake_lock_key() exclusively (IdleFlag), and the capture
 * side's statement trigger notifies only when it cannot take that lock shared (see
 * sql/15_wake.sql). Under load the relay never sleeps long, never holds the lock, and
 * writers never take NOTIFY's cluster-wide commit lock.
 *
 * The listener has its own connection. When it drops, LISTEN is re-issued by one retry
 * chain with the common backoff (a close while a retry is already waiting changes
 * nothing), and every (re)connect wakes the relay for a catch-up poll: notifications sent
 * while nobody listened are lost. A server that refuses the role, password or database
 * cannot be waited out quickly: those retries wait REFUSED_RETRY_MS.
 */
import type postgres from 'postgres';
import { explainConnectionError, isRefusedConnection, openPool } from '../database.ts';
import type { Logger } from '../logger.ts';
import { backoffDelay } from './backoff.ts';

export const WAKE_CHANNEL = 'pg2kafka_events';
/** The wait before retrying a connection the server refused (role, password, database). */
export const REFUSED_RETRY_MS = 60_000;

export interface Listener {
  stop(): Promise<void>;
}

export function startListener(databaseUrl: string, onWake: () => void, logger: Logger): Listener {
  let stopped = false;
  /** Read after an await: stop() may have run meanwhile. */
  const isStopped = (): boolean => stopped;
  let attempt = 0;
  /** The one pending retry, or the LISTEN in flight: a close never starts a second chain. */
  let timer: NodeJS.Timeout | undefined;
  let listening: Promise<void> | undefined;
  const sql = openPool(databaseUrl, {
    idleTimeoutS: 0,
    maxLifetimeS: 0,
    connection: { application_name: 'pg2kafka listener' },
    onnotify: (channel) => {
      if (channel === WAKE_CHANNEL) onWake();
    },
    onclose: () => {
      if (stopped || timer !== undefined || listening !== undefined) return;
      logger.warn('listener connection closed: listening again');
      schedule(0);
    },
  });

  function schedule(delayMs: number): void {
    timer = setTimeout(() => {
      timer = undefined;
      listening = listen().finally(() => {
        listening = undefined;
      });
    }, delayMs);
  }

  async function listen(): Promise<void> {
    if (stopped) return;
    try {
      await sql.unsafe(`listen ${WAKE_CHANNEL}`);
      if (attempt > 0) logger.info('listening again');
      attempt = 0;
      onWake();
    } catch (error) {
      if (isStopped()) return;
      attempt += 1;
      const refused = isRefusedConnection(error);
      const retryInMs = refused ? REFUSED_RETRY_MS : backoffDelay(attempt);
      const explained = explainConnectionError(error, databaseUrl);
      logger[refused ? 'error' : 'warn'](
        { attempt, retryInMs, err: explained },
        `cannot LISTEN, retrying in ${retryInMs} ms (polling continues): ${explained instanceof Error ? explained.message : String(explained)}`,
      );
      schedule(retryInMs);
    }
  }

  schedule(0);
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
      await sql.end({ timeout: 1 });
    },
  };
}

/**
 * The flag connection's session settings. While the flag is up, every writer pays a
 * NOTIFY; if the relay's host vanished (power loss, a network split) the server would keep
 * the session, and so the lock, until its TCP keepalive gives up (two hours by default).
 * These make the server itself probe the idle connection after 10 s and drop it within
 * about 25 s of silence (keepalives), or 20 s of unacknowledged data (tcp_user_timeout),
 * which releases the lock. Any role may set them for its own session.
 */
export const IDLE_FLAG_SESSION = {
  application_name: 'pg2kafka relay idle flag',
  tcp_keepalives_idle: '10',
  tcp_keepalives_interval: '5',
  tcp_keepalives_count: '3',
  tcp_user_timeout: '20000',
};

/**
 * The "relay is asleep, wake it" flag: a session advisory lock on a pool of its own with
 * a single connection (so lock and unlock run in the same session). If that connection
 * dies, the lock goes with it and writers simply stop notifying until the next raise.
 * Not sql.reserve(): postgres.js 3.4.9 crashes the process with an uncatchable TypeError
 * when the backend of a reserved connection is terminated (porsager/postgres#1208).
 */
export class IdleFlag {
  private readonly sql: postgres.Sql;
  private held = false;

  constructor(databaseUrl: string) {
    this.sql = openPool(databaseUrl, {
      idleTimeoutS: 0,
      maxLifetimeS: 0,
      connection: IDLE_FLAG_SESSION,
    });
  }

  /** Raises the flag; false if writers are mid-statement (then poll instead of sleeping). */
  async raise(): Promise<boolean> {
    try {
      const [row] = await this.sql<{ held: boolean }[]>`
        select pg_try_advisory_lock(pg2kafka.wake_lock_key()) as held`;
      this.held = row?.held ?? false;
    } catch {
      this.held = false;
    }
    return this.held;
  }

  async lower(): Promise<void> {
    if (!this.held) return;
    this.held = false;
    // Releases every hold of this session: a lock raised twice by a retried query goes too.
    await this.sql`select pg_advisory_unlock_all()`.catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.sql.end({ timeout: 1 });
  }
}
