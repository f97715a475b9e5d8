// The Quiver browser client: one WebTransport session at a time, reconnected by itself, with the
// app's subscriptions and queued publishes carried over from one session to the next.

import {
  DEFAULT_MAX_FRAME,
  DecodeError,
  FrameDecoder,
  PROTOCOL_VERSION,
  decodeEvent,
  encodeCommand,
  type Command,
  type Event,
  type Limits,
  type Member,
  type Position,
  type Recovery,
} from './codec.js';
import { ErrorCode, codeLabel } from './codes.js';

export const CLIENT_NAME = 'quiver-ts/0.1';

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** What went wrong, as the app sees it. */
export type ErrorKind =
  /** The server refused a command (`code` is an error code, e.g. 103 permission_denied). */
  | 'command'
  /** The server ended a subscription (`code`, `room`). */
  | 'subscription'
  /** The WebTransport handshake failed: unreachable, token refused or certificate mismatch. */
  | 'handshake'
  /** The token callback threw, or a token refresh was refused. */
  | 'token'
  /** The server said Goodbye (`code` is a close code, e.g. 3002 token_expired). */
  | 'goodbye'
  /** The server sent bytes this client cannot decode. */
  | 'protocol'
  /** The connection was lost or could not be used. */
  | 'transport'
  /** No answer in time. */
  | 'timeout'
  /** The client was closed, or the request could not survive a reconnect. */
  | 'closed'
  /** Too many publishes queued while disconnected. */
  | 'buffer_full'
  /** A message handler threw. */
  | 'handler';

export class QuiverError extends Error {
  override name = 'QuiverError';
  /** Protocol code (error or close code) when the server sent one. */
  readonly code: number | null;
  readonly room: string | null;

