// Quiver WebTransport client. Generated from web/src by `npm run build`: do not edit.
/** Bytes in the big-endian length prefix of every frame. */
export declare const LENGTH_PREFIX = 4;
/** The protocol's default maximum frame body (`Welcome.limits.max_frame` may announce another). */
export declare const DEFAULT_MAX_FRAME: number;
/** The smallest `max_frame` a server announces (PROTOCOL §3). */
export declare const MIN_MAX_FRAME: number;
/** The largest `max_frame` a server may announce (16 MiB, PROTOCOL.md §3): no client takes a
 *  larger frame, whatever a server says. */
export declare const MAX_MAX_FRAME: number;
/** Protocol version spoken by this codec (`Hello.version`, CONNECT path `/v1`). */
export declare const PROTOCOL_VERSION = 1;
/** A position in a room's history. u64 on the wire, so BigInt here. */
export interface Position {
	epoch: bigint;
	offset: bigint;
}
export interface Limits {
	maxFrame: number;
	maxPayload: number;
	maxSubscriptions: number;
	commandsPerSecond: number;
}
/** One session present in a room: the same user may be present with several sessions. */
export interface Member {
	user: string;
	session: string;
}
/** One publication kept in a room's history, as a `History` reply carries it. */
export interface HistoryItem {
	position: Position;
	payload: Uint8Array;
}
export type Recovery = {
	type: "NotRequested";
} | {
	type: "Recovered";
	replayed: number;
} | {
	type: "Failed";
};
/** Client to server. The order of the variants in `COMMAND_TYPES` is the wire format. */
export type Command = {
	type: "Hello";
	version: number;
	client: string;
} | {
	type: "Subscribe";
	room: string;
	resume: Position | null;
} | {
	type: "Unsubscribe";
	room: string;
} | {
	type: "Publish";
	room: string;
	payload: Uint8Array;
	ack: boolean;
} | {
	type: "Ping";
} | {
	type: "Refresh";
	token: string;
} | {
	type: "Presence";
	room: string;
} | {
	type: "History";
	room: string;
	since: Position | null;
	limit: number;
}
/** `timeoutMs` 0 takes the server's default; `idempotencyKey` '' for none (PROTOCOL.md §11). */
 | {
	type: "Call";
	method: string;
	payload: Uint8Array;
	timeoutMs: number;
	idempotencyKey: string;
} | {
	type: "PresenceStats";
	room: string;
};
/** Server to client. The order of the variants in `EVENT_TYPES` is the wire format. */
type Event$1 = {
	type: "Welcome";
	version: number;
	session: string;
	user: string;
	tenant: string;
	/** Token expiry in Unix seconds; null if the token never expires. */
	expiresAt: bigint | null;
	limits: Limits;
}
/** `subscription`: the id datagrams of a `latest` room carry (PROTOCOL.md section 10);
 *  absent (null) for every other room and from older servers. */
 | {
	type: "Subscribed";
	room: string;
	position: Position | null;
	recovery: Recovery;
	subscription?: bigint | null;
} | {
	type: "Unsubscribed";
	room: string;
	code: number;
	reason: string;
} | {
	type: "Published";
	position: Position | null;
} | {
	type: "Pong";
} | {
	type: "Refreshed";
	expiresAt: bigint | null;
} | {
	type: "Error";
	code: number;
	message: string;
} | {
	type: "Publication";
	room: string;
	position: Position | null;
	payload: Uint8Array;
} | {
	type: "SubscriptionStream";
	room: string;
} | {
	type: "Goodbye";
	code: number;
	reason: string;
	reconnect: boolean;
}
/** `truncated`: the server listed only the members that fit in one frame (older servers never
 *  send the field; it then reads as false). */
 | {
	type: "Presence";
	room: string;
	members: Member[];
	truncated: boolean;
} | {
	type: "Joined";
	room: string;
	member: Member;
} | {
	type: "Left";
	room: string;
	member: Member;
}
/** A page of a history room, oldest first; `truncated`: more is kept after the last one. */
 | {
	type: "History";
	room: string;
	position: Position | null;
	publications: HistoryItem[];
	truncated: boolean;
}
/** A value of a `latest` room that did not go as a datagram (PROTOCOL.md section 10). */
 | {
	type: "Latest";
	room: string;
	sequence: bigint;
	payload: Uint8Array;
} | {
	type: "Reply";
	payload: Uint8Array;
}
/** Every session in a room, on every instance, and its distinct users, counted. */
 | {
	type: "PresenceStats";
	room: string;
	sessions: number;
	users: number;
};
export interface ClientFrame {
	id: number;
	command: Command;
}
export interface ServerFrame {
	id: number;
	event: Event$1;
}
export type CommandType = Command["type"];
export type EventType = Event$1["type"];
export declare const COMMAND_TYPES: readonly CommandType[];
export declare const EVENT_TYPES: readonly EventType[];
/** Bytes that are not a valid frame or message of this protocol. The stream is unusable after. */
export declare class DecodeError extends Error {
	name: string;
}
/** Encodes a command as a complete frame, length prefix included. Throws RangeError on values
 *  that do not fit their wire type. */
