/**
 * The relay's leadership lease, and how far this process trusts it.
 *
 * The lease row (pg2kafka.relay_lease) is renewed by a heartbeat. Between renewals this
 * process trusts the lease until TTL minus a safety margin after the last successful
 * renewal *started*, on its own monotonic clock: a pause (GC, a frozen VM, an unreachable
 * database) that outlives that moment means a standby may already ship, so the lease is
 * dropped before anything else is sent. `trusted()` is checked before every produce
 * request, not once per batch: a batch spans several requests, and a relay paused between
 * two of them must not send the rest after a new leader shipped newer events.
 * (Fetch and delete are fenced in SQL by holder and epoch as well.)
 */
import type { EventQueue, Lease } from './queue.ts';

export interface LeaseTiming {
  /** Lease duration; a standby takes over this long after an active relay died. */
  ttlMs: number;
  /** The heartbeat renews the lease this often. */
  renewMs: number;
  /** A lease not renewed for TTL minus this margin is treated as lost, before it expires. */
  safetyMs: number;
}

export const DEFAULT_LEASE_TIMING: LeaseTiming = { ttlMs: 10_000, renewMs: 2_000, safetyMs: 2_000 };

export class LeaseKeeper {
  private lease: Lease | undefined;
  private trustedUntil = 0;
  private heartbeat: NodeJS.Timeout | undefined;

  constructor(
    private readonly queue: EventQueue,
    private readonly holder: string,
    private readonly timing: LeaseTiming,
    /** Called when the heartbeat finds the lease taken (the keeper has already dropped it). */
    private readonly onLost: (lease: Lease, reason: string) => void,
    /**
     * Whether the holder is making progress: a heartbeat of a stuck holder does not renew,
     * so the lease expires and a standby takes over (the holder's own next send or delete
     * finds the lease untrusted or gone).
     */
    private readonly progressing: () => boolean = () => true,
  ) {}

  get current(): Lease | undefined {
    return this.lease;
  }

  /** Whether `lease` is still this process's lease and trusted now. */
  trusted(lease: Lease | undefined): boolean {
    return lease !== undefined && lease === this.lease && performance.now() < this.trustedUntil;
  }

  /** Takes the lease if it is free or expired; undefined while another relay holds it. */
  async acquire(): Promise<Lease | undefined> {
    const started = performance.now();
    const lease = await this.queue.acquireLease(this.holder, this.timing.ttlMs);
    if (!lease) return undefined;
    this.lease = lease;
    this.trustedUntil = started + this.timing.ttlMs - this.timing.safetyMs;
    this.heartbeat = setInterval(() => void this.renew(lease), this.timing.renewMs);
    this.heartbeat.unref();
    return lease;
  }

  /** Forgets the lease; gives it up in the database too when `release` (a clean stop). */
  async drop(release: boolean): Promise<Lease | undefined> {
    const lease = this.lease;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    this.lease = undefined;
    if (lease && release) await this.queue.releaseLease(lease).catch(() => undefined);
    return lease;
  }

  private async renew(lease: Lease): Promise<void> {
    if (!this.progressing()) {
      // Left to expire; once it is no longer trusted it is no longer this holder's.
      if (performance.now() >= this.trustedUntil) {
        await this.drop(false);
        this.onLost(lease, 'the loop made no progress: the lease was left to expire for a standby');
      }
      return;
    }
    try {
      const started = performance.now();
      const renewed = await this.queue.renewLease(lease, this.timing.ttlMs);
      if (this.lease !== lease) return;
      if (renewed) {
        this.trustedUntil = started + this.timing.ttlMs - this.timing.safetyMs;
      } else {
        await this.drop(false);
        this.onLost(lease, 'lease lost to another relay');
      }
    } catch {
      // The database is unreachable: the lease is trusted until trustedUntil, then dropped
      // here, so that this relay stops counting itself active while a standby may ship.
      if (this.lease === lease && performance.now() >= this.trustedUntil) {
        await this.drop(false);
        this.onLost(lease, 'lease not renewed in time (database unreachable?)');
      }
    }
  }
}
