// The Quiver browser client: one session at a time over WebTransport or WebSocket, reconnected by
// itself, with the app's subscriptions and queued publishes carried over from one session to the
// next. Which server and transport to try next is in dialer.ts, the transports in transport.ts,
// one session's commands in session.ts, publishes held between sessions in outbox.ts, the
// subscriptions' bookkeeping across sessions in subscriptions.ts.

import {
  MIN_MAX_FRAME,
  PROTOCOL_VERSION,
  encodePublishDatagram,
  type Command,
  type Event,
  type Member,
  type Position,
} from './codec.js';
import { CloseCode, ErrorCode, codeLabel } from './codes.js';
import { QuiverError, abortable, asQuiverError, clip, errorMessage, timerDelay, withTimeout } from './errors.js';
import { Refresher, Session, type GoodbyeInfo } from './session.js';
import {
  STABLE_MS,
  resolveOptions,
  type CallOptions,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type HistoryOptions,
  type HistoryPage,
  type PresenceStats,
  type PublishOptions,
  type ResolvedOptions,
  type SessionInfo,
} from './options.js';
import { Dialer } from './dialer.js';
import { Outbox, type QueuedPublish } from './outbox.js';
import { Message, type Subscription, type SubscribeOptions } from './subscription.js';
import { Subscriptions } from './subscriptions.js';
import { type Link, type SubscriptionEvent, type TransportKind } from './transport.js';

export { QuiverError, type ErrorKind } from './errors.js';
export {
  Message,
  Subscription,
  type DeliveryMode,
  type LatestStats,
  type PresenceChange,
  type SubscribeOptions,
} from './subscription.js';
export type { GoodbyeInfo } from './session.js';
export {
  forgetWebTransportFailures,
  type RememberFailure,
  type TransportKind,
  type WebSocketConstructor,
  type WebTransportConstructor,
} from './transport.js';

export const CLIENT_NAME = 'quiver-ts/0.2';

export type {
  CallOptions,
  ClientEvents,
  ClientOptions,
  ConnectionState,
  HeartbeatOptions,
  HistoryOptions,
  HistoryPage,
  PresenceStats,
  PublishOptions,
  ReconnectOptions,
  RecoveryInfo,
  SessionInfo,
} from './options.js';

const textEncoder = new TextEncoder();

type Listeners = { [K in keyof ClientEvents]: Set<(...args: ClientEvents[K]) => void> };

/**
 * Starts connecting at once and keeps a session up until `close()`. Listen to `state` and `error`
 * to show the connection to the user; subscriptions and publishes may be made in any state.
 */
export class QuiverClient {
  private readonly opts: ResolvedOptions;
  private readonly dialer: Dialer;
  private readonly listeners: Listeners = {
    state: new Set(),
    error: new Set(),
    welcome: new Set(),
    goodbye: new Set(),
    recovery: new Set(),
    subscribed: new Set(),
    rtt: new Set(),
    transport: new Set(),
  };
  private readonly subs: Subscriptions;
  private readonly outbox: Outbox;
  private active: Session | null = null;
  /** The session of a connection attempt, until its Welcome: `close()` ends it too. */
  private connecting: Session | null = null;
  /** Aborted by `close()`: ends a connection attempt still waiting for its token or its
   *  handshake (the WebTransport session's `ready`, the WebSocket upgrade), which otherwise held
   *  `close()` for up to `connectTimeoutMs` (outside audit 121, F2). */
  private readonly stop = new AbortController();
  private lastId = 0;
  private closing = false;
  private unsentDatagrams = 0;
  private wake: (() => void) | null = null;
  private readonly finished: Promise<void>;
  /** The Goodbye of the latest connection attempt, if the server sent one. */
  private lastGoodbye: GoodbyeInfo | null = null;
  /** The token the latest attempt used, and the last one the server refused as expired (3002):
   *  the same one twice means the token callback has no fresher one. */
  private lastToken: string | null = null;
  private expiredToken: string | null = null;
  /** Why the client closed by itself (e.g. an `auth` error), for `ready()` after the fact. */
  private closedBy: QuiverError | null = null;