export declare function encodeCommand(frame: ClientFrame): Uint8Array;
/** Encodes an event as a complete frame (what a server sends; used by tests and fakes). */
export declare function encodeEvent(frame: ServerFrame): Uint8Array;
/**
 * Decodes one frame body (no length prefix) from the server. Returns null for an event type this
 * version does not know: the protocol says to skip such frames. Throws DecodeError on malformed
 * bytes. Bytes after a complete message are ignored (later revisions may append fields).
 * Byte fields are views into `body`.
 */
export declare function decodeEvent(body: Uint8Array): ServerFrame | null;
/** A datagram from the server: the newest value of a `latest` subscription (PROTOCOL.md
 *  section 10). Throws DecodeError on a malformed header. */
export interface LatestDatagram {
	subscription: bigint;
	sequence: bigint;
	payload: Uint8Array;
}
export declare function decodeLatestDatagram(datagram: Uint8Array): LatestDatagram;
/** Encodes a server datagram (used by tests and fakes). */
export declare function encodeLatestDatagram(d: LatestDatagram): Uint8Array;
/** A client datagram: an unacknowledged publication to a `latest` room. */
export declare function encodePublishDatagram(room: string, payload: Uint8Array): Uint8Array;
/** Decodes one frame body from a client (what a server reads; used by tests and fakes).
 *  Returns null for an unknown command type. */
export declare function decodeCommand(body: Uint8Array): ClientFrame | null;
/**
 * Splits a byte stream into frame bodies. The announced length is checked against `maxFrame`
 * as soon as the 4-byte prefix is in, before any of the body is buffered, so a peer can never
 * make it hold more than one partial frame of at most `maxFrame` bytes.
 *
 * After an error the stream is out of sync: stop reading it.
 */