  constructor(
    readonly kind: ErrorKind,
    message: string,
    extra: { code?: number; room?: string; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.code = extra.code ?? null;
    this.room = extra.room ?? null;
  }

  /** Snake_case label of `code`, e.g. `permission_denied`; null without a code. */
  get label(): string | null {
    return this.code === null ? null : codeLabel(this.code);
  }
}

export interface ReconnectOptions {
  /** Upper bound of the first retry delay. Each attempt doubles it, up to `maxDelayMs`. */
  initialDelayMs: number;
  maxDelayMs: number;
}

export interface ClientOptions {
  /** WebTransport URL of the server, e.g. `https://127.0.0.1:4433/v1`. */
  url: string | URL;
  /** Returns a JWT. Called before every connection attempt and before the token expires. */
  token: () => string | Promise<string>;
  /** SHA-256 hashes (bytes or hex) of self-signed certificates to trust (development). */
  serverCertificateHashes?: readonly (Uint8Array | string)[];
  /** `Hello.client`. */
  clientName?: string;
  /** Backoff (with full jitter) between connection attempts; `false` never reconnects. */
  reconnect?: Partial<ReconnectOptions> | false;
  /** Limit for the token callback, the handshake and the Welcome, each. Default 10 s. */
  connectTimeoutMs?: number;
  /** How long to wait for the reply to a command. Default 10 s. */
  requestTimeoutMs?: number;
  /** Ping period for RTT and liveness; 0 disables. Default 5 s. */
  pingIntervalMs?: number;
  /** Publishes kept while disconnected, sent on reconnect. Default 1000. */
  maxQueuedPublishes?: number;
  /** Largest frame accepted from the server; raised to `Welcome.limits.maxFrame` if larger. */
  maxFrame?: number;
  /** WebTransport implementation; defaults to the global one (tests pass a fake). */
  WebTransport?: WebTransportConstructor;
}

export type WebTransportConstructor = new (url: string, options?: WebTransportOptions) => WebTransport;

export interface SessionInfo {
  session: string;
  user: string;
  tenant: string;
  /** Token expiry, Unix seconds; null if it never expires. */
  expiresAt: number | null;
  limits: Limits;
}

export interface GoodbyeInfo {
  code: number;
  reason: string;
  reconnect: boolean;
}

export interface RecoveryInfo {
  room: string;
  /** `Recovered`: missed messages are replayed before live ones. `Failed`: messages were missed,
   *  re-sync the room's state from elsewhere. */
  recovery: Recovery;
  /** The position resumed from. */
  resumedFrom: Position;
}

/** A session joined or left a subscribed room (namespaces with presence events only). */
export interface PresenceChange {
  type: 'Joined' | 'Left';
  room: string;
  member: Member;
}

export interface ClientEvents {
  state: [state: ConnectionState, cause: QuiverError | null];
  error: [error: QuiverError];
  welcome: [info: SessionInfo];
  goodbye: [info: GoodbyeInfo];
  recovery: [info: RecoveryInfo];
  /** The server confirmed a subscription: the first time, and again after every re-subscribe. */
  subscribed: [subscription: Subscription];
  rtt: [ms: number];
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

export interface PublishOptions {
  /** Wait for the server's `Published` (with the message's position, if the room has history). */
  ack?: boolean;
}

const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

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
    private readonly owner: QuiverClient,
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

/** Client-side state of one subscription. */
interface SubState {
  sub: Subscription;
  /** Id of the Subscribe that owns the room's live stream; 0 when none is in flight or live. */
  currentId: number;
  /** Whether a publication arrived on the current stream (then it, not `Subscribed`, sets the
   *  position, since the stream may overtake the reply). */
  sawPublication: boolean;
  confirmed: boolean;
  resolveReady: (s: Subscription) => void;
  rejectReady: (e: QuiverError) => void;
  retryTimer: ReturnType<typeof setTimeout> | null;
}

interface QueuedPublish {
  room: string;
  payload: Uint8Array;
  ack: boolean;
  resolve: (p: Position | null) => void;
  reject: (e: QuiverError) => void;
}

interface PendingRequest {
  resolve: (e: Event) => void;
  reject: (e: QuiverError) => void;
  timer: ReturnType<typeof setTimeout>;
}

// Server errors that say "not now" rather than "no": a re-subscribe after them is retried.
const TRANSIENT = new Set<number>([ErrorCode.internal, ErrorCode.rate_limited, ErrorCode.unavailable]);
// A connection that lasted this long resets the backoff.
const STABLE_MS = 5_000;

type Listeners = { [K in keyof ClientEvents]: Set<(...args: ClientEvents[K]) => void> };

/**
 * Starts connecting at once and keeps a session up until `close()`. Listen to `state` and `error`
 * to show the connection to the user; subscriptions and publishes may be made in any state.
 */
export class QuiverClient {
  private readonly opts: Required<Omit<ClientOptions, 'serverCertificateHashes' | 'reconnect' | 'WebTransport'>> & {
    reconnect: ReconnectOptions | false;
  };
  private readonly hashes: WebTransportHash[];
  private readonly WT: WebTransportConstructor;
  private readonly listeners: Listeners = {
    state: new Set(),
    error: new Set(),
    welcome: new Set(),
    goodbye: new Set(),
    recovery: new Set(),
    subscribed: new Set(),
    rtt: new Set(),
  };
  private readonly subs = new Map<string, SubState>();
  private readonly outbox: QueuedPublish[] = [];
  private active: Session | null = null;
  private lastId = 0;
  private closing = false;
  private wake: (() => void) | null = null;
  private readonly finished: Promise<void>;

  private currentState: ConnectionState = 'connecting';
  private welcome: SessionInfo | null = null;
  private lastRtt: number | null = null;

  constructor(options: ClientOptions) {
    if (typeof options?.token !== 'function') throw new TypeError('options.token must be a function returning a JWT');
    const url = new URL(options.url); // throws TypeError on a bad URL
    if (url.protocol !== 'https:') throw new TypeError(`WebTransport needs an https: URL, got ${url.href}`);
    const WT = options.WebTransport ?? (globalThis as { WebTransport?: WebTransportConstructor }).WebTransport;
    if (!WT) throw new TypeError('WebTransport is not available here (a secure context in Chromium or Firefox is needed)');
    this.WT = WT;
    this.hashes = (options.serverCertificateHashes ?? []).map((h) => ({
      algorithm: 'sha-256',
      value: parseHash(h),
    }));
    const reconnect =
      options.reconnect === false
        ? false
        : { initialDelayMs: 500, maxDelayMs: 15_000, ...options.reconnect };
    this.opts = {
      url: url.href,
      token: options.token,
      clientName: options.clientName ?? CLIENT_NAME,
      reconnect,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 5_000,
      maxQueuedPublishes: options.maxQueuedPublishes ?? 1000,
      maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
    };
    this.finished = this.run();
  }