  private currentState: ConnectionState = 'connecting';
  private currentTransport: TransportKind | null = null;
  private welcome: SessionInfo | null = null;
  private lastRtt: number | null = null;

  constructor(options: ClientOptions) {
    const resolved = resolveOptions(options, CLIENT_NAME);
    this.opts = resolved.opts;
    this.dialer = new Dialer(resolved);
    this.outbox = new Outbox({
      maxQueuedPublishes: this.opts.maxQueuedPublishes,
      requestTimeoutMs: this.opts.requestTimeoutMs,
      nextId: () => this.nextId(),
      closing: () => this.closing,
    });
    this.subs = new Subscriptions({
      opts: this.opts,
      session: () => this.active,
      nextId: () => this.nextId(),
      emit: (event, ...args) => this.emit(event, ...args),
      moveToWebSocket: (session, cause) => this.moveToWebSocket(session, cause),
    });
    this.finished = this.run();
  }

  /** `closed` from the moment `close()` is called, awaited or not (the `state` event follows
   *  once the session is shut). */
  get state(): ConnectionState {
    return this.closing ? 'closed' : this.currentState;
  }

  /** Transport of the current (or, while reconnecting, the latest) session; null before the
   *  first. */
  get transport(): TransportKind | null {
    return this.currentTransport;
  }

  /** Latest `Welcome`, null before the first. */
  get info(): SessionInfo | null {
    return this.welcome;
  }

  /** Latest round-trip time in milliseconds. */
  get rtt(): number | null {
    return this.lastRtt;
  }

  /** `unreliable` publications this client dropped, over its life: each found no pacer token free
   *  while the newest values of 64 other rooms already waited for one. */
  get datagramsDropped(): number {
    return this.unsentDatagrams;
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => void): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  /** Resolves when connected (at once if already), rejects if the client closes first. */
  ready(): Promise<void> {
    if (this.state === 'connected') return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(this.closedBy ?? new QuiverError('closed', 'client is closed'));
    return new Promise((resolve, reject) => {
      const off = this.on('state', (state, cause) => {
        if (state === 'connected') {
          off();
          resolve();
        } else if (state === 'closed') {
          off();
          reject(cause ?? new QuiverError('closed', 'client is closed'));
        }
      });
    });
  }

  /**
   * Subscribes to a room. Messages go to `handler`, or, without one, to the returned
   * subscription's async iterator. Resolves once the server confirmed (after a reconnect if the
   * client is disconnected); rejects with the server's error (e.g. code 103 permission_denied).
   */
  subscribe(room: string, handler?: (message: Message) => void, options: SubscribeOptions = {}): Promise<Subscription> {
    if (this.closing) return Promise.reject(new QuiverError('closed', 'client is closed', { room }));
    if (this.subs.has(room)) {
      return Promise.reject(
        new QuiverError('command', `already subscribed to ${room}`, { code: ErrorCode.already_subscribed, room }),
      );
    }
    return this.subs.add(room, handler, options, this);
  }

  /** Stops a subscription; its handler gets no further messages. Unknown rooms are ignored. */
  async unsubscribe(room: string): Promise<void> {
    if (!this.subs.remove(room, new QuiverError('closed', `unsubscribed from ${room} before the server confirmed`, { room }))) return;
    const session = this.active;
    if (!session) return;
    try {
      await session.request(this.nextId(), { type: 'Unsubscribe', room });
    } catch (e) {
      // Not subscribed on the server (refused earlier) or the session ended: either way we are out.
      if (e instanceof QuiverError && (e.code === ErrorCode.not_subscribed || e.kind === 'closed')) return;
      throw e;
    }
  }

