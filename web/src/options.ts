// The client's public options and events (what an app passes to `new QuiverClient(...)` and
// what it can listen to), and their validation and defaults.

import { DEFAULT_MAX_FRAME, MAX_MAX_FRAME, type Limits, type Position, type Recovery } from './codec.js';
import { MAX_TIMER, type QuiverError } from './errors.js';
import type { GoodbyeInfo } from './session.js';
import type { Message, Subscription } from './subscription.js';
import { TRANSPORT_KINDS, type RememberFailure, type TransportKind, type WebSocketConstructor, type WebTransportConstructor } from './transport.js';

/** A connection (or a subscription) that lasted this long (ms) resets its reconnect backoff. */
export const STABLE_MS = 5_000;
/** How long after a subscription's stream ends its `Unsubscribed` may still come. */
export const STREAM_END_GRACE_MS = 5_000;

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface ReconnectOptions {
  /** Upper bound of the first retry delay (at least 100 ms). Each attempt doubles it, up to
   *  `maxDelayMs` (at least 1 s). */
  initialDelayMs: number;
  maxDelayMs: number;
}

export interface HeartbeatOptions {
  /** Silence (nothing received) after which a `Ping` is sent. Default 1000 ms. */
  idleMs: number;
  /** How long after that `Ping` something must arrive, else the connection is presumed dead and
   *  replaced. Default 2000 ms: a dead server is noticed within `idleMs + timeoutMs` (3 s). */
  timeoutMs: number;
}

export interface ClientOptions {
  /** WebTransport URL of the server, e.g. `https://127.0.0.1:4433/v1`; or, for WebSocket only,
   *  a `ws:`/`wss:` URL. */
  url?: string | URL;
  /** Several servers instead of `url` (one instance per address, no load balancer): each entry
   *  is what `url` accepts, and gets its WebSocket URL from it the same way. The first
   *  connection goes to the first; every later attempt (after a lost connection or a failed
   *  attempt) to the next, round robin, with the usual backoff. Not with `url` nor
   *  `webSocketUrl`. */
  urls?: readonly (string | URL)[];
  /** WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws`. Default: `wss://` on the host and port of
   *  `url`, path `/v1/ws` (a server with a real certificate serves both on one port number). */
  webSocketUrl?: string | URL;
  /** Transports to try, in order, on every connection attempt. Default
   *  `["webtransport", "websocket"]`; unavailable ones (no `WebTransport` in this browser, no
   *  URL for it) are skipped. */
  transports?: readonly TransportKind[];
  /** How long WebTransport may take to be ready before the next transport is tried, when there is
   *  one (blocked UDP is silent, not refused). Default 2500 ms. */
  webTransportTimeoutMs?: number;
  /** After WebTransport failed and WebSocket then worked, later attempts skip WebTransport:
   *  remembered for this page (`'page'`, the default), also across reloads of the tab
   *  (`'sessionStorage'`), or not at all (`false`), for `webTransportRetryMs`. */
  rememberWebTransportFailure?: RememberFailure;
  /** How long a remembered WebTransport failure keeps attempts on WebSocket; the first attempt
   *  after it tries WebTransport again (a server restarting during an attempt fails it too).
   *  Default 300000 (5 minutes). A session keeps its transport: the change comes at a reconnect. */
  webTransportRetryMs?: number;
  /** Returns a JWT. Called before every connection attempt and before the token expires. */
  token: () => string | Promise<string>;
  /** SHA-256 hashes (bytes or hex) of self-signed certificates to trust (development,
   *  WebTransport only: a WebSocket relies on the browser's certificate checks). */
  serverCertificateHashes?: readonly (Uint8Array | string)[];
  /** `Hello.client`: free text, at most 1,024 bytes (UTF-8). */
  clientName?: string;
  /** Backoff (with full jitter) between connection attempts; `false` never reconnects. */
  reconnect?: Partial<ReconnectOptions> | false;
  /** Limit for the token callback, the handshake and the Welcome, each. Default 10 s. */
  connectTimeoutMs?: number;
  /** How long to wait for the reply to a command, counted from when it is written. An
   *  acknowledged publish made while disconnected that is not sent within it is withdrawn and
   *  rejects with kind `timeout` (never sent). Also how long the transport may hold unsent bytes
   *  without taking any (a server that stopped reading) before the session is replaced, kind
   *  `timeout`. Also the most `close()` takes to carry out the publishes already accepted.
   *  Default 10 s. Delays above 2^31-1 ms are taken as that (setTimeout's longest). */
  requestTimeoutMs?: number;
  /** Ping period for RTT readings; 0 disables. Default 5 s. */
  pingIntervalMs?: number;
  /** Dead-server detection while the session is otherwise silent; `false` disables it (the
   *  transport's own timeouts, ~30 s, then apply). */
  heartbeat?: Partial<HeartbeatOptions> | false;
  /** How long after `Subscribed` a subscription's stream (its `SubscriptionStream`) may take to
   *  arrive before it is reported missing and the session replaced, so that the room is
   *  subscribed again (over WebTransport, with WebSocket among `transports`, the client moves
   *  there: the browser's limit of streams is the usual cause). A safety net: the server itself
   *  ends such a subscription with 114 stream_limit after 5 s, which the client handles the same
   *  way. 0 disables. Default 8000 ms. */
  streamTimeoutMs?: number;
  /** Space commands to `Welcome.limits.commands_per_second` so that a reconnect burst (many
   *  re-subscribes, queued publishes) is never refused as `rate_limited`. Default true. */
  paceCommands?: boolean;
  /** Publishes kept while disconnected, sent on reconnect; also the most commands that may wait
   *  while connected, for the pacer or for the transport to take what it holds unsent (past
   *  max(1 MiB, 4 × `max_frame`), publishes and calls wait). Past either, a publish or a call
   *  rejects with kind `buffer_full`. Counted in commands, not bytes. Default 1000. An integer,
   *  0 or more (else a TypeError); 0: nothing waits, so a publish or call is sent only if it can
   *  be at once (connected, a pacer token free, the transport not full). */
  maxQueuedPublishes?: number;
  /** Largest frame accepted from the server before `Welcome`; raised to
   *  `Welcome.limits.maxFrame` if larger, but never past `maxFrameCeiling`. */
  maxFrame?: number;
  /** Largest frame accepted from the server whatever it announces (default 1 MiB, at most
   *  16 MiB): a server announcing 4 GiB could otherwise make one frame cost gigabytes here. A
   *  larger frame ends the connection. Raise it for a server with a `max_payload` near 1 MiB. */
  maxFrameCeiling?: number;
  /** WebTransport implementation; defaults to the global one (tests pass a fake). */
  WebTransport?: WebTransportConstructor;
  /** WebSocket implementation; defaults to the global one (Node 22+; on Node 20 pass the `ws` package's, or run with --experimental-websocket; tests pass a fake). */
  WebSocket?: WebSocketConstructor;
}

