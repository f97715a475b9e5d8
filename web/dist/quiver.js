// Quiver WebTransport client. Generated from web/src by `npm run build`: do not edit.
// src/codec.ts
var LENGTH_PREFIX = 4;
var DEFAULT_MAX_FRAME = 64 * 1024;
var PROTOCOL_VERSION = 1;
var COMMAND_TYPES = [
  "Hello",
  "Subscribe",
  "Unsubscribe",
  "Publish",
  "Ping",
  "Refresh",
  "Presence"
];
var EVENT_TYPES = [
  "Welcome",
  "Subscribed",
  "Unsubscribed",
  "Published",
  "Pong",
  "Refreshed",
  "Error",
  "Publication",
  "SubscriptionStream",
  "Goodbye",
  "Presence",
  "Joined",
  "Left"
];
var RECOVERY_TYPES = ["NotRequested", "Recovered", "Failed"];
var DecodeError = class extends Error {
  name = "DecodeError";
};
var MAX_U16 = 65535;
var MAX_U32 = 4294967295;
var MAX_U64 = (1n << 64n) - 1n;
var utf8Encoder = new TextEncoder();
var utf8Decoder = new TextDecoder("utf-8", { fatal: true });
var Writer = class {
  buf = new Uint8Array(64);
  len = 0;
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }
  raw(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  /** Unsigned LEB128 of a u16/u32 held in a JS number. */
  varint(value, max) {
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(`${value} is not an integer in 0..=${max}`);
    }
    let v = value;
    while (v >= 128) {
      this.byte(v % 128 | 128);
      v = Math.floor(v / 128);
    }
    this.byte(v);
  }
  varint64(value) {
    if (typeof value !== "bigint" || value < 0n || value > MAX_U64) {
      throw new RangeError(`${String(value)} is not a u64 (pass a BigInt)`);
    }
    let v = value;
    while (v >= 0x80n) {
      this.byte(Number(v & 0x7fn) | 128);
      v >>= 7n;
    }
    this.byte(Number(v));
  }
  bool(value) {
    this.byte(value ? 1 : 0);
  }
  bytes(value) {
    this.varint(value.length, MAX_U32);
    this.raw(value);
  }
  string(value) {
    this.bytes(utf8Encoder.encode(value));
  }
  option(value, write) {
    if (value === null) {
      this.byte(0);
    } else {
      this.byte(1);
      write(value);
    }
  }
  position(p) {
    this.varint64(p.epoch);
    this.varint64(p.offset);
  }
  member(m) {
    this.string(m.user);
    this.string(m.session);
  }
  /** The body with its length prefix in front. */
  frame() {
    const out = new Uint8Array(LENGTH_PREFIX + this.len);
    new DataView(out.buffer).setUint32(0, this.len);
    out.set(this.buf.subarray(0, this.len), LENGTH_PREFIX);
    return out;
  }
};
var Reader = class {
  constructor(buf) {
    this.buf = buf;
  }
  buf;
  pos = 0;
  byte() {
    const b = this.buf[this.pos];
    if (b === void 0) throw new DecodeError("unexpected end of frame");
    this.pos++;
    return b;
  }
  /** u16/u32 varint: at most ceil(bits/7) bytes and no bits beyond the type's width. */
  varint(max, maxBytes) {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte();
      value += (b & 127) * scale;
      if ((b & 128) === 0) {
        if (value > max) throw new DecodeError(`varint ${value} overflows its type (max ${max})`);
        return value;
      }
      scale *= 128;
    }
    throw new DecodeError("varint too long");
  }
  u16() {
    return this.varint(MAX_U16, 3);
  }
  u32() {
    return this.varint(MAX_U32, 5);
  }
  u64() {
    let value = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      const b = this.byte();
      value |= BigInt(b & 127) << shift;
      if ((b & 128) === 0) {
        if (value > MAX_U64) throw new DecodeError("varint overflows u64");
        return value;
      }
      shift += 7n;
    }
    throw new DecodeError("varint too long");
  }
  /** A bool appended at the end of a message by a later revision: absent (the frame ends
   *  here) reads as false. */
  trailingBool() {
    return this.pos < this.buf.length ? this.bool() : false;
  }
  bool() {
    const b = this.byte();
    if (b > 1) throw new DecodeError(`invalid bool byte ${b}`);
    return b === 1;
  }
  bytes() {
    const len = this.u32();
    if (len > this.buf.length - this.pos) throw new DecodeError("length exceeds frame");
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }
  string() {
    try {
      return utf8Decoder.decode(this.bytes());
    } catch (e) {
      if (e instanceof DecodeError) throw e;
      throw new DecodeError("string is not valid UTF-8");
    }
  }
  option(read) {
    const tag = this.byte();
    if (tag === 0) return null;
    if (tag === 1) return read();
    throw new DecodeError(`invalid option tag ${tag}`);
  }
  position() {
    return { epoch: this.u64(), offset: this.u64() };
  }
  member() {
    return { user: this.string(), session: this.string() };
  }
  /** postcard `Vec<T>`: varint count, then the elements. */
  list(read) {
    const count = this.u32();
    if (count > this.buf.length - this.pos) throw new DecodeError("count exceeds frame");
    const out = [];
    for (let i = 0; i < count; i++) out.push(read());
    return out;
  }
};
function encodeCommand(frame) {
  const w = new Writer();
  const c = frame.command;
  w.varint(frame.id, MAX_U32);
  w.varint(COMMAND_TYPES.indexOf(c.type), MAX_U32);
  switch (c.type) {
    case "Hello":
      w.varint(c.version, MAX_U16);
      w.string(c.client);
      break;
    case "Subscribe":
      w.string(c.room);
      w.option(c.resume, (p) => w.position(p));
      break;
    case "Unsubscribe":
      w.string(c.room);
      break;
    case "Publish":
      w.string(c.room);
      w.bytes(c.payload);
      w.bool(c.ack);
      break;
    case "Ping":
      break;
    case "Refresh":
      w.string(c.token);
      break;
    case "Presence":
      w.string(c.room);
      break;
  }
  return w.frame();
}
function encodeEvent(frame) {
  const w = new Writer();
  const e = frame.event;
  w.varint(frame.id, MAX_U32);
  w.varint(EVENT_TYPES.indexOf(e.type), MAX_U32);
  switch (e.type) {
    case "Welcome":
      w.varint(e.version, MAX_U16);
      w.string(e.session);
      w.string(e.user);
      w.string(e.tenant);
      w.option(e.expiresAt, (v) => w.varint64(v));
      w.varint(e.limits.maxFrame, MAX_U32);
      w.varint(e.limits.maxPayload, MAX_U32);
      w.varint(e.limits.maxSubscriptions, MAX_U32);
      w.varint(e.limits.commandsPerSecond, MAX_U32);
      break;
    case "Subscribed":
      w.string(e.room);
      w.option(e.position, (p) => w.position(p));
      w.varint(RECOVERY_TYPES.indexOf(e.recovery.type), MAX_U32);
      if (e.recovery.type === "Recovered") w.varint(e.recovery.replayed, MAX_U32);
      break;
    case "Unsubscribed":
      w.string(e.room);
      w.varint(e.code, MAX_U16);
      w.string(e.reason);
      break;
    case "Published":
      w.option(e.position, (p) => w.position(p));
      break;
    case "Pong":
      break;
    case "Refreshed":
      w.option(e.expiresAt, (v) => w.varint64(v));
      break;
    case "Error":
      w.varint(e.code, MAX_U16);
      w.string(e.message);
      break;
    case "Publication":
      w.string(e.room);
      w.option(e.position, (p) => w.position(p));
      w.bytes(e.payload);
      break;
    case "SubscriptionStream":
      w.string(e.room);
      break;
    case "Goodbye":
      w.varint(e.code, MAX_U16);
      w.string(e.reason);
      w.bool(e.reconnect);
      break;
    case "Presence":
      w.string(e.room);
      w.varint(e.members.length, MAX_U32);
      for (const m of e.members) w.member(m);
      w.bool(e.truncated);
      break;
    case "Joined":
    case "Left":
      w.string(e.room);
      w.member(e.member);
      break;
  }
  return w.frame();
}
function decodeEvent(body) {
  const r = new Reader(body);
  const id = r.u32();
  const type = EVENT_TYPES[r.u32()];
  if (type === void 0) return null;
  let event;
  switch (type) {
    case "Welcome": {
      const version = r.u16();
      const session = r.string();
      const user = r.string();
      const tenant = r.string();
      const expiresAt = r.option(() => r.u64());
      const limits = {
        maxFrame: r.u32(),
        maxPayload: r.u32(),
        maxSubscriptions: r.u32(),
        commandsPerSecond: r.u32()
      };
      event = { type, version, session, user, tenant, expiresAt, limits };
      break;
    }
    case "Subscribed": {
      const room = r.string();
      const position = r.option(() => r.position());
      event = { type, room, position, recovery: readRecovery(r) };
      break;
    }
    case "Unsubscribed":
      event = { type, room: r.string(), code: r.u16(), reason: r.string() };
      break;
    case "Published":
      event = { type, position: r.option(() => r.position()) };
      break;
    case "Pong":
      event = { type };
      break;
    case "Refreshed":
      event = { type, expiresAt: r.option(() => r.u64()) };
      break;
    case "Error":
      event = { type, code: r.u16(), message: r.string() };
      break;
    case "Publication": {
      const room = r.string();
      const position = r.option(() => r.position());
      event = { type, room, position, payload: r.bytes() };
      break;
    }
    case "SubscriptionStream":
      event = { type, room: r.string() };
      break;
    case "Goodbye":
      event = { type, code: r.u16(), reason: r.string(), reconnect: r.bool() };
      break;
    case "Presence":
      event = { type, room: r.string(), members: r.list(() => r.member()), truncated: r.trailingBool() };
      break;
    case "Joined":
    case "Left":
      event = { type, room: r.string(), member: r.member() };
      break;
  }
  return { id, event };
}
function readRecovery(r) {
  const type = RECOVERY_TYPES[r.u32()];
  if (type === void 0) throw new DecodeError("unknown recovery variant");
  return type === "Recovered" ? { type, replayed: r.u32() } : { type };
}
function decodeCommand(body) {
  const r = new Reader(body);
  const id = r.u32();
  const type = COMMAND_TYPES[r.u32()];
  if (type === void 0) return null;
  let command;
  switch (type) {
    case "Hello":
      command = { type, version: r.u16(), client: r.string() };
      break;
    case "Subscribe": {
      const room = r.string();
      command = { type, room, resume: r.option(() => r.position()) };
      break;
    }
    case "Unsubscribe":
      command = { type, room: r.string() };
      break;
    case "Publish":
      command = { type, room: r.string(), payload: r.bytes(), ack: r.bool() };
      break;
    case "Ping":
      command = { type };
      break;
    case "Refresh":
      command = { type, token: r.string() };
      break;
    case "Presence":
      command = { type, room: r.string() };
      break;
  }
  return { id, command };
}
var FrameDecoder = class {
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    if (!Number.isInteger(maxFrame) || maxFrame < 1) {
      throw new RangeError(`maxFrame must be a positive integer, got ${maxFrame}`);
    }
  }
  maxFrame;
  header = new Uint8Array(LENGTH_PREFIX);
  headerFill = 0;
  body = null;
  bodyFill = 0;
  failed = null;
  /** Feeds bytes read from the stream; returns every frame body they complete, in order. */
  push(chunk) {
    if (this.failed) throw this.failed;
    const frames = [];
    let off = 0;
    while (off < chunk.length) {
      if (this.body === null) {
        const take2 = Math.min(LENGTH_PREFIX - this.headerFill, chunk.length - off);
        this.header.set(chunk.subarray(off, off + take2), this.headerFill);
        this.headerFill += take2;
        off += take2;
        if (this.headerFill < LENGTH_PREFIX) break;
        const len = new DataView(this.header.buffer).getUint32(0);
        this.headerFill = 0;
        if (len === 0) throw this.fail("empty frame");
        if (len > this.maxFrame) {
          throw this.fail(`frame of ${len} bytes exceeds the maximum of ${this.maxFrame}`);
        }
        this.body = new Uint8Array(len);
        this.bodyFill = 0;
      }
      const take = Math.min(this.body.length - this.bodyFill, chunk.length - off);
      this.body.set(chunk.subarray(off, off + take), this.bodyFill);
      this.bodyFill += take;
      off += take;
      if (this.bodyFill === this.body.length) {
        frames.push(this.body);
        this.body = null;
      }
    }
    return frames;
  }
  /** Bytes of an incomplete frame held back. Non-zero when the stream ends means truncation. */
  get buffered() {
    return this.body === null ? this.headerFill : LENGTH_PREFIX + this.bodyFill;
  }
  fail(message) {
    this.failed = new DecodeError(message);
    this.body = null;
    return this.failed;
  }
};

