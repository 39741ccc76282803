/**
 * Topics held back: their events stay queued while every other topic flows.
 *
 * Keyed by topic, because Kafka refuses per topic and several tables can share one (a
 * table dropped and re-created under its name while events are still queued, or the
 * `a.b` name collision). A held entry also names the tables seen on it, so that the
 * fetch can skip them; an event whose topic is held is never sent, whatever its table.
 *
 * Retriable problems (no leader, not enough replicas, timeouts, a missing topic) are
 * retried with the common backoff per topic (backoff.ts); permanent ones (a topic name
 * Kafka rejects, no permission, DEAD_LETTER_POLICY=hold-table) every PERMANENT_RETRY_MS.
 */
import { backoffDelay } from './backoff.ts';

export const PERMANENT_RETRY_MS = 60_000;

interface Hold {
  topic: string;
  tableOids: Set<string>;
  tables: Set<string>;
  reason: string;
  retryAt: number;
}

export interface HoldNotice {
  topic: string;
  tables: string[];
  reason: string;
  retriable: boolean;
  retryInMs: number;
}

export class HoldList {
  private readonly held = new Map<string, Hold>();

  /** `retriableDelay`: how long a retriable hold lasts after `attempt` failures in a row. */
  constructor(private readonly retriableDelay: (attempt: number) => number = backoffDelay) {}

  /** Consecutive retriable failures per topic, for the backoff; reset when it ships. */
  private readonly failures = new Map<string, number>();

  /**
   * Holds `topic` back. Returns a notice when the hold is new (to log once), undefined
   * when the topic was already held (its tables are added).
   */
  hold(
    topic: string,
    tables: Array<{ oid: string; name: string }>,
    reason: string,
    retriable: boolean,
  ): HoldNotice | undefined {
    const existing = this.held.get(topic);
    if (existing) {
      for (const t of tables) {
        existing.tableOids.add(t.oid);
        existing.tables.add(t.name);
      }
      return undefined;
    }
    const attempt = (this.failures.get(topic) ?? 0) + 1;
    this.failures.set(topic, attempt);
    const retryInMs = retriable ? this.retriableDelay(attempt) : PERMANENT_RETRY_MS;
    const hold: Hold = {
      topic,
      tableOids: new Set(tables.map((t) => t.oid)),
      tables: new Set(tables.map((t) => t.name)),
      reason,
      retryAt: performance.now() + retryInMs,
    };
    this.held.set(topic, hold);
    return { topic, tables: [...hold.tables], reason, retriable, retryInMs };
  }

  /** A topic shipped: its next failure starts the backoff from the beginning. */
  succeeded(topic: string): void {
    this.failures.delete(topic);
  }

  isHeld(topic: string, tableOid: string): boolean {
    if (this.held.has(topic)) return true;
    for (const hold of this.held.values()) if (hold.tableOids.has(tableOid)) return true;
    return false;
  }

  /** Tables the fetch can skip (an optimisation: held topics are filtered after it too). */
  tableOids(): string[] {
    return [...new Set([...this.held.values()].flatMap((h) => [...h.tableOids]))];
  }

  /** Ends the holds that are due (every hold with `now` = Infinity); returns them. */
  releaseDue(now = performance.now()): Array<{ topic: string; tables: string[] }> {
    const released: Array<{ topic: string; tables: string[] }> = [];
    for (const [topic, hold] of this.held) {
      if (hold.retryAt <= now) {
        this.held.delete(topic);
        released.push({ topic, tables: [...hold.tables] });
      }
    }
    return released;
  }
}