export interface SessionInfo {
  session: string;
  user: string;
  tenant: string;
  /** Token expiry, Unix seconds; null if it never expires. */
  expiresAt: number | null;
  limits: Limits;
}

export interface RecoveryInfo {
  room: string;
  /** `Recovered`: missed messages are replayed before live ones. `Failed`: messages were missed,
   *  re-sync the room's state from elsewhere. */
  recovery: Recovery;
  /** The position resumed from. */
  resumedFrom: Position;
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
  /** The session is on another transport than the previous one (or the first). `skipped` says
   *  why an earlier transport in `transports` was not used, when one failed. */
  transport: [transport: TransportKind, skipped: QuiverError | null];
}

export interface PublishOptions {
  /** Wait for the server's `Published` (with the message's position, if the room has history). */
  ack?: boolean;
  /** Rooms in `latest` namespaces only (PROTOCOL.md section 10): over WebTransport, send the
   *  publication as one QUIC datagram when it fits (never retransmitted, never answered; server
   *  refusals are not reported). Otherwise, and with `ack`, an ordinary publish; so too in a room
   *  this client is subscribed to and the server said is reliable. A room the client does not
   *  know gets the datagram, which the server drops if the room is not `latest`. For values where
   *  only the newest matters, sent many times a second. The server meters datagrams with the
   *  commands, so each one takes a token of the command pacer: one that finds none free waits as
   *  its room's newest value, replacing an older one still waiting, and goes when a token frees
   *  up (at most 64 rooms wait; a value for another room is dropped, `datagramsDropped`). */
  unreliable?: boolean;
}

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

/** How many are in a room (`presenceStats`), however many: a `presence` list holds only what
 *  fits in one frame. */
export interface PresenceStats {
  /** Sessions subscribed to the room, on every instance. */
  sessions: number;
  /** Distinct users among them. */
  users: number;
}

