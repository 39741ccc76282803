/**
 * Wake-ups: LISTEN makes the relay fast, polling stays the guarantee.
 *
 * Writers pay for a NOTIFY only while the relay sleeps on an idle queue: the relay then
 * holds the advisory lock pg2kafka.wake_lock_key() exclusively (IdleFlag), and the capture
 * side's statement trigger notifies only when it cannot take that lock shared (see
 * sql/15_wake.sql). Under load the relay never sleeps long, never holds the lock, and
 * writers never take NOTIFY's cluster-wide commit lock.
 *
 * The listener has its own connection. When it drops, LISTEN is re-issued with the common
 * backoff, and every (re)connect wakes the relay for a catch-up poll: notifications sent
 * while nobody listened are lost.
 */
import postgres from 'postgres';
import type { Logger } from '../logger.ts';
import { backoffDelay } from './backoff.ts';

export const WAKE_CHANNEL = 'pg2kafka_events';

export interface Listener {
  stop(): Promise<void>;
}

export function startListener(databaseUrl: string, onWake: () => void, logger: Logger): Listener {
  let stopped = false;
  let attempt = 0;
  let timer: NodeJS.Timeout | undefined;
  // onnotify is supported by postgres.js (its own listen() uses it) but not in its types.
  const options: postgres.Options<Record<string, never>> & {
    onnotify: (channel: string, payload: string) => void;
  } = {
    max: 1,
    idle_timeout: 0,
    max_lifetime: 0,
    connect_timeout: 10,
    connection: { application_name: 'pg2kafka listener' },
    onnotify: (channel) => {
      if (channel === WAKE_CHANNEL) onWake();
    },
    onclose: () => {
      if (!stopped) {
        logger.warn('listener connection closed: listening again');
        schedule(0);
      }
    },
    onnotice: () => undefined,
  };
  const sql = postgres(databaseUrl, options);

  function schedule(delayMs: number): void {
    clearTimeout(timer);
    timer = setTimeout(() => void listen(), delayMs);
  }

  async function listen(): Promise<void> {
    if (stopped) return;
    try {
      await sql.unsafe(`listen ${WAKE_CHANNEL}`);
      if (attempt > 0) logger.info('listening again');
      attempt = 0;
      onWake();
    } catch (error) {
      attempt += 1;
      const retryInMs = backoffDelay(attempt);
      logger.warn(
        { attempt, retryInMs, err: error },
        `cannot LISTEN, retrying in ${retryInMs} ms (polling continues)`,
      );
      schedule(retryInMs);
    }
  }

  void listen();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
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
    this.sql = postgres(databaseUrl, {
      max: 1,
      idle_timeout: 0,
      max_lifetime: 0,
      connect_timeout: 10,
      connection: IDLE_FLAG_SESSION,
      onnotice: () => undefined,
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
