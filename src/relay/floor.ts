/**
 * The queue floor: an id below which every change is final and gone, so that the fetch
 * reads `id >= floor` instead of starting at the lowest entry of the primary key.
 *
 * Why: while any transaction in the database holds an old snapshot (an idle-in-transaction
 * session, a long report, pg_dump), the rows the relay deleted cannot be vacuumed and their
 * index entries cannot even be marked dead, so a fetch that starts at the lowest entry walks
 * all of them (measured: 167 ms per fetch after 180 s at 2,000 inserts/s, linear). Started
 * at the floor, it walks only what was deleted since the floor was last raised.
 *
 * The floor lives in pg2kafka.relay_lease.queue_floor. It never costs writers anything:
 * the capture triggers neither read nor write it, and all the work below is the relay's.
 *
 * When is an id final? A writer takes the RowExclusiveLock on pg2kafka.captured_changes
 * before its INSERT runs (the lock is taken when the statement is planned or its cached
 * plan is checked), so before the identity default's nextval, and holds it until its
 * transaction ends (a rolled back subtransaction releases it together with its rows).
 * So, for a candidate taken as
 *   1. upTo = the highest id of a fetch that has returned (visible, so every id below it
 *      was handed out before that fetch; ids come from one CACHE 1 sequence), then, in a
 *      later statement,
 *   2. writers = the transactions holding a granted RowExclusiveLock on the queue now
 *      (pg_locks),
 * every transaction that may still commit an id <= upTo is in `writers`: it took the lock
 * before its id, so before step 1, and had not ended at step 2. Once none of them holds
 * the lock any more, every id <= upTo is final: committed (visible to the next statement)
 * or never to appear. That needs no transaction id: a writer whose own xid comes after its
 * nextval (a row routed to a foreign partition writes nothing locally) is covered too.
 * (pg_current_snapshot() is no substitute for pg_locks here: its xip list leaves out
 * running xids at or above its xmax, one past the latest *completed* xid, so a lone slow
 * writer can be missing from it.)
 * Only writers of the queue hold the floor back: pg_dump and reports take AccessShareLock,
 * and a long transaction that writes other tables does not count either. A long
 * transaction that wrote a captured table (or a setup() copying a big table) does hold it
 * back until it ends; it holds ids that may still commit, so that is the point.
 * A prepared transaction shows with a null pid and a new virtual transaction id, so one
 * that prepared after step 2 would look ended: while any prepared transaction holds the
 * lock, no candidate counts as final.
 *
 * Raising (one short transaction, only by the lease holder): lock the lease row (FOR UPDATE,
 * fenced by holder and epoch), then, in a later statement (a snapshot taken after the lock),
 * set the floor to the lowest id still queued in [floor, upTo], or upTo + 1 if there is
 * none. Queued-but-unshipped events (a held-back table's, a key waiting behind a retry)
 * are visible rows, so they keep the floor at their lowest id: nothing unshipped is ever
 * below it.
 *
 * Lowering: whatever puts a row back below the floor lowers it in the same transaction
 * (pg2kafka.retry_dead_letters: `queue_floor = least(queue_floor, lowest id put back)`).
 * READ COMMITTED races with a raise, all safe: a retry that updates the lease row first
 * makes the raise wait on the row lock, and the raise's next statement sees the retried
 * rows; a raise that locks first makes the retry's UPDATE wait, then re-read the raised
 * value and lower it; a raise that runs between the retry's INSERT and its UPDATE does not
 * see the new rows, and the retry lowers the floor before it commits. A fetch reads the
 * floor and the rows in one statement, so it sees the retried rows and the lowered floor
 * together or neither. (Hence the two statements of a raise: a single UPDATE would compute
 * the lowest id with a snapshot taken before it waited for the retry's row lock.)
 *
 * Cadence: at most every FLOOR_INTERVAL_MS, in the background of the loop: one read of
 * pg_locks takes a candidate, a second one 25 ms later checks the waiting candidates, and
 * the raise runs only when the floor would move by FLOOR_MIN_STEP ids or more (each raise
 * leaves one row version in the lease table that the same held snapshot keeps from being
 * vacuumed; a few dead index entries cost less). Nothing at all while the floor is within
 * FLOOR_MIN_STEP of the highest id read, except a look every ten intervals.
 *
 * What breaks this (and the per-key order of the queue too): rows inserted into
 * captured_changes with ids from elsewhere than the identity (other than by retry), or the
 * identity restarted below ids already used.
 */
import type postgres from 'postgres';
import type { Lease } from './queue.ts';