export declare class FrameDecoder {
	maxFrame: number;
	private readonly header;
	private headerFill;
	private body;
	private bodyFill;
	private failed;
	constructor(maxFrame?: number);
	/** Feeds bytes read from the stream; returns every frame body they complete, in order. */
	push(chunk: Uint8Array): Uint8Array[];
	/** Bytes of an incomplete frame held back. Non-zero when the stream ends means truncation. */
	get buffered(): number;
	private fail;
}
export declare const ErrorCode: {
	readonly internal: 100;
	readonly bad_request: 101;
	readonly invalid_room: 102;
	readonly permission_denied: 103;
	readonly already_subscribed: 104;
	readonly not_subscribed: 105;
	readonly too_many_subscriptions: 106;
	readonly rate_limited: 107;
	readonly invalid_token: 108;
	readonly payload_too_large: 109;
	readonly unknown_command: 110;
	readonly unavailable: 111;
	readonly slow_consumer: 112;
	readonly session_closing: 113;
	readonly stream_limit: 114;
	readonly quota_exceeded: 115;
	readonly unsubscribed: 116;
	readonly unrecoverable_position: 117;
	readonly deadline_exceeded: 118;
	readonly backend_error: 119;
	readonly stream_stopped: 120;
};
export declare const CloseCode: {
	readonly shutdown: 3000;
	readonly protocol_error: 3001;
	readonly token_expired: 3002;
	readonly rate_abuse: 3003;
	readonly unsupported_version: 3004;
	readonly server_error: 3005;
	readonly hello_timeout: 3006;
	readonly token_invalid: 3007;
	readonly over_quota: 3008;
	readonly disconnected: 3009;
	readonly not_reading: 3010;
	readonly reconnect: 3011;
};
/** The snake_case label of an error or close code, e.g. `permission_denied`; `code_N` if unknown. */
export declare function codeLabel(code: number): string;
/** What went wrong, as the app sees it. */
export type ErrorKind = 
/** The server refused a command (`code` is an error code, e.g. 103 permission_denied). */
"command"
/** The server ended a subscription (`code`, `room`). */
 | "subscription"
/** No transport could open a session: unreachable, refused, or (WebTransport, which cannot
 *  tell) a refused token or a certificate mismatch. */
 | "handshake"
/** The server refused the token for good (WebSocket close 3007 `token_invalid`): the client
 *  stops retrying. Fix the token source, then create a new client. */
 | "auth"
/** The token callback threw, or a token refresh was refused. */
 | "token"
/** The server said Goodbye (`code` is a close code, e.g. 3002 token_expired). */
 | "goodbye"
/** The server sent bytes this client cannot decode. */
 | "protocol"
/** The connection was lost or could not be used. */
 | "transport"
/** No answer in time (including a server that stopped answering pings). */
 | "timeout"
/** The client was closed, or the request could not survive a reconnect. */
 | "closed"
/** Too many publishes queued while disconnected, or (publishes and calls) waiting while
 *  connected, for the pacer or for a transport full of unsent bytes: never sent. */
 | "buffer_full"
/** A message handler threw. */
 | "handler";
export declare class QuiverError extends Error {
	readonly kind: ErrorKind;
	name: string;
	/** Protocol code (error or close code) when the server sent one. */
	readonly code: number | null;
	readonly room: string | null;
	/** True when the server did not carry the command out: its session ended before the command
	 *  was written, or a draining server's goodbye (close code 3000) came before the answer (such
	 *  a server answers every command it carries out first). Sending it again is safe, a `call()`
	 *  included. False when unknown: after any other end a command may or may not have run. */
	get notCarriedOut(): boolean;
	constructor(kind: ErrorKind, message: string, extra?: {
		code?: number;
		room?: string;
		cause?: unknown;
	});
	/** Snake_case label of `code`, e.g. `permission_denied`; null without a code. */
	get label(): string | null;
}
export type TransportKind = "webtransport" | "websocket";
export type WebTransportConstructor = new (url: string, options?: WebTransportOptions) => WebTransport;
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;
/** Where a failed WebTransport is remembered: this page (module state), also `sessionStorage`
 *  (survives reloads of the tab), or nowhere. */
export type RememberFailure = "page" | "sessionStorage" | false;
/** Forgets every remembered WebTransport failure (this page's, and in `sessionStorage`), so the
 *  next connection attempt tries WebTransport first again. */
