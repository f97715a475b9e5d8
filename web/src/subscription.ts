// What the app holds for a room it subscribed to: the `Subscription` (handler or async iterator)
// and the `Message`s delivered to it. They live across reconnects until `unsubscribe()`.

import type { Member, Position, Recovery } from './codec.js';

/** A session joined or left a subscribed room (namespaces with presence events only). */
export interface PresenceChange {
  type: 'Joined' | 'Left';
  room: string;
  member: Member;
}

export interface SubscribeOptions {
  /** Replay what was published after this position before going live (rooms with history). */
  resume?: Position;
  /** Messages kept for the async iterator when no handler is given; the oldest are dropped.
   *  Default 1000. */
  bufferSize?: number;
  /** Payload bytes kept for the async iterator, whatever the count; past it the oldest are
   *  dropped too. Default 8 MiB (1,000 messages of 1 MB from a hostile server held 1 GB). */
  bufferBytes?: number;
  /** Called when a session joins or leaves the room, in namespaces with presence events. */
  onPresence?: (change: PresenceChange) => void;
}

const textDecoder = new TextDecoder();

/** One publication received in a room. */
export class Message {
  constructor(
    readonly room: string,
    /** Null for rooms without history. */
    readonly position: Position | null,
    readonly payload: Uint8Array,
  ) {}

  text(): string {
    return textDecoder.decode(this.payload);
  }

  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T;
  }
}

/** How a room delivers (PROTOCOL.md section 10): every publication in order (`reliable`), or
 *  only the newest value (`latest`: datagrams where they fit, older values dropped). */
export type DeliveryMode = 'reliable' | 'latest';

/** How a `latest` subscription's values arrived. */
export interface LatestStats {
  /** Values applied from datagrams. */
  byDatagram: number;
  /** Values applied from the room's stream or the WebSocket (too large for a datagram, or no
   *  datagrams on this transport). */
  byStream: number;
  /** Values dropped because a newer one had already been applied. */
  droppedOlder: number;
}

/** @internal What to do with one publication (`Continuity.judge`). */
export interface Verdict {
  /** Give it to the app (and make it the resume point). */
  deliver: boolean;
  /** The stream contradicts the server's `Recovered`: report the recovery failed first. */
  broken: boolean;
}

/**
 * @internal What one server subscription's publications must look like (PROTOCOL.md section 5):
 * positions strictly increase, in the epoch of `Subscribed.position`; a resume answered
 * `Recovered { replayed }` replays exactly `replayed` publications in (resume point,
 * `Subscribed.position`] before the live ones, which are after `Subscribed.position`. Positions
 * are only compared (offsets need not be contiguous). Outside audit F6: the server's word was
 * believed.
 */
export class Continuity {
  constructor(
    /** `Subscribed.position`: replayed publications are at most this, live ones after it. */
    private readonly head: Position | null,
    /** Replayed publications still to come (`Recovered`); null when the stream is no replay, or
     *  its recovery was already reported broken. */
    private replayLeft: number | null,
  ) {}

  /** Judges a publication at `position`, `last` being the last position delivered. */
  judge(last: Position | null, position: Position | null): Verdict {
    // Rooms without history: nothing to compare.
    if (position === null) return { deliver: true, broken: false };
    const epoch = (this.head ?? last)?.epoch;
    const forward =
      (epoch === undefined || epoch === position.epoch) &&
      (last === null || last.epoch !== position.epoch || position.offset > last.offset);
    const left = this.replayLeft;
    if (left === null) return { deliver: forward, broken: false };
    // Inside an announced replay: `left` more in (resume point, head] before the first live one.
    const replayed = forward && this.head !== null && position.offset <= this.head.offset;
    // Once the replay is over (or found broken, reported once) only the forward rule is left.
    this.replayLeft = replayed && left > 0 ? left - 1 : null;
    // Backwards inside the replay, one replayed more than announced, or a live one before every
    // announced replayed one came.
    return { deliver: forward, broken: replayed ? left === 0 : !forward || left > 0 };
  }
}