  /**
   * Publishes to a room. While disconnected the publish is queued (up to `maxQueuedPublishes`;
   * an `unreliable` one replaces its room's queued `unreliable` one) and sent after
   * reconnecting. With `ack`, resolves with the message's position (null for rooms without
   * history) once the server accepted it; without, resolves null once written.
   * Delivery is at most once: an ack that a lost connection swallowed rejects, it is not resent
   * (the message may or may not have been published). A draining server's goodbye (3000) is
   * not such a loss: the server answered every publish it carried out before it, so one still
   * unanswered was not published, and is queued again, in order, for the next session.
   */
  publish(room: string, payload: Uint8Array | string, options: PublishOptions = {}): Promise<Position | null> {
    if (this.closing) return Promise.reject(new QuiverError('closed', 'client is closed', { room }));
    const bytes = typeof payload === 'string' ? textEncoder.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) {
      return Promise.reject(new TypeError('payload must be a Uint8Array or a string'));
    }
    // Unreliable: one datagram, or an ordinary publish if this session cannot send it, or
    // if the room is one this client knows to be reliable (the server drops a datagram for it,
    // `not_latest`: the same call was published over WebSocket and lost over WebTransport;
    // outside audit 61, M3). The datagram is paced with the commands: sent now, or held as the
    // room's newest value until the pacer has a token (outside audit 108, F1: sent at once,
    // they were refused `rate_limited` and the session closed as `rate_abuse`). While
    // disconnected, held as the room's newest value too (`Outbox.hold`).
    const latest = !!options.unreliable && !options.ack && !this.subs.knownReliable(room);
    if (latest && this.active && !this.active.ended) {
      const sent = this.active.publishDatagram(room, encodePublishDatagram(room, bytes));
      if (sent === 'dropped') this.unsentDatagrams++;
      if (sent !== null) return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      const item: QueuedPublish = { room, payload: bytes, ack: options.ack ?? false, resolve, reject, madeAt: performance.now(), latest };
      const session = this.active && !this.active.ended ? this.active : null;
      // Connected, the commands waiting for the pacer are bounded as the outbox is: an app
      // publishing faster than the server's rate would otherwise queue without end. With no
      // room left to wait (always so for `maxQueuedPublishes: 0`), a publish is still sent if
      // it can be at once, and refused only if it would wait: 0 refused every publish, even on
      // an idle connection (outside audit 121, F4).
      const full = session !== null && session.waiting >= this.opts.maxQueuedPublishes;
      if (session && full && session.waiting > 0) {
        reject(new QuiverError('buffer_full', `${session.waiting} commands already waiting to be written (the server's rate limit, or a transport still full)`, { room }));
      } else if (session) this.outbox.send(item, session, full);
      else this.outbox.hold(item);
    });
  }

  /** Measures the round-trip time to the server, in milliseconds. The `Ping` goes at once, ahead
   *  of what waits for the pacer: `flush()` waits for what was published before it. */
  async ping(): Promise<number> {
    const session = this.active;
    if (this.closing) throw new QuiverError('closed', 'client is closed');
    if (!session) throw new QuiverError('closed', 'not connected');
    const start = performance.now();
    await session.request(this.nextId(), { type: 'Ping' }, { urgent: true });
    const rtt = performance.now() - start;
    this.onRtt(rtt);
    return rtt;
  }

  /**
   * Resolves once what was published before it has gone to the server, as NATS's `flush`: every
   * `unreliable` publish still waiting for the pacer then (its room's newest; a newer value of
   * such a room takes its turn, one published while it waits for another room does not hold it
   * back) is sent as tokens free up, then a `Ping` goes, behind the publishes waiting to be
   * written, and its `Pong` comes back: the server has read the `publish()`es made before it by
   * then (one waiting on the broker may be answered after the `Pong`, PROTOCOL.md section 5
   * "Ping": an `ack` publish says when it is done). The datagrams left the client ahead of the
   * `Ping`, but the server keeps no order between them and its commands (PROTOCOL.md section
   * 10): it may still be reading them when the `Pong` comes.
   *
   * Within `requestTimeoutMs`, else it rejects, kind `timeout` (the `Ping`, if still waiting for
   * the pacer, is withdrawn). Rejects, kind `closed`, when disconnected, once `close()` was
   * called, and if the session ends meanwhile (the values still waiting are dropped with it).
   */
  async flush(): Promise<void> {
    const session = this.active;
    if (this.closing) throw new QuiverError('closed', 'client is closed');
    if (!session || session.ended) throw new QuiverError('closed', 'not connected');
    const timeoutMs = this.opts.requestTimeoutMs;
    const deadline = performance.now() + timeoutMs;
    const withdraw = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        withdraw.abort();
        reject(new QuiverError('timeout', `flush not done within ${timeoutMs} ms (the unreliable publishes waiting for the pacer sent, then a Ping answered)`));
      }, timerDelay(timeoutMs));
    });
    try {
      await Promise.race([session.datagramsSent(), expired]);
      const ping = session.request(this.nextId(), { type: 'Ping' }, { timeoutMs: Math.max(1, deadline - performance.now()), signal: withdraw.signal });
      await Promise.race([ping, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Who is in a room now: every session subscribed to it, on every server instance. Needs
   * subscribe permission, not a subscription. Rejects when disconnected, and with code 101
   * bad_request when the room's namespace has no presence. To keep the list current, call it on
   * `subscribed` and apply the subscription's `onPresence` changes.
   */
  async presence(room: string): Promise<Member[]> {
    const session = this.active;
    if (!session) throw new QuiverError('closed', 'not connected', { room });
    const reply = await session.request(this.nextId(), { type: 'Presence', room });
    if (reply.type !== 'Presence') throw new QuiverError('protocol', `expected Presence, got ${reply.type}`, { room });
    return reply.members;
  }

  /**
   * How many sessions, and distinct users, are subscribed to a room on every server instance:
   * the whole count, where `presence()` lists only the members that fit in one frame. The same
   * permission and namespace rules as `presence()`; rejects when disconnected.
   */
  async presenceStats(room: string): Promise<PresenceStats> {
    const session = this.active;
    if (!session) throw new QuiverError('closed', 'not connected', { room });
    const reply = await session.request(this.nextId(), { type: 'PresenceStats', room });
    if (reply.type !== 'PresenceStats') {
      throw new QuiverError('protocol', `expected PresenceStats, got ${reply.type}`, { room });
    }
    return { sessions: reply.sessions, users: reply.users };
  }

  /**
   * A page of a history room without subscribing (needs subscribe permission): the publications
   * after `since` (from the oldest kept when omitted), oldest first, at most `limit` (default
   * 100; the server caps it at 1,000 and at one frame). When `truncated`, call again with
   * `since` = the last publication's position. Rejects when disconnected, with code 117
   * unrecoverable_position when `since` is no longer in history (page from the start and
   * re-sync), and with 101 bad_request when the room's namespace keeps no history.
   */
  async history(room: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    const session = this.active;
    if (!session) throw new QuiverError('closed', 'not connected', { room });
    const limit = options.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 0 || limit > 0xffff_ffff) {
      throw new RangeError(`limit must be an integer from 0 to 2^32-1, got ${limit}`);
    }
    const reply = await session.request(this.nextId(), {
      type: 'History',
      room,
      since: options.since ?? null,
      limit,
    });
    if (reply.type !== 'History') throw new QuiverError('protocol', `expected History, got ${reply.type}`, { room });
    return {
      position: reply.position,
      publications: reply.publications.map((p) => new Message(room, p.position, p.payload)),
      truncated: reply.truncated,
    };
  }

  /**
   * Calls `method` on the application's backend and resolves with its answer (PROTOCOL.md §11).
   * The token's `call` claim must allow the method. Rejects with a `command` error carrying the
   * code: 103 permission_denied, 111 unavailable (no backend serving), 118 deadline_exceeded,
   * 119 backend_error, ...
   *
   * Never queued: while disconnected it rejects at once (kind `closed`), so a command never runs
   * twice or late because of a reconnect. A call whose connection drops mid-way rejects too, and
   * the backend may or may not have run it: retry only with the same `idempotencyKey`; unless
   * the error says `notCarriedOut` (a draining server's goodbye came first: it did not run, and
   * sending it again is safe). Aborting `signal` rejects with the signal's reason; a call still
   * waiting to be written is withdrawn (never sent), one written may still run. One not written
   * `requestTimeoutMs` after it was made is withdrawn too, kind `timeout` (as a publish with ack).
   */
  async call(method: string, payload: Uint8Array | string, options: CallOptions = {}): Promise<Uint8Array> {
    const { signal } = options;
    signal?.throwIfAborted();
    const bytes = typeof payload === 'string' ? textEncoder.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) throw new TypeError('payload must be a Uint8Array or a string');
    const session = this.active;
    if (this.closing || !session || session.ended) {
      throw new QuiverError('closed', 'not connected: calls are not queued while disconnected');
    }
    // Bounded as publishes are (`maxQueuedPublishes`): calls wait too while the transport is full.
    const full = session.waiting >= this.opts.maxQueuedPublishes;
    if (full && session.waiting > 0) {
      throw new QuiverError('buffer_full', `${session.waiting} commands already waiting to be written`);
    }
    const timeoutMs = Math.max(0, Math.min(Math.round(options.timeoutMs ?? 0), 0xffff_ffff));
    const command: Command = {
      type: 'Call',
      method,
      payload: bytes,
      timeoutMs,
      idempotencyKey: options.idempotencyKey ?? '',
    };
    // The server answers deadline_exceeded at the deadline: wait a little longer than that (at
    // most setTimeout's 2^31-1 ms: `Session.request` clamps it, where a longer wait fired at once).
    const wait = Math.max(this.opts.requestTimeoutMs, timeoutMs + 2_000);
    const request = session.request(this.nextId(), command, { timeoutMs: wait, writeBy: performance.now() + this.opts.requestTimeoutMs, noWait: full, ...(signal && { signal }) });
    const reply = await (signal ? abortable(request, signal) : request);
    if (reply.type !== 'Reply') throw new QuiverError('protocol', `expected Reply, got ${reply.type}`);
    return reply.payload;
  }

  /**
   * Closes the client for good. `state` reads `closed` at once, subscriptions end at once, and
   * nothing new is taken. Publishes already accepted are carried out first: on a live session,
   * those still waiting for the pacer are written, each room's newest `unreliable` value still
   * waiting for the pacer is sent, acknowledged ones are answered, then the
   * session is left so that the server reads everything written before it (PROTOCOL.md section
   * 3), all within `requestTimeoutMs`. A publish still unwritten then rejects (kind `closed`,
   * `notCarriedOut`), as do publishes held while disconnected (there is no session to carry
   * them) and every other command still waiting. The promise resolves when the session is shut.
   */
  async close(): Promise<void> {
    if (!this.closing) {
      this.closing = true;
      this.subs.endAll(new QuiverError('closed', 'client closed'));
      const session = this.active;
      if (session && !session.ended) void session.leave(this.opts.requestTimeoutMs);
      // An attempt stuck before its Welcome (a control stream that never opens, a Welcome that
      // never comes) would otherwise hold `close()` for up to `connectTimeoutMs`.
      this.connecting?.end(new QuiverError('closed', 'client closed'), true);
      this.stop.abort(new QuiverError('closed', 'client closed'));
      this.wake?.();
    }
    await this.finished;
  }

  private emit<K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]): void {
    for (const listener of this.listeners[event]) {
      try {
        listener(...args);
      } catch (e) {
        // A broken listener must not break the connection; report it where it can be seen.
        console.error(`quiver: '${event}' listener threw`, e);
      }
    }
  }

  private setState(state: ConnectionState, cause: QuiverError | null = null): void {
    if (this.currentState === state) return;
    this.currentState = state;
    this.emit('state', state, cause);
  }

  private nextId(): number {
    // Ids must be unique among commands in flight; 0 is reserved for unsolicited events.
    this.lastId = this.lastId >= 0xffff_ffff ? 1 : this.lastId + 1;
    return this.lastId;
  }

  /** Connects, waits for the session to end, backs off, and again, until closed. */
  private async run(): Promise<void> {
    let attempt = 0;
    let cause: QuiverError | null = null;
    while (!this.closing) {
      this.setState('connecting', cause);
      this.lastGoodbye = null;
      try {
        const session = await this.open();
        if (this.closing) {
          session.end(new QuiverError('closed', 'client closed'), true);
          break;
        }
        cause = await this.serve(session);
        if (session.connectedFor() >= STABLE_MS) attempt = 0;
      } catch (e) {
        cause = asQuiverError(e);
      }
      if (this.closing) break;
      this.emit('error', cause);
      // Set by the session's Goodbye callback, which TypeScript's narrowing cannot see.
      const goodbye = this.lastGoodbye as GoodbyeInfo | null;
      const backoff = this.opts.reconnect;
      // Given the very token refused as expired again, the callback will never give a fresh
      // one: reconnecting with it for ever helps no one (as the Rust client, outside audit 64).
      let stale = false;
      if (goodbye?.code === CloseCode.token_expired) {
        stale = this.lastToken !== null && this.lastToken === this.expiredToken;
        this.expiredToken = this.lastToken;
      }
      // A Welcome of another version (`hello`) will not change by reconnecting.
      const otherVersion = cause.kind === 'protocol' && cause.code === CloseCode.unsupported_version;
      if (backoff === false || (goodbye && !goodbye.reconnect) || stale || otherVersion) {
        this.closing = true;
        break;
      }
      this.setState('disconnected', cause);
      const ceiling = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * 2 ** attempt);
      attempt = Math.min(attempt + 1, 30);
      await this.sleep(Math.random() * ceiling);
      this.dialer.advance();
    }
    this.shutdown(cause);
  }

  /** One connection attempt: a token, then each transport in turn until one gets a Welcome. */
  private async open(): Promise<Session> {
    const timeout = this.opts.connectTimeoutMs;
    let token: string;
    try {
      // A callback still running at `close()` is abandoned: what it returns later is ignored.
      token = await withTimeout(Promise.resolve().then(() => this.opts.token()), timeout, 'token callback', this.stop.signal);
    } catch (e) {
      if (this.closing) throw new QuiverError('closed', 'client closed while the token callback ran', { cause: e });
      throw new QuiverError('token', `could not get a token: ${errorMessage(e)}`, { cause: e });
    }
    // Closed as the token came: no connection is opened with it.
    if (this.closing) throw new QuiverError('closed', 'client closed');
    if (typeof token !== 'string' || token === '') {
      throw new QuiverError('token', 'the token callback returned no token');
    }
    this.lastToken = token;
    const target = this.dialer.target();
    const candidates = this.dialer.candidates(target);
    let skipped: QuiverError | null = null;
    for (const [i, kind] of candidates.entries()) {
      const last = i === candidates.length - 1;
      let link: Link;
      try {
        link = await this.dialer.open(kind, target, token, last ? timeout : Math.min(timeout, this.opts.webTransportTimeoutMs), this.stop.signal);
      } catch (e) {
        const err = asQuiverError(e);
        if (this.closing) throw err;
        // A failed WebTransport handshake may be a refused token as well as blocked UDP: the
        // next transport finds out, since a WebSocket shows the server's answer.
        if (!last) {
          skipped = err;
          continue;
        }
        throw skipped ? new QuiverError(err.kind, `${err.message}; before that, ${skipped.message}`, { cause: err }) : err;
      }
      if (this.closing) {
        link.close('client closed');
        throw new QuiverError('closed', 'client closed');
      }
      let session: Session;
      try {
        session = await this.hello(link);
      } catch (e) {
        // A transport that connects but cannot carry a session to its Welcome (reported
        // WebTransport interop failures) is skipped like a failed handshake. A Goodbye is the
        // server's answer: it ends the attempt.
        if (last || this.closing || this.lastGoodbye) throw e;
        skipped = asQuiverError(e);
        continue;
      }
      if (skipped) this.dialer.workedAfterWebTransportFailed(target, kind);
      if (kind !== this.currentTransport) {
        this.currentTransport = kind;
        this.emit('transport', kind, skipped);
      }
      return session;
    }
    throw new QuiverError('handshake', 'no transport to try');
  }

  /** Hello, Welcome. A Goodbye instead (a refused token on WebSocket) ends the attempt with it. */
  private async hello(link: Link): Promise<Session> {
    const session = new Session(link, this.opts.requestTimeoutMs, this, (g) => {
      this.lastGoodbye = g;
      this.emit('goodbye', g);
    });
    session.nextId = () => this.nextId();
    this.connecting = session;
    let welcome: Event;
    try {
      await session.start();
      welcome = await session.request(
        this.nextId(),
        { type: 'Hello', version: PROTOCOL_VERSION, client: this.opts.clientName },
        { timeoutMs: this.opts.connectTimeoutMs },
      );
    } catch (e) {
      const err = session.cause ?? asQuiverError(e);
      session.end(err);
      throw err;
    } finally {
      this.connecting = null;
    }
    if (welcome.type !== 'Welcome') {
      const err = new QuiverError('protocol', `expected Welcome, got ${welcome.type}`);
      session.end(err);
      throw err;
    }
    // A server speaking another version is refused, as the Rust client does (outside audit).
    if (welcome.version !== PROTOCOL_VERSION) {
      // Final, as after `Goodbye 3004 unsupported_version` (PROTOCOL.md section 8): `run` stops.
      const err = new QuiverError('protocol', `the server speaks protocol version ${welcome.version}, this client ${PROTOCOL_VERSION}`, {
        code: CloseCode.unsupported_version,
      });
      session.end(err);
      throw err;
    }
    this.welcome = {
      session: welcome.session,
      user: welcome.user,
      tenant: welcome.tenant,
      expiresAt: welcome.expiresAt === null ? null : Number(welcome.expiresAt),
      limits: welcome.limits,
    };
    // The server's announcement raises the inbound limit only up to the client's own ceiling.
    session.raiseMaxFrame(Math.min(welcome.limits.maxFrame, this.opts.maxFrameCeiling));
    // PROTOCOL §3: a server's `max_frame` is never below 8,192 bytes. One announcing less is
    // not believed for what the client sends (every command, Pings included, was refused here
    // as too large and the client reconnected in a loop: outside client audit 13, F5).
    session.limitFrames(Math.max(welcome.limits.maxFrame, MIN_MAX_FRAME));
    if (this.opts.paceCommands) session.pace(welcome.limits.commandsPerSecond);
    return session;
  }

  /** Runs a welcomed session until it ends; returns why it ended. */
  private async serve(session: Session): Promise<QuiverError> {
    this.active = session;
    session.markConnected();
    const timers: ReturnType<typeof setTimeout>[] = [];
    if (this.opts.pingIntervalMs > 0) {
      const ping = (): void => {
        const sentAt = performance.now();
        this.ping().catch((e: unknown) => {
          // Closing, the session ends by itself.
          if (session.ended || session.leaving) return;
          // A Ping unanswered for the whole request timeout while other frames still arrive is
          // a hung session (its rooms deliver, it answers nothing): the server answers Pings
          // beside a waiting command (PROTOCOL.md §5), so a Pong waits only behind a fifth
          // Ping within one wait. Judged by what arrived alone, such a session was kept for
          // good (outside audit 115, F5).
          const unanswered = e instanceof QuiverError && e.kind === 'timeout';
          if (unanswered && session.heardSince(sentAt)) {
            session.end(new QuiverError('timeout', `the server answered no Ping within ${this.opts.requestTimeoutMs} ms though it still sent other frames: session presumed hung`));
            return;
          }
          // Otherwise a server that sent nothing at all since is dead.
          if (session.heardSince(sentAt)) return;
          session.end(new QuiverError('timeout', `ping failed: ${errorMessage(e)}`));
        });
      };
      // The first ping goes out before anything else: the server answers commands one at a time,
      // in order, so a ping written after the (re)subscribes would wait for all of them and
      // report their processing time (tens to hundreds of ms) as the round trip.
      ping();
      timers.push(setInterval(ping, this.opts.pingIntervalMs));
    }
    if (this.opts.heartbeat) session.startHeartbeat(this.opts.heartbeat.idleMs, this.opts.heartbeat.timeoutMs);
    // Taken before the listeners run: a subscribe made in a 'connected' listener is sent by
    // subscribe() itself and must not be sent a second time (the server would refuse it).
    const resubscribe = this.subs.resubscribe(session);
    const queued = this.outbox.takeAll();
    this.setState('connected');
    if (this.info) this.emit('welcome', this.info);
    // Subscriptions before queued publishes: a publisher subscribed to its own room sees them.
    // The session paces them all to the server's rate limit.
    resubscribe();
    for (const item of queued) this.outbox.send(item, session);
    const refresh = new Refresher(session, this.opts.token, (e) => this.emit('error', e));
    refresh.schedule(this.info?.expiresAt ?? null);
    const cause = await session.done;
    for (const t of timers) clearInterval(t);
    refresh.stop();
    this.active = null;
    this.subs.sessionEnded();
    return cause;
  }

  /** @internal Called by Session for control events that answer no pending command. */
  onUnsolicited(session: Session, id: number, event: Event): void {
    switch (event.type) {
      case 'Unsubscribed':
        this.subs.onServerUnsubscribed(session, event.room, event.code, event.reason);
        break;
      case 'Error':
        // Refusal of a publish sent without ack, or of a command whose wait timed out.
        this.emit(
          'error',
          new QuiverError('command', `server refused command ${id}: ${codeLabel(event.code)}: ${clip(event.message)}`, {
            code: event.code,
          }),
        );
        break;
      default:
        // A late reply to a command that timed out: nobody is waiting any more.
        break;
    }
  }

  /**
   * Ends a WebTransport session that cannot carry the app's subscriptions (the browser's limit
   * of incoming streams, about 100) so that the reconnect goes to WebSocket, for the rest of this
   * client's life. False when there is nowhere to move.
   */
  private moveToWebSocket(session: Session, cause: QuiverError): boolean {
    if (session.kind !== 'webtransport' || !this.dialer.moveToWebSocket()) return false;
    session.end(new QuiverError('transport', `moving to WebSocket: ${cause.message}`, { cause }));
    return true;
  }

  /** @internal The header of subscription `id` arrived: whether it is `room`'s current one. */
  streamOpened(room: string, id: number): boolean {
    return this.subs.streamOpened(room, id);
  }

  /** @internal The stream of subscription `id` of `room` ended on `session`. */
  streamEnded(session: Session, room: string, id: number): void {
    this.subs.streamEnded(session, room, id);
  }

  /** @internal Delivers an event of the subscription `id`; false when it is not the current one. */
  deliver(id: number, event: SubscriptionEvent): boolean {
    return this.subs.deliver(id, event);
  }

  /** @internal A datagram: the newest value of a `latest` subscription. */
  datagram(session: Session, bytes: Uint8Array): void {
    this.subs.datagram(session, bytes);
  }

  /** @internal */
  report(error: QuiverError): void {
    this.emit('error', error);
  }

  /** @internal */
  onRtt(ms: number): void {
    this.lastRtt = ms;
    this.emit('rtt', ms);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).finally(() => {
      this.wake = null;
    });
  }

  private shutdown(cause: QuiverError | null): void {
    const err = new QuiverError('closed', cause ? `client closed: ${cause.message}` : 'client closed', {
      ...(cause?.code != null ? { code: cause.code } : {}),
    });
    this.subs.endAll(err);
    this.outbox.rejectAll(err);
    this.closedBy = cause;
    this.setState('closed', cause);
  }
}

/**
 * Creates a client and resolves once it is connected. It keeps retrying (with backoff) until
 * then; to see errors during the first attempts, create `new QuiverClient(options)`, add
 * listeners, and await `client.ready()` instead.
 */
export async function connect(options: ClientOptions): Promise<QuiverClient> {
  const client = new QuiverClient(options);
  await client.ready();
  return client;
}
