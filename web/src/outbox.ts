// Publishes on their way to the server: kept while the client is disconnected (within
// `maxQueuedPublishes`), handed to the next session, and withdrawn if they wait too long. The
// client (client.ts) decides when to hold and when to send; this file keeps each publish's
// promise settled exactly once.

import { type Command, type Position } from './codec.js';
import { QuiverError, asQuiverError } from './errors.js';
import { type Session } from './session.js';

export interface QueuedPublish {
  room: string;
  payload: Uint8Array;
  ack: boolean;
  resolve: (p: Position | null) => void;
  reject: (e: QuiverError) => void;
  /** When `publish` was called (`performance.now()`): an acknowledged publish not written
   *  `requestTimeoutMs` later, in the outbox or waiting for the pacer, is withdrawn. */
  madeAt: number;
  /** That deadline while it waits in the outbox (see `hold`). */
  timer?: ReturnType<typeof setTimeout>;
  /** An `unreliable` publish (no ack, to a room not known to be reliable): only its room's
   *  newest value matters, so a newer one held for the room replaces it (see `hold`). */
  latest?: boolean;
}

export interface OutboxHost {
  readonly maxQueuedPublishes: number;
  readonly requestTimeoutMs: number;
  nextId(): number;
  /** True once the client is closing: a publish never written is then rejected, not held. */
  closing(): boolean;
}

export class Outbox {
  private readonly items: QueuedPublish[] = [];

  constructor(private readonly host: OutboxHost) {}

  /**
   * Keeps a publish for the next session, within `maxQueuedPublishes`. An acknowledged one that
   * is still here `requestTimeoutMs` after it was made is withdrawn and rejects with kind
   * `timeout`: it was never sent, so publishing it again publishes it once (before, it stayed
   * pending for the whole outage and was sent later, so an app that timed it out and retried
   * published twice). The same deadline holds while it waits for the pacer (`send`).
   *
   * An `unreliable` publish replaces the one of its room still held, which resolves as a value
   * lost on the way would (null): at most one per room is kept, the newest, in its own turn
   * (behind what was published before it). Every stale value used to be kept and sent later as
   * an ordinary publish, and they filled the outbox so that a publish that mattered was refused
   * `buffer_full` (outside audit 121, F3).
   */
  hold(item: QueuedPublish): void {
    if (item.latest) {
      const at = this.items.findIndex((q) => q.latest && q.room === item.room);
      if (at >= 0) this.items.splice(at, 1)[0]!.resolve(null);
    }
    if (this.items.length >= this.host.maxQueuedPublishes) {
      item.reject(new QuiverError('buffer_full', `${this.items.length} publishes already queued while disconnected`, { room: item.room }));
      return;
    }
    this.items.push(item);
    if (item.ack) {
      const ms = this.host.requestTimeoutMs;
      item.timer = setTimeout(
        () => {
          const at = this.items.indexOf(item);
          if (at < 0) return;
          this.items.splice(at, 1);
          item.reject(new QuiverError('timeout', `not sent within ${ms} ms while disconnected: withdrawn, never sent (publishing it again is safe)`, { room: item.room }));
        },
        Math.max(0, item.madeAt + ms - performance.now()),
      );
    }
  }

  /** Takes every held publish, in order, for a new session (their deadlines stop here: the
   *  session's `writeBy` carries them on). */
  takeAll(): QueuedPublish[] {
    const items = this.items.splice(0);
    for (const item of items) clearTimeout(item.timer);
    return items;
  }

  /** Writes a publish on `session`; one never written (the session ended while it waited for
   *  the pacer) is held again for the next session, as it was not sent. With `noWait`, one that
   *  would wait for the pacer or the transport is refused instead (`buffer_full`). */
  send(item: QueuedPublish, session: Session, noWait = false): void {
    const command: Command = { type: 'Publish', room: item.room, payload: item.payload, ack: item.ack };
    const failed = (e: unknown): void => {
      const err = asQuiverError(e);
      if (err.unsent && !this.host.closing()) this.hold(item);
      else item.reject(err);
    };
    if (!item.ack) {
      session.send({ id: this.host.nextId(), command }, { noWait }).then(() => item.resolve(null), failed);
      return;
    }
    const writeBy = item.madeAt + this.host.requestTimeoutMs;
    session.request(this.host.nextId(), command, { writeBy, noWait }).then((reply) => {
      if (reply.type === 'Published') item.resolve(reply.position);
      else item.reject(new QuiverError('protocol', `expected Published, got ${reply.type}`, { room: item.room }));
    }, failed);
  }

  /** Rejects every held publish with `err` (the client closed). */
  rejectAll(err: QuiverError): void {
    for (const item of this.takeAll()) item.reject(err);
  }
}
