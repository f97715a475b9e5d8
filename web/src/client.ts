// The Quiver browser client: one session at a time over WebTransport or WebSocket, reconnected by
// itself, with the app's subscriptions and queued publishes carried over from one session to the
// next. The transports are in transport.ts, one session's commands in session.ts.

import {
  PROTOCOL_VERSION,
  decodeLatestDatagram,
  encodePublishDatagram,
  type Command,
  type Event,
  type LatestDatagram,
  type Member,
  type Position,
} from './codec.js';
import { ErrorCode, codeLabel } from './codes.js';
import { QuiverError, asQuiverError, errorMessage, withTimeout } from './errors.js';
import { Refresher, Session, type GoodbyeInfo } from './session.js';
import {
  resolveOptions,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type PublishOptions,
  type ResolvedOptions,
  type SessionInfo,
  type Target,
} from './options.js';
import { Continuity, Message, Subscription, recoveryPossible, type SubscribeOptions } from './subscription.js';
import {
  openWebSocket,
  openWebTransport,
  rememberWebTransportFailure,
  webTransportFailedBefore,
  type Link,
  type SubscriptionEvent,
  type TransportKind,
  type WebSocketConstructor,
  type WebTransportConstructor,
} from './transport.js';

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

/** What `history()` asks for. */
export interface HistoryOptions {
  /** The page starts after this position; omitted: from the oldest publication kept. */
  since?: Position;
  /** Most publications in the page (default 100; the server caps it at 1,000 and one frame). */
  limit?: number;
}

/** A page of a room's history (`history()`). */
export interface HistoryPage {
  /** The room's current position. */
  position: Position | null;
  /** Oldest first. */
  publications: Message[];
  /** More is kept after the last publication than this page holds: ask again from it. */
  truncated: boolean;
}
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  HeartbeatOptions,
  PublishOptions,
  ReconnectOptions,
  RecoveryInfo,
  SessionInfo,
} from './options.js';


/** Options of `QuiverClient.call`. */
export interface CallOptions {
  /** How long the backend may take, in milliseconds; the server's default when absent. The
   *  server caps it. */
  timeoutMs?: number;
  /** Passed to the backend as is, so it can recognise a retried call (at most 128 bytes). */
  idempotencyKey?: string;
  /** Aborting rejects the call's promise at once with the signal's reason. */
  signal?: AbortSignal;
}

/** `promise`, or the signal's reason as soon as it aborts. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
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
  /** Re-subscribes in a row after server ends or "not now" refusals (`retrySubscribe`). */
  retries: number;
  /** When the server last confirmed the subscription (`Date.now()`), 0 once a retry took it. */
  confirmedAt: number;
}

interface QueuedPublish {
  room: string;
  payload: Uint8Array;
  ack: boolean;
  resolve: (p: Position | null) => void;
  reject: (e: QuiverError) => void;
}

// Server errors that say "not now" rather than "no": a re-subscribe after them is retried.
const TRANSIENT = new Set<number>([ErrorCode.internal, ErrorCode.rate_limited, ErrorCode.unavailable, ErrorCode.quota_exceeded]);
// A connection (or a subscription) that lasted this long resets the backoff.
const STABLE_MS = 5_000;
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

const textEncoder = new TextEncoder();

type Listeners = { [K in keyof ClientEvents]: Set<(...args: ClientEvents[K]) => void> };


/**
 * Starts connecting at once and keeps a session up until `close()`. Listen to `state` and `error`
 * to show the connection to the user; subscriptions and publishes may be made in any state.
 */