/** The floor is raised at most this often. */
export const FLOOR_INTERVAL_MS = 1_000;
/** A raise that would move the floor by fewer ids than this waits for more. */
export const FLOOR_MIN_STEP = 100n;
/** The pause between taking a candidate and checking it, so that short writers end first. */
const RECHECK_MS = 25;
/** Candidates kept while a long writer holds them back; past it, the newest is replaced. */
const MAX_CANDIDATES = 64;
/** With nothing to raise, the floor is looked at again after this many intervals. */
const REFRESH_INTERVALS = 10;

/** The SQL of the floor, on the relay's pool. */
export class QueueFloor {
  constructor(private readonly sql: postgres.Sql) {}

  /**
   * The transactions that may be inserting into the queue now (granted RowExclusiveLock on
   * it, as virtual transaction ids), whether a prepared transaction is among them, the
   * floor, and the lowest id still queued in [floor, upTo] (upTo + 1 when none): how far a
   * raise could go. Reads pg_locks (no privilege needed) at most twice a second.
   */
  async writers(upTo: bigint): Promise<{
    floor: bigint;
    lowest: bigint;
    writers: string[];
    prepared: boolean;
  }> {
    const [row] = await this.sql<
      { floor: string; lowest: string; writers: string[]; prepared: boolean }[]
    >`
      with w as materialized (
        select k.virtualtransaction, k.pid
        from pg_catalog.pg_locks k
        where k.locktype = 'relation'
          and k.database = (select d.oid from pg_catalog.pg_database d where d.datname = current_database())
          and k.relation = 'pg2kafka.captured_changes'::regclass
          and k.mode = 'RowExclusiveLock'
          and k.granted
      )
      select l.queue_floor::text as floor,
             coalesce((select min(c.id) from pg2kafka.captured_changes c
                       where c.id >= l.queue_floor and c.id <= ${upTo.toString()}::int8),
                      ${upTo.toString()}::int8 + 1)::text as lowest,
             array(select w.virtualtransaction from w where w.pid is not null) as writers,
             exists (select from w where w.pid is null) as prepared
      from pg2kafka.relay_lease l`;
    return {
      floor: BigInt(row?.floor ?? '0'),
      lowest: BigInt(row?.lowest ?? '0'),
      writers: row?.writers ?? [],
      prepared: row?.prepared ?? false,
    };
  }

  /**
   * Raises the floor to the lowest id still queued in [floor, upTo], or upTo + 1, when that
   * moves it by at least `minStep`; every id <= upTo must be final (see above). Returns the
   * floor after, or undefined when `lease` is not held.
   */
  async raise(
    lease: Lease,
    upTo: bigint,
    minStep: bigint = FLOOR_MIN_STEP,
  ): Promise<bigint | undefined> {
    return this.sql.begin(async (tx) => {
      // The lock first: the next statement's snapshot then sees every row a retry put back
      // before it lowered the floor (a retry that comes later waits for this row lock).
      const [held] = await tx<{ floor: string }[]>`
        select l.queue_floor::text as floor from pg2kafka.relay_lease l
        where l.holder = ${lease.holder} and l.epoch = ${lease.epoch}::int8
          and l.expires_at > clock_timestamp()
        for update`;
      if (!held) return undefined;
      const [raised] = await tx<{ floor: string }[]>`
        update pg2kafka.relay_lease l set queue_floor = n.floor
        from (
          select coalesce(min(c.id), ${upTo.toString()}::int8 + 1) as floor
          from pg2kafka.captured_changes c
          where c.id >= ${held.floor}::int8 and c.id <= ${upTo.toString()}::int8
        ) n
        where n.floor >= l.queue_floor + ${minStep.toString()}::int8
        returning l.queue_floor::text as floor`;
      return BigInt(raised?.floor ?? held.floor);
    });
  }
}

interface Candidate {
  /** Every id up to this one is final once none of `writers` holds the queue's lock. */
  upTo: bigint;
  writers: Set<string>;
}

/**
 * Keeps the floor rising behind the relay's fetches: told the highest id of every fetch,
 * it takes a candidate and checks the waiting ones at most every `intervalMs`, in the
 * background (the loop never waits for it), and raises the floor to the newest final one.
 * Candidates are facts about the database, kept across a change of lease; raising is
 * fenced by the lease passed in. While the floor cannot move by FLOOR_MIN_STEP (caught up
 * with what was read), it looks again only every REFRESH_INTERVALS intervals (a retry may
 * have lowered it).
 */