/** Options of `QuiverClient.call`. */
export interface CallOptions {
  /** How long the backend may take, in milliseconds; the server's default when absent. The
   *  server caps it (and this client waits at most 2^31-1 ms, setTimeout's longest delay). */
  timeoutMs?: number;
  /** Passed to the backend as is, so it can recognise a retried call (at most 128 bytes). */
  idempotencyKey?: string;
  /** Aborting rejects the call's promise at once with the signal's reason. */
  signal?: AbortSignal;
}

/** @internal Options with every default filled in. */
export interface ResolvedOptions {
  token: () => string | Promise<string>;
  clientName: string;
  reconnect: ReconnectOptions | false;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  pingIntervalMs: number;
  heartbeat: HeartbeatOptions | false;
  paceCommands: boolean;
  maxQueuedPublishes: number;
  maxFrame: number;
  maxFrameCeiling: number;
  webTransportTimeoutMs: number;
  remember: RememberFailure;
  webTransportRetryMs: number;
  streamTimeoutMs: number;
}

/** @internal One server to connect to: its URL per transport (null where it has none). */
export interface Target {
  wtUrl: URL | null;
  wsUrl: URL | null;
}

/** @internal The URLs of one entry of `url`/`urls` (`what` names it in errors): an https: URL
 *  is WebTransport's, with WebSocket's derived from it unless `wsUrl` is given. */
function resolveTarget(value: string | URL | undefined, wsUrl: URL | null, what: string): Target {
  if (value === undefined) return { wtUrl: null, wsUrl };
  let url: URL;
  try {
    url = new URL(value);
  } catch (e) {
    if (what === 'url') throw e;
    throw new TypeError(`${what} is not a URL: ${JSON.stringify(String(value))}`, { cause: e });
  }
  if (url.protocol === 'https:') {
    return { wtUrl: url, wsUrl: wsUrl ?? new URL(`wss://${url.host}${url.pathname.replace(/\/$/, '')}/ws`) };
  }
  if (url.protocol === 'ws:' || url.protocol === 'wss:') return { wtUrl: null, wsUrl: wsUrl ?? url };
  throw new TypeError(`${what} must be https: (WebTransport) or ws:/wss: (WebSocket), got ${url.href}`);
}

/** Longest `clientName`, in UTF-8 bytes. */
const MAX_CLIENT_NAME = 1024;

/** @internal Checks the options (a clear TypeError for each mistake) and fills in defaults:
 *  URLs per transport and server, the transports usable here, certificate hashes. */