/** @internal Whether a `Recovered { replayed }` answering a resume from `from` with
 *  `Subscribed.position` `head` can be true: the replay lies in (`from`, `head`], in one epoch,
 *  and holds at most as many publications as there are offsets there. */
export function recoveryPossible(from: Position | null, head: Position | null, replayed: number): boolean {
  return (
    from !== null &&
    head !== null &&
    from.epoch === head.epoch &&
    head.offset >= from.offset &&
    BigInt(replayed) <= head.offset - from.offset
  );
}

/** A room the app subscribed to. It lives across reconnects until `unsubscribe()`. */
export class Subscription implements AsyncIterable<Message> {
  /** Position of the last message seen, used to resume after a reconnect. */
  position: Position | null = null;
  /** How the latest resume went, if one was asked for. `Failed` too when the replay contradicted
   *  a `Recovered` (see the `recovery` event). */
  recovery: Recovery | null = null;
  /** Messages dropped because the async iterator did not keep up. */
  dropped = 0;
  /** How the room delivers, as the server said when it confirmed the subscription. */
  mode: DeliveryMode = 'reliable';
  /** @internal Whether the server ever confirmed the subscription (so `mode` is its word). */
  known = false;
  /** For `latest` rooms: how values arrived. */
  readonly latestStats: LatestStats = { byDatagram: 0, byStream: 0, droppedOlder: 0 };
  /** @internal The server's subscription id on the current session (`latest` rooms). */
  latestId: bigint | null = null;
  /** Sequence of the newest value applied on the current server subscription. */
  private newest = 0n;
  private queue: Message[] = [];
  /** Payload bytes in `queue`. */
  private queued = 0;
  private waiter: ((r: IteratorResult<Message>) => void) | null = null;
  private ended = false;

  /** @internal */
  constructor(
    readonly room: string,
    private readonly handler: ((m: Message) => void) | undefined,
    private readonly bufferSize: number,
    private readonly owner: { unsubscribe(room: string): Promise<void> },
    private readonly presenceHandler: ((change: PresenceChange) => void) | undefined,
    private readonly bufferBytes: number = 8 * 1024 * 1024,
  ) {}

  get active(): boolean {
    return !this.ended;
  }

  unsubscribe(): Promise<void> {
    return this.owner.unsubscribe(this.room);
  }

  /** @internal */
  deliver(m: Message): void {
    if (m.position) this.position = m.position;
    if (this.handler) {
      this.handler(m);
    } else if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: m, done: false });
    } else {
      // Bounded in count and in bytes: the oldest go first (the newest is always kept).
      while (this.queue.length > 0 && (this.queue.length >= this.bufferSize || this.queued + m.payload.length > this.bufferBytes)) {
        const old = this.queue.shift();
        if (old) this.queued -= old.payload.length;
        this.dropped++;
      }
      this.queue.push(m);
      this.queued += m.payload.length;
    }
  }

  /** @internal A new server subscription (first, or after a reconnect): sequences restart. */
  confirmed(subscription: bigint | null): void {
    this.latestId = subscription;
    this.newest = 0n;
    this.known = true;
    if (subscription !== null) this.mode = 'latest';
  }

  /** @internal A value of a `latest` room: applied only if newer than every value applied
   *  before (a late datagram never overwrites a newer value). Returns whether it was applied. */
  offerLatest(sequence: bigint, payload: Uint8Array, byDatagram: boolean): boolean {
    if (sequence <= this.newest) {
      this.latestStats.droppedOlder++;
      return false;
    }
    this.newest = sequence;
    if (byDatagram) this.latestStats.byDatagram++;
    else this.latestStats.byStream++;
    // The async iterator keeps only the newest value: what waits is stale.
    if (!this.handler) {
      this.queue.length = 0;
      this.queued = 0;
    }
    this.deliver(new Message(this.room, null, payload));
    return true;
  }

  /** @internal */
  deliverPresence(change: PresenceChange): void {
    this.presenceHandler?.(change);
  }

  /** @internal */
  end(): void {
    this.ended = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return {
      next: () => {
        const m = this.queue.shift();
        if (m) {
          this.queued -= m.payload.length;
          return Promise.resolve({ value: m, done: false });
        }
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiter = resolve));
      },
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
    };
  }
}