// src/codes.ts
var ErrorCode = {
  internal: 100,
  bad_request: 101,
  invalid_room: 102,
  permission_denied: 103,
  already_subscribed: 104,
  not_subscribed: 105,
  too_many_subscriptions: 106,
  rate_limited: 107,
  invalid_token: 108,
  payload_too_large: 109,
  unknown_command: 110,
  unavailable: 111,
  slow_consumer: 112,
  session_closing: 113,
  stream_limit: 114,
  quota_exceeded: 115
};
var CloseCode = {
  shutdown: 3e3,
  protocol_error: 3001,
  token_expired: 3002,
  rate_abuse: 3003,
  unsupported_version: 3004,
  server_error: 3005,
  hello_timeout: 3006,
  token_invalid: 3007,
  over_quota: 3008
};
var labels = new Map(
  [...Object.entries(ErrorCode), ...Object.entries(CloseCode)].map(([label, code]) => [code, label])
);
function codeLabel(code) {
  return labels.get(code) ?? `code_${code}`;
}

// src/client.ts
var CLIENT_NAME = "quiver-ts/0.1";
var QuiverError = class extends Error {
  constructor(kind, message, extra = {}) {
    super(message, extra.cause === void 0 ? void 0 : { cause: extra.cause });
    this.kind = kind;
    this.code = extra.code ?? null;
    this.room = extra.room ?? null;
  }
  kind;
  name = "QuiverError";
  /** Protocol code (error or close code) when the server sent one. */
  code;
  room;
  /** Snake_case label of `code`, e.g. `permission_denied`; null without a code. */
  get label() {
    return this.code === null ? null : codeLabel(this.code);
  }
};
var textDecoder = new TextDecoder();
var textEncoder = new TextEncoder();
var Message = class {
  constructor(room, position, payload) {
    this.room = room;
    this.position = position;
    this.payload = payload;
  }
  room;
  position;
  payload;
  text() {
    return textDecoder.decode(this.payload);
  }
  json() {
    return JSON.parse(this.text());
  }
};
var Subscription = class {
  /** @internal */
  constructor(room, handler, bufferSize, owner, presenceHandler) {
    this.room = room;
    this.handler = handler;
    this.bufferSize = bufferSize;
    this.owner = owner;
    this.presenceHandler = presenceHandler;
  }
  room;
  handler;
  bufferSize;
  owner;
  presenceHandler;
  /** Position of the last message seen, used to resume after a reconnect. */
  position = null;
  /** How the latest resume went, if one was asked for. */
  recovery = null;
  /** Messages dropped because the async iterator did not keep up. */
  dropped = 0;
  queue = [];
  waiter = null;
  ended = false;
  get active() {
    return !this.ended;
  }
  unsubscribe() {
    return this.owner.unsubscribe(this.room);
  }
  /** @internal */
  deliver(m) {
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
  deliverPresence(change) {
    this.presenceHandler?.(change);
  }
  /** @internal */
  end() {
    this.ended = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: void 0, done: true });
    }
  }
  [Symbol.asyncIterator]() {
    return {
      next: () => {
        const m = this.queue.shift();
        if (m) return Promise.resolve({ value: m, done: false });
        if (this.ended) return Promise.resolve({ value: void 0, done: true });
        return new Promise((resolve) => this.waiter = resolve);
      },
      return: async () => {
        await this.unsubscribe();
        return { value: void 0, done: true };
      }
    };
  }
};
var TRANSIENT = /* @__PURE__ */ new Set([ErrorCode.internal, ErrorCode.rate_limited, ErrorCode.unavailable]);
var STABLE_MS = 5e3;
var QuiverClient = class {
  opts;
  hashes;
  WT;
  listeners = {
    state: /* @__PURE__ */ new Set(),
    error: /* @__PURE__ */ new Set(),
    welcome: /* @__PURE__ */ new Set(),
    goodbye: /* @__PURE__ */ new Set(),
    recovery: /* @__PURE__ */ new Set(),
    subscribed: /* @__PURE__ */ new Set(),
    rtt: /* @__PURE__ */ new Set()
  };
  subs = /* @__PURE__ */ new Map();
  outbox = [];
  active = null;
  lastId = 0;
  closing = false;
  wake = null;
  finished;
  currentState = "connecting";
  welcome = null;
  lastRtt = null;
  constructor(options) {
    if (typeof options?.token !== "function") throw new TypeError("options.token must be a function returning a JWT");
    const url = new URL(options.url);
    if (url.protocol !== "https:") throw new TypeError(`WebTransport needs an https: URL, got ${url.href}`);
    const WT = options.WebTransport ?? globalThis.WebTransport;
    if (!WT) throw new TypeError("WebTransport is not available here (a secure context in Chromium or Firefox is needed)");
    this.WT = WT;
    this.hashes = (options.serverCertificateHashes ?? []).map((h) => ({
      algorithm: "sha-256",
      value: parseHash(h)
    }));
    const reconnect = options.reconnect === false ? false : { initialDelayMs: 500, maxDelayMs: 15e3, ...options.reconnect };
    this.opts = {
      url: url.href,
      token: options.token,
      clientName: options.clientName ?? CLIENT_NAME,
      reconnect,
      connectTimeoutMs: options.connectTimeoutMs ?? 1e4,
      requestTimeoutMs: options.requestTimeoutMs ?? 1e4,
      pingIntervalMs: options.pingIntervalMs ?? 5e3,
      maxQueuedPublishes: options.maxQueuedPublishes ?? 1e3,
      maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME
    };
    this.finished = this.run();
  }
  get state() {
    return this.currentState;
  }
  /** Latest `Welcome`, null before the first. */
  get info() {
    return this.welcome;
  }
  /** Latest round-trip time in milliseconds. */
  get rtt() {
    return this.lastRtt;
  }
  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }
  /** Resolves when connected (at once if already), rejects if the client closes first. */
  ready() {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(new QuiverError("closed", "client is closed"));
    return new Promise((resolve, reject) => {
      const off = this.on("state", (state, cause) => {
        if (state === "connected") {
          off();
          resolve();
        } else if (state === "closed") {
          off();
          reject(cause ?? new QuiverError("closed", "client is closed"));
        }
      });
    });
  }
  /**
   * Subscribes to a room. Messages go to `handler`, or, without one, to the returned
   * subscription's async iterator. Resolves once the server confirmed (after a reconnect if the
   * client is disconnected); rejects with the server's error (e.g. code 103 permission_denied).
   */
  subscribe(room, handler, options = {}) {
    if (this.closing) return Promise.reject(new QuiverError("closed", "client is closed", { room }));
    if (this.subs.has(room)) {
      return Promise.reject(
        new QuiverError("command", `already subscribed to ${room}`, { code: ErrorCode.already_subscribed, room })
      );
    }
    return new Promise((resolve, reject) => {
      const sub = new Subscription(room, handler, options.bufferSize ?? 1e3, this, options.onPresence);
      sub.position = options.resume ?? null;
      const state = {
        sub,
        currentId: 0,
        sawPublication: false,
        confirmed: false,
        resolveReady: resolve,
        rejectReady: reject,
        retryTimer: null
      };
      this.subs.set(room, state);
      if (this.active && !this.active.ended) void this.sendSubscribe(state, this.active);
    });
  }
  /** Stops a subscription; its handler gets no further messages. Unknown rooms are ignored. */
  async unsubscribe(room) {
    const state = this.subs.get(room);
    if (!state) return;
    this.dropSub(state, new QuiverError("closed", `unsubscribed from ${room} before the server confirmed`, { room }));
    const session = this.active;
    if (!session) return;
    try {
      await session.request(this.nextId(), { type: "Unsubscribe", room });
    } catch (e) {
      if (e instanceof QuiverError && (e.code === ErrorCode.not_subscribed || e.kind === "closed")) return;
      throw e;
    }
  }
  /**
   * Publishes to a room. While disconnected the publish is queued (up to `maxQueuedPublishes`)
   * and sent after reconnecting. With `ack`, resolves with the message's position (null for rooms
   * without history) once the server accepted it; without, resolves null once written.
   * Delivery is at most once: an ack that a lost connection swallowed rejects, it is not resent.
   */
  publish(room, payload, options = {}) {
    if (this.closing) return Promise.reject(new QuiverError("closed", "client is closed", { room }));
    const bytes = typeof payload === "string" ? textEncoder.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) {
      return Promise.reject(new TypeError("payload must be a Uint8Array or a string"));
    }
    return new Promise((resolve, reject) => {
      const item = { room, payload: bytes, ack: options.ack ?? false, resolve, reject };
      if (this.active && !this.active.ended) {
        this.sendPublish(item, this.active);
      } else if (this.outbox.length >= this.opts.maxQueuedPublishes) {
        reject(
          new QuiverError("buffer_full", `${this.outbox.length} publishes already queued while disconnected`, { room })
        );
      } else {
        this.outbox.push(item);
      }
    });
  }
  /** Measures the round-trip time to the server, in milliseconds. */
  async ping() {
    const session = this.active;
    if (!session) throw new QuiverError("closed", "not connected");
    const start = performance.now();
    await session.request(this.nextId(), { type: "Ping" });
    const rtt = performance.now() - start;
    this.lastRtt = rtt;
    this.emit("rtt", rtt);
    return rtt;
  }
  /**
   * Who is in a room now: every session subscribed to it, on every server instance. Needs
   * subscribe permission, not a subscription. Rejects when disconnected, and with code 101
   * bad_request when the room's namespace has no presence. To keep the list current, call it on
   * `subscribed` and apply the subscription's `onPresence` changes.
   */
  async presence(room) {
    const session = this.active;
    if (!session) throw new QuiverError("closed", "not connected", { room });
    const reply = await session.request(this.nextId(), { type: "Presence", room });
    if (reply.type !== "Presence") throw new QuiverError("protocol", `expected Presence, got ${reply.type}`, { room });
    return reply.members;
  }
  /** Closes the session for good: subscriptions end, queued publishes are rejected. */
  async close() {
    if (!this.closing) {
      this.closing = true;
      this.active?.end(new QuiverError("closed", "client closed"), true);
      this.wake?.();
    }
    await this.finished;
  }
  emit(event, ...args) {
    for (const listener of this.listeners[event]) {
      try {
        listener(...args);
      } catch (e) {
        console.error(`quiver: '${event}' listener threw`, e);
      }
    }
  }
  setState(state, cause = null) {
    if (this.currentState === state) return;
    this.currentState = state;
    this.emit("state", state, cause);
  }
  nextId() {
    this.lastId = this.lastId >= 4294967295 ? 1 : this.lastId + 1;
    return this.lastId;
  }
  /** Connects, waits for the session to end, backs off, and again, until closed. */
  async run() {
    let attempt = 0;
    let cause = null;
    while (!this.closing) {
      this.setState("connecting", cause);
      let session = null;
      try {
        session = await this.open();
        if (this.closing) {
          session.end(new QuiverError("closed", "client closed"), true);
          break;
        }
        const ended = await this.serve(session);
        cause = ended;
        if (session.connectedFor() >= STABLE_MS) attempt = 0;
      } catch (e) {
        cause = asQuiverError(e);
      }
      if (this.closing) break;
      this.emit("error", cause);
      const goodbye = session?.goodbye;
      if (this.opts.reconnect === false || goodbye && !goodbye.reconnect) {
        this.closing = true;
        break;
      }
      this.setState("disconnected", cause);
      const ceiling = Math.min(this.opts.reconnect.maxDelayMs, this.opts.reconnect.initialDelayMs * 2 ** attempt);
      attempt = Math.min(attempt + 1, 30);
      await this.sleep(Math.random() * ceiling);
    }
    this.shutdown(cause);
  }
  async open() {
    const timeout = this.opts.connectTimeoutMs;
    let token;
    try {
      token = await withTimeout(Promise.resolve().then(() => this.opts.token()), timeout, "token callback");
    } catch (e) {
      throw new QuiverError("token", `could not get a token: ${errorMessage(e)}`, { cause: e });
    }
    if (typeof token !== "string" || token === "") {
      throw new QuiverError("token", "the token callback returned no token");
    }
    const url = new URL(this.opts.url);
    url.searchParams.set("token", token);
    const wt = new this.WT(url.href, this.hashes.length ? { serverCertificateHashes: this.hashes } : {});
    wt.closed.catch(() => void 0);
    try {
      await withTimeout(wt.ready, timeout, "WebTransport handshake");
    } catch (e) {
      closeQuietly(wt);
      throw new QuiverError(
        "handshake",
        `could not open a session with ${this.opts.url} (server unreachable, token refused or certificate mismatch): ${errorMessage(e)}`,
        { cause: e }
      );
    }
    if (this.closing) {
      closeQuietly(wt);
      throw new QuiverError("closed", "client closed");
    }
    const session = new Session(wt, this.opts.maxFrame, this.opts.requestTimeoutMs, this);
    await session.start();
    let welcome;
    try {
      welcome = await session.request(
        this.nextId(),
        { type: "Hello", version: PROTOCOL_VERSION, client: this.opts.clientName },
        timeout
      );
    } catch (e) {
      const err = asQuiverError(e);
      session.end(err);
      throw err;
    }
    if (welcome.type !== "Welcome") {
      const err = new QuiverError("protocol", `expected Welcome, got ${welcome.type}`);
      session.end(err);
      throw err;
    }
    this.welcome = {
      session: welcome.session,
      user: welcome.user,
      tenant: welcome.tenant,
      expiresAt: welcome.expiresAt === null ? null : Number(welcome.expiresAt),
      limits: welcome.limits
    };
    session.raiseMaxFrame(welcome.limits.maxFrame);
    return session;
  }
  /** Runs a welcomed session until it ends; returns why it ended. */
  async serve(session) {
    this.active = session;
    session.markConnected();
    const timers = [];
    if (this.opts.pingIntervalMs > 0) {
      const ping = () => {
        this.ping().catch((e) => {
          if (session.ended) return;
          session.end(new QuiverError("timeout", `ping failed: ${errorMessage(e)}`));
        });
      };
      ping();
      timers.push(setInterval(ping, this.opts.pingIntervalMs));
    }
    const resubscribe = [...this.subs.values()];
    const queued = this.outbox.splice(0);
    this.setState("connected");
    if (this.info) this.emit("welcome", this.info);
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
  onUnsolicited(session, id, event) {
    switch (event.type) {
      case "Goodbye":
        session.goodbye = { code: event.code, reason: event.reason, reconnect: event.reconnect };
        this.emit("goodbye", session.goodbye);
        session.end(
          new QuiverError("goodbye", `server closed the session: ${codeLabel(event.code)} (${event.code}) ${event.reason}`, {
            code: event.code
          })
        );
        break;
      case "Unsubscribed":
        this.onServerUnsubscribed(event.room, event.code, event.reason);
        break;
      case "Error":
        this.emit(
          "error",
          new QuiverError("command", `server refused command ${id}: ${codeLabel(event.code)}: ${event.message}`, {
            code: event.code
          })
        );
        break;
      default:
        break;
    }
  }
  onServerUnsubscribed(room, code, reason) {
    const state = this.subs.get(room);
    if (!state) return;
    state.currentId = 0;
    if (code === ErrorCode.session_closing) return;
    const err = new QuiverError("subscription", `server ended subscription to ${room}: ${codeLabel(code)}: ${reason}`, {
      code,
      room
    });
    this.emit("error", err);
    if (code === ErrorCode.slow_consumer) {
      this.retrySubscribe(state);
    } else {
      this.dropSub(state, err);
    }
  }
  retrySubscribe(state) {
    const delay = this.opts.reconnect === false ? 1e3 : this.opts.reconnect.initialDelayMs;
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      if (this.active && this.subs.get(state.sub.room) === state) void this.sendSubscribe(state, this.active);
    }, delay);
  }
  async sendSubscribe(state, session) {
    const id = this.nextId();
    const resume = state.sub.position;
    state.currentId = id;
    state.sawPublication = false;
    let reply;
    try {
      reply = await session.request(id, { type: "Subscribe", room: state.sub.room, resume });
    } catch (e) {
      const err = asQuiverError(e);
      if (this.subs.get(state.sub.room) !== state) return;
      if (state.currentId === id) state.currentId = 0;
      if (err.kind === "closed" || session.ended) return;
      if (err.kind === "timeout" || err.code !== null && TRANSIENT.has(err.code)) {
        this.emit("error", err);
        this.retrySubscribe(state);
      } else if (state.confirmed) {
        this.emit("error", err);
        this.dropSub(state, err);
      } else {
        this.dropSub(state, err);
      }
      return;
    }
    if (reply.type !== "Subscribed") {
      session.end(new QuiverError("protocol", `expected Subscribed for ${state.sub.room}, got ${reply.type}`));
      return;
    }
    if (this.subs.get(state.sub.room) !== state) return;
    state.sub.recovery = resume ? reply.recovery : null;
    if (!state.sawPublication && reply.recovery.type !== "Recovered" && reply.position) {
      state.sub.position = reply.position;
    }
    if (resume) this.emit("recovery", { room: state.sub.room, recovery: reply.recovery, resumedFrom: resume });
    if (!state.confirmed) {
      state.confirmed = true;
      state.resolveReady(state.sub);
    }
    this.emit("subscribed", state.sub);
  }
  dropSub(state, reason) {
    if (this.subs.get(state.sub.room) === state) this.subs.delete(state.sub.room);
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.currentId = 0;
    state.sub.end();
    if (!state.confirmed) state.rejectReady(reason);
  }
  sendPublish(item, session) {
    const command = { type: "Publish", room: item.room, payload: item.payload, ack: item.ack };
    if (!item.ack) {
      session.send({ id: this.nextId(), command }).then(
        () => item.resolve(null),
        (e) => item.reject(asQuiverError(e))
      );
      return;
    }
    session.request(this.nextId(), command).then((reply) => {
      if (reply.type === "Published") item.resolve(reply.position);
      else item.reject(new QuiverError("protocol", `expected Published, got ${reply.type}`, { room: item.room }));
    }, (e) => item.reject(asQuiverError(e)));
  }
  /** @internal A subscription stream's header arrived: should its publications be delivered? */
  isCurrent(room, id) {
    const state = this.subs.get(room);
    return state !== void 0 && state.currentId === id;
  }
  /** @internal */
  deliver(id, room, position, payload) {
    const state = this.subs.get(room);
    if (!state || state.currentId !== id) return false;
    state.sawPublication = true;
    try {
      state.sub.deliver(new Message(room, position, payload));
    } catch (e) {
      this.emit("error", new QuiverError("handler", `message handler for ${room} threw: ${errorMessage(e)}`, { room, cause: e }));
    }
    return true;
  }
  /** @internal Same contract as `deliver`, for `Joined` and `Left`. */
  deliverPresence(id, change) {
    const state = this.subs.get(change.room);
    if (!state || state.currentId !== id) return false;
    try {
      state.sub.deliverPresence(change);
    } catch (e) {
      this.emit("error", new QuiverError("handler", `presence handler for ${change.room} threw: ${errorMessage(e)}`, { room: change.room, cause: e }));
    }
    return true;
  }
  /** @internal */
  report(error) {
    this.emit("error", error);
  }
  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).finally(() => {
      this.wake = null;
    });
  }
  shutdown(cause) {
    const err = new QuiverError("closed", cause ? `client closed: ${cause.message}` : "client closed", {
      ...cause?.code != null ? { code: cause.code } : {}
    });
    for (const state of [...this.subs.values()]) this.dropSub(state, err);
    for (const item of this.outbox.splice(0)) item.reject(err);
    this.setState("closed", cause);
  }
};
var Refresher = class {
  constructor(client, session, token, nextId) {
    this.client = client;
    this.session = session;
    this.token = token;
    this.nextId = nextId;
  }
  client;
  session;
  token;
  nextId;
  timer = null;
  schedule(expiresAt) {
    this.stop();
    if (expiresAt === null) return;
    const remaining = expiresAt * 1e3 - Date.now();
    const delay = Math.max(0, remaining - Math.min(6e4, remaining / 5));
    this.timer = setTimeout(() => void this.refresh(expiresAt), Math.min(delay, 2 ** 31 - 1));
  }
  stop() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
  async refresh(expiresAt) {
    try {
      const token = await this.token();
      const reply = await this.session.request(this.nextId(), { type: "Refresh", token });
      if (reply.type === "Refreshed") {
        this.schedule(reply.expiresAt === null ? null : Number(reply.expiresAt));
        return;
      }
      throw new QuiverError("protocol", `expected Refreshed, got ${reply.type}`);
    } catch (e) {
      if (this.session.ended) return;
      const err = asQuiverError(e);
      this.client.report(new QuiverError("token", `token refresh failed: ${err.message}`, { cause: err, ...err.code !== null ? { code: err.code } : {} }));
      const remaining = expiresAt * 1e3 - Date.now();
      if (remaining > 2e3) this.timer = setTimeout(() => void this.refresh(expiresAt), Math.min(remaining / 2, 3e4));
    }
  }
};
var Session = class {
  constructor(wt, maxFrame, requestTimeoutMs, client) {
    this.wt = wt;
    this.requestTimeoutMs = requestTimeoutMs;
    this.client = client;
    this.maxFrame = maxFrame;
    this.done = new Promise((resolve) => this.resolveDone = resolve);
    wt.closed.then(
      (info) => this.end(this.closedError(`session closed by the server (code ${info.closeCode ?? 0}${info.reason ? `: ${info.reason}` : ""})`)),
      (e) => this.end(this.closedError(`connection lost: ${errorMessage(e)}`))
    );
  }
  wt;
  requestTimeoutMs;
  client;
  goodbye = null;
  ended = false;
  done;
  resolveDone;
  writer;
  pending = /* @__PURE__ */ new Map();
  maxFrame;
  connectedAt = 0;
  async start() {
    let bidi;
    try {
      bidi = await this.wt.createBidirectionalStream();
    } catch (e) {
      const err = new QuiverError("transport", `could not open the control stream: ${errorMessage(e)}`, { cause: e });
      this.end(err);
      throw err;
    }
    this.writer = bidi.writable.getWriter();
    void this.readControl(bidi.readable);
    void this.acceptStreams();
  }
  markConnected() {
    this.connectedAt = Date.now();
  }
  connectedFor() {
    return this.connectedAt ? Date.now() - this.connectedAt : 0;
  }
  raiseMaxFrame(announced) {
    this.maxFrame = Math.max(this.maxFrame, announced);
  }
  /** Writes one command; resolves once it is handed to the transport. */
  async send(frame) {
    if (this.ended) throw new QuiverError("closed", "not connected");
    try {
      await this.writer.write(encodeCommand(frame));
    } catch (e) {
      if (e instanceof RangeError) throw e;
      const err = new QuiverError("transport", `write failed: ${errorMessage(e)}`, { cause: e });
      this.end(err);
      throw new QuiverError("closed", err.message, { cause: e });
    }
  }
  /** Sends a command and waits for the event with its id. An `Error` reply rejects. */
  request(id, command, timeoutMs = this.requestTimeoutMs) {
    if (this.ended) return Promise.reject(new QuiverError("closed", "not connected"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QuiverError("timeout", `no reply to ${command.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ id, command }).catch((e) => {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(asQuiverError(e));
      });
    });
  }
  /** Ends the session once; every waiter learns why. */
  end(cause, byClient = false) {
    if (this.ended) return;
    this.ended = true;
    const err = new QuiverError("closed", `session ended: ${cause.message}`, {
      cause,
      ...cause.code !== null ? { code: cause.code } : {}
    });
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    closeQuietly(this.wt, byClient ? "client closed" : "");
    this.resolveDone(cause);
  }
  closedError(message) {
    if (this.goodbye) {
      return new QuiverError("goodbye", `server closed the session: ${codeLabel(this.goodbye.code)} (${this.goodbye.code}) ${this.goodbye.reason}`, {
        code: this.goodbye.code
      });
    }
    return new QuiverError("transport", message);
  }
  async readControl(readable) {
    const reader = readable.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) break;
        decoder.maxFrame = this.maxFrame;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (frame) this.dispatch(frame.id, frame.event);
        }
      }
      this.end(this.closedError("the server closed the control stream"));
    } catch (e) {
      if (e instanceof DecodeError) {
        this.end(new QuiverError("protocol", `bad frame from the server on the control stream: ${e.message}`, { cause: e }));
      } else {
        this.end(this.closedError(`control stream failed: ${errorMessage(e)}`));
      }
    }
  }
  dispatch(id, event) {
    const pending = id === 0 ? void 0 : this.pending.get(id);
    if (!pending) {
      this.client.onUnsolicited(this, id, event);
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (event.type === "Error") {
      pending.reject(new QuiverError("command", `${codeLabel(event.code)}: ${event.message}`, { code: event.code }));
    } else if (event.type === "Goodbye") {
      pending.reject(new QuiverError("goodbye", event.reason, { code: event.code }));
      this.client.onUnsolicited(this, id, event);
    } else {
      pending.resolve(event);
    }
  }
  async acceptStreams() {
    const reader = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) return;
        void this.readSubscription(value);
      }
    } catch {
    }
  }
  /** Reads one server-opened stream: `SubscriptionStream` header, then publications and
   *  presence changes. */
  async readSubscription(stream) {
    const reader = stream.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    let header = null;
    let draining = false;
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) return;
        if (draining) continue;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (!frame) continue;
          if (header === null) {
            if (frame.event.type !== "SubscriptionStream") {
              throw new DecodeError(`subscription stream starts with ${frame.event.type}`);
            }
            header = { id: frame.id, room: frame.event.room };
            if (!this.client.isCurrent(header.room, header.id)) draining = true;
          } else if (frame.event.type === "Publication") {
            if (frame.event.room !== header.room) {
              throw new DecodeError(`publication for ${frame.event.room} on the stream of ${header.room}`);
            }
            if (!this.client.deliver(header.id, header.room, frame.event.position, frame.event.payload)) draining = true;
          } else if (frame.event.type === "Joined" || frame.event.type === "Left") {
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
          new QuiverError("protocol", `bad frame on the stream of ${header?.room ?? "an unknown room"}: ${e.message}`, {
            cause: e,
            ...header ? { room: header.room } : {}
          })
        );
        reader.cancel().catch(() => void 0);
      }
    }
  }
};
async function connect(options) {
  const client = new QuiverClient(options);
  await client.ready();
  return client;
}
function parseHash(h) {
  if (h instanceof Uint8Array) {
    if (h.length !== 32) throw new TypeError(`a SHA-256 certificate hash has 32 bytes, got ${h.length}`);
    return new Uint8Array(h);
  }
  const hex = String(h).replace(/[:\s]/g, "");
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new TypeError(`certificate hash must be 64 hex digits (SHA-256), got ${JSON.stringify(h)}`);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}
function withTimeout(p, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new QuiverError("timeout", `${what} took longer than ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      }
    );
  });
}
function closeQuietly(wt, reason = "") {
  try {
    wt.close({ closeCode: 0, reason });
  } catch {
  }
}
function errorMessage(e) {
  return e instanceof Error ? e.message || e.name : String(e);
}
function asQuiverError(e) {
  if (e instanceof QuiverError) return e;
  return new QuiverError("transport", errorMessage(e), { cause: e });
}
export {
  CLIENT_NAME,
  COMMAND_TYPES,
  CloseCode,
  DEFAULT_MAX_FRAME,
  DecodeError,
  EVENT_TYPES,
  ErrorCode,
  FrameDecoder,
  LENGTH_PREFIX,
  Message,
  PROTOCOL_VERSION,
  QuiverClient,
  QuiverError,
  Subscription,
  codeLabel,
  connect,
  decodeCommand,
  decodeEvent,
  encodeCommand,
  encodeEvent
};