  get state(): ConnectionState {
    return this.currentState;
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
    if (this.state === 'closed') return Promise.reject(new QuiverError('closed', 'client is closed'));
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
      const sub = new Subscription(room, handler, options.bufferSize ?? 1000, this, options.onPresence);
      sub.position = options.resume ?? null;
      const state: SubState = {
        sub,
        currentId: 0,
        sawPublication: false,
        confirmed: false,
        resolveReady: resolve,
        rejectReady: reject,
        retryTimer: null,
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
   * Delivery is at most once: an ack that a lost connection swallowed rejects, it is not resent.
   */
  publish(room: string, payload: Uint8Array | string, options: PublishOptions = {}): Promise<Position | null> {
    if (this.closing) return Promise.reject(new QuiverError('closed', 'client is closed', { room }));
    const bytes = typeof payload === 'string' ? textEncoder.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) {
      return Promise.reject(new TypeError('payload must be a Uint8Array or a string'));
    }
    return new Promise((resolve, reject) => {
      const item: QueuedPublish = { room, payload: bytes, ack: options.ack ?? false, resolve, reject };
      if (this.active && !this.active.ended) {
        this.sendPublish(item, this.active);
      } else if (this.outbox.length >= this.opts.maxQueuedPublishes) {
        reject(
          new QuiverError('buffer_full', `${this.outbox.length} publishes already queued while disconnected`, { room }),
        );
      } else {
        this.outbox.push(item);
      }
    });
  }

  /** Measures the round-trip time to the server, in milliseconds. */
  async ping(): Promise<number> {
    const session = this.active;
    if (!session) throw new QuiverError('closed', 'not connected');
    const start = performance.now();
    await session.request(this.nextId(), { type: 'Ping' });
    const rtt = performance.now() - start;
    this.lastRtt = rtt;
    this.emit('rtt', rtt);
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
      let session: Session | null = null;
      try {
        session = await this.open();
        if (this.closing) {
          session.end(new QuiverError('closed', 'client closed'), true);
          break;
        }
        const ended = await this.serve(session);
        cause = ended;
        if (session.connectedFor() >= STABLE_MS) attempt = 0;
      } catch (e) {
        cause = asQuiverError(e);
      }
      if (this.closing) break;
      this.emit('error', cause);
      const goodbye = session?.goodbye;
      if (this.opts.reconnect === false || (goodbye && !goodbye.reconnect)) {
        this.closing = true;
        break;
      }
      this.setState('disconnected', cause);
      const ceiling = Math.min(this.opts.reconnect.maxDelayMs, this.opts.reconnect.initialDelayMs * 2 ** attempt);
      attempt = Math.min(attempt + 1, 30);
      await this.sleep(Math.random() * ceiling);
    }
    this.shutdown(cause);
  }

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
    const url = new URL(this.opts.url);
    url.searchParams.set('token', token);
    const wt = new this.WT(url.href, this.hashes.length ? { serverCertificateHashes: this.hashes } : {});
    // Settles when the connection ends; observed through Session, silenced here.
    wt.closed.catch(() => undefined);
    try {
      await withTimeout(wt.ready, timeout, 'WebTransport handshake');
    } catch (e) {
      closeQuietly(wt);
      // Browsers report every refusal the same way, so a bad token looks like a dead server:
      // the next attempt fetches a fresh token.
      throw new QuiverError(
        'handshake',
        `could not open a session with ${this.opts.url} (server unreachable, token refused or certificate mismatch): ${errorMessage(e)}`,
        { cause: e },
      );
    }
    if (this.closing) {
      closeQuietly(wt);
      throw new QuiverError('closed', 'client closed');
    }
    const session = new Session(wt, this.opts.maxFrame, this.opts.requestTimeoutMs, this);
    await session.start();
    let welcome: Event;
    try {
      welcome = await session.request(
        this.nextId(),
        { type: 'Hello', version: PROTOCOL_VERSION, client: this.opts.clientName },
        timeout,
      );
    } catch (e) {
      const err = asQuiverError(e);
      session.end(err);
      throw err;
    }
    if (welcome.type !== 'Welcome') {
      const err = new QuiverError('protocol', `expected Welcome, got ${welcome.type}`);
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
    session.raiseMaxFrame(welcome.limits.maxFrame);
    return session;
  }