export declare function forgetWebTransportFailures(): void;
export interface GoodbyeInfo {
	code: number;
	reason: string;
	reconnect: boolean;
}
/** A session joined or left a subscribed room (namespaces with presence events only). */
export interface PresenceChange {
	type: "Joined" | "Left";
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
/** One publication received in a room. */
export declare class Message {
	readonly room: string;
	/** Null for rooms without history. */
	readonly position: Position | null;
	readonly payload: Uint8Array;
	constructor(room: string, 
	/** Null for rooms without history. */
	position: Position | null, payload: Uint8Array);
	text(): string;
	json<T = unknown>(): T;
}
/** How a room delivers (PROTOCOL.md section 10): every publication in order (`reliable`), or
 *  only the newest value (`latest`: datagrams where they fit, older values dropped). */
export type DeliveryMode = "reliable" | "latest";
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
/** A room the app subscribed to. It lives across reconnects until `unsubscribe()`. */
export declare class Subscription implements AsyncIterable<Message> {
	readonly room: string;
	private readonly handler;
	private readonly bufferSize;
	private readonly owner;
	private readonly presenceHandler;
	private readonly bufferBytes;
	/** Position of the last message seen, used to resume after a reconnect. */
	position: Position | null;
	/** How the latest resume went, if one was asked for. `Failed` too when the replay contradicted
	 *  a `Recovered` (see the `recovery` event). */
	recovery: Recovery | null;
	/** Messages dropped because the async iterator did not keep up. */
	dropped: number;
	/** How the room delivers, as the server said when it confirmed the subscription. */
	mode: DeliveryMode;
	/** For `latest` rooms: how values arrived. */
	readonly latestStats: LatestStats;
	/** Sequence of the newest value applied on the current server subscription. */
	private newest;
	private queue;
	/** Payload bytes in `queue`. */
	private queued;
	private waiter;
	private ended;
	get active(): boolean;
	unsubscribe(): Promise<void>;
	[Symbol.asyncIterator](): AsyncIterator<Message>;
}
export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";
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
	state: [
		state: ConnectionState,
		cause: QuiverError | null
	];
	error: [
		error: QuiverError
	];
	welcome: [
		info: SessionInfo
	];
	goodbye: [
		info: GoodbyeInfo
	];
	recovery: [
		info: RecoveryInfo
	];
	/** The server confirmed a subscription: the first time, and again after every re-subscribe. */
	subscribed: [
		subscription: Subscription
	];
	rtt: [
		ms: number
	];
	/** The session is on another transport than the previous one (or the first). `skipped` says
	 *  why an earlier transport in `transports` was not used, when one failed. */
	transport: [
		transport: TransportKind,
		skipped: QuiverError | null
	];
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
export declare const CLIENT_NAME = "quiver-ts/0.2";
/**
 * Starts connecting at once and keeps a session up until `close()`. Listen to `state` and `error`
 * to show the connection to the user; subscriptions and publishes may be made in any state.
 */
export declare class QuiverClient {
	private readonly opts;
	private readonly dialer;
	private readonly listeners;
	private readonly subs;
	private readonly outbox;
	private active;
	/** The session of a connection attempt, until its Welcome: `close()` ends it too. */
	private connecting;
	/** Aborted by `close()`: ends a connection attempt still waiting for its token or its
	 *  handshake (the WebTransport session's `ready`, the WebSocket upgrade), which otherwise held
	 *  `close()` for up to `connectTimeoutMs` (outside audit 121, F2). */
	private readonly stop;
	private lastId;
	private closing;
	private unsentDatagrams;
	private wake;
	private readonly finished;
	/** The Goodbye of the latest connection attempt, if the server sent one. */
	private lastGoodbye;
	/** The token the latest attempt used, and the last one the server refused as expired (3002):
	 *  the same one twice means the token callback has no fresher one. */
	private lastToken;
	private expiredToken;
	/** Why the client closed by itself (e.g. an `auth` error), for `ready()` after the fact. */
	private closedBy;
	private currentState;
	private currentTransport;
	private welcome;
	private lastRtt;
	constructor(options: ClientOptions);
	/** `closed` from the moment `close()` is called, awaited or not (the `state` event follows
	 *  once the session is shut). */
	get state(): ConnectionState;
	/** Transport of the current (or, while reconnecting, the latest) session; null before the
	 *  first. */
	get transport(): TransportKind | null;
	/** Latest `Welcome`, null before the first. */
	get info(): SessionInfo | null;
	/** Latest round-trip time in milliseconds. */
	get rtt(): number | null;
	/** `unreliable` publications this client dropped, over its life: each found no pacer token free
	 *  while the newest values of 64 other rooms already waited for one. */
	get datagramsDropped(): number;
	/** Adds a listener; returns a function that removes it. */
	on<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => void): () => void;
	/** Resolves when connected (at once if already), rejects if the client closes first. */
	ready(): Promise<void>;
	/**
	 * Subscribes to a room. Messages go to `handler`, or, without one, to the returned
	 * subscription's async iterator. Resolves once the server confirmed (after a reconnect if the
	 * client is disconnected); rejects with the server's error (e.g. code 103 permission_denied).
	 */
	subscribe(room: string, handler?: (message: Message) => void, options?: SubscribeOptions): Promise<Subscription>;
	/** Stops a subscription; its handler gets no further messages. Unknown rooms are ignored. */
	unsubscribe(room: string): Promise<void>;
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
	publish(room: string, payload: Uint8Array | string, options?: PublishOptions): Promise<Position | null>;
	/** Measures the round-trip time to the server, in milliseconds. The `Ping` goes at once, ahead
	 *  of what waits for the pacer: `flush()` waits for what was published before it. */
	ping(): Promise<number>;
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
	flush(): Promise<void>;
	/**
	 * Who is in a room now: every session subscribed to it, on every server instance. Needs
	 * subscribe permission, not a subscription. Rejects when disconnected, and with code 101
	 * bad_request when the room's namespace has no presence. To keep the list current, call it on
	 * `subscribed` and apply the subscription's `onPresence` changes.
	 */
	presence(room: string): Promise<Member[]>;
	/**
	 * How many sessions, and distinct users, are subscribed to a room on every server instance:
	 * the whole count, where `presence()` lists only the members that fit in one frame. The same
	 * permission and namespace rules as `presence()`; rejects when disconnected.
	 */
	presenceStats(room: string): Promise<PresenceStats>;
	/**
	 * A page of a history room without subscribing (needs subscribe permission): the publications
	 * after `since` (from the oldest kept when omitted), oldest first, at most `limit` (default
	 * 100; the server caps it at 1,000 and at one frame). When `truncated`, call again with
	 * `since` = the last publication's position. Rejects when disconnected, with code 117
	 * unrecoverable_position when `since` is no longer in history (page from the start and
	 * re-sync), and with 101 bad_request when the room's namespace keeps no history.
	 */
	history(room: string, options?: HistoryOptions): Promise<HistoryPage>;
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
	call(method: string, payload: Uint8Array | string, options?: CallOptions): Promise<Uint8Array>;
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
	close(): Promise<void>;
	private emit;
	private setState;
	private nextId;
	/** Connects, waits for the session to end, backs off, and again, until closed. */
	private run;
	/** One connection attempt: a token, then each transport in turn until one gets a Welcome. */
	private open;
	/** Hello, Welcome. A Goodbye instead (a refused token on WebSocket) ends the attempt with it. */
	private hello;
	/** Runs a welcomed session until it ends; returns why it ended. */
	private serve;
	/**
	 * Ends a WebTransport session that cannot carry the app's subscriptions (the browser's limit
	 * of incoming streams, about 100) so that the reconnect goes to WebSocket, for the rest of this
	 * client's life. False when there is nowhere to move.
	 */
	private moveToWebSocket;
	private sleep;
	private shutdown;
}
/**
 * Creates a client and resolves once it is connected. It keeps retrying (with backoff) until
 * then; to see errors during the first attempts, create `new QuiverClient(options)`, add
 * listeners, and await `client.ready()` instead.
 */
export declare function connect(options: ClientOptions): Promise<QuiverClient>;

export {
	Event$1 as Event,
};

export {};