export class FloorKeeper {
  private highest: bigint | undefined;
  /** The floor as last read or set; undefined before the first step. */
  private knownFloor: bigint | undefined;
  private candidates: Candidate[] = [];
  private lastStep = -Infinity;
  private running: Promise<void> | undefined;
  /** Bumped by reset(): a step begun before must not raise with what it knew. */
  private generation = 0;

  constructor(
    private readonly store: QueueFloor,
    /** A failed step (it is retried at the next interval; shipping goes on meanwhile). */
    private readonly onError: (error: unknown) => void,
    private readonly intervalMs = FLOOR_INTERVAL_MS,
  ) {}

  /**
   * After every fetch: `highestId` is the batch's highest id (undefined when empty). With a
   * lease, starts a step when one is due and none is running.
   */
  observe(lease: Lease | undefined, highestId: string | undefined): void {
    if (highestId !== undefined) {
      const id = BigInt(highestId);
      if (this.highest === undefined || id > this.highest) this.highest = id;
    }
    if (!lease || this.running || this.highest === undefined) return;
    const now = performance.now();
    const since = now - this.lastStep;
    if (since < this.intervalMs) return;
    if (!this.mayRise() && since < this.intervalMs * REFRESH_INTERVALS) return;
    this.lastStep = now;
    this.running = this.step(lease, this.highest)
      .catch((error: unknown) => {
        this.onError(error);
      })
      .finally(() => {
        this.running = undefined;
      });
  }

  /**
   * Forgets every id and candidate, on each new lease: the queue may have been dropped and
   * migrated again meanwhile (its ids restart at 1), and a candidate from before would
   * raise the floor past ids that were never read.
   */
  reset(): void {
    this.generation += 1;
    this.highest = undefined;
    this.knownFloor = undefined;
    this.candidates = [];
    this.lastStep = -Infinity;
  }

  /** Resolves once no step is running (for stopping). */
  async settled(): Promise<void> {
    await this.running;
  }

  /** Whether the floor may move by FLOOR_MIN_STEP: a candidate waits, or ids were read past it. */
  private mayRise(): boolean {
    return (
      this.candidates.length > 0 ||
      this.knownFloor === undefined ||
      (this.highest ?? -1n) + 1n >= this.knownFloor + FLOOR_MIN_STEP
    );
  }

  private async step(lease: Lease, upTo: bigint): Promise<void> {
    const generation = this.generation;
    if (this.candidates.at(-1)?.upTo !== upTo) {
      const now = await this.store.writers(upTo);
      if (generation !== this.generation) return;
      this.knownFloor = now.floor;
      this.remember(upTo, now.floor, now.writers);
      await new Promise((resolve) => setTimeout(resolve, RECHECK_MS).unref());
    }
    const newest = this.candidates.at(-1);
    if (!newest) return;
    const live = await this.store.writers(newest.upTo);
    if (generation !== this.generation) return;
    this.knownFloor = live.floor;
    const final = this.takeFinal(live);
    if (!final) return;
    // live.lowest is the lowest id queued in [floor, newest.upTo]: a raise to final.upTo
    // stops there too if it is below, else at final.upTo + 1. Too small a step: no lock.
    const reach = live.lowest <= final.upTo ? live.lowest : final.upTo + 1n;
    if (reach < live.floor + FLOOR_MIN_STEP || generation !== this.generation) return;
    const raised = await this.store.raise(lease, final.upTo);
    if (raised !== undefined) this.knownFloor = raised;
  }

  private remember(upTo: bigint, floor: bigint, writers: string[]): void {
    if (upTo + 1n < floor + FLOOR_MIN_STEP) return;
    const candidate = { upTo, writers: new Set(writers) };
    if (this.candidates.length >= MAX_CANDIDATES) {
      this.candidates[this.candidates.length - 1] = candidate;
    } else {
      this.candidates.push(candidate);
    }
  }

  /**
   * Removes and returns the newest candidate none of whose writers still holds the lock,
   * dropping the older ones with it: a writer of an older candidate that is still running
   * was running when the newer one was taken, so it is among the newer one's writers too.
   */
  private takeFinal(live: { writers: string[]; prepared: boolean }): Candidate | undefined {
    if (live.prepared) return undefined;
    const running = new Set(live.writers);
    for (let i = this.candidates.length - 1; i >= 0; i -= 1) {
      const candidate = this.candidates[i] as Candidate;
      if ([...candidate.writers].some((w) => running.has(w))) continue;
      this.candidates = this.candidates.slice(i + 1);
      return candidate;
    }
    return undefined;
  }
}