  /** Runs a welcomed session until it ends; returns why it ended. */
  private async serve(session: Session): Promise<QuiverError> {
    this.active = session;
    session.markConnected();
    const timers: ReturnType<typeof setTimeout>[] = [];
    if (this.opts.pingIntervalMs > 0) {
      const ping = (): void => {
        this.ping().catch((e: unknown) => {
          if (session.ended) return;
          // A session that cannot answer a ping in time is dead; reconnect now, not at idle timeout.
          session.end(new QuiverError('timeout', `ping failed: ${errorMessage(e)}`));
        });
      };
      // The first ping goes out before anything else: the server answers control-stream commands
      // one at a time, in order, so a ping written after the (re)subscribes would wait for all of
      // them and report their processing time (tens to hundreds of ms) as the round trip.
      ping();
      timers.push(setInterval(ping, this.opts.pingIntervalMs));
    }
    // Taken before the listeners run: a subscribe made in a 'connected' listener is sent by
    // subscribe() itself and must not be sent a second time (the server would refuse it).
    const resubscribe = [...this.subs.values()];
    const queued = this.outbox.splice(0);
    this.setState('connected');
    if (this.info) this.emit('welcome', this.info);
    // Subscriptions before queued publishes: a publisher subscribed to its own room sees them.
    for (const state of resubscribe) {
      if (this.subs.get(state.sub.room) === state) void this.sendSubscribe(state, session);
    }
    for (const item of queued) this.sendPublish(item, session);
    const refresh = new Refresher(this, session, this.opts.token, () => this.nextId());
    refresh.schedule(this.info?.expiresAt ?? null);
    const cause = await session.done;
    for (const t of timers) clearInterval(t);
    refresh.stop();
    this.active = null;
    for (const state of this.subs.values()) {
      state.currentId = 0;
      if (state.retryTimer) clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
    return cause;
  }

  /** @internal Called by Session for control-stream events that answer no pending command. */
  onUnsolicited(session: Session, id: number, event: Event): void {
    switch (event.type) {
      case 'Goodbye':
        session.goodbye = { code: event.code, reason: event.reason, reconnect: event.reconnect };
        this.emit('goodbye', session.goodbye);
        session.end(
          new QuiverError('goodbye', `server closed the session: ${codeLabel(event.code)} (${event.code}) ${event.reason}`, {
            code: event.code,
          }),
        );
        break;
      case 'Unsubscribed':
        this.onServerUnsubscribed(event.room, event.code, event.reason);
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

  private onServerUnsubscribed(room: string, code: number, reason: string): void {
    const state = this.subs.get(room);
    if (!state) return;
    state.currentId = 0;
    // The session is closing: the reconnect re-subscribes.
    if (code === ErrorCode.session_closing) return;
    const err = new QuiverError('subscription', `server ended subscription to ${room}: ${codeLabel(code)}: ${reason}`, {
      code,
      room,
    });
    this.emit('error', err);
    if (code === ErrorCode.slow_consumer) {
      // The protocol allows subscribing again; resume covers the gap when the room keeps history.
      this.retrySubscribe(state);
    } else {
      this.dropSub(state, err);
    }
  }

  private retrySubscribe(state: SubState): void {
    const delay = this.opts.reconnect === false ? 1000 : this.opts.reconnect.initialDelayMs;
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      if (this.active && this.subs.get(state.sub.room) === state) void this.sendSubscribe(state, this.active);
    }, delay);
  }

  private async sendSubscribe(state: SubState, session: Session): Promise<void> {
    const id = this.nextId();
    const resume = state.sub.position;
    state.currentId = id;
    state.sawPublication = false;
    let reply: Event;
    try {
      reply = await session.request(id, { type: 'Subscribe', room: state.sub.room, resume });
    } catch (e) {
      const err = asQuiverError(e);
      if (this.subs.get(state.sub.room) !== state) return;
      if (state.currentId === id) state.currentId = 0;
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
    if (this.subs.get(state.sub.room) !== state) return;
    state.sub.recovery = resume ? reply.recovery : null;
    if (!state.sawPublication && reply.recovery.type !== 'Recovered' && reply.position) {
      state.sub.position = reply.position;
    }
    if (resume) this.emit('recovery', { room: state.sub.room, recovery: reply.recovery, resumedFrom: resume });
    if (!state.confirmed) {
      state.confirmed = true;
      state.resolveReady(state.sub);
    }
    this.emit('subscribed', state.sub);
  }

  private dropSub(state: SubState, reason: QuiverError): void {
    if (this.subs.get(state.sub.room) === state) this.subs.delete(state.sub.room);
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.currentId = 0;
    state.sub.end();
    if (!state.confirmed) state.rejectReady(reason);
  }

  private sendPublish(item: QueuedPublish, session: Session): void {
    const command: Command = { type: 'Publish', room: item.room, payload: item.payload, ack: item.ack };
    if (!item.ack) {
      session.send({ id: this.nextId(), command }).then(
        () => item.resolve(null),
        (e: unknown) => item.reject(asQuiverError(e)),
      );
      return;
    }
    session.request(this.nextId(), command).then((reply) => {
      if (reply.type === 'Published') item.resolve(reply.position);
      else item.reject(new QuiverError('protocol', `expected Published, got ${reply.type}`, { room: item.room }));
    }, (e: unknown) => item.reject(asQuiverError(e)));
  }

  /** @internal A subscription stream's header arrived: should its publications be delivered? */
  isCurrent(room: string, id: number): boolean {
    const state = this.subs.get(room);
    return state !== undefined && state.currentId === id;
  }

  /** @internal */
  deliver(id: number, room: string, position: Position | null, payload: Uint8Array): boolean {
    const state = this.subs.get(room);
    if (!state || state.currentId !== id) return false;
    state.sawPublication = true;
    try {
      state.sub.deliver(new Message(room, position, payload));
    } catch (e) {
      this.emit('error', new QuiverError('handler', `message handler for ${room} threw: ${errorMessage(e)}`, { room, cause: e }));
    }
    return true;
  }

  /** @internal Same contract as `deliver`, for `Joined` and `Left`. */
  deliverPresence(id: number, change: PresenceChange): boolean {
    const state = this.subs.get(change.room);
    if (!state || state.currentId !== id) return false;
    try {
      state.sub.deliverPresence(change);
    } catch (e) {
      this.emit('error', new QuiverError('handler', `presence handler for ${change.room} threw: ${errorMessage(e)}`, { room: change.room, cause: e }));
    }
    return true;
  }

  /** @internal */
  report(error: QuiverError): void {
    this.emit('error', error);
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
    this.setState('closed', cause);
  }
}

/** Keeps the session's token fresh: sends `Refresh` ahead of `expires_at`. */
class Refresher {
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly client: QuiverClient,
    private readonly session: Session,
    private readonly token: () => string | Promise<string>,
    private readonly nextId: () => number,
  ) {}

  schedule(expiresAt: number | null): void {
    this.stop();
    if (expiresAt === null) return;
    const remaining = expiresAt * 1000 - Date.now();
    // A minute ahead, or a fifth of the lifetime for short tokens, so one failure can be retried.
    const delay = Math.max(0, remaining - Math.min(60_000, remaining / 5));
    // setTimeout fires at once beyond 2^31-1 ms; an early refresh of a very long token is harmless.
    this.timer = setTimeout(() => void this.refresh(expiresAt), Math.min(delay, 2 ** 31 - 1));
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private async refresh(expiresAt: number): Promise<void> {
    try {
      const token = await this.token();
      const reply = await this.session.request(this.nextId(), { type: 'Refresh', token });
      if (reply.type === 'Refreshed') {
        this.schedule(reply.expiresAt === null ? null : Number(reply.expiresAt));
        return;
      }
      throw new QuiverError('protocol', `expected Refreshed, got ${reply.type}`);
    } catch (e) {
      if (this.session.ended) return;
      const err = asQuiverError(e);
      this.client.report(new QuiverError('token', `token refresh failed: ${err.message}`, { cause: err, ...(err.code !== null ? { code: err.code } : {}) }));
      // Try again while there is time; if the token still expires, the server says Goodbye
      // (token_expired, reconnect) and the reconnect brings a fresh token.
      const remaining = expiresAt * 1000 - Date.now();
      if (remaining > 2_000) this.timer = setTimeout(() => void this.refresh(expiresAt), Math.min(remaining / 2, 30_000));
    }
  }
}

/** One WebTransport session: the control stream, pending commands and subscription streams. */
class Session {
  goodbye: GoodbyeInfo | null = null;
  ended = false;
  readonly done: Promise<QuiverError>;
  private resolveDone!: (cause: QuiverError) => void;
  private writer!: WritableStreamDefaultWriter<Uint8Array>;
  private readonly pending = new Map<number, PendingRequest>();
  private maxFrame: number;
  private connectedAt = 0;

  constructor(
    private readonly wt: WebTransport,
    maxFrame: number,
    private readonly requestTimeoutMs: number,
    private readonly client: QuiverClient,
  ) {
    this.maxFrame = maxFrame;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    wt.closed.then(
      (info) => this.end(this.closedError(`session closed by the server (code ${info.closeCode ?? 0}${info.reason ? `: ${info.reason}` : ''})`)),
      (e: unknown) => this.end(this.closedError(`connection lost: ${errorMessage(e)}`)),
    );
  }

  async start(): Promise<void> {
    let bidi: WebTransportBidirectionalStream;
    try {
      bidi = await this.wt.createBidirectionalStream();
    } catch (e) {
      const err = new QuiverError('transport', `could not open the control stream: ${errorMessage(e)}`, { cause: e });
      this.end(err);
      throw err;
    }
    this.writer = bidi.writable.getWriter();
    void this.readControl(bidi.readable);
    void this.acceptStreams();
  }

  markConnected(): void {
    this.connectedAt = Date.now();
  }

  connectedFor(): number {
    return this.connectedAt ? Date.now() - this.connectedAt : 0;
  }

  raiseMaxFrame(announced: number): void {
    this.maxFrame = Math.max(this.maxFrame, announced);
  }

  /** Writes one command; resolves once it is handed to the transport. */
  async send(frame: { id: number; command: Command }): Promise<void> {
    if (this.ended) throw new QuiverError('closed', 'not connected');
    try {
      await this.writer.write(encodeCommand(frame));
    } catch (e) {
      if (e instanceof RangeError) throw e;
      const err = new QuiverError('transport', `write failed: ${errorMessage(e)}`, { cause: e });
      this.end(err);
      throw new QuiverError('closed', err.message, { cause: e });
    }
  }

  /** Sends a command and waits for the event with its id. An `Error` reply rejects. */
  request(id: number, command: Command, timeoutMs = this.requestTimeoutMs): Promise<Event> {
    if (this.ended) return Promise.reject(new QuiverError('closed', 'not connected'));
    return new Promise<Event>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QuiverError('timeout', `no reply to ${command.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ id, command }).catch((e: unknown) => {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(asQuiverError(e));
      });
    });
  }

  /** Ends the session once; every waiter learns why. */
  end(cause: QuiverError, byClient = false): void {
    if (this.ended) return;
    this.ended = true;
    const err = new QuiverError('closed', `session ended: ${cause.message}`, {
      cause,
      ...(cause.code !== null ? { code: cause.code } : {}),
    });
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    closeQuietly(this.wt, byClient ? 'client closed' : '');
    this.resolveDone(cause);
  }

  private closedError(message: string): QuiverError {
    if (this.goodbye) {
      return new QuiverError('goodbye', `server closed the session: ${codeLabel(this.goodbye.code)} (${this.goodbye.code}) ${this.goodbye.reason}`, {
        code: this.goodbye.code,
      });
    }
    return new QuiverError('transport', message);
  }

  private async readControl(readable: ReadableStream<Uint8Array>): Promise<void> {
    const reader = readable.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        decoder.maxFrame = this.maxFrame;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (frame) this.dispatch(frame.id, frame.event);
        }
      }
      this.end(this.closedError('the server closed the control stream'));
    } catch (e) {
      if (e instanceof DecodeError) {
        this.end(new QuiverError('protocol', `bad frame from the server on the control stream: ${e.message}`, { cause: e }));
      } else {
        this.end(this.closedError(`control stream failed: ${errorMessage(e)}`));
      }
    }
  }

  private dispatch(id: number, event: Event): void {
    const pending = id === 0 ? undefined : this.pending.get(id);
    if (!pending) {
      this.client.onUnsolicited(this, id, event);
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (event.type === 'Error') {
      pending.reject(new QuiverError('command', `${codeLabel(event.code)}: ${event.message}`, { code: event.code }));
    } else if (event.type === 'Goodbye') {
      pending.reject(new QuiverError('goodbye', event.reason, { code: event.code }));
      this.client.onUnsolicited(this, id, event);
    } else {
      pending.resolve(event);
    }
  }

  private async acceptStreams(): Promise<void> {
    const reader = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        void this.readSubscription(value);
      }
    } catch {
      // The session ended; `closed` reports why.
    }
  }

  /** Reads one server-opened stream: `SubscriptionStream` header, then publications and
   *  presence changes. */
  private async readSubscription(stream: ReadableStream<Uint8Array>): Promise<void> {
    const reader = stream.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    let header: { id: number; room: string } | null = null;
    // A stale stream (an earlier subscription's) is read to its end and discarded.
    let draining = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        if (draining) continue;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (!frame) continue;
          if (header === null) {
            if (frame.event.type !== 'SubscriptionStream') {
              throw new DecodeError(`subscription stream starts with ${frame.event.type}`);
            }
            header = { id: frame.id, room: frame.event.room };
            if (!this.client.isCurrent(header.room, header.id)) draining = true;
          } else if (frame.event.type === 'Publication') {
            if (frame.event.room !== header.room) {
              throw new DecodeError(`publication for ${frame.event.room} on the stream of ${header.room}`);
            }
            if (!this.client.deliver(header.id, header.room, frame.event.position, frame.event.payload)) draining = true;
          } else if (frame.event.type === 'Joined' || frame.event.type === 'Left') {
            const { type, room, member } = frame.event;
            if (room !== header.room) throw new DecodeError(`${type} for ${room} on the stream of ${header.room}`);
            if (!this.client.deliverPresence(header.id, { type, room, member })) draining = true;
          }
          if (draining) break;
        }
      }
    } catch (e) {
      if (e instanceof DecodeError) {
        this.client.report(
          new QuiverError('protocol', `bad frame on the stream of ${header?.room ?? 'an unknown room'}: ${e.message}`, {
            cause: e,
            ...(header ? { room: header.room } : {}),
          }),
        );
        reader.cancel().catch(() => undefined);
      }
      // Otherwise the stream was reset or the session ended: deliveries just stop.
    }
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

function parseHash(h: Uint8Array | string): Uint8Array<ArrayBuffer> {
  if (h instanceof Uint8Array) {
    if (h.length !== 32) throw new TypeError(`a SHA-256 certificate hash has 32 bytes, got ${h.length}`);
    return new Uint8Array(h);
  }
  const hex = String(h).replace(/[:\s]/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new TypeError(`certificate hash must be 64 hex digits (SHA-256), got ${JSON.stringify(h)}`);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new QuiverError('timeout', `${what} took longer than ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

function closeQuietly(wt: WebTransport, reason = ''): void {
  try {
    wt.close({ closeCode: 0, reason });
  } catch {
    // Already closed.
  }
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message || e.name : String(e);
}

function asQuiverError(e: unknown): QuiverError {
  if (e instanceof QuiverError) return e;
  return new QuiverError('transport', errorMessage(e), { cause: e });
}