export class QuiverClient {
  private readonly opts: ResolvedOptions;
  private readonly transports: readonly TransportKind[];
  /** The servers (`url`, or each of `urls`), tried in turn: one per connection attempt. */
  private readonly targets: readonly Target[];
  /** Index in `targets` of the current (or next) connection attempt's server. */
  private targetIndex = 0;
  private readonly hashes: WebTransportHash[];
  private readonly WT: WebTransportConstructor | undefined;
  private readonly WS: WebSocketConstructor | undefined;
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
  private readonly subs = new Map<string, SubState>();
  /** `latest` subscriptions by the server's subscription id (datagrams carry only that). */
  private readonly latestSubs = new Map<bigint, SubState>();
  private readonly outbox: QueuedPublish[] = [];
  private active: Session | null = null;
  /** Events (and their `heldSize`) held before their `Subscribed`, in all subscriptions. */
  private heldEvents = 0;
  private heldTotal = 0;
  private lastId = 0;
  private closing = false;
  private wake: (() => void) | null = null;
  private readonly finished: Promise<void>;
  /** The Goodbye of the latest connection attempt, if the server sent one. */
  private lastGoodbye: GoodbyeInfo | null = null;
  /** Set when this client's WebTransport sessions cannot carry its subscriptions. */
  private avoidWebTransport = false;
  /** Why the client closed by itself (e.g. an `auth` error), for `ready()` after the fact. */
  private closedBy: QuiverError | null = null;

  private currentState: ConnectionState = 'connecting';
  private currentTransport: TransportKind | null = null;
  private welcome: SessionInfo | null = null;
  private lastRtt: number | null = null;

  constructor(options: ClientOptions) {
    const resolved = resolveOptions(options, CLIENT_NAME);
    this.opts = resolved.opts;
    this.transports = resolved.transports;
    this.targets = resolved.targets;
    this.hashes = resolved.hashes;
    this.WT = resolved.WT;
    this.WS = resolved.WS;
    this.finished = this.run();
  }

  get state(): ConnectionState {
    return this.currentState;
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
    return new Promise((resolve, reject) => {
      const sub = new Subscription(room, handler, options.bufferSize ?? 1000, this, options.onPresence, options.bufferBytes);
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
      if (this.active && !this.active.ended) void this.sendSubscribe(state, this.active);
    });
  }

