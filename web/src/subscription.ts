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

/** A room the app subscribed to. It lives across reconnects until `unsubscribe()`. */
export class Subscription implements AsyncIterable<Message> {
  /** Position of the last message seen, used to resume after a reconnect. */
  position: Position | null = null;
  /** How the latest resume went, if one was asked for. */
  recovery: Recovery | null = null;
  /** Messages dropped because the async iterator did not keep up. */
  dropped = 0;
  private queue: Message[] = [];
  private waiter: ((r: IteratorResult<Message>) => void) | null = null;
  private ended = false;

  /** @internal */
  constructor(
    readonly room: string,
    private readonly handler: ((m: Message) => void) | undefined,
    private readonly bufferSize: number,
    private readonly owner: { unsubscribe(room: string): Promise<void> },
    private readonly presenceHandler: ((change: PresenceChange) => void) | undefined,
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
      if (this.queue.length >= this.bufferSize) {
        this.queue.shift();
        this.dropped++;
      }
      this.queue.push(m);
    }
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
        if (m) return Promise.resolve({ value: m, done: false });
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