export function resolveOptions(options: ClientOptions, clientName: string) {
  if (typeof options?.token !== 'function') throw new TypeError('options.token must be a function returning a JWT');
  const retry = options.webTransportRetryMs;
  if (retry !== undefined && !(typeof retry === 'number' && Number.isFinite(retry) && retry >= 0)) {
    throw new TypeError(`webTransportRetryMs must be a finite number of milliseconds, 0 or more, got ${String(retry)}`);
  }
  const wsUrl: URL | null = options.webSocketUrl === undefined ? null : new URL(options.webSocketUrl);
  if (wsUrl && wsUrl.protocol !== 'ws:' && wsUrl.protocol !== 'wss:') {
    throw new TypeError(`webSocketUrl needs a ws: or wss: URL, got ${wsUrl.href}`);
  }
  let targets: Target[];
  if (options.urls !== undefined) {
    if (options.url !== undefined) throw new TypeError('give url or urls, not both');
    if (!Array.isArray(options.urls) || options.urls.length === 0) {
      throw new TypeError(`urls must be a non-empty array of server URLs, got ${JSON.stringify(options.urls)}`);
    }
    if (wsUrl) {
      throw new TypeError(
        'webSocketUrl names one server and cannot be combined with urls: list ws:/wss: URLs in urls, or https: ones (their WebSocket URL is wss: on the same host and port)',
      );
    }
    targets = options.urls.map((u, i) => resolveTarget(u, null, `urls[${i}]`));
  } else {
    targets = [resolveTarget(options.url, wsUrl, 'url')];
  }
  const wanted = options.transports ?? TRANSPORT_KINDS;
  if (wanted.length === 0 || wanted.some((t) => !TRANSPORT_KINDS.includes(t))) {
    throw new TypeError(`transports must list some of ${TRANSPORT_KINDS.join(', ')}, got ${JSON.stringify(wanted)}`);
  }
  const WT = options.WebTransport ?? (globalThis as { WebTransport?: WebTransportConstructor }).WebTransport;
  const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  const usable = (t: TransportKind, target: Target) => (t === 'webtransport' ? WT && target.wtUrl : WS && target.wsUrl);
  // Every server must be reachable somehow, or each round of the rotation would waste an attempt.
  for (const [i, target] of targets.entries()) {
    if (wanted.some((t) => usable(t, target))) continue;
    const why = wanted.map((t) =>
      t === 'webtransport'
        ? WT
          ? 'webtransport: no https: url'
          : 'WebTransport is not available here (a secure context in a browser that has it is needed)'
        : WS
          ? 'websocket: no ws:/wss: url'
          : 'WebSocket is not available here',
    );
    throw new TypeError(`no usable transport${options.urls !== undefined ? ` for urls[${i}]` : ''}: ${why.join('; ')}`);
  }
  const transports = wanted.filter((t) => targets.some((target) => usable(t, target)));
  const hashes: WebTransportHash[] = (options.serverCertificateHashes ?? []).map((h) => ({
    algorithm: 'sha-256',
    value: parseHash(h),
  }));
  // The Hello carries it before the server's `max_frame` is known: a name past what every server
  // takes (8,192 bytes a frame) would close the client for good (3001, no reconnect).
  const name = options.clientName ?? clientName;
  if (typeof name !== 'string' || new TextEncoder().encode(name).length > MAX_CLIENT_NAME) {
    throw new TypeError(`clientName must be a string of at most ${MAX_CLIENT_NAME} bytes (UTF-8), got ${typeof name === 'string' ? `${new TextEncoder().encode(name).length} bytes` : typeof name}`);
  }
  const opts: ResolvedOptions = {
    token: options.token,
    clientName: name,
    reconnect: options.reconnect === false ? false : reconnectOptions(options.reconnect),
    connectTimeoutMs: delay('connectTimeoutMs', options.connectTimeoutMs, 10_000, 1),
    requestTimeoutMs: delay('requestTimeoutMs', options.requestTimeoutMs, 10_000, 1),
    pingIntervalMs: delay('pingIntervalMs', options.pingIntervalMs, 5_000, 0),
    heartbeat:
      options.heartbeat === false
        ? false
        : {
            idleMs: delay('heartbeat.idleMs', options.heartbeat?.idleMs, 1_000, 1),
            timeoutMs: delay('heartbeat.timeoutMs', options.heartbeat?.timeoutMs, 2_000, 1),
          },
    paceCommands: options.paceCommands ?? true,
    maxQueuedPublishes: count('maxQueuedPublishes', options.maxQueuedPublishes, 1000),
    maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
    maxFrameCeiling: Math.min(options.maxFrameCeiling ?? 1024 * 1024, MAX_MAX_FRAME),
    webTransportTimeoutMs: delay('webTransportTimeoutMs', options.webTransportTimeoutMs, 2_500, 1),
    remember: options.rememberWebTransportFailure ?? 'page',
    webTransportRetryMs: options.webTransportRetryMs ?? 300_000,
    streamTimeoutMs: delay('streamTimeoutMs', options.streamTimeoutMs, 8_000, 0),
  };
  return { opts, transports, targets, hashes, WT, WS };
}

/**
 * A delay option in milliseconds, `fallback` when absent: a number of at least `min` (a TypeError
 * otherwise, NaN included), taken as at most setTimeout's longest delay, 2^31-1 ms (24.8 days;
 * so Infinity means that long). A longer delay fired at once: a `requestTimeoutMs` of 2^31 timed
 * every command out as it was written (outside audit 104, F6).
 */
function delay(name: string, value: number | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value) || value < min) {
    throw new TypeError(`${name} must be a number of milliseconds, ${min} or more, got ${String(value)}`);
  }
  return Math.min(value, MAX_TIMER);
}

/**
 * A count option, `fallback` when absent: an integer, 0 or more (a TypeError otherwise). NaN was
 * taken silently as no bound at all (every comparison with it is false; outside audit 121, F4).
 */
function count(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`${name} must be an integer, 0 or more, got ${String(value)}`);
  }
  return value;
}

/**
 * The backoff with its floors: a first delay of at least 100 ms and a ceiling of at least 1 s.
 * Zeros made a client against a closed port try (and ask its token function) about 375 times
 * a second (outside audit 46, 4).
 */
function reconnectOptions(given: Partial<ReconnectOptions> | undefined): ReconnectOptions {
  const initialDelayMs = Math.max(100, given?.initialDelayMs ?? 500);
  const maxDelayMs = Math.max(initialDelayMs, 1_000, given?.maxDelayMs ?? 15_000);
  return { initialDelayMs, maxDelayMs };
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