  /** Stops a subscription; its handler gets no further messages. Unknown rooms are ignored. */
  async unsubscribe(room: string): Promise<void> {
    const state = this.subs.get(room);
    if (!state) return;
    this.dropSub(state, new QuiverError('closed', `unsubscribed from ${room} before the server confirmed`, { room }));
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
   * Publishes to a room. While disconnected the publish is queued (up to `maxQueuedPublishes`)
   * and sent after reconnecting. With `ack`, resolves with the message's position (null for rooms
   * without history) once the server accepted it; without, resolves null once written.
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
    // Unreliable: one datagram now, or an ordinary publish if this session cannot send it.
    if (options.unreliable && !options.ack && this.active && !this.active.ended) {
      if (this.active.sendDatagram(encodePublishDatagram(room, bytes))) return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      const item: QueuedPublish = { room, payload: bytes, ack: options.ack ?? false, resolve, reject };
      if (this.active && !this.active.ended) this.sendPublish(item, this.active);
      else this.enqueue(item);
    });
  }

  /** Measures the round-trip time to the server, in milliseconds. */
  async ping(): Promise<number> {
    const session = this.active;
    if (!session) throw new QuiverError('closed', 'not connected');
    const start = performance.now();
    await session.request(this.nextId(), { type: 'Ping' }, { urgent: true });
    const rtt = performance.now() - start;
    this.onRtt(rtt);
    return rtt;
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
   * the backend may or may not have run it: retry only with the same `idempotencyKey`. Aborting
   * `signal` rejects with the signal's reason; the server may still run the call.
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
    const timeoutMs = Math.max(0, Math.min(Math.round(options.timeoutMs ?? 0), 0xffff_ffff));
    const command: Command = {
      type: 'Call',
      method,
      payload: bytes,
      timeoutMs,
      idempotencyKey: options.idempotencyKey ?? '',
    };
    // The server answers deadline_exceeded at the deadline: wait a little longer than that.
    const wait = Math.max(this.opts.requestTimeoutMs, timeoutMs + 2_000);
    const request = session.request(this.nextId(), command, { timeoutMs: wait });
    const reply = await (signal ? abortable(request, signal) : request);
    if (reply.type !== 'Reply') throw new QuiverError('protocol', `expected Reply, got ${reply.type}`);
    return reply.payload;
  }

  /** Closes the session for good: subscriptions end, queued publishes are rejected. */
  async close(): Promise<void> {
    if (!this.closing) {
      this.closing = true;
      this.active?.end(new QuiverError('closed', 'client closed'), true);
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
      if (backoff === false || (goodbye && !goodbye.reconnect)) {
        this.closing = true;
        break;
      }
      this.setState('disconnected', cause);
      const ceiling = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * 2 ** attempt);
      attempt = Math.min(attempt + 1, 30);
      await this.sleep(Math.random() * ceiling);
      // Every attempt after the first goes to the next server, round robin (as the Rust client's
      // `--url a,b`): a dead instance costs one attempt, not the rest of the outage.
      this.targetIndex = (this.targetIndex + 1) % this.targets.length;
    }
    this.shutdown(cause);
  }

  /** Transports to try now at `target`, in order: those it has a URL for, WebTransport skipped
   *  once it failed there where WebSocket then worked, when another transport follows it. */
  private candidates(target: Target): TransportKind[] {
    const here = this.transports.filter((t) => (t === 'webtransport' ? this.WT && target.wtUrl : this.WS && target.wsUrl));
    return here.filter(
      (t, i) =>
        !(
          t === 'webtransport' &&
          i < here.length - 1 &&
          (this.avoidWebTransport || (target.wtUrl && webTransportFailedBefore(target.wtUrl, this.opts.remember)))
        ),
    );
  }

  /** One connection attempt: a token, then each transport in turn until one gets a Welcome. */
  private async open(): Promise<Session> {
    const timeout = this.opts.connectTimeoutMs;
    let token: string;
    try {
      token = await withTimeout(Promise.resolve().then(() => this.opts.token()), timeout, 'token callback');
    } catch (e) {
      throw new QuiverError('token', `could not get a token: ${errorMessage(e)}`, { cause: e });
    }
    if (typeof token !== 'string' || token === '') {
      throw new QuiverError('token', 'the token callback returned no token');
    }
    const target = this.targets[this.targetIndex]!;
    const candidates = this.candidates(target);
    let skipped: QuiverError | null = null;
    for (const [i, kind] of candidates.entries()) {
      const last = i === candidates.length - 1;
      let link: Link;
      try {
        link = await this.openLink(kind, target, token, last ? timeout : Math.min(timeout, this.opts.webTransportTimeoutMs));
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
      if (skipped && target.wtUrl && kind !== 'webtransport') rememberWebTransportFailure(target.wtUrl, this.opts.remember);
      if (kind !== this.currentTransport) {
        this.currentTransport = kind;
        this.emit('transport', kind, skipped);
      }
      return session;
    }
    throw new QuiverError('handshake', 'no transport to try');
  }

  private openLink(kind: TransportKind, target: Target, token: string, timeoutMs: number): Promise<Link> {
    if (kind === 'webtransport' && this.WT && target.wtUrl) {
      const url = new URL(target.wtUrl);
      url.searchParams.set('token', token);
      return openWebTransport(this.WT, url, this.hashes.length ? { serverCertificateHashes: this.hashes } : {}, timeoutMs, this.opts.maxFrame);
    }
    if (kind === 'websocket' && this.WS && target.wsUrl) {
      const url = new URL(target.wsUrl);
      url.searchParams.set('token', token);
      return openWebSocket(this.WS, url, timeoutMs, this.opts.maxFrame);
    }
    return Promise.reject(new QuiverError('handshake', `${kind} is not available`));
  }

  /** Hello, Welcome. A Goodbye instead (a refused token on WebSocket) ends the attempt with it. */
  private async hello(link: Link): Promise<Session> {
    const session = new Session(link, this.opts.requestTimeoutMs, this, (g) => {
      this.lastGoodbye = g;
      this.emit('goodbye', g);
    });
    session.nextId = () => this.nextId();
    await session.start();
    let welcome: Event;
    try {
      welcome = await session.request(
        this.nextId(),
        { type: 'Hello', version: PROTOCOL_VERSION, client: this.opts.clientName },
        { timeoutMs: this.opts.connectTimeoutMs },
      );
    } catch (e) {
      const err = session.cause ?? asQuiverError(e);
      session.end(err);
      throw err;
    }
    if (welcome.type !== 'Welcome') {
      const err = new QuiverError('protocol', `expected Welcome, got ${welcome.type}`);
      session.end(err);
      throw err;
    }
    // A server speaking another version is refused, as the Rust client does (outside audit).
    if (welcome.version !== PROTOCOL_VERSION) {
      const err = new QuiverError('protocol', `the server speaks protocol version ${welcome.version}, this client ${PROTOCOL_VERSION}`);
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
    session.limitFrames(welcome.limits.maxFrame);
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
          // A server that sent nothing at all since is dead (a Pong may wait behind slow
          // commands while other frames still arrive).
          if (session.ended || session.heardSince(sentAt)) return;
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
    const resubscribe = [...this.subs.values()];
    const queued = this.outbox.splice(0);
    this.setState('connected');
    if (this.info) this.emit('welcome', this.info);
    // Subscriptions before queued publishes: a publisher subscribed to its own room sees them.
    // The session paces them all to the server's rate limit.
    for (const state of resubscribe) {
      if (this.subs.get(state.sub.room) === state) void this.sendSubscribe(state, session);
    }
    for (const item of queued) this.sendPublish(item, session);
    const refresh = new Refresher(session, this.opts.token, (e) => this.emit('error', e));
    refresh.schedule(this.info?.expiresAt ?? null);
    const cause = await session.done;
    for (const t of timers) clearInterval(t);
    refresh.stop();
    this.active = null;
    for (const state of this.subs.values()) {
      state.currentId = 0;
      this.releaseHeld(state);
      if (state.retryTimer) clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
    return cause;
  }

  /** @internal Called by Session for control events that answer no pending command. */
  onUnsolicited(session: Session, id: number, event: Event): void {
    switch (event.type) {
      case 'Unsubscribed':
        this.onServerUnsubscribed(session, event.room, event.code, event.reason);
        break;
      case 'Error':
        // Refusal of a publish sent without ack, or of a command whose wait timed out.
        this.emit(
          'error',
          new QuiverError('command', `server refused command ${id}: ${codeLabel(event.code)}: ${event.message}`, {
            code: event.code,
          }),
        );
        break;
      default:
        // A late reply to a command that timed out: nobody is waiting any more.
        break;
    }
  }

  private onServerUnsubscribed(session: Session, room: string, code: number, reason: string): void {
    const state = this.subs.get(room);
    if (!state) return;
    if (state.held && state.currentId !== 0) {
      // The server ends a subscription only after its `Subscribed` (PROTOCOL.md section 9.2), so
      // an end that came before the current Subscribe's reply is an earlier subscription's of
      // this room (the app unsubscribed and subscribed again while the server was ending it).
      if (session.awaitsReply(state.currentId)) return;
      // The reply came but is not handled yet: what came before this end belongs to the
      // subscription. The end waits behind it (`sendSubscribe` applies it).
      state.heldEnd ??= { code, reason };
      return;
    }
    state.currentId = 0;
    this.releaseHeld(state);
    // The session is closing: the reconnect re-subscribes.
    if (code === ErrorCode.session_closing) return;
    const err = new QuiverError('subscription', `server ended subscription to ${room}: ${codeLabel(code)}: ${reason}`, {
      code,
      room,
    });
    this.emit('error', err);
    if (
      code === ErrorCode.slow_consumer ||
      // A cluster's replay that could not be finished (PROTOCOL.md section 5): what arrived is
      // good, and resuming from it either finishes the replay or says recovery failed.
      code === ErrorCode.unrecoverable_position ||
      code === ErrorCode.unavailable
    ) {
      // The protocol allows subscribing again; resume covers the gap when the room keeps history.
      this.retrySubscribe(state);
    } else if (code === ErrorCode.stream_limit && this.moveToWebSocket(session, err)) {
      // The browser cannot take another stream: WebSocket carries every room on one socket, and
      // the reconnect there re-subscribes this room too.
    } else {
      this.dropSub(state, err);
    }
  }

  /**
   * Ends a WebTransport session that cannot carry the app's subscriptions (the browser's limit
   * of incoming streams, about 100) so that the reconnect goes to WebSocket, for the rest of this
   * client's life. False when there is nowhere to move.
   */
  private moveToWebSocket(session: Session, cause: QuiverError): boolean {
    if (session.kind !== 'webtransport' || !this.transports.includes('websocket')) return false;
    this.avoidWebTransport = true;
    session.end(new QuiverError('transport', `moving to WebSocket: ${cause.message}`, { cause }));
    return true;
  }

  /**
   * Sends the Subscribe again later, backing off like reconnects (`reconnect`'s delays; 1 s to
   * 15 s without reconnects): the delay doubles with every retry in a row, jittered between half
   * and all of it, so a server that ends every subscription at once is not asked ever faster.
   * A subscription that lasted `STABLE_MS` starts again from the first delay.
   */
  private retrySubscribe(state: SubState): void {
    const backoff = this.opts.reconnect === false ? { initialDelayMs: 1000, maxDelayMs: 15_000 } : this.opts.reconnect;
    if (state.confirmedAt && Date.now() - state.confirmedAt >= STABLE_MS) state.retries = 0;
    state.confirmedAt = 0;
    const ceiling = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * 2 ** state.retries);
    state.retries = Math.min(state.retries + 1, 30);
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      if (this.active && this.subs.get(state.sub.room) === state) void this.sendSubscribe(state, this.active);
    }, ceiling / 2 + Math.random() * (ceiling / 2));
  }

  private async sendSubscribe(state: SubState, session: Session): Promise<void> {
    const id = this.nextId();
    const resume = state.sub.position;
    this.releaseHeld(state);
    state.currentId = id;
    state.held = [];
    state.continuity = null;
    state.resumedFrom = resume;
    state.streamOpened = false;
    let reply: Event;
    try {
      reply = await session.request(id, { type: 'Subscribe', room: state.sub.room, resume });
    } catch (e) {
      const err = asQuiverError(e);
      if (this.subs.get(state.sub.room) !== state) return;
      if (state.currentId === id) {
        // What its stream sent is dropped with it (a timed-out Subscribe is sent again).
        state.currentId = 0;
        this.releaseHeld(state);
      }
      if (err.kind === 'closed' || session.ended) return; // the next session re-subscribes
      if (err.kind === 'timeout' || (err.code !== null && TRANSIENT.has(err.code))) {
        this.emit('error', err);
        this.retrySubscribe(state);
      } else if (state.confirmed) {
        // A refusal on re-subscribe (e.g. a refreshed token lost the permission) ends it.
        this.emit('error', err);
        this.dropSub(state, err);
      } else {
        this.dropSub(state, err);
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
    if (state.sub.latestId !== null) this.latestSubs.delete(state.sub.latestId);
    state.sub.confirmed(latestId);
    if (latestId !== null) this.latestSubs.set(latestId, state);
    let recovery = reply.recovery;
    if (recovery.type === 'Recovered' && !recoveryPossible(resume, reply.position, recovery.replayed)) {
      this.reportBroken(state.sub.room, 'impossible Recovered');
      recovery = { type: 'Failed' };
    }
    state.sub.recovery = resume ? recovery : null;
    // Nothing of this stream was delivered yet (held until now): the reply sets the position.
    if (recovery.type !== 'Recovered' && reply.position) state.sub.position = reply.position;
    state.continuity = new Continuity(reply.position, recovery.type === 'Recovered' ? recovery.replayed : null);
    if (resume) this.emit('recovery', { room: state.sub.room, recovery, resumedFrom: resume });
    this.expectStream(state, id, session);
    state.confirmedAt = Date.now();
    if (!state.confirmed) {
      state.confirmed = true;
      state.resolveReady(state.sub);
    }
    this.emit('subscribed', state.sub);
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
    this.emit('error', new QuiverError('protocol', `${room}: ${what}`, { room }));
  }

  /**
   * Over WebTransport, each subscription is a stream the server opens, and browsers accept only
   * about 100 of them per session. The server ends a subscription whose stream it cannot open
   * (`Unsubscribed` 114 stream_limit, after 5 s); should that answer not come either, a stream
   * still missing `streamTimeoutMs` after `Subscribed` is reported here and handled the same way:
   * with WebSocket among the transports the client moves there.
   */
  private expectStream(state: SubState, id: number, session: Session): void {
    const timeout = this.opts.streamTimeoutMs;
    if (state.streamOpened || timeout <= 0 || session.kind !== 'webtransport') return;
    const timer = setTimeout(() => {
      if (session.ended || state.currentId !== id || state.streamOpened || this.subs.get(state.sub.room) !== state) return;
      const room = state.sub.room;
      const err = new QuiverError(
        'subscription',
        `no stream for ${room} within ${timeout} ms of Subscribed: the browser may be at its limit of server-opened streams (about 100 per WebTransport session)`,
        { room },
      );
      this.emit('error', err);
      this.moveToWebSocket(session, err);
    }, timeout);
    void session.done.then(() => clearTimeout(timer));
  }

  private dropSub(state: SubState, reason: QuiverError): void {
    if (this.subs.get(state.sub.room) === state) this.subs.delete(state.sub.room);
    if (state.sub.latestId !== null) this.latestSubs.delete(state.sub.latestId);
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.currentId = 0;
    this.releaseHeld(state);
    state.sub.end();
    if (!state.confirmed) state.rejectReady(reason);
  }

  /** Keeps a publish for the next session, within `maxQueuedPublishes`. */
  private enqueue(item: QueuedPublish): void {
    if (this.outbox.length >= this.opts.maxQueuedPublishes) {
      item.reject(new QuiverError('buffer_full', `${this.outbox.length} publishes already queued while disconnected`, { room: item.room }));
    } else {
      this.outbox.push(item);
    }
  }

  private sendPublish(item: QueuedPublish, session: Session): void {
    const command: Command = { type: 'Publish', room: item.room, payload: item.payload, ack: item.ack };
    const failed = (e: unknown): void => {
      const err = asQuiverError(e);
      // Never written (the session ended while it waited for the pacer): not sent, so it may
      // still go out once, on the next session.
      if (err.unsent && !this.closing) this.enqueue(item);
      else item.reject(err);
    };
    if (!item.ack) {
      session.send({ id: this.nextId(), command }).then(() => item.resolve(null), failed);
      return;
    }
    session.request(this.nextId(), command).then((reply) => {
      if (reply.type === 'Published') item.resolve(reply.position);
      else item.reject(new QuiverError('protocol', `expected Published, got ${reply.type}`, { room: item.room }));
    }, failed);
  }

  /** @internal The header of subscription `id` arrived: whether it is `room`'s current one. */
  streamOpened(room: string, id: number): boolean {
    const state = this.subs.get(room);
    if (state === undefined || state.currentId !== id) return false;
    state.streamOpened = true;
    return true;
  }

  /** @internal Delivers an event of the subscription `id`; false when it is not the current one. */
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
        this.active?.end(
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
          this.emit('recovery', { room: event.room, recovery, resumedFrom: state.resumedFrom });
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
      this.emit('error', new QuiverError('handler', `${what} handler for ${event.room} threw: ${errorMessage(e)}`, { room: event.room, cause: e }));
    }
    return true;
  }

  /** @internal A datagram: the newest value of a `latest` subscription, found by its id.
   *  Malformed datagrams and ones for no current subscription are dropped. */
  datagram(bytes: Uint8Array): void {
    let d: LatestDatagram;
    try {
      d = decodeLatestDatagram(bytes);
    } catch {
      return;
    }
    const state = this.latestSubs.get(d.subscription);
    if (!state || state.sub.latestId !== d.subscription) return;
    try {
      state.sub.offerLatest(d.sequence, d.payload, true);
    } catch (e) {
      this.emit('error', new QuiverError('handler', `message handler for ${state.sub.room} threw: ${errorMessage(e)}`, { room: state.sub.room, cause: e }));
    }
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
    for (const state of [...this.subs.values()]) this.dropSub(state, err);
    for (const item of this.outbox.splice(0)) item.reject(err);
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
