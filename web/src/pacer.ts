// Client-side command pacing: a token bucket matching the server's per-session rate limit
// (PROTOCOL.md section 5), so a burst of commands (a reconnect re-subscribing many rooms and
// flushing queued publishes) is spread out instead of being refused with `rate_limited` or the
// session closed with `rate_abuse`. Same rule as the Rust client's `client/src/pacer.rs`.

/**
 * A token bucket that hands out debt: `reserve` always takes a token and says how long to wait
 * before using it, so callers that reserve in order also send in order.
 */
export class Pacer {
  private tokens: number;
  private last: number;

  /** `perSecond` sustained, bursts of `burst`; times are milliseconds (`performance.now()`). */
  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /**
   * For a server limit of `limit` commands per second (burst `limit`): 95 % of the rate and half
   * the burst, leaving room for timing differences between the two buckets and for the odd
   * urgent command (a liveness ping) sent ahead of the queue. Null for no limit (0).
   */
  static forServerLimit(limit: number, now: number): Pacer | null {
    if (!(limit > 0)) return null;
    return new Pacer(Math.max(1, Math.floor((limit * 95) / 100)), Math.max(1, Math.floor(limit / 2)), now);
  }

  /** Takes one token; returns how many milliseconds to wait before sending. */
  reserve(now: number): number {
    this.refill(now);
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.perSecond) * 1000;
  }

  /** Whether a token is available now without waiting. */
  ready(now: number): boolean {
    this.refill(now);
    return this.tokens >= 1;
  }

  /** Milliseconds until a token is available without waiting (0 if one is now); takes none. */
  untilReady(now: number): number {
    this.refill(now);
    return this.tokens >= 1 ? 0 : ((1 - this.tokens) / this.perSecond) * 1000;
  }

  private refill(now: number): void {
    const elapsed = Math.max(0, now - this.last);
    this.last = Math.max(now, this.last);
    this.tokens = Math.min(this.burst, this.tokens + (elapsed / 1000) * this.perSecond);
  }
}
