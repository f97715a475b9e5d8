// The app's subscriptions, carried from one session to the next: each room's state, what a
// stream sent before its `Subscribed` (held, within a budget for the whole session), the
// positions a server's replay is judged against, re-subscribes with backoff, and the `latest`
// lane's datagrams. client.ts owns one `Subscriptions` and the session it runs them on.

import { decodeLatestDatagram, type Event, type LatestDatagram, type Position } from './codec.js';
import { ErrorCode, codeLabel } from './codes.js';
import { QuiverError, asQuiverError, clip, errorMessage } from './errors.js';
import { STABLE_MS, STREAM_END_GRACE_MS, type ClientEvents, type ResolvedOptions } from './options.js';
import type { Session } from './session.js';
import { Continuity, Message, Subscription, recoveryPossible, type SubscribeOptions } from './subscription.js';
import type { SubscriptionEvent } from './transport.js';

/** What the subscriptions ask of the client that owns them. */
export interface SubscriptionHost {
  readonly opts: Pick<ResolvedOptions, 'reconnect' | 'streamTimeoutMs'>;
  /** The live session, null between sessions. */
  session(): Session | null;
  nextId(): number;
  emit<K extends 'error' | 'recovery' | 'subscribed'>(event: K, ...args: ClientEvents[K]): void;
  /** Ends a WebTransport session that cannot carry the subscriptions, so that the reconnect goes
   *  to WebSocket; false when there is nowhere to move. */
  moveToWebSocket(session: Session, cause: QuiverError): boolean;
}

/** Client-side state of one subscription. */
interface SubState {
  sub: Subscription;
  /** Id of the Subscribe that owns the room's live stream; 0 when none is in flight or live. */
  currentId: number;
  /** Events of the current subscription that came before its `Subscribed` (the stream may
   *  overtake the reply): held until the reply says how to judge them, as PROTOCOL.md section 5
   *  asks; null once it came. */
  held: SubscriptionEvent[] | null;
  /** What `held` counts against the session's budget (`heldSize`). */
  heldBytes: number;
  /** An unsolicited `Unsubscribed` that came before the current `Subscribe`'s reply was handled
   *  (it may be in the same read as the `Subscribed`, whose handling runs after the read): held
   *  behind `held`, and applied once the reply was handled and what came before the end was
   *  delivered (PROTOCOL.md section 9.2: nothing of a subscription follows its `Unsubscribed`). */
  heldEnd: { code: number; reason: string } | null;
  /** What the current stream's publications are checked against, set by `Subscribed`. */
  continuity: Continuity | null;
  /** The position the current subscription resumed from. */
  resumedFrom: Position | null;
  /** Whether the current subscription's `SubscriptionStream` arrived. */
  streamOpened: boolean;
  confirmed: boolean;
  resolveReady: (s: Subscription) => void;
  rejectReady: (e: QuiverError) => void;
  retryTimer: ReturnType<typeof setTimeout> | null;
  /** Re-subscribes in a row after server ends or "not now" refusals (`retry`). */
  retries: number;
  /** When the server last confirmed the subscription (`Date.now()`), 0 once a retry took it. */
  confirmedAt: number;
}

// Server errors that say "not now" rather than "no": a re-subscribe after them is retried.
const TRANSIENT = new Set<number>([ErrorCode.internal, ErrorCode.rate_limited, ErrorCode.unavailable, ErrorCode.quota_exceeded]);
// Most events (and bytes, as `heldSize` counts them) held before their `Subscribed`, in all of a
// session's subscriptions together. The server queues its reply behind at most a few hundred
// frames of the replay; past these, the session is ended as broken (the reconnect resumes from
// the last position delivered, so nothing is lost).
const HELD_MAX_EVENTS = 10_000;
const HELD_MAX_BYTES = 16 * 1024 * 1024;
// What an event costs beyond its payload and strings, so that even empty ones count in bytes.
const HELD_EVENT_OVERHEAD = 64;

