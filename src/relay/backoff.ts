/**
 * The one backoff policy for retrying transient faults (Kafka unreachable, PostgreSQL
 * restarting, a lost connection): capped exponential with equal jitter.
 *
 *   attempt:   1     2     3     4     5     6     7     8 ...
 *   ceiling:  200ms 400ms 800ms 1.6s  3.2s  6.4s  12.8s 15s (cap)
 *
 * The delay is drawn uniformly from [ceiling / 2, ceiling], so many relays restarting
 * together spread out, and no step is shorter than half its ceiling.
 */
export const BACKOFF_BASE_MS = 100;
export const BACKOFF_CAP_MS = 15_000;

export function backoffDelay(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(1, attempt));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}