/** The size a held event counts for: its payload's bytes, its strings' lengths, and a fixed
 *  overhead (presence events carry no payload but a member's strings, up to the frame each). */
function heldSize(event: SubscriptionEvent): number {
  let size = HELD_EVENT_OVERHEAD + event.room.length;
  if (event.type === 'Publication' || event.type === 'Latest') size += event.payload.length;
  else size += event.member.user.length + event.member.session.length;
  return size;
}

export class Subscriptions {
  private readonly subs = new Map<string, SubState>();
  /** `latest` subscriptions by the server's subscription id (datagrams carry only that), with
   *  the session that gave the id: ids are per session, and an entry of an earlier session is
   *  stale (overwritten, never taken for this session's). */
  private readonly latestSubs = new Map<bigint, { state: SubState; session: Session }>();
  /** Events (and their `heldSize`) held before their `Subscribed`, in all subscriptions. */
  private heldEvents = 0;
  private heldTotal = 0;
  /** The live session's watch timers (`expectStream`, `streamEnded`), each removed when it
   *  fires and all cleared when the session ends. A `session.done` reaction per timer instead
   *  kept every one's closure for the whole session: memory that grew with room churn (outside
   *  audit 104, F7). */
  private readonly sessionTimers = new Set<ReturnType<typeof setTimeout>>();

  constructor(private readonly host: SubscriptionHost) {}

  /** Whether `room` is subscribed and the server said it delivers reliably (not `latest`). */
  knownReliable(room: string): boolean {
    const state = this.subs.get(room);
    return state !== undefined && state.sub.known && state.sub.mode === 'reliable';
  }

  has(room: string): boolean {
    return this.subs.has(room);
  }

  /**
   * Adds `room`'s subscription and sends its `Subscribe` if a session is live (otherwise the next
   * session does). Resolves with the first `Subscribed`, rejects with the refusal.
   */
  add(
    room: string,
    handler: ((message: Message) => void) | undefined,
    options: SubscribeOptions,
    owner: { unsubscribe(room: string): Promise<void> },
  ): Promise<Subscription> {
    return new Promise((resolve, reject) => {
      const sub = new Subscription(room, handler, options.bufferSize ?? 1000, owner, options.onPresence, options.bufferBytes);
      sub.position = options.resume ?? null;
      const state: SubState = {
        sub,
        currentId: 0,
        held: null,
        heldBytes: 0,
        heldEnd: null,
        continuity: null,
        resumedFrom: null,
        streamOpened: false,
        confirmed: false,
        resolveReady: resolve,
        rejectReady: reject,
        retryTimer: null,
        retries: 0,
        confirmedAt: 0,
      };
      this.subs.set(room, state);
      const session = this.host.session();
      if (session && !session.ended) void this.send(state, session);
    });
  }

  /** Ends `room`'s subscription on this side (an unconfirmed one rejects with `reason`); false
   *  when there was none. */
  remove(room: string, reason: QuiverError): boolean {
    const state = this.subs.get(room);
    if (!state) return false;
    this.drop(state, reason);
    return true;
  }

  /** A new session: subscribes every room again, resuming. Taken before the caller's
   *  listeners run (a subscribe made in a 'connected' listener is sent by `add` itself and must
   *  not be sent a second time: the server would refuse it); sent by the function returned. */
  resubscribe(session: Session): () => void {
    const states = [...this.subs.values()];
    return () => {
      for (const state of states) {
        if (this.subs.get(state.sub.room) === state) void this.send(state, session);
      }
    };
  }

  /** The session ended: nothing of its streams is current any more. */
  sessionEnded(): void {
    for (const timer of this.sessionTimers) clearTimeout(timer);
    this.sessionTimers.clear();
    for (const state of this.subs.values()) {
      state.currentId = 0;
      this.releaseHeld(state);
      if (state.retryTimer) clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
  }

  /** The client closed: every subscription ends, unconfirmed ones reject with `reason`. */
  endAll(reason: QuiverError): void {
    for (const state of [...this.subs.values()]) this.drop(state, reason);
  }

  onServerUnsubscribed(session: Session, room: string, code: number, reason: string): void {
    const state = this.subs.get(room);
    if (!state) return;
    if (state.held && state.currentId !== 0) {
      // The server ends a subscription only after its `Subscribed` (PROTOCOL.md section 9.2), so
      // an end that came before the current Subscribe's reply is an earlier subscription's of
      // this room (the app unsubscribed and subscribed again while the server was ending it).
      if (session.awaitsReply(state.currentId)) return;
      // The reply came but is not handled yet: what came before this end belongs to the
      // subscription. The end waits behind it (`send` applies it).
      state.heldEnd ??= { code, reason };
      return;
    }
    state.currentId = 0;
    this.releaseHeld(state);
    if (code === ErrorCode.session_closing) {
      // The session is closing: the reconnect re-subscribes, and its end clears this retry. A
      // server that sends it on a session that stays up (it is reserved, never sent) would
      // otherwise leave the room silent for good (outside audit 104, F8): subscribed again there
      // after the usual backoff.
      this.retry(state);
      return;
    }
    const err = new QuiverError('subscription', `server ended subscription to ${room}: ${codeLabel(code)}: ${clip(reason)}`, {
      code,
      room,
    });
    this.host.emit('error', err);
    if (
      code === ErrorCode.slow_consumer ||
      // A cluster's replay that could not be finished (PROTOCOL.md section 5): what arrived is
      // good, and resuming from it either finishes the replay or says recovery failed.
      code === ErrorCode.unrecoverable_position ||
      code === ErrorCode.unavailable
    ) {
      // The protocol allows subscribing again; resume covers the gap when the room keeps history.
      this.retry(state);
    } else if (code === ErrorCode.stream_limit && this.host.moveToWebSocket(session, err)) {
      // The browser cannot take another stream: WebSocket carries every room on one socket, and
      // the reconnect there re-subscribes this room too.
    } else {
      this.drop(state, err);
    }
  }

  /**
   * Sends the Subscribe again later, backing off like reconnects (`reconnect`'s delays; 1 s to
   * 15 s without reconnects): the delay doubles with every retry in a row, jittered between half
   * and all of it, so a server that ends every subscription at once is not asked ever faster.
   * A subscription that lasted `STABLE_MS` starts again from the first delay.
   */
  private retry(state: SubState): void {
    const backoff = this.host.opts.reconnect === false ? { initialDelayMs: 1000, maxDelayMs: 15_000 } : this.host.opts.reconnect;
    if (state.confirmedAt && Date.now() - state.confirmedAt >= STABLE_MS) state.retries = 0;
    state.confirmedAt = 0;
    const ceiling = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * 2 ** state.retries);
    state.retries = Math.min(state.retries + 1, 30);
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      const session = this.host.session();
      if (session && this.subs.get(state.sub.room) === state) void this.send(state, session);
    }, ceiling / 2 + Math.random() * (ceiling / 2));
  }

  private async send(state: SubState, session: Session): Promise<void> {
    const id = this.host.nextId();
    const resume = state.sub.position;
    this.releaseHeld(state);
    state.currentId = id;
    state.held = [];
    state.continuity = null;
    state.resumedFrom = resume;
    state.streamOpened = false;
    let reply: Event;
    try {
      reply = await session.request(
        id,
        { type: 'Subscribe', room: state.sub.room, resume },
        {
          // A Subscribe is never sent twice on one session. The server carries a session's
          // commands out in order and answers each one, so one only slow (a subscribe hook, a
          // replay waiting for NATS) still succeeds: sent again, the second was refused 104
          // already_subscribed, the room dropped here while the server kept delivering it, and
          // every later subscribe refused (outside audit 104, F1; the Rust client never resends
          // either). Its reply is waited for, and what its stream sends held for it, until the
          // session ends; the heartbeat ends a dead one.
          onTimeout: (late) => {
            if (this.subs.get(state.sub.room) !== state || state.currentId !== id) return;
            const room = state.sub.room;
            this.host.emit('error', new QuiverError('timeout', `${room}: ${late.message}; still waiting for it`, { room }));
          },
        },
      );
    } catch (e) {
      const err = asQuiverError(e);
      if (this.subs.get(state.sub.room) !== state) return;
      if (state.currentId === id) {
        // What its stream sent is dropped with it.
        state.currentId = 0;
        this.releaseHeld(state);
      }
      if (err.kind === 'closed' || session.ended) return; // the next session re-subscribes
      if (err.code !== null && TRANSIENT.has(err.code)) {
        this.host.emit('error', err);
        this.retry(state);
      } else if (state.confirmed) {
        // A refusal on re-subscribe (e.g. a refreshed token lost the permission) ends it.
        this.host.emit('error', err);
        this.drop(state, err);
      } else {
        this.drop(state, err);
      }
      return;
    }
    if (reply.type !== 'Subscribed') {
      session.end(new QuiverError('protocol', `expected Subscribed for ${state.sub.room}, got ${reply.type}`));
      return;
    }
    // Gone, or another Subscribe of the room was sent since (its stream, and what it holds, are
    // not this reply's).
    if (this.subs.get(state.sub.room) !== state || state.currentId !== id) return;
    const latestId = reply.subscription ?? null;
    if (latestId !== null) {
      const holder = this.latestSubs.get(latestId);
      if (holder && holder.session === session && holder.state !== state && holder.state.sub.latestId === latestId) {
        // A session never gives one id to two subscriptions (PROTOCOL.md section 10): taking it
        // would deliver one room's datagrams as the other's.
        session.end(new QuiverError('protocol', `latest subscription id ${latestId} given to ${holder.state.sub.room} and ${state.sub.room}`));
        return;
      }
    }
    this.forgetLatest(state);
    state.sub.confirmed(latestId);
    if (latestId !== null) this.latestSubs.set(latestId, { state, session });
    let recovery = reply.recovery;
    if (recovery.type === 'Recovered' && !recoveryPossible(resume, reply.position, recovery.replayed)) {
      this.reportBroken(state.sub.room, 'impossible Recovered');
      recovery = { type: 'Failed' };
    } else if (resume && recovery.type === 'NotRequested') {
      // A resume is answered Recovered or Failed (PROTOCOL.md section 5). Passed on as is, the
      // position jumped to the reply's and an app re-syncing on Failed missed everything in
      // between (outside audit 104, F2): it is a failed recovery, as the Rust client takes it.
      this.reportBroken(state.sub.room, 'NotRequested answering a resume');
      recovery = { type: 'Failed' };
    }
    state.sub.recovery = resume ? recovery : null;
    // Nothing of this stream was delivered yet (held until now): the reply sets the position.
    if (recovery.type !== 'Recovered' && reply.position) state.sub.position = reply.position;
    state.continuity = new Continuity(reply.position, recovery.type === 'Recovered' ? recovery.replayed : null);
    if (resume) this.host.emit('recovery', { room: state.sub.room, recovery, resumedFrom: resume });
    this.expectStream(state, id, session);
    state.confirmedAt = Date.now();
    if (!state.confirmed) {
      state.confirmed = true;
      state.resolveReady(state.sub);
    }
    this.host.emit('subscribed', state.sub);
    const held = state.held ?? [];
    const end = state.heldEnd;
    this.releaseHeld(state);
    for (const event of held) this.deliver(id, event);
    // An end that came behind them applies now, unless a handler unsubscribed meanwhile.
    if (end && this.subs.get(state.sub.room) === state && state.currentId === id) {
      this.onServerUnsubscribed(session, state.sub.room, end.code, end.reason);
    }
  }

  /** Drops what `state` holds before its `Subscribed` (an end too), giving it back to the
   *  session's budget. */
  private releaseHeld(state: SubState): void {
    if (state.held) this.heldEvents -= state.held.length;
    this.heldTotal -= state.heldBytes;
    state.held = null;
    state.heldBytes = 0;
    state.heldEnd = null;
  }

  /** A server that broke the protocol's rules for a subscription's positions (a publication
   *  dropped, or a recovery the stream contradicts), reported where the app can see it. */
  private reportBroken(room: string, what: string): void {
    this.host.emit('error', new QuiverError('protocol', `${room}: ${what}`, { room }));
  }

  /**
   * A subscription's stream (its `SubscriptionStream`, PROTOCOL.md sections 2 and 9.2) still
   * missing `streamTimeoutMs` after `Subscribed` is reported, and the session replaced, so that
   * the room is subscribed again: the server ends a subscription whose stream it cannot open
   * (`Unsubscribed` 114 stream_limit, after 5 s), and one that sends neither left the room
   * silent for the session's life (outside audit 115, F11, found in the Rust client). Over
   * WebTransport the usual cause is the browser's limit of server-opened streams (about 100 per
   * session): with WebSocket among the transports the client moves there.
   */
  private expectStream(state: SubState, id: number, session: Session): void {
    const timeout = this.host.opts.streamTimeoutMs;
    if (state.streamOpened || timeout <= 0) return;
    this.sessionTimer(session, () => {
      if (session.ended || state.currentId !== id || state.streamOpened || this.subs.get(state.sub.room) !== state) return;
      const room = state.sub.room;
      const limit = session.kind === 'webtransport' ? ': the browser may be at its limit of server-opened streams (about 100 per WebTransport session)' : '';
      const err = new QuiverError('subscription', `no stream for ${room} within ${timeout} ms of Subscribed${limit}`, { room });
      this.host.emit('error', err);
      if (this.host.moveToWebSocket(session, err)) return;
      // As for a stream ended without its `Unsubscribed` (`streamEnded`): the next session
      // subscribes again, resuming.
      session.end(new QuiverError('protocol', `the server confirmed ${room} and never sent its stream`, { room }));
    }, timeout);
  }

  /** Runs `fire` after `ms` unless `session` ends first (`sessionTimers`). */
  private sessionTimer(session: Session, fire: () => void, ms: number): void {
    if (session.ended) return;
    const timer = setTimeout(() => {
      this.sessionTimers.delete(timer);
      fire();
    }, ms);
    this.sessionTimers.add(timer);
  }

  /** @internal Watch timers of the live session still to fire (tests). */
  get pendingTimers(): number {
    return this.sessionTimers.size;
  }

  private drop(state: SubState, reason: QuiverError): void {
    if (this.subs.get(state.sub.room) === state) this.subs.delete(state.sub.room);
    this.forgetLatest(state);
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.currentId = 0;
    this.releaseHeld(state);
    state.sub.end();
    if (!state.confirmed) state.rejectReady(reason);
  }

  /**
   * The server ends a subscription's stream with an `Unsubscribed` on the control stream, which
   * may come a little before or after the stream's end. A stream ended (finished or reset) with
   * no `Unsubscribed` within `STREAM_END_GRACE_MS` left the subscription silently dead (outside
   * client audit 14, on the Rust client): the session ends as for any broken rule, and the next
   * one subscribes again, resuming.
   */
  streamEnded(session: Session, room: string, id: number): void {
    this.sessionTimer(session, () => {
      const state = this.subs.get(room);
      if (session.ended || state === undefined || state.currentId !== id) return;
      session.end(new QuiverError('protocol', `the server ended the stream of ${room} without an Unsubscribed`, { room }));
    }, STREAM_END_GRACE_MS);
  }

  /** The header of subscription `id` arrived: whether it is `room`'s current one, and its first
   *  stream. A second stream with the same header (a broken or hostile server) is discarded as a
   *  stale one is, as the Rust client does: taken, it delivered everything twice (outside audit
   *  121, F5). */
  streamOpened(room: string, id: number): boolean {
    const state = this.subs.get(room);
    if (state === undefined || state.currentId !== id || state.streamOpened) return false;
    state.streamOpened = true;
    return true;
  }

  /** Delivers an event of the subscription `id`; false when it is not the current one. */
  deliver(id: number, event: SubscriptionEvent): boolean {
    const state = this.subs.get(event.room);
    // Nothing of a subscription follows its end, even one held until the reply is handled.
    if (!state || state.currentId !== id || state.heldEnd) return false;
    if (state.held) {
      const size = heldSize(event);
      state.held.push(event);
      state.heldBytes += size;
      this.heldEvents += 1;
      this.heldTotal += size;
      if (this.heldEvents > HELD_MAX_EVENTS || this.heldTotal > HELD_MAX_BYTES) {
        const events = this.heldEvents;
        const bytes = this.heldTotal;
        // Nothing more of this stream is taken, judged or not; the session's end drops the rest.
        state.currentId = 0;
        this.releaseHeld(state);
        this.host.session()?.end(
          new QuiverError('protocol', `${event.room}: too much before Subscribed (${events} events, ${bytes} bytes held in all rooms)`),
        );
      }
      return true;
    }
    try {
      if (event.type === 'Publication') {
        const verdict = state.continuity?.judge(state.sub.position, event.position);
        if (verdict?.broken && state.resumedFrom) {
          // The server said nothing was missed, and its own stream says otherwise: the app must
          // re-sync, exactly as after a refused resume.
          this.reportBroken(event.room, 'replay contradicts Recovered');
          const recovery = (state.sub.recovery = { type: 'Failed' });
          this.host.emit('recovery', { room: event.room, recovery, resumedFrom: state.resumedFrom });
        }
        if (verdict?.deliver === false) {
          // A server never sends it (positions only move forward within a subscription): this one
          // is broken or hostile. Delivering it would hand the app a repeat or a reordering, and
          // make it the resume point, moving that backwards.
          this.reportBroken(event.room, 'publication not after the last one dropped');
          return true;
        }
        state.sub.deliver(new Message(event.room, event.position, event.payload));
      } else if (event.type === 'Latest') {
        state.sub.offerLatest(event.sequence, event.payload, false);
      } else {
        state.sub.deliverPresence({ type: event.type, room: event.room, member: event.member });
      }
    } catch (e) {
      const what = event.type === 'Publication' || event.type === 'Latest' ? 'message' : 'presence';
      this.host.emit('error', new QuiverError('handler', `${what} handler for ${event.room} threw: ${errorMessage(e)}`, { room: event.room, cause: e }));
    }
    return true;
  }

  /** Takes `state`'s id out of the datagram map, if the entry there is still its own (an
   *  earlier session's id may since belong to another room). */
  private forgetLatest(state: SubState): void {
    const id = state.sub.latestId;
    if (id !== null && this.latestSubs.get(id)?.state === state) this.latestSubs.delete(id);
  }

  /** A datagram of `session`: the newest value of a `latest` subscription, found by its id.
   *  Malformed datagrams and ones for no current subscription of that session are dropped. */
  datagram(session: Session, bytes: Uint8Array): void {
    let d: LatestDatagram;
    try {
      d = decodeLatestDatagram(bytes);
    } catch {
      return;
    }
    const entry = this.latestSubs.get(d.subscription);
    if (!entry || entry.session !== session) return;
    const state = entry.state;
    if (state.sub.latestId !== d.subscription) return;
    try {
      state.sub.offerLatest(d.sequence, d.payload, true);
    } catch (e) {
      this.host.emit('error', new QuiverError('handler', `message handler for ${state.sub.room} threw: ${errorMessage(e)}`, { room: state.sub.room, cause: e }));
    }
  }
}
