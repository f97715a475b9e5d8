// Quiver WebTransport client. Generated from web/src by `npm run build`: do not edit.
// src/codec.ts
var LENGTH_PREFIX = 4;
var DEFAULT_MAX_FRAME = 64 * 1024;
var MIN_MAX_FRAME = 8 * 1024;
var MAX_MAX_FRAME = 16 * 1024 * 1024;
var PROTOCOL_VERSION = 1;
var COMMAND_TYPES = [
  "Hello",
  "Subscribe",
  "Unsubscribe",
  "Publish",
  "Ping",
  "Refresh",
  "Presence",
  "History",
  "Call",
  "PresenceStats"
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
  "Left",
  "History",
  "Latest",
  "Reply",
  "PresenceStats"
];
var RECOVERY_TYPES = ["NotRequested", "Recovered", "Failed"];
var DecodeError = class extends Error {
  name = "DecodeError";
};
var MAX_U16 = 65535;
var MAX_U32 = 4294967295;
var MAX_U64 = (1n << 64n) - 1n;
var MAX_HISTORY_ITEMS = 1e3;
var MAX_PRESENCE_MEMBERS = 1e4;
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
  /** The bytes written, with no length prefix (datagrams). */
  body() {
    return this.buf.slice(0, this.len);
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
  /** An `Option` appended by a later revision and left out when `None`: absent reads as null. */
  trailingOption(read) {
    return this.pos < this.buf.length ? this.option(read) : null;
  }
  /** Everything left (a datagram's payload). */
  rest() {
    const out = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return out;
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
  /** A `Presence` list's first `most` members; the rest are skipped (their shape checked, nothing
   *  allocated), `cut` saying so. */
  members(most) {
    const count2 = this.u32();
    if (count2 * 2 > this.buf.length - this.pos) throw new DecodeError("count exceeds frame");
    const members = [];
    for (let i = 0; i < count2; i++) {
      if (i < most) {
        members.push(this.member());
      } else {
        this.skip();
        this.skip();
      }
    }
    return { members, cut: count2 > most };
  }
  /** Steps over a `Bytes` or `String` without reading it. */
  skip() {
    const len = this.u32();
    if (len > this.buf.length - this.pos) throw new DecodeError("length exceeds frame");
    this.pos += len;
  }
  /** postcard `Vec<T>`: varint count, then the elements. */
  list(read, most = Infinity) {
    const count2 = this.u32();
    if (count2 > this.buf.length - this.pos) throw new DecodeError("count exceeds frame");
    if (count2 > most) throw new DecodeError(`${count2} items where the protocol allows at most ${most}`);
    const out = [];
    for (let i = 0; i < count2; i++) out.push(read());
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
    case "History":
      w.string(c.room);
      w.option(c.since, (p) => w.position(p));
      w.varint(c.limit, MAX_U32);
      break;
    case "Call":
      w.string(c.method);
      w.bytes(c.payload);
      w.varint(c.timeoutMs, MAX_U32);
      w.string(c.idempotencyKey);
      break;
    case "PresenceStats":
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
      if (e.subscription != null) w.option(e.subscription, (v) => w.varint64(v));
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
    case "History":
      w.string(e.room);
      w.option(e.position, (p) => w.position(p));
      w.varint(e.publications.length, MAX_U32);
      for (const item of e.publications) {
        w.position(item.position);
        w.bytes(item.payload);
      }
      w.bool(e.truncated);
      break;
    case "Latest":
      w.string(e.room);
      w.varint64(e.sequence);
      w.bytes(e.payload);
      break;
    case "Reply":
      w.bytes(e.payload);
      break;
    case "PresenceStats":
      w.string(e.room);
      w.varint(e.sessions, MAX_U32);
      w.varint(e.users, MAX_U32);
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
      const recovery = readRecovery(r);
      const subscription = r.trailingOption(() => r.u64());
      event = subscription === null ? { type, room, position, recovery } : { type, room, position, recovery, subscription };
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
    case "Presence": {
      const room = r.string();
      const { members, cut } = r.members(MAX_PRESENCE_MEMBERS);
      event = { type, room, members, truncated: r.trailingBool() || cut };
      break;
    }
    case "Joined":
    case "Left":
      event = { type, room: r.string(), member: r.member() };
      break;
    case "History": {
      const room = r.string();
      const position = r.option(() => r.position());
      const publications = r.list(() => ({ position: r.position(), payload: r.bytes() }), MAX_HISTORY_ITEMS);
      event = { type, room, position, publications, truncated: r.bool() };
      break;
    }
    case "Latest":
      event = { type, room: r.string(), sequence: r.u64(), payload: r.bytes() };
      break;
    case "Reply":
      event = { type, payload: r.bytes() };
      break;
    case "PresenceStats":
      event = { type, room: r.string(), sessions: r.u32(), users: r.u32() };
      break;
  }
  return { id, event };
}
function decodeLatestDatagram(datagram) {
  const r = new Reader(datagram);
  return { subscription: r.u64(), sequence: r.u64(), payload: r.rest() };
}
function encodeLatestDatagram(d) {
  const w = new Writer();
  w.varint64(d.subscription);
  w.varint64(d.sequence);
  w.raw(d.payload);
  return w.body();
}
function encodePublishDatagram(room, payload) {
  const w = new Writer();
  w.string(room);
  w.raw(payload);
  return w.body();
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
    case "History": {
      const room = r.string();
      const since = r.option(() => r.position());
      command = { type, room, since, limit: r.u32() };
      break;
    }
    case "Call":
      command = { type, method: r.string(), payload: r.bytes(), timeoutMs: r.u32(), idempotencyKey: r.string() };
      break;
    case "PresenceStats":
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
  quota_exceeded: 115,
  unsubscribed: 116,
  unrecoverable_position: 117,
  deadline_exceeded: 118,
  backend_error: 119,
  stream_stopped: 120
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
  over_quota: 3008,
  disconnected: 3009,
  not_reading: 3010,
  reconnect: 3011
};
var labels = new Map(
  [...Object.entries(ErrorCode), ...Object.entries(CloseCode)].map(([label, code]) => [code, label])
);
function codeLabel(code) {
  return labels.get(code) ?? `code_${code}`;
}

// src/errors.ts
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
  /** @internal The command was never written, or a drain (goodbye 3000) left it unanswered: it
   *  was not carried out, and a publish may be queued again. */
  unsent = false;
  /** True when the server did not carry the command out: its session ended before the command
   *  was written, or a draining server's goodbye (close code 3000) came before the answer (such
   *  a server answers every command it carries out first). Sending it again is safe, a `call()`
   *  included. False when unknown: after any other end a command may or may not have run. */
  get notCarriedOut() {
    return this.unsent;
  }
  /** Snake_case label of `code`, e.g. `permission_denied`; null without a code. */
  get label() {
    return this.code === null ? null : codeLabel(this.code);
  }
};
function errorMessage(e) {
  return e instanceof Error ? e.message || e.name : String(e);
}
function asQuiverError(e) {
  if (e instanceof QuiverError) return e;
  return new QuiverError("transport", errorMessage(e), { cause: e });
}
var SHOWN_CHARS = 256;
function clip(text) {
  let shown = "";
  let n = 0;
  for (const c of text) {
    if (n === SHOWN_CHARS) return `${shown}…`;
    n++;
    shown += /\p{Cc}/u.test(c) ? escapeControl(c) : c;
  }
  return shown;
}
function escapeControl(c) {
  switch (c) {
    case "\n":
      return "\\n";
    case "\r":
      return "\\r";
    case "	":
      return "\\t";
    default:
      return `\\u{${c.codePointAt(0).toString(16)}}`;
  }
}
var MAX_TIMER = 2 ** 31 - 1;
function timerDelay(ms) {
  return Math.min(Math.max(0, ms), MAX_TIMER);
}
function withTimeout(p, ms, what, signal) {
  return new Promise((resolve, reject) => {
    const settle = (done) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      done();
    };
    const timer = setTimeout(() => settle(() => reject(new QuiverError("timeout", `${what} took longer than ${ms} ms`))), timerDelay(ms));
    const onAbort = () => settle(() => reject(signal?.reason));
    signal?.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => settle(() => resolve(v)),
      (e) => settle(() => reject(e))
    );
    if (signal?.aborted) onAbort();
  });
}
function abortable(promise, signal) {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

// src/pacer.ts
var Pacer = class _Pacer {
  /** `perSecond` sustained, bursts of `burst`; times are milliseconds (`performance.now()`). */
  constructor(perSecond, burst, now2) {
    this.perSecond = perSecond;
    this.burst = burst;
    this.tokens = burst;
    this.last = now2;
  }
  perSecond;
  burst;
  tokens;
  last;
  /**
   * For a server limit of `limit` commands per second (burst `limit`): 95 % of the rate and half
   * the burst, leaving room for timing differences between the two buckets and for the odd
   * urgent command (a liveness ping) sent ahead of the queue. Null for no limit (0).
   */
  static forServerLimit(limit, now2) {
    if (!(limit > 0)) return null;
    return new _Pacer(Math.max(1, Math.floor(limit * 95 / 100)), Math.max(1, Math.floor(limit / 2)), now2);
  }
  /** Takes one token; returns how many milliseconds to wait before sending. */
  reserve(now2) {
    this.refill(now2);
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : -this.tokens / this.perSecond * 1e3;
  }
  /** Whether a token is available now without waiting. */
  ready(now2) {
    this.refill(now2);
    return this.tokens >= 1;
  }
  /** Milliseconds until a token is available without waiting (0 if one is now); takes none. */
  untilReady(now2) {
    this.refill(now2);
    return this.tokens >= 1 ? 0 : (1 - this.tokens) / this.perSecond * 1e3;
  }
  refill(now2) {
    const elapsed = Math.max(0, now2 - this.last);
    this.last = Math.max(now2, this.last);
    this.tokens = Math.min(this.burst, this.tokens + elapsed / 1e3 * this.perSecond);
  }
};

// src/session.ts
var SEND_BUFFER_MIN = 1024 * 1024;
var BOUNDED = /* @__PURE__ */ new Set(["Publish", "Call"]);
var SEND_POLL_MS = 20;
var HELD_DATAGRAM_ROOMS = 64;
var FINAL_CLOSE_CODES = /* @__PURE__ */ new Set([
  CloseCode.protocol_error,
  CloseCode.unsupported_version,
  CloseCode.token_invalid,
  CloseCode.disconnected
]);
function goodbyeError(g) {
  const what = `${codeLabel(g.code)} (${g.code})${g.reason ? ` ${g.reason}` : ""}`;
  if (g.code === CloseCode.token_invalid) {
    return new QuiverError("auth", `the server refused the token: ${what}`, { code: g.code });
  }
  return new QuiverError("goodbye", `server closed the session: ${what}`, { code: g.code });
}
var now = () => performance.now();
var Session = class {
  constructor(link, requestTimeoutMs, owner, onGoodbye) {
    this.link = link;
    this.requestTimeoutMs = requestTimeoutMs;
    this.owner = owner;
    this.onGoodbye = onGoodbye;
    this.done = new Promise((resolve) => this.resolveDone = resolve);
  }
  link;
  requestTimeoutMs;
  owner;
  onGoodbye;
  goodbye = null;
  /** The goodbye came as a `Goodbye` frame, read in order behind every answer sent before it;
   *  a bare close code does not say those answers arrived. */
  goodbyeFrame = false;
  ended = false;
  /** Whether `leave` began: no command is taken any more. */
  leaving = false;
  /** Why the session ended, once it has. */
  cause = null;
  done;
  resolveDone;
  pending = /* @__PURE__ */ new Map();
  queue = [];
  pacer = null;
  /** Datagram publications waiting for a pacer token: each room's newest, in the order the rooms
   *  first waited (`publishDatagram`), each with its turn (counted up as rooms begin to wait, so
   *  the map is in the order of its turns). */
  heldDatagrams = /* @__PURE__ */ new Map();
  /** The turn the next room to begin waiting gets (`datagramsSent`'s mark). */
  nextTurn = 0;
  /** `datagramsSent` waiters: each resolves once no room whose turn came before its mark waits. */
  datagramWaiters = [];
  datagramTimer = null;
  pumping = false;
  pumpTimer = null;
  wakePump = null;
  /** Ends the pump's wait for a full transport (not a wait for the pacer). */
  wakeFull = null;
  heartbeatTimer = null;
  /** Watches a transport holding unsent bytes (`watchSending`). */
  sendTimer = null;
  lastReceived = now();
  connectedAt = 0;
  /** Largest frame body the server takes (`Welcome.limits.max_frame`). Before the Welcome (the
   *  Hello), the least any server takes (PROTOCOL.md section 3): a server whose `max_frame` is
   *  lower than the default closes the session for good (3001, no reconnect) over a larger one. */
  sendLimit = MIN_MAX_FRAME;
  get kind() {
    return this.link.kind;
  }
  async start() {
    try {
      await this.link.start(this);
    } catch (e) {
      const err = asQuiverError(e);
      this.end(err);
      throw err;
    }
  }
  markConnected() {
    this.connectedAt = Date.now();
  }
  connectedFor() {
    return this.connectedAt ? Date.now() - this.connectedAt : 0;
  }
  raiseMaxFrame(announced) {
    this.link.maxFrame = Math.max(this.link.maxFrame, announced);
  }
  /** Frames over `maxFrame` are refused here: the server would close the whole session over one
   *  (protocol_error), where the app only needs that one command refused. */
  limitFrames(maxFrame) {
    if (maxFrame > 0) this.sendLimit = maxFrame;
  }
  /** Paces every later command to `commandsPerSecond` (from `Welcome.limits`). */
  pace(commandsPerSecond) {
    this.pacer = Pacer.forServerLimit(commandsPerSecond, now());
  }
  /** Whether anything arrived from the server after `since` (a `performance.now()` time). */
  heardSince(since) {
    return this.lastReceived > since;
  }
  /**
   * Notices a dead server: once nothing has arrived for `idleMs`, sends a `Ping`; if nothing at
   * all (the Pong or anything else) arrives within `timeoutMs` after it, the session ends. So a
   * dead server is noticed `idleMs + timeoutMs` after the last thing heard from it, a silent
   * session costs one Ping and one Pong per `idleMs`, and a busy one nothing. Death is only
   * declared `timeoutMs` after a ping actually went out, so timers delayed by a throttled
   * background tab cannot declare a live server dead.
   */
  startHeartbeat(idleMs, timeoutMs) {
    let pingedAt = -Infinity;
    const schedule = (at) => {
      if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
      this.heartbeatTimer = setTimeout(check, Math.max(0, at - now()));
    };
    const check = () => {
      if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
      this.heartbeatTimer = null;
      if (this.ended || this.leaving) return;
      const t = now();
      const last = this.lastReceived;
      if (pingedAt > last) {
        if (t - pingedAt >= timeoutMs) {
          this.end(new QuiverError("timeout", `the server sent nothing for ${Math.round(t - last)} ms, not even a Pong within ${timeoutMs} ms: connection presumed dead`));
        } else {
          schedule(pingedAt + timeoutMs);
        }
      } else if (t - last >= idleMs) {
        pingedAt = t;
        this.request(0, { type: "Ping" }, { urgent: true, timeoutMs }).then(
          () => {
            this.owner.onRtt(now() - t);
            check();
          },
          () => void 0
          // judged by what arrives, not by this reply alone
        );
        schedule(t + timeoutMs);
      } else {
        schedule(last + idleMs);
      }
    };
    schedule(this.lastReceived + idleMs);
  }
  /** Commands waiting for the pacer (not written yet). */
  get waiting() {
    return this.queue.length;
  }
  /** Writes one command (through the pacer); resolves once it is handed to the transport. */
  send(frame, options = {}) {
    if (this.ended) return Promise.reject(unsent(new QuiverError("closed", "not connected")));
    if (this.leaving) return Promise.reject(unsent(new QuiverError("closed", "client closed")));
    let bytes;
    try {
      bytes = encodeCommand(frame);
    } catch (e) {
      return Promise.reject(e);
    }
    if (bytes.length - LENGTH_PREFIX > this.sendLimit) return Promise.reject(tooLarge(frame.command, bytes.length - LENGTH_PREFIX, this.sendLimit));
    const bounded = BOUNDED.has(frame.command.type);
    const pacer = this.pacer;
    if (options.urgent || this.queue.length === 0 && !(bounded && this.full(bytes.length)) && (!pacer || pacer.ready(now()))) {
      pacer?.reserve(now());
      return this.write(bytes);
    }
    if (options.noWait) {
      return Promise.reject(
        new QuiverError("buffer_full", `${frame.command.type} not written: it would wait (the server's rate limit, or a transport still full) and maxQueuedPublishes is 0`)
      );
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ id: frame.id, type: frame.command.type, bytes, bounded, resolve, reject });
      this.pump();
    });
  }
  /** Most bytes the transport may hold unsent before publishes and calls wait. */
  get sendBudget() {
    return Math.max(SEND_BUFFER_MIN, 4 * this.sendLimit);
  }
  /** Whether a frame of `size` bytes would take the transport past the send budget. */
  full(size) {
    return this.link.backlog + size > this.sendBudget;
  }
  /**
   * Sends a command and waits for the event with its id; an `Error` reply rejects. `id` 0 takes
   * the next id from the owner's counter (see `nextId`).
   */
  request(id, command, options = {}) {
    if (this.ended) return Promise.reject(unsent(new QuiverError("closed", "not connected")));
    const frameId = id === 0 ? this.nextId() : id;
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const entry = { type: command.type, resolve, reject, timer: null };
      this.pending.set(frameId, entry);
      const written = this.send({ id: frameId, command }, options);
      const withdrawAt = options.writeBy;
      const withdrawal = withdrawAt === void 0 ? null : setTimeout(() => this.withdraw(frameId, command.type), Math.max(0, withdrawAt - now()));
      const { signal } = options;
      const onAbort = () => this.withdraw(frameId, command.type, "aborted");
      signal?.addEventListener("abort", onAbort, { once: true });
      const settled = () => {
        if (withdrawal) clearTimeout(withdrawal);
        signal?.removeEventListener("abort", onAbort);
      };
      written.then(settled, settled);
      written.then(
        () => {
          if (this.pending.get(frameId) !== entry) return;
          entry.timer = setTimeout(() => {
            entry.timer = null;
            const late = new QuiverError("timeout", `no reply to ${command.type} within ${timeoutMs} ms`);
            if (options.onTimeout) {
              options.onTimeout(late);
              return;
            }
            this.pending.delete(frameId);
            reject(late);
          }, timerDelay(timeoutMs));
        },
        (e) => {
          if (this.pending.get(frameId) === entry) this.pending.delete(frameId);
          reject(asQuiverError(e));
        }
      );
    });
  }
  /** Takes command `id` out of the pacer's queue, if it still waits there (a no-op once it is
   *  written), and rejects its write with kind `timeout` (`closed` for an aborted signal, whose
   *  reason the caller rejects with first); not `unsent`: it must not be sent on a later session
   *  either. */
  withdraw(id, what, why = "deadline") {
    const at = this.queue.findIndex((q) => q.id === id);
    if (at < 0) return;
    const [item] = this.queue.splice(at, 1);
    const waiting = `still waiting for the server's rate limit, or for the transport to take what it holds`;
    item?.reject(
      why === "aborted" ? new QuiverError("closed", `${what} aborted ${waiting}: withdrawn, never sent`) : new QuiverError("timeout", `${what} ${waiting}, ${this.requestTimeoutMs} ms after it was made: withdrawn, never sent (sending it again is safe)`)
    );
  }
  /** Whether the command `id` still waits for its reply: none of its reply has arrived. */
  awaitsReply(id) {
    return this.pending.has(id);
  }
  /** @internal Set by the client: command ids are unique across sessions. */
  nextId = () => {
    throw new Error("Session.nextId not set");
  };
  /**
   * Leaves the session as PROTOCOL.md section 3 says a client that wants its last commands
   * carried out leaves, all within `ms`: the publishes still waiting for the pacer are written
   * (any other command still waiting is withdrawn, never sent: its reply would have nowhere to
   * go), each room's newest datagram publication still waiting for the pacer is sent (the server
   * reads the datagrams received before the FIN, PROTOCOL.md section 2; cleared at the end, a
   * burst faster than the pacer lost its newest value; for at most half of `ms`, so that the FIN
   * still goes in time, then dropped), the acknowledged ones are answered,
   * then the control stream is finished (over
   * WebSocket, the close frame goes behind them) and the server's close is waited for. Then the
   * session ends: whatever is still unwritten rejects, `notCarriedOut`. Ended at once (a
   * WebTransport close discards what the server has not read), a session dropped publishes
   * `publish()` had accepted, every one still waiting for the pacer and those the server had not
   * read (outside audit 115, F2, found in the Rust client).
   */
  async leave(ms) {
    if (this.ended || this.leaving) return;
    this.leaving = true;
    const deadline = now() + ms;
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const withdrawn = this.queue.filter((q) => q.type !== "Publish");
    for (const q of withdrawn) this.queue.splice(this.queue.indexOf(q), 1);
    for (const q of withdrawn) q.reject(unsent(new QuiverError("closed", `client closed before the ${q.type} was written: never sent`)));
    const publishAwaited = () => {
      for (const p of this.pending.values()) if (p.type === "Publish") return true;
      return false;
    };
    const datagramsUntil = now() + ms / 2;
    const datagramsHeld = () => {
      if (this.heldDatagrams.size === 0) return false;
      if (now() < datagramsUntil) return true;
      this.heldDatagrams.clear();
      return false;
    };
    while (!this.ended && (this.queue.length > 0 || datagramsHeld() || publishAwaited()) && now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.max(1, Math.min(SEND_POLL_MS, deadline - now()))));
    }
    if (!this.ended && this.queue.length === 0 && !datagramsHeld() && now() < deadline) {
      this.link.leave();
      let timer;
      await Promise.race([this.done, new Promise((resolve) => timer = setTimeout(resolve, Math.max(0, deadline - now())))]);
      clearTimeout(timer);
    }
    this.end(new QuiverError("closed", "client closed"), true);
  }
  /** Ends the session once; every waiter learns why. */
  end(cause, byClient = false) {
    if (this.ended) return;
    this.ended = true;
    this.cause = cause;
    const closed = () => new QuiverError("closed", `session ended: ${cause.message}`, {
      cause,
      ...cause.code !== null ? { code: cause.code } : {}
    });
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    if (this.sendTimer) clearTimeout(this.sendTimer);
    if (this.pumpTimer) clearTimeout(this.pumpTimer);
    if (this.datagramTimer) clearTimeout(this.datagramTimer);
    this.heldDatagrams.clear();
    for (const w of this.datagramWaiters.splice(0)) w.reject(closed());
    this.wakePump?.();
    const drained = this.goodbyeFrame && this.goodbye?.code === CloseCode.shutdown;
    const queued = /* @__PURE__ */ new Set();
    const rejections = [];
    for (const q of this.queue.splice(0)) {
      queued.add(q.id);
      rejections.push([q.id, () => q.reject(unsent(closed()))]);
    }
    for (const [id, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      const again = drained || queued.has(id);
      rejections.push([id, () => p.reject(again ? unsent(closed()) : closed())]);
    }
    this.pending.clear();
    rejections.sort((a, b) => a[0] - b[0]);
    for (const [, reject] of rejections) reject();
    this.link.close(byClient ? "client closed" : "");
    this.resolveDone(cause);
  }
  // LinkHandler
  received() {
    this.lastReceived = now();
  }
  control(id, event) {
    if (this.ended) return;
    if (event.type === "Goodbye") {
      this.goodbyeFrame = !this.ended;
      this.setGoodbye({ code: event.code, reason: clip(event.reason), reconnect: event.reconnect });
      return;
    }
    const pending = id === 0 ? void 0 : this.pending.get(id);
    if (!pending) {
      this.owner.onUnsolicited(this, id, event);
      return;
    }
    this.pending.delete(id);
    if (pending.timer) clearTimeout(pending.timer);
    if (event.type === "Error") {
      pending.reject(new QuiverError("command", `${codeLabel(event.code)}: ${clip(event.message)}`, { code: event.code }));
    } else {
      pending.resolve(event);
    }
  }
  streamOpened(room, id) {
    return this.owner.streamOpened(room, id);
  }
  subscription(id, event) {
    return this.owner.deliver(id, event);
  }
  streamEnded(room, id) {
    if (!this.ended) this.owner.streamEnded(this, room, id);
  }
  datagram(bytes) {
    if (!this.ended) this.owner.datagram(this, bytes);
  }
  /**
   * A datagram publication to `room` (PROTOCOL.md section 10), paced with the commands: the
   * server meters datagrams with them and counts refusals towards `rate_abuse` (section 5), and
   * the app sends them many times a second. Sent now when the pacer has a token free; otherwise
   * held as the room's newest value, replacing one still held (which keeps its turn), and sent
   * when a token frees up: never more than one value per room. `'dropped'` when
   * `HELD_DATAGRAM_ROOMS` other rooms hold one; null when this session cannot send it as a
   * datagram (WebSocket, too large, ended): the caller publishes it instead.
   */
  publishDatagram(room, bytes) {
    if (this.ended || !this.link.datagramFits(bytes.length)) return null;
    const held = this.heldDatagrams;
    const waiting = held.get(room);
    if (waiting) {
      waiting.bytes = bytes;
    } else {
      if (held.size >= HELD_DATAGRAM_ROOMS) return "dropped";
      held.set(room, { bytes, turn: this.nextTurn++ });
    }
    this.flushDatagrams();
    return held.has(room) ? "held" : "sent";
  }
  /**
   * Resolves once every datagram publication held for the pacer now has been handed to the
   * transport (its room's newest by then: a newer value of such a room takes its turn; a room
   * that begins to wait later does not hold it back); at once when none is held. Rejects, kind
   * `closed`, if the session ends first (the values still held are dropped with it).
   */
  datagramsSent() {
    if (this.ended) return Promise.reject(unsent(new QuiverError("closed", "not connected")));
    const mark = this.nextTurn;
    return new Promise((resolve, reject) => {
      this.datagramWaiters.push({ mark, resolve, reject });
      this.releaseDatagramWaiters();
    });
  }
  /** Resolves the `datagramsSent` waiters whose rooms have all had their value sent. */
  releaseDatagramWaiters() {
    const first = this.heldDatagrams.values().next();
    const oldest = first.done ? Infinity : first.value.turn;
    while (this.datagramWaiters.length > 0 && this.datagramWaiters[0].mark <= oldest) {
      this.datagramWaiters.shift().resolve();
    }
  }
  /** Sends the held datagram publications, in order, while the pacer has tokens free; then
   *  looks again when the next one is due (the pump may take it first). */
  flushDatagrams() {
    if (this.datagramTimer) clearTimeout(this.datagramTimer);
    this.datagramTimer = null;
    const pacer = this.pacer;
    for (const [room, { bytes }] of this.heldDatagrams) {
      if (this.ended) return;
      if (pacer && !pacer.ready(now())) {
        this.datagramTimer = setTimeout(() => this.flushDatagrams(), Math.max(1, pacer.untilReady(now())));
        break;
      }
      this.heldDatagrams.delete(room);
      if (this.link.sendDatagram(bytes)) pacer?.reserve(now());
    }
    this.releaseDatagramWaiters();
  }
  report(error) {
    this.owner.report(error);
  }
  closed(cause, close) {
    if (this.leaving && !this.goodbye) {
      this.end(new QuiverError("closed", "client closed"));
      return;
    }
    if (!this.goodbye && close && codeLabel(close.code) !== `code_${close.code}` && close.code >= CloseCode.shutdown) {
      this.setGoodbye({ code: close.code, reason: clip(close.reason), reconnect: !FINAL_CLOSE_CODES.has(close.code) });
      return;
    }
    this.end(this.goodbye ? goodbyeError(this.goodbye) : cause);
  }
  setGoodbye(g) {
    if (this.ended) return;
    this.goodbye = g;
    this.onGoodbye(g);
    this.end(goodbyeError(g));
  }
  async write(bytes) {
    if (this.ended) throw unsent(new QuiverError("closed", "not connected"));
    try {
      const written = this.link.write(bytes);
      this.watchSending();
      await written;
      this.wakeFull?.();
    } catch (e) {
      const err = asQuiverError(e);
      if (err.kind !== "closed") this.end(new QuiverError("transport", `write failed: ${errorMessage(e)}`, { cause: e }));
      throw new QuiverError("closed", err.message, { cause: e });
    }
  }
  /** Writes queued commands in order, each when the pacer allows and, for publishes and calls,
   *  once the transport holds no more than the send budget. */
  pump() {
    if (this.pumping) return;
    this.pumping = true;
    void (async () => {
      let reserved = false;
      try {
        while (this.queue.length > 0 && !this.ended) {
          const head = this.queue[0];
          if (head.bounded && this.full(head.bytes.length)) {
            await this.pause(SEND_POLL_MS, true);
            continue;
          }
          if (!reserved && this.pacer) {
            reserved = true;
            const wait = this.pacer.reserve(now());
            if (wait > 0) {
              await this.pause(wait, false);
              continue;
            }
          }
          reserved = false;
          this.queue.shift();
          this.write(head.bytes).then(head.resolve, head.reject);
        }
      } finally {
        this.pumping = false;
      }
    })();
  }
  /** The pump's wait: `ms`, or until the session ends, or (`forRoom`) a write completes. */
  pause(ms, forRoom) {
    return new Promise((resolve) => {
      const done = () => {
        if (this.pumpTimer) clearTimeout(this.pumpTimer);
        this.pumpTimer = null;
        this.wakePump = null;
        this.wakeFull = null;
        resolve();
      };
      this.wakePump = done;
      if (forRoom) this.wakeFull = done;
      this.pumpTimer = setTimeout(done, ms);
    });
  }
  /**
   * Ends the session, kind `timeout`, once the transport holds unsent bytes and has taken none of
   * them for `requestTimeoutMs`: the server stopped reading. Over WebSocket, what was handed over
   * would otherwise only pile up in `bufferedAmount` and be sent whenever the server woke (an ack
   * publish timed out and retried by the app then published twice); over WebTransport a write the
   * server gives no flow-control credit never completes, and the command's reply deadline, which
   * starts once it is written, never started (outside audit 104, F3). Polled while anything is
   * unsent: WebSocket has no event for `bufferedAmount` going down. Progress is counted by the
   * byte on WebSocket, and per completed write of at most 64 KiB on WebTransport (a frame is
   * written in such pieces), so a slow link that still drains is not "not reading".
   */
  watchSending() {
    if (this.sendTimer || this.ended || this.link.backlog === 0) return;
    const limit = this.requestTimeoutMs;
    const period = Math.min(1e3, Math.max(10, limit / 4));
    let taken = this.link.taken;
    let since = now();
    const check = () => {
      this.sendTimer = null;
      if (this.ended) return;
      const backlog = this.link.backlog;
      if (this.link.taken !== taken) {
        taken = this.link.taken;
        since = now();
      }
      if (backlog === 0) return;
      if (now() - since >= limit) {
        this.end(
          new QuiverError(
            "timeout",
            `the server took none of the ${backlog} bytes waiting to be sent for ${limit} ms: not reading; commands already sent may or may not have been carried out`
          )
        );
        return;
      }
      this.sendTimer = setTimeout(check, period);
    };
    this.sendTimer = setTimeout(check, period);
  }
};
var MAX_ROOM_BYTES = 128;
var utf8 = new TextEncoder();
function tooLarge(command, size, limit) {
  const room = "room" in command ? utf8.encode(command.room).length : 0;
  const longRoom = room > MAX_ROOM_BYTES;
  const why = longRoom ? ` (its room name has ${room} bytes; the protocol allows ${MAX_ROOM_BYTES})` : "";
  const label = longRoom ? "invalid_room" : "payload_too_large";
  return new QuiverError("command", `${label}: a ${command.type} of ${size} bytes exceeds the server's frame limit of ${limit}${why}; not sent`, {
    code: longRoom ? ErrorCode.invalid_room : ErrorCode.payload_too_large,
    ..."room" in command ? { room: command.room } : {}
  });
}
function unsent(e) {
  e.unsent = true;
  return e;
}
function refreshDelay(expiresAt, lifetimeMs) {
  const remaining = expiresAt * 1e3 - Date.now();
  return Math.max(0, remaining - Math.min(remaining / 2, Math.max(6e4, lifetimeMs / 10)));
}
var Refresher = class {
  constructor(session, token, report) {
    this.session = session;
    this.token = token;
    this.report = report;
  }
  session;
  token;
  report;
  timer = null;
  /** Refreshes in a row whose new expiry was due again at once: the backoff's exponent. */
  strikes = 0;
  /** `lifetimeMs`: how long the token was valid when given (now, unless a step of a long wait). */
  schedule(expiresAt, lifetimeMs = expiresAt === null ? 0 : expiresAt * 1e3 - Date.now()) {
    this.stop();
    if (expiresAt === null) return;
    const delay2 = refreshDelay(expiresAt, lifetimeMs);
    this.timer = delay2 > MAX_TIMER ? setTimeout(() => this.schedule(expiresAt, lifetimeMs), MAX_TIMER) : setTimeout(() => void this.refresh(expiresAt), delay2);
  }
  stop() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
  async refresh(expiresAt) {
    try {
      const token = await this.token();
      const reply = await this.session.request(0, { type: "Refresh", token }, { urgent: true });
      if (reply.type === "Refreshed") {
        const next = reply.expiresAt === null ? null : Number(reply.expiresAt);
        if (next !== null && (next === expiresAt || refreshDelay(next, next * 1e3 - Date.now()) < 1e3)) {
          const wait = Math.min(1e3 * 2 ** this.strikes, 3e4);
          this.strikes = Math.min(this.strikes + 1, 16);
          this.timer = setTimeout(() => void this.refresh(next), wait);
          return;
        }
        this.strikes = 0;
        this.schedule(next);
        return;
      }
      throw new QuiverError("protocol", `expected Refreshed, got ${reply.type}`);
    } catch (e) {
      if (this.session.ended || this.session.leaving) return;
      const err = asQuiverError(e);
      this.report(new QuiverError("token", `token refresh failed: ${err.message}`, { cause: err, ...err.code !== null ? { code: err.code } : {} }));
      const remaining = expiresAt * 1e3 - Date.now();
      if (remaining > 2e3) this.timer = setTimeout(() => void this.refresh(expiresAt), Math.min(remaining / 2, 3e4));
    }
  }
};

// src/transport.ts
var TRANSPORT_KINDS = ["webtransport", "websocket"];
async function openWebTransport(WT, url, options, timeoutMs, maxFrame, signal) {
  let wt;
  try {
    wt = new WT(url.href, options);
  } catch (e) {
    throw new QuiverError("handshake", `WebTransport to ${redact(url)} could not start: ${errorMessage(e)}`, { cause: e });
  }
  wt.closed.catch(() => void 0);
  try {
    await withTimeout(wt.ready, timeoutMs, "WebTransport handshake", signal);
  } catch (e) {
    closeWebTransport(wt, "");
    if (signal?.aborted) throw new QuiverError("closed", `WebTransport to ${redact(url)} given up during its handshake: client closed`, { cause: e });
    throw new QuiverError(
      "handshake",
      `WebTransport to ${redact(url)} failed (server unreachable, UDP blocked, token refused or certificate mismatch): ${errorMessage(e)}`,
      { cause: e }
    );
  }
  return new WebTransportLink(wt, maxFrame, timeoutMs);
}
var WRITE_CHUNK = 64 * 1024;
var WebTransportLink = class {
  constructor(wt, maxFrame, openTimeoutMs) {
    this.wt = wt;
    this.maxFrame = maxFrame;
    this.openTimeoutMs = openTimeoutMs;
  }
  wt;
  maxFrame;
  openTimeoutMs;
  kind = "webtransport";
  writer = null;
  handler = null;
  done = false;
  /** Rejects the wait for the control stream when the link is closed meanwhile. */
  abortStart = null;
  backlog = 0;
  taken = 0;
  async start(handler) {
    this.handler = handler;
    this.wt.closed.then(
      (info) => this.finish(
        new QuiverError("transport", `session closed by the server (code ${info.closeCode ?? 0}${info.reason ? `: ${clip(info.reason)}` : ""})`),
        { code: info.closeCode ?? 0, reason: info.reason ?? "" }
      ),
      (e) => this.finish(new QuiverError("transport", `connection lost: ${errorMessage(e)}`), null)
    );
    let bidi;
    try {
      const aborted = new Promise((_, reject) => this.abortStart = reject);
      if (this.done) this.abortStart?.(new QuiverError("closed", "closed"));
      bidi = await withTimeout(Promise.race([this.wt.createBidirectionalStream(), aborted]), this.openTimeoutMs, "opening the control stream");
    } catch (e) {
      const err = new QuiverError("transport", `could not open the control stream: ${errorMessage(e)}`, { cause: e });
      this.finish(err, null);
      closeWebTransport(this.wt, "");
      throw err;
    } finally {
      this.abortStart = null;
    }
    this.writer = bidi.writable.getWriter();
    void this.readControl(bidi.readable);
    void this.acceptStreams();
    void this.readDatagrams();
  }
  datagramWriter = null;
  datagramFits(size) {
    const datagrams = this.wt.datagrams;
    return !this.done && !!datagrams && size <= datagrams.maxDatagramSize;
  }
  sendDatagram(bytes) {
    const datagrams = this.wt.datagrams;
    if (!this.datagramFits(bytes.length) || !datagrams) return false;
    try {
      this.datagramWriter ??= datagrams.writable.getWriter();
      this.datagramWriter.write(bytes).catch(() => void 0);
      return true;
    } catch {
      return false;
    }
  }
  async readDatagrams() {
    const datagrams = this.wt.datagrams;
    if (!datagrams) return;
    const reader = datagrams.readable.getReader();
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) return;
        this.handler?.received();
        this.handler?.datagram(value);
      }
    } catch {
    }
  }
  async write(frame) {
    const writer = this.writer;
    if (!writer) throw new QuiverError("closed", "not connected");
    const writes = [];
    for (let at = 0; at < frame.length; at += WRITE_CHUNK) {
      const piece = frame.subarray(at, Math.min(at + WRITE_CHUNK, frame.length));
      this.backlog += piece.length;
      const written = writer.write(piece);
      writes.push(
        written.then(
          () => {
            this.backlog -= piece.length;
            this.taken += piece.length;
          },
          (e) => {
            this.backlog -= piece.length;
            throw e;
          }
        )
      );
    }
    const outcomes = await Promise.allSettled(writes);
    for (const o of outcomes) if (o.status === "rejected") throw o.reason;
  }
  close(reason) {
    this.done = true;
    this.abortStart?.(new QuiverError("closed", "closed before the control stream opened"));
    closeWebTransport(this.wt, reason);
  }
  leave() {
    this.writer?.close().catch(() => void 0);
  }
  finish(cause, close) {
    if (this.done) return;
    this.done = true;
    this.handler?.closed(cause, close);
  }
  async readControl(readable) {
    const reader = readable.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) break;
        this.handler?.received();
        decoder.maxFrame = this.maxFrame;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (frame) this.handler?.control(frame.id, frame.event);
        }
      }
      this.finish(new QuiverError("transport", "the server closed the control stream"), null);
    } catch (e) {
      if (e instanceof DecodeError) {
        this.finish(new QuiverError("protocol", `bad frame from the server on the control stream: ${e.message}`, { cause: e }), null);
      } else {
        this.finish(new QuiverError("transport", `control stream failed: ${errorMessage(e)}`), null);
      }
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
   *  presence changes of that room. */
  async readSubscription(stream) {
    const reader = stream.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    let header = null;
    let draining = false;
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) {
          if (header !== null && !draining) this.handler?.streamEnded(header.room, header.id);
          return;
        }
        this.handler?.received();
        if (draining || !this.handler) continue;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (!frame) continue;
          const event = frame.event;
          if (header === null) {
            if (event.type !== "SubscriptionStream") throw new DecodeError(`subscription stream starts with ${event.type}`);
            header = { id: frame.id, room: event.room };
            if (!this.handler.streamOpened(header.room, header.id)) draining = true;
          } else if (event.type === "Publication" || event.type === "Joined" || event.type === "Left" || event.type === "Latest") {
            if (event.room !== header.room) throw new DecodeError(`${event.type} for ${clip(event.room)} on the stream of ${clip(header.room)}`);
            if (!this.handler.subscription(header.id, event)) draining = true;
          }
          if (draining) break;
        }
      }
    } catch (e) {
      if (e instanceof DecodeError) {
        reader.cancel().catch(() => void 0);
        this.finish(
          new QuiverError("protocol", `bad frame on the stream of ${header ? clip(header.room) : "an unknown room"}: ${e.message}`, {
            cause: e,
            ...header ? { room: clip(header.room) } : {}
          }),
          null
        );
      } else if (header !== null && !draining) this.handler?.streamEnded(header.room, header.id);
    }
  }
};
function closeWebTransport(wt, reason) {
  try {
    wt.close({ closeCode: 0, reason });
  } catch {
  }
}
async function openWebSocket(WS, url, timeoutMs, maxFrame, protocols = [], signal) {
  let ws;
  try {
    ws = protocols.length ? new WS(url.href, protocols) : new WS(url.href);
  } catch (e) {
    throw new QuiverError("handshake", `WebSocket to ${redact(url)} could not start: ${errorMessage(e)}`, { cause: e });
  }
  ws.binaryType = "arraybuffer";
  const link = new WebSocketLink(ws, maxFrame);
  const opened = new Promise((resolve, reject) => {
    if (ws.readyState === 1) resolve();
    ws.addEventListener("open", () => resolve());
    ws.addEventListener("close", (ev) => reject(new Error(`closed before the upgrade completed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`)));
    ws.addEventListener("error", () => {
      setTimeout(() => reject(new Error("error before the upgrade completed (refused or unreachable)")), 0);
    });
  });
  try {
    await withTimeout(opened, timeoutMs, "WebSocket upgrade", signal);
  } catch (e) {
    link.close("");
    if (signal?.aborted) throw new QuiverError("closed", `WebSocket to ${redact(url)} given up during its upgrade: client closed`, { cause: e });
    throw new QuiverError("handshake", `WebSocket to ${redact(url)} failed (server unreachable or refused): ${errorMessage(e)}`, { cause: e });
  }
  return link;
}
var PROTOCOL_CLOSE_CODES = 3e3;
var WebSocketLink = class {
  constructor(ws, maxFrame) {
    this.ws = ws;
    this.maxFrame = maxFrame;
    this.decoder = new FrameDecoder(maxFrame);
    ws.addEventListener("message", (ev) => {
      if (this.done) return;
      if (!(ev.data instanceof ArrayBuffer)) {
        this.fail(new QuiverError("protocol", "the server sent a text message; only binary messages are used"));
      } else if (this.handler) {
        this.onMessage(ev.data);
      } else {
        this.early.push(ev.data);
      }
    });
    ws.addEventListener("close", (ev) => {
      const close = { code: ev.code, reason: ev.reason };
      const label = ev.code >= PROTOCOL_CLOSE_CODES ? "closed by the server" : "connection closed";
      const cause = new QuiverError("transport", `${label} (code ${ev.code}${ev.reason ? `: ${clip(ev.reason)}` : ""})`);
      if (this.handler) this.finish(cause, close);
      else this.early.push({ cause, close });
    });
  }
  ws;
  maxFrame;
  kind = "websocket";
  handler = null;
  /** Messages and the close that arrived before `start`. */
  early = [];
  decoder;
  /** Per room, the id of the `SubscriptionStream` whose frames are being accepted. */
  streams = /* @__PURE__ */ new Map();
  done = false;
  /** Bytes handed to `ws.send` since the socket opened. */
  written = 0;
  async start(handler) {
    this.handler = handler;
    for (const item of this.early.splice(0)) {
      if (item instanceof ArrayBuffer) this.onMessage(item);
      else this.finish(item.cause, item.close);
    }
  }
  async write(frame) {
    if (this.done || this.ws.readyState !== 1) throw new QuiverError("closed", "the WebSocket is not open");
    this.ws.send(frame);
    this.written += frame.length;
  }
  get backlog() {
    return Number(this.ws.bufferedAmount) || 0;
  }
  get taken() {
    return this.written - this.backlog;
  }
  sendDatagram() {
    return false;
  }
  datagramFits() {
    return false;
  }
  close(reason) {
    this.done = true;
    try {
      this.ws.close(1e3, truncateUtf8(reason, 123));
    } catch {
    }
  }
  leave() {
    try {
      this.ws.close(1e3, "client closed");
    } catch {
    }
  }
  fail(cause) {
    this.finish(cause, null);
    this.close("");
  }
  finish(cause, close) {
    if (this.done) return;
    this.done = true;
    this.handler?.closed(cause, close);
  }
  onMessage(data) {
    const handler = this.handler;
    if (!handler || this.done) return;
    handler.received();
    this.decoder.maxFrame = this.maxFrame;
    let bodies;
    try {
      bodies = this.decoder.push(new Uint8Array(data));
      if (this.decoder.buffered !== 0) throw new DecodeError("a message ends inside a frame");
    } catch (e) {
      this.fail(new QuiverError("protocol", `bad message from the server: ${errorMessage(e)}`, { cause: e }));
      return;
    }
    for (const body of bodies) {
      let frame;
      try {
        frame = decodeEvent(body);
      } catch (e) {
        this.fail(new QuiverError("protocol", `bad frame from the server: ${errorMessage(e)}`, { cause: e }));
        return;
      }
      if (frame) this.route(handler, frame.id, frame.event);
      if (this.done) return;
    }
  }
  /** Tells subscriptions apart (PROTOCOL.md 9.2): a room's events are accepted after its
   *  current `SubscriptionStream` and until its `Unsubscribed`; anything else naming it is stale. */
  route(handler, id, event) {
    switch (event.type) {
      case "SubscriptionStream":
        if (this.streams.get(event.room) === id) return;
        if (handler.streamOpened(event.room, id)) this.streams.set(event.room, id);
        else this.streams.delete(event.room);
        return;
      case "Publication":
      case "Latest":
      case "Joined":
      case "Left": {
        const stream = this.streams.get(event.room);
        if (stream !== void 0 && !handler.subscription(stream, event)) this.streams.delete(event.room);
        return;
      }
      case "Unsubscribed":
        this.streams.delete(event.room);
        handler.control(id, event);
        return;
      default:
        handler.control(id, event);
    }
  }
};
function redact(url) {
  return `${url.protocol}//${url.host}${url.pathname}`;
}
function truncateUtf8(s, maxBytes) {
  const bytes = new TextEncoder().encode(s);
  if (bytes.length <= maxBytes) return s;
  return new TextDecoder().decode(bytes.subarray(0, maxBytes)).replace(/\uFFFD$/, "");
}
var failedWebTransport = /* @__PURE__ */ new Map();
var STORAGE_PREFIX = "quiver.webtransport-failed:";
function storage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}
function webTransportFailedBefore(url, remember, retryMs) {
  if (remember === false) return false;
  const key = redact(url);
  let at = failedWebTransport.get(key);
  if (at === void 0 && remember === "sessionStorage") {
    try {
      at = Number(storage()?.getItem(STORAGE_PREFIX + key) ?? Number.NaN);
    } catch {
      at = void 0;
    }
  }
  const ago = Date.now() - (at ?? Number.NaN);
  return Number.isFinite(ago) && ago >= 0 && ago < retryMs;
}
function rememberWebTransportFailure(url, remember) {
  if (remember === false) return;
  const key = redact(url);
  const now2 = Date.now();
  failedWebTransport.set(key, now2);
  if (remember !== "sessionStorage") return;
  try {
    storage()?.setItem(STORAGE_PREFIX + key, String(now2));
  } catch {
  }
}
function forgetWebTransportFailures() {
  failedWebTransport.clear();
  const s = storage();
  if (!s) return;
  try {
    for (let i = s.length - 1; i >= 0; i--) {
      const key = s.key(i);
      if (key?.startsWith(STORAGE_PREFIX)) s.removeItem(key);
    }
  } catch {
  }
}

// src/options.ts
var STABLE_MS = 5e3;
var STREAM_END_GRACE_MS = 5e3;
function resolveTarget(value, wsUrl, what) {
  if (value === void 0) return { wtUrl: null, wsUrl };
  let url;
  try {
    url = new URL(value);
  } catch (e) {
    if (what === "url") throw e;
    throw new TypeError(`${what} is not a URL: ${JSON.stringify(String(value))}`, { cause: e });
  }
  if (url.protocol === "https:") {
    return { wtUrl: url, wsUrl: wsUrl ?? new URL(`wss://${url.host}${url.pathname.replace(/\/$/, "")}/ws`) };
  }
  if (url.protocol === "ws:" || url.protocol === "wss:") return { wtUrl: null, wsUrl: wsUrl ?? url };
  throw new TypeError(`${what} must be https: (WebTransport) or ws:/wss: (WebSocket), got ${url.href}`);
}
var MAX_CLIENT_NAME = 1024;
function resolveOptions(options, clientName) {
  if (typeof options?.token !== "function") throw new TypeError("options.token must be a function returning a JWT");
  const retry = options.webTransportRetryMs;
  if (retry !== void 0 && !(typeof retry === "number" && Number.isFinite(retry) && retry >= 0)) {
    throw new TypeError(`webTransportRetryMs must be a finite number of milliseconds, 0 or more, got ${String(retry)}`);
  }
  const wsUrl = options.webSocketUrl === void 0 ? null : new URL(options.webSocketUrl);
  if (wsUrl && wsUrl.protocol !== "ws:" && wsUrl.protocol !== "wss:") {
    throw new TypeError(`webSocketUrl needs a ws: or wss: URL, got ${wsUrl.href}`);
  }
  let targets;
  if (options.urls !== void 0) {
    if (options.url !== void 0) throw new TypeError("give url or urls, not both");
    if (!Array.isArray(options.urls) || options.urls.length === 0) {
      throw new TypeError(`urls must be a non-empty array of server URLs, got ${JSON.stringify(options.urls)}`);
    }
    if (wsUrl) {
      throw new TypeError(
        "webSocketUrl names one server and cannot be combined with urls: list ws:/wss: URLs in urls, or https: ones (their WebSocket URL is wss: on the same host and port)"
      );
    }
    targets = options.urls.map((u, i) => resolveTarget(u, null, `urls[${i}]`));
  } else {
    targets = [resolveTarget(options.url, wsUrl, "url")];
  }
  const wanted = options.transports ?? TRANSPORT_KINDS;
  if (wanted.length === 0 || wanted.some((t) => !TRANSPORT_KINDS.includes(t))) {
    throw new TypeError(`transports must list some of ${TRANSPORT_KINDS.join(", ")}, got ${JSON.stringify(wanted)}`);
  }
  const WT = options.WebTransport ?? globalThis.WebTransport;
  const WS = options.WebSocket ?? globalThis.WebSocket;
  const usable = (t, target) => t === "webtransport" ? WT && target.wtUrl : WS && target.wsUrl;
  for (const [i, target] of targets.entries()) {
    if (wanted.some((t) => usable(t, target))) continue;
    const why = wanted.map(
      (t) => t === "webtransport" ? WT ? "webtransport: no https: url" : "WebTransport is not available here (a secure context in a browser that has it is needed)" : WS ? "websocket: no ws:/wss: url" : "WebSocket is not available here"
    );
    throw new TypeError(`no usable transport${options.urls !== void 0 ? ` for urls[${i}]` : ""}: ${why.join("; ")}`);
  }
  const transports = wanted.filter((t) => targets.some((target) => usable(t, target)));
  const hashes = (options.serverCertificateHashes ?? []).map((h) => ({
    algorithm: "sha-256",
    value: parseHash(h)
  }));
  const name = options.clientName ?? clientName;
  if (typeof name !== "string" || new TextEncoder().encode(name).length > MAX_CLIENT_NAME) {
    throw new TypeError(`clientName must be a string of at most ${MAX_CLIENT_NAME} bytes (UTF-8), got ${typeof name === "string" ? `${new TextEncoder().encode(name).length} bytes` : typeof name}`);
  }
  const opts = {
    token: options.token,
    clientName: name,
    reconnect: options.reconnect === false ? false : reconnectOptions(options.reconnect),
    connectTimeoutMs: delay("connectTimeoutMs", options.connectTimeoutMs, 1e4, 1),
    requestTimeoutMs: delay("requestTimeoutMs", options.requestTimeoutMs, 1e4, 1),
    pingIntervalMs: delay("pingIntervalMs", options.pingIntervalMs, 5e3, 0),
    heartbeat: options.heartbeat === false ? false : {
      idleMs: delay("heartbeat.idleMs", options.heartbeat?.idleMs, 1e3, 1),
      timeoutMs: delay("heartbeat.timeoutMs", options.heartbeat?.timeoutMs, 2e3, 1)
    },
    paceCommands: options.paceCommands ?? true,
    maxQueuedPublishes: count("maxQueuedPublishes", options.maxQueuedPublishes, 1e3),
    maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
    maxFrameCeiling: Math.min(options.maxFrameCeiling ?? 1024 * 1024, MAX_MAX_FRAME),
    webTransportTimeoutMs: delay("webTransportTimeoutMs", options.webTransportTimeoutMs, 2500, 1),
    remember: options.rememberWebTransportFailure ?? "page",
    webTransportRetryMs: options.webTransportRetryMs ?? 3e5,
    streamTimeoutMs: delay("streamTimeoutMs", options.streamTimeoutMs, 8e3, 0)
  };
  return { opts, transports, targets, hashes, WT, WS };
}
function delay(name, value, fallback, min) {
  if (value === void 0) return fallback;
  if (typeof value !== "number" || Number.isNaN(value) || value < min) {
    throw new TypeError(`${name} must be a number of milliseconds, ${min} or more, got ${String(value)}`);
  }
  return Math.min(value, MAX_TIMER);
}
function count(name, value, fallback) {
  if (value === void 0) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`${name} must be an integer, 0 or more, got ${String(value)}`);
  }
  return value;
}
function reconnectOptions(given) {
  const initialDelayMs = Math.max(100, given?.initialDelayMs ?? 500);
  const maxDelayMs = Math.max(initialDelayMs, 1e3, given?.maxDelayMs ?? 15e3);
  return { initialDelayMs, maxDelayMs };
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

// src/dialer.ts
var SUBPROTOCOL_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
var Dialer = class {
  constructor(parts) {
    this.parts = parts;
  }
  parts;
  /** Index in `targets` of the current (or next) connection attempt's server. */
  index = 0;
  /** Set when this client's WebTransport sessions cannot carry its subscriptions. */
  avoidWebTransport = false;
  /** The server of the current (or next) connection attempt. */
  target() {
    return this.parts.targets[this.index];
  }
  /** Every attempt after the first goes to the next server, round robin (as the Rust client's
   *  `--url a,b`): a dead instance costs one attempt, not the rest of the outage. */
  advance() {
    this.index = (this.index + 1) % this.parts.targets.length;
  }
  /** Transports to try now at `target`, in order: those it has a URL for, WebTransport skipped
   *  once it failed there where WebSocket then worked, when another transport follows it. */
  candidates(target) {
    const { transports, WT, WS, opts } = this.parts;
    const here = transports.filter((t) => t === "webtransport" ? WT && target.wtUrl : WS && target.wsUrl);
    return here.filter(
      (t, i) => !(t === "webtransport" && i < here.length - 1 && (this.avoidWebTransport || target.wtUrl && webTransportFailedBefore(target.wtUrl, opts.remember, opts.webTransportRetryMs)))
    );
  }
  /** Opens `kind` to `target` with `token`: on WebTransport in the URL (a browser can set no
   *  header on the CONNECT, PROTOCOL.md §1); on WebSocket offered as the subprotocol
   *  `quiver.token.JWT` beside `quiver` (§9.1), which keeps it out of the URL and so out of
   *  proxies' access logs, unless the token has characters a subprotocol cannot carry (a JWT
   *  never has). `signal` gives the handshake up (the client closed). */
  open(kind, target, token, timeoutMs, signal) {
    const { WT, WS, hashes, opts } = this.parts;
    if (kind === "webtransport" && WT && target.wtUrl) {
      const url = new URL(target.wtUrl);
      url.searchParams.set("token", token);
      return openWebTransport(WT, url, hashes.length ? { serverCertificateHashes: hashes } : {}, timeoutMs, opts.maxFrame, signal);
    }
    if (kind === "websocket" && WS && target.wsUrl) {
      const url = new URL(target.wsUrl);
      if (SUBPROTOCOL_TOKEN.test(token)) return openWebSocket(WS, url, timeoutMs, opts.maxFrame, ["quiver", `quiver.token.${token}`], signal);
      url.searchParams.set("token", token);
      return openWebSocket(WS, url, timeoutMs, opts.maxFrame, [], signal);
    }
    return Promise.reject(new QuiverError("handshake", `${kind} is not available`));
  }
  /** A session on another transport worked where WebTransport failed at `target` first. */
  workedAfterWebTransportFailed(target, kind) {
    if (target.wtUrl && kind !== "webtransport") rememberWebTransportFailure(target.wtUrl, this.parts.opts.remember);
  }
  /** Whether the client can move from WebTransport to WebSocket; if so, it will from now on. */
  moveToWebSocket() {
    if (!this.parts.transports.includes("websocket")) return false;
    this.avoidWebTransport = true;
    return true;
  }
};

// src/outbox.ts
var Outbox = class {
  constructor(host) {
    this.host = host;
  }
  host;
  items = [];
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
  hold(item) {
    if (item.latest) {
      const at = this.items.findIndex((q) => q.latest && q.room === item.room);
      if (at >= 0) this.items.splice(at, 1)[0].resolve(null);
    }
    if (this.items.length >= this.host.maxQueuedPublishes) {
      item.reject(new QuiverError("buffer_full", `${this.items.length} publishes already queued while disconnected`, { room: item.room }));
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
          item.reject(new QuiverError("timeout", `not sent within ${ms} ms while disconnected: withdrawn, never sent (publishing it again is safe)`, { room: item.room }));
        },
        Math.max(0, item.madeAt + ms - performance.now())
      );
    }
  }
  /** Takes every held publish, in order, for a new session (their deadlines stop here: the
   *  session's `writeBy` carries them on). */
  takeAll() {
    const items = this.items.splice(0);
    for (const item of items) clearTimeout(item.timer);
    return items;
  }
  /** Writes a publish on `session`; one never written (the session ended while it waited for
   *  the pacer) is held again for the next session, as it was not sent. With `noWait`, one that
   *  would wait for the pacer or the transport is refused instead (`buffer_full`). */
  send(item, session, noWait = false) {
    const command = { type: "Publish", room: item.room, payload: item.payload, ack: item.ack };
    const failed = (e) => {
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
      if (reply.type === "Published") item.resolve(reply.position);
      else item.reject(new QuiverError("protocol", `expected Published, got ${reply.type}`, { room: item.room }));
    }, failed);
  }
  /** Rejects every held publish with `err` (the client closed). */
  rejectAll(err) {
    for (const item of this.takeAll()) item.reject(err);
  }
};

// src/subscription.ts
var textDecoder = new TextDecoder();
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
var Continuity = class {
  constructor(head, replayLeft) {
    this.head = head;
    this.replayLeft = replayLeft;
  }
  head;
  replayLeft;
  /** Judges a publication at `position`, `last` being the last position delivered. */
  judge(last, position) {
    if (position === null) return { deliver: true, broken: false };
    const epoch = (this.head ?? last)?.epoch;
    const forward = (epoch === void 0 || epoch === position.epoch) && (last === null || last.epoch !== position.epoch || position.offset > last.offset);
    const left = this.replayLeft;
    if (left === null) return { deliver: forward, broken: false };
    const replayed = forward && this.head !== null && position.offset <= this.head.offset;
    this.replayLeft = replayed && left > 0 ? left - 1 : null;
    return { deliver: forward, broken: replayed ? left === 0 : !forward || left > 0 };
  }
};
function recoveryPossible(from, head, replayed) {
  return from !== null && head !== null && from.epoch === head.epoch && head.offset >= from.offset && BigInt(replayed) <= head.offset - from.offset;
}
var Subscription = class {
  /** @internal */
  constructor(room, handler, bufferSize, owner, presenceHandler, bufferBytes = 8 * 1024 * 1024) {
    this.room = room;
    this.handler = handler;
    this.bufferSize = bufferSize;
    this.owner = owner;
    this.presenceHandler = presenceHandler;
    this.bufferBytes = bufferBytes;
  }
  room;
  handler;
  bufferSize;
  owner;
  presenceHandler;
  bufferBytes;
  /** Position of the last message seen, used to resume after a reconnect. */
  position = null;
  /** How the latest resume went, if one was asked for. `Failed` too when the replay contradicted
   *  a `Recovered` (see the `recovery` event). */
  recovery = null;
  /** Messages dropped because the async iterator did not keep up. */
  dropped = 0;
  /** How the room delivers, as the server said when it confirmed the subscription. */
  mode = "reliable";
  /** @internal Whether the server ever confirmed the subscription (so `mode` is its word). */
  known = false;
  /** For `latest` rooms: how values arrived. */
  latestStats = { byDatagram: 0, byStream: 0, droppedOlder: 0 };
  /** @internal The server's subscription id on the current session (`latest` rooms). */
  latestId = null;
  /** Sequence of the newest value applied on the current server subscription. */
  newest = 0n;
  queue = [];
  /** Payload bytes in `queue`. */
  queued = 0;
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
  confirmed(subscription) {
    this.latestId = subscription;
    this.newest = 0n;
    this.known = true;
    if (subscription !== null) this.mode = "latest";
  }
  /** @internal A value of a `latest` room: applied only if newer than every value applied
   *  before (a late datagram never overwrites a newer value). Returns whether it was applied. */
  offerLatest(sequence, payload, byDatagram) {
    if (sequence <= this.newest) {
      this.latestStats.droppedOlder++;
      return false;
    }
    this.newest = sequence;
    if (byDatagram) this.latestStats.byDatagram++;
    else this.latestStats.byStream++;
    if (!this.handler) {
      this.queue.length = 0;
      this.queued = 0;
    }
    this.deliver(new Message(this.room, null, payload));
    return true;
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
        if (m) {
          this.queued -= m.payload.length;
          return Promise.resolve({ value: m, done: false });
        }
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

// src/subscriptions.ts
var TRANSIENT = /* @__PURE__ */ new Set([ErrorCode.internal, ErrorCode.rate_limited, ErrorCode.unavailable, ErrorCode.quota_exceeded]);
var HELD_MAX_EVENTS = 1e4;
var HELD_MAX_BYTES = 16 * 1024 * 1024;
var HELD_EVENT_OVERHEAD = 64;
function heldSize(event) {
  let size = HELD_EVENT_OVERHEAD + event.room.length;
  if (event.type === "Publication" || event.type === "Latest") size += event.payload.length;
  else size += event.member.user.length + event.member.session.length;
  return size;
}
var Subscriptions = class {
  constructor(host) {
    this.host = host;
  }
  host;
  subs = /* @__PURE__ */ new Map();
  /** `latest` subscriptions by the server's subscription id (datagrams carry only that), with
   *  the session that gave the id: ids are per session, and an entry of an earlier session is
   *  stale (overwritten, never taken for this session's). */
  latestSubs = /* @__PURE__ */ new Map();
  /** Events (and their `heldSize`) held before their `Subscribed`, in all subscriptions. */
  heldEvents = 0;
  heldTotal = 0;
  /** The live session's watch timers (`expectStream`, `streamEnded`), each removed when it
   *  fires and all cleared when the session ends. A `session.done` reaction per timer instead
   *  kept every one's closure for the whole session: memory that grew with room churn (outside
   *  audit 104, F7). */
  sessionTimers = /* @__PURE__ */ new Set();
  /** Whether `room` is subscribed and the server said it delivers reliably (not `latest`). */
  knownReliable(room) {
    const state = this.subs.get(room);
    return state !== void 0 && state.sub.known && state.sub.mode === "reliable";
  }
  has(room) {
    return this.subs.has(room);
  }
  /**
   * Adds `room`'s subscription and sends its `Subscribe` if a session is live (otherwise the next
   * session does). Resolves with the first `Subscribed`, rejects with the refusal.
   */
  add(room, handler, options, owner) {
    return new Promise((resolve, reject) => {
      const sub = new Subscription(room, handler, options.bufferSize ?? 1e3, owner, options.onPresence, options.bufferBytes);
      sub.position = options.resume ?? null;
      const state = {
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
        confirmedAt: 0
      };
      this.subs.set(room, state);
      const session = this.host.session();
      if (session && !session.ended) void this.send(state, session);
    });
  }
  /** Ends `room`'s subscription on this side (an unconfirmed one rejects with `reason`); false
   *  when there was none. */
  remove(room, reason) {
    const state = this.subs.get(room);
    if (!state) return false;
    this.drop(state, reason);
    return true;
  }
  /** A new session: subscribes every room again, resuming. Taken before the caller's
   *  listeners run (a subscribe made in a 'connected' listener is sent by `add` itself and must
   *  not be sent a second time: the server would refuse it); sent by the function returned. */
  resubscribe(session) {
    const states = [...this.subs.values()];
    return () => {
      for (const state of states) {
        if (this.subs.get(state.sub.room) === state) void this.send(state, session);
      }
    };
  }
  /** The session ended: nothing of its streams is current any more. */
  sessionEnded() {
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
  endAll(reason) {
    for (const state of [...this.subs.values()]) this.drop(state, reason);
  }
  onServerUnsubscribed(session, room, code, reason) {
    const state = this.subs.get(room);
    if (!state) return;
    if (state.held && state.currentId !== 0) {
      if (session.awaitsReply(state.currentId)) return;
      state.heldEnd ??= { code, reason };
      return;
    }
    state.currentId = 0;
    this.releaseHeld(state);
    if (code === ErrorCode.session_closing) {
      this.retry(state);
      return;
    }
    const err = new QuiverError("subscription", `server ended subscription to ${room}: ${codeLabel(code)}: ${clip(reason)}`, {
      code,
      room
    });
    this.host.emit("error", err);
    if (code === ErrorCode.slow_consumer || // A cluster's replay that could not be finished (PROTOCOL.md section 5): what arrived is
    // good, and resuming from it either finishes the replay or says recovery failed.
    code === ErrorCode.unrecoverable_position || code === ErrorCode.unavailable) {
      this.retry(state);
    } else if (code === ErrorCode.stream_limit && this.host.moveToWebSocket(session, err)) {
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
  retry(state) {
    const backoff = this.host.opts.reconnect === false ? { initialDelayMs: 1e3, maxDelayMs: 15e3 } : this.host.opts.reconnect;
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
  async send(state, session) {
    const id = this.host.nextId();
    const resume = state.sub.position;
    this.releaseHeld(state);
    state.currentId = id;
    state.held = [];
    state.continuity = null;
    state.resumedFrom = resume;
    state.streamOpened = false;
    let reply;
    try {
      reply = await session.request(
        id,
        { type: "Subscribe", room: state.sub.room, resume },
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
            this.host.emit("error", new QuiverError("timeout", `${room}: ${late.message}; still waiting for it`, { room }));
          }
        }
      );
    } catch (e) {
      const err = asQuiverError(e);
      if (this.subs.get(state.sub.room) !== state) return;
      if (state.currentId === id) {
        state.currentId = 0;
        this.releaseHeld(state);
      }
      if (err.kind === "closed" || session.ended) return;
      if (err.code !== null && TRANSIENT.has(err.code)) {
        this.host.emit("error", err);
        this.retry(state);
      } else if (state.confirmed) {
        this.host.emit("error", err);
        this.drop(state, err);
      } else {
        this.drop(state, err);
      }
      return;
    }
    if (reply.type !== "Subscribed") {
      session.end(new QuiverError("protocol", `expected Subscribed for ${state.sub.room}, got ${reply.type}`));
      return;
    }
    if (this.subs.get(state.sub.room) !== state || state.currentId !== id) return;
    const latestId = reply.subscription ?? null;
    if (latestId !== null) {
      const holder = this.latestSubs.get(latestId);
      if (holder && holder.session === session && holder.state !== state && holder.state.sub.latestId === latestId) {
        session.end(new QuiverError("protocol", `latest subscription id ${latestId} given to ${holder.state.sub.room} and ${state.sub.room}`));
        return;
      }
    }
    this.forgetLatest(state);
    state.sub.confirmed(latestId);
    if (latestId !== null) this.latestSubs.set(latestId, { state, session });
    let recovery = reply.recovery;
    if (recovery.type === "Recovered" && !recoveryPossible(resume, reply.position, recovery.replayed)) {
      this.reportBroken(state.sub.room, "impossible Recovered");
      recovery = { type: "Failed" };
    } else if (resume && recovery.type === "NotRequested") {
      this.reportBroken(state.sub.room, "NotRequested answering a resume");
      recovery = { type: "Failed" };
    }
    state.sub.recovery = resume ? recovery : null;
    if (recovery.type !== "Recovered" && reply.position) state.sub.position = reply.position;
    state.continuity = new Continuity(reply.position, recovery.type === "Recovered" ? recovery.replayed : null);
    if (resume) this.host.emit("recovery", { room: state.sub.room, recovery, resumedFrom: resume });
    this.expectStream(state, id, session);
    state.confirmedAt = Date.now();
    if (!state.confirmed) {
      state.confirmed = true;
      state.resolveReady(state.sub);
    }
    this.host.emit("subscribed", state.sub);
    const held = state.held ?? [];
    const end = state.heldEnd;
    this.releaseHeld(state);
    for (const event of held) this.deliver(id, event);
    if (end && this.subs.get(state.sub.room) === state && state.currentId === id) {
      this.onServerUnsubscribed(session, state.sub.room, end.code, end.reason);
    }
  }
  /** Drops what `state` holds before its `Subscribed` (an end too), giving it back to the
   *  session's budget. */
  releaseHeld(state) {
    if (state.held) this.heldEvents -= state.held.length;
    this.heldTotal -= state.heldBytes;
    state.held = null;
    state.heldBytes = 0;
    state.heldEnd = null;
  }
  /** A server that broke the protocol's rules for a subscription's positions (a publication
   *  dropped, or a recovery the stream contradicts), reported where the app can see it. */
  reportBroken(room, what) {
    this.host.emit("error", new QuiverError("protocol", `${room}: ${what}`, { room }));
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
  expectStream(state, id, session) {
    const timeout = this.host.opts.streamTimeoutMs;
    if (state.streamOpened || timeout <= 0) return;
    this.sessionTimer(session, () => {
      if (session.ended || state.currentId !== id || state.streamOpened || this.subs.get(state.sub.room) !== state) return;
      const room = state.sub.room;
      const limit = session.kind === "webtransport" ? ": the browser may be at its limit of server-opened streams (about 100 per WebTransport session)" : "";
      const err = new QuiverError("subscription", `no stream for ${room} within ${timeout} ms of Subscribed${limit}`, { room });
      this.host.emit("error", err);
      if (this.host.moveToWebSocket(session, err)) return;
      session.end(new QuiverError("protocol", `the server confirmed ${room} and never sent its stream`, { room }));
    }, timeout);
  }
  /** Runs `fire` after `ms` unless `session` ends first (`sessionTimers`). */
  sessionTimer(session, fire, ms) {
    if (session.ended) return;
    const timer = setTimeout(() => {
      this.sessionTimers.delete(timer);
      fire();
    }, ms);
    this.sessionTimers.add(timer);
  }
  /** @internal Watch timers of the live session still to fire (tests). */
  get pendingTimers() {
    return this.sessionTimers.size;
  }
  drop(state, reason) {
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
  streamEnded(session, room, id) {
    this.sessionTimer(session, () => {
      const state = this.subs.get(room);
      if (session.ended || state === void 0 || state.currentId !== id) return;
      session.end(new QuiverError("protocol", `the server ended the stream of ${room} without an Unsubscribed`, { room }));
    }, STREAM_END_GRACE_MS);
  }
  /** The header of subscription `id` arrived: whether it is `room`'s current one, and its first
   *  stream. A second stream with the same header (a broken or hostile server) is discarded as a
   *  stale one is, as the Rust client does: taken, it delivered everything twice (outside audit
   *  121, F5). */
  streamOpened(room, id) {
    const state = this.subs.get(room);
    if (state === void 0 || state.currentId !== id || state.streamOpened) return false;
    state.streamOpened = true;
    return true;
  }
  /** Delivers an event of the subscription `id`; false when it is not the current one. */
  deliver(id, event) {
    const state = this.subs.get(event.room);
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
        state.currentId = 0;
        this.releaseHeld(state);
        this.host.session()?.end(
          new QuiverError("protocol", `${event.room}: too much before Subscribed (${events} events, ${bytes} bytes held in all rooms)`)
        );
      }
      return true;
    }
    try {
      if (event.type === "Publication") {
        const verdict = state.continuity?.judge(state.sub.position, event.position);
        if (verdict?.broken && state.resumedFrom) {
          this.reportBroken(event.room, "replay contradicts Recovered");
          const recovery = state.sub.recovery = { type: "Failed" };
          this.host.emit("recovery", { room: event.room, recovery, resumedFrom: state.resumedFrom });
        }
        if (verdict?.deliver === false) {
          this.reportBroken(event.room, "publication not after the last one dropped");
          return true;
        }
        state.sub.deliver(new Message(event.room, event.position, event.payload));
      } else if (event.type === "Latest") {
        state.sub.offerLatest(event.sequence, event.payload, false);
      } else {
        state.sub.deliverPresence({ type: event.type, room: event.room, member: event.member });
      }
    } catch (e) {
      const what = event.type === "Publication" || event.type === "Latest" ? "message" : "presence";
      this.host.emit("error", new QuiverError("handler", `${what} handler for ${event.room} threw: ${errorMessage(e)}`, { room: event.room, cause: e }));
    }
    return true;
  }
  /** Takes `state`'s id out of the datagram map, if the entry there is still its own (an
   *  earlier session's id may since belong to another room). */
  forgetLatest(state) {
    const id = state.sub.latestId;
    if (id !== null && this.latestSubs.get(id)?.state === state) this.latestSubs.delete(id);
  }
  /** A datagram of `session`: the newest value of a `latest` subscription, found by its id.
   *  Malformed datagrams and ones for no current subscription of that session are dropped. */
  datagram(session, bytes) {
    let d;
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
      this.host.emit("error", new QuiverError("handler", `message handler for ${state.sub.room} threw: ${errorMessage(e)}`, { room: state.sub.room, cause: e }));
    }
  }
};

// src/client.ts
var CLIENT_NAME = "quiver-ts/0.2";
var textEncoder = new TextEncoder();
var QuiverClient = class {
  opts;
  dialer;
  listeners = {
    state: /* @__PURE__ */ new Set(),
    error: /* @__PURE__ */ new Set(),
    welcome: /* @__PURE__ */ new Set(),
    goodbye: /* @__PURE__ */ new Set(),
    recovery: /* @__PURE__ */ new Set(),
    subscribed: /* @__PURE__ */ new Set(),
    rtt: /* @__PURE__ */ new Set(),
    transport: /* @__PURE__ */ new Set()
  };
  subs;
  outbox;
  active = null;
  /** The session of a connection attempt, until its Welcome: `close()` ends it too. */
  connecting = null;
  /** Aborted by `close()`: ends a connection attempt still waiting for its token or its
   *  handshake (the WebTransport session's `ready`, the WebSocket upgrade), which otherwise held
   *  `close()` for up to `connectTimeoutMs` (outside audit 121, F2). */
  stop = new AbortController();
  lastId = 0;
  closing = false;
  unsentDatagrams = 0;
  wake = null;
  finished;
  /** The Goodbye of the latest connection attempt, if the server sent one. */
  lastGoodbye = null;
  /** The token the latest attempt used, and the last one the server refused as expired (3002):
   *  the same one twice means the token callback has no fresher one. */
  lastToken = null;
  expiredToken = null;
  /** Why the client closed by itself (e.g. an `auth` error), for `ready()` after the fact. */
  closedBy = null;
  currentState = "connecting";
  currentTransport = null;
  welcome = null;
  lastRtt = null;
  constructor(options) {
    const resolved = resolveOptions(options, CLIENT_NAME);
    this.opts = resolved.opts;
    this.dialer = new Dialer(resolved);
    this.outbox = new Outbox({
      maxQueuedPublishes: this.opts.maxQueuedPublishes,
      requestTimeoutMs: this.opts.requestTimeoutMs,
      nextId: () => this.nextId(),
      closing: () => this.closing
    });
    this.subs = new Subscriptions({
      opts: this.opts,
      session: () => this.active,
      nextId: () => this.nextId(),
      emit: (event, ...args) => this.emit(event, ...args),
      moveToWebSocket: (session, cause) => this.moveToWebSocket(session, cause)
    });
    this.finished = this.run();
  }
  /** `closed` from the moment `close()` is called, awaited or not (the `state` event follows
   *  once the session is shut). */
  get state() {
    return this.closing ? "closed" : this.currentState;
  }
  /** Transport of the current (or, while reconnecting, the latest) session; null before the
   *  first. */
  get transport() {
    return this.currentTransport;
  }
  /** Latest `Welcome`, null before the first. */
  get info() {
    return this.welcome;
  }
  /** Latest round-trip time in milliseconds. */
  get rtt() {
    return this.lastRtt;
  }
  /** `unreliable` publications this client dropped, over its life: each found no pacer token free
   *  while the newest values of 64 other rooms already waited for one. */
  get datagramsDropped() {
    return this.unsentDatagrams;
  }
  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }
  /** Resolves when connected (at once if already), rejects if the client closes first. */
  ready() {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(this.closedBy ?? new QuiverError("closed", "client is closed"));
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
    return this.subs.add(room, handler, options, this);
  }
  /** Stops a subscription; its handler gets no further messages. Unknown rooms are ignored. */
  async unsubscribe(room) {
    if (!this.subs.remove(room, new QuiverError("closed", `unsubscribed from ${room} before the server confirmed`, { room }))) return;
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
   * Publishes to a room. While disconnected the publish is queued (up to `maxQueuedPublishes`;
   * an `unreliable` one replaces its room's queued `unreliable` one) and sent after
   * reconnecting. With `ack`, resolves with the message's position (null for rooms without
   * history) once the server accepted it; without, resolves null once written.
   * Delivery is at most once: an ack that a lost connection swallowed rejects, it is not resent
   * (the message may or may not have been published). A draining server's goodbye (3000) is
   * not such a loss: the server answered every publish it carried out before it, so one still
   * unanswered was not published, and is queued again, in order, for the next session.
   */
  publish(room, payload, options = {}) {
    if (this.closing) return Promise.reject(new QuiverError("closed", "client is closed", { room }));
    const bytes = typeof payload === "string" ? textEncoder.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) {
      return Promise.reject(new TypeError("payload must be a Uint8Array or a string"));
    }
    const latest = !!options.unreliable && !options.ack && !this.subs.knownReliable(room);
    if (latest && this.active && !this.active.ended) {
      const sent = this.active.publishDatagram(room, encodePublishDatagram(room, bytes));
      if (sent === "dropped") this.unsentDatagrams++;
      if (sent !== null) return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      const item = { room, payload: bytes, ack: options.ack ?? false, resolve, reject, madeAt: performance.now(), latest };
      const session = this.active && !this.active.ended ? this.active : null;
      const full = session !== null && session.waiting >= this.opts.maxQueuedPublishes;
      if (session && full && session.waiting > 0) {
        reject(new QuiverError("buffer_full", `${session.waiting} commands already waiting to be written (the server's rate limit, or a transport still full)`, { room }));
      } else if (session) this.outbox.send(item, session, full);
      else this.outbox.hold(item);
    });
  }
  /** Measures the round-trip time to the server, in milliseconds. The `Ping` goes at once, ahead
   *  of what waits for the pacer: `flush()` waits for what was published before it. */
  async ping() {
    const session = this.active;
    if (this.closing) throw new QuiverError("closed", "client is closed");
    if (!session) throw new QuiverError("closed", "not connected");
    const start = performance.now();
    await session.request(this.nextId(), { type: "Ping" }, { urgent: true });
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
  async flush() {
    const session = this.active;
    if (this.closing) throw new QuiverError("closed", "client is closed");
    if (!session || session.ended) throw new QuiverError("closed", "not connected");
    const timeoutMs = this.opts.requestTimeoutMs;
    const deadline = performance.now() + timeoutMs;
    const withdraw = new AbortController();
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => {
        withdraw.abort();
        reject(new QuiverError("timeout", `flush not done within ${timeoutMs} ms (the unreliable publishes waiting for the pacer sent, then a Ping answered)`));
      }, timerDelay(timeoutMs));
    });
    try {
      await Promise.race([session.datagramsSent(), expired]);
      const ping = session.request(this.nextId(), { type: "Ping" }, { timeoutMs: Math.max(1, deadline - performance.now()), signal: withdraw.signal });
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
  async presence(room) {
    const session = this.active;
    if (!session) throw new QuiverError("closed", "not connected", { room });
    const reply = await session.request(this.nextId(), { type: "Presence", room });
    if (reply.type !== "Presence") throw new QuiverError("protocol", `expected Presence, got ${reply.type}`, { room });
    return reply.members;
  }
  /**
   * How many sessions, and distinct users, are subscribed to a room on every server instance:
   * the whole count, where `presence()` lists only the members that fit in one frame. The same
   * permission and namespace rules as `presence()`; rejects when disconnected.
   */
  async presenceStats(room) {
    const session = this.active;
    if (!session) throw new QuiverError("closed", "not connected", { room });
    const reply = await session.request(this.nextId(), { type: "PresenceStats", room });
    if (reply.type !== "PresenceStats") {
      throw new QuiverError("protocol", `expected PresenceStats, got ${reply.type}`, { room });
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
  async history(room, options = {}) {
    const session = this.active;
    if (!session) throw new QuiverError("closed", "not connected", { room });
    const limit = options.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 0 || limit > 4294967295) {
      throw new RangeError(`limit must be an integer from 0 to 2^32-1, got ${limit}`);
    }
    const reply = await session.request(this.nextId(), {
      type: "History",
      room,
      since: options.since ?? null,
      limit
    });
    if (reply.type !== "History") throw new QuiverError("protocol", `expected History, got ${reply.type}`, { room });
    return {
      position: reply.position,
      publications: reply.publications.map((p) => new Message(room, p.position, p.payload)),
      truncated: reply.truncated
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
  async call(method, payload, options = {}) {
    const { signal } = options;
    signal?.throwIfAborted();
    const bytes = typeof payload === "string" ? textEncoder.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) throw new TypeError("payload must be a Uint8Array or a string");
    const session = this.active;
    if (this.closing || !session || session.ended) {
      throw new QuiverError("closed", "not connected: calls are not queued while disconnected");
    }
    const full = session.waiting >= this.opts.maxQueuedPublishes;
    if (full && session.waiting > 0) {
      throw new QuiverError("buffer_full", `${session.waiting} commands already waiting to be written`);
    }
    const timeoutMs = Math.max(0, Math.min(Math.round(options.timeoutMs ?? 0), 4294967295));
    const command = {
      type: "Call",
      method,
      payload: bytes,
      timeoutMs,
      idempotencyKey: options.idempotencyKey ?? ""
    };
    const wait = Math.max(this.opts.requestTimeoutMs, timeoutMs + 2e3);
    const request = session.request(this.nextId(), command, { timeoutMs: wait, writeBy: performance.now() + this.opts.requestTimeoutMs, noWait: full, ...signal && { signal } });
    const reply = await (signal ? abortable(request, signal) : request);
    if (reply.type !== "Reply") throw new QuiverError("protocol", `expected Reply, got ${reply.type}`);
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
  async close() {
    if (!this.closing) {
      this.closing = true;
      this.subs.endAll(new QuiverError("closed", "client closed"));
      const session = this.active;
      if (session && !session.ended) void session.leave(this.opts.requestTimeoutMs);
      this.connecting?.end(new QuiverError("closed", "client closed"), true);
      this.stop.abort(new QuiverError("closed", "client closed"));
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
      this.lastGoodbye = null;
      try {
        const session = await this.open();
        if (this.closing) {
          session.end(new QuiverError("closed", "client closed"), true);
          break;
        }
        cause = await this.serve(session);
        if (session.connectedFor() >= STABLE_MS) attempt = 0;
      } catch (e) {
        cause = asQuiverError(e);
      }
      if (this.closing) break;
      this.emit("error", cause);
      const goodbye = this.lastGoodbye;
      const backoff = this.opts.reconnect;
      let stale = false;
      if (goodbye?.code === CloseCode.token_expired) {
        stale = this.lastToken !== null && this.lastToken === this.expiredToken;
        this.expiredToken = this.lastToken;
      }
      const otherVersion = cause.kind === "protocol" && cause.code === CloseCode.unsupported_version;
      if (backoff === false || goodbye && !goodbye.reconnect || stale || otherVersion) {
        this.closing = true;
        break;
      }
      this.setState("disconnected", cause);
      const ceiling = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * 2 ** attempt);
      attempt = Math.min(attempt + 1, 30);
      await this.sleep(Math.random() * ceiling);
      this.dialer.advance();
    }
    this.shutdown(cause);
  }
  /** One connection attempt: a token, then each transport in turn until one gets a Welcome. */
  async open() {
    const timeout = this.opts.connectTimeoutMs;
    let token;
    try {
      token = await withTimeout(Promise.resolve().then(() => this.opts.token()), timeout, "token callback", this.stop.signal);
    } catch (e) {
      if (this.closing) throw new QuiverError("closed", "client closed while the token callback ran", { cause: e });
      throw new QuiverError("token", `could not get a token: ${errorMessage(e)}`, { cause: e });
    }
    if (this.closing) throw new QuiverError("closed", "client closed");
    if (typeof token !== "string" || token === "") {
      throw new QuiverError("token", "the token callback returned no token");
    }
    this.lastToken = token;
    const target = this.dialer.target();
    const candidates = this.dialer.candidates(target);
    let skipped = null;
    for (const [i, kind] of candidates.entries()) {
      const last = i === candidates.length - 1;
      let link;
      try {
        link = await this.dialer.open(kind, target, token, last ? timeout : Math.min(timeout, this.opts.webTransportTimeoutMs), this.stop.signal);
      } catch (e) {
        const err = asQuiverError(e);
        if (this.closing) throw err;
        if (!last) {
          skipped = err;
          continue;
        }
        throw skipped ? new QuiverError(err.kind, `${err.message}; before that, ${skipped.message}`, { cause: err }) : err;
      }
      if (this.closing) {
        link.close("client closed");
        throw new QuiverError("closed", "client closed");
      }
      let session;
      try {
        session = await this.hello(link);
      } catch (e) {
        if (last || this.closing || this.lastGoodbye) throw e;
        skipped = asQuiverError(e);
        continue;
      }
      if (skipped) this.dialer.workedAfterWebTransportFailed(target, kind);
      if (kind !== this.currentTransport) {
        this.currentTransport = kind;
        this.emit("transport", kind, skipped);
      }
      return session;
    }
    throw new QuiverError("handshake", "no transport to try");
  }
  /** Hello, Welcome. A Goodbye instead (a refused token on WebSocket) ends the attempt with it. */
  async hello(link) {
    const session = new Session(link, this.opts.requestTimeoutMs, this, (g) => {
      this.lastGoodbye = g;
      this.emit("goodbye", g);
    });
    session.nextId = () => this.nextId();
    this.connecting = session;
    let welcome;
    try {
      await session.start();
      welcome = await session.request(
        this.nextId(),
        { type: "Hello", version: PROTOCOL_VERSION, client: this.opts.clientName },
        { timeoutMs: this.opts.connectTimeoutMs }
      );
    } catch (e) {
      const err = session.cause ?? asQuiverError(e);
      session.end(err);
      throw err;
    } finally {
      this.connecting = null;
    }
    if (welcome.type !== "Welcome") {
      const err = new QuiverError("protocol", `expected Welcome, got ${welcome.type}`);
      session.end(err);
      throw err;
    }
    if (welcome.version !== PROTOCOL_VERSION) {
      const err = new QuiverError("protocol", `the server speaks protocol version ${welcome.version}, this client ${PROTOCOL_VERSION}`, {
        code: CloseCode.unsupported_version
      });
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
    session.raiseMaxFrame(Math.min(welcome.limits.maxFrame, this.opts.maxFrameCeiling));
    session.limitFrames(Math.max(welcome.limits.maxFrame, MIN_MAX_FRAME));
    if (this.opts.paceCommands) session.pace(welcome.limits.commandsPerSecond);
    return session;
  }
  /** Runs a welcomed session until it ends; returns why it ended. */
  async serve(session) {
    this.active = session;
    session.markConnected();
    const timers = [];
    if (this.opts.pingIntervalMs > 0) {
      const ping = () => {
        const sentAt = performance.now();
        this.ping().catch((e) => {
          if (session.ended || session.leaving) return;
          const unanswered = e instanceof QuiverError && e.kind === "timeout";
          if (unanswered && session.heardSince(sentAt)) {
            session.end(new QuiverError("timeout", `the server answered no Ping within ${this.opts.requestTimeoutMs} ms though it still sent other frames: session presumed hung`));
            return;
          }
          if (session.heardSince(sentAt)) return;
          session.end(new QuiverError("timeout", `ping failed: ${errorMessage(e)}`));
        });
      };
      ping();
      timers.push(setInterval(ping, this.opts.pingIntervalMs));
    }
    if (this.opts.heartbeat) session.startHeartbeat(this.opts.heartbeat.idleMs, this.opts.heartbeat.timeoutMs);
    const resubscribe = this.subs.resubscribe(session);
    const queued = this.outbox.takeAll();
    this.setState("connected");
    if (this.info) this.emit("welcome", this.info);
    resubscribe();
    for (const item of queued) this.outbox.send(item, session);
    const refresh = new Refresher(session, this.opts.token, (e) => this.emit("error", e));
    refresh.schedule(this.info?.expiresAt ?? null);
    const cause = await session.done;
    for (const t of timers) clearInterval(t);
    refresh.stop();
    this.active = null;
    this.subs.sessionEnded();
    return cause;
  }
  /** @internal Called by Session for control events that answer no pending command. */
  onUnsolicited(session, id, event) {
    switch (event.type) {
      case "Unsubscribed":
        this.subs.onServerUnsubscribed(session, event.room, event.code, event.reason);
        break;
      case "Error":
        this.emit(
          "error",
          new QuiverError("command", `server refused command ${id}: ${codeLabel(event.code)}: ${clip(event.message)}`, {
            code: event.code
          })
        );
        break;
      default:
        break;
    }
  }
  /**
   * Ends a WebTransport session that cannot carry the app's subscriptions (the browser's limit
   * of incoming streams, about 100) so that the reconnect goes to WebSocket, for the rest of this
   * client's life. False when there is nowhere to move.
   */
  moveToWebSocket(session, cause) {
    if (session.kind !== "webtransport" || !this.dialer.moveToWebSocket()) return false;
    session.end(new QuiverError("transport", `moving to WebSocket: ${cause.message}`, { cause }));
    return true;
  }
  /** @internal The header of subscription `id` arrived: whether it is `room`'s current one. */
  streamOpened(room, id) {
    return this.subs.streamOpened(room, id);
  }
  /** @internal The stream of subscription `id` of `room` ended on `session`. */
  streamEnded(session, room, id) {
    this.subs.streamEnded(session, room, id);
  }
  /** @internal Delivers an event of the subscription `id`; false when it is not the current one. */
  deliver(id, event) {
    return this.subs.deliver(id, event);
  }
  /** @internal A datagram: the newest value of a `latest` subscription. */
  datagram(session, bytes) {
    this.subs.datagram(session, bytes);
  }
  /** @internal */
  report(error) {
    this.emit("error", error);
  }
  /** @internal */
  onRtt(ms) {
    this.lastRtt = ms;
    this.emit("rtt", ms);
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
    this.subs.endAll(err);
    this.outbox.rejectAll(err);
    this.closedBy = cause;
    this.setState("closed", cause);
  }
};
async function connect(options) {
  const client = new QuiverClient(options);
  await client.ready();
  return client;
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
  MAX_MAX_FRAME,
  MIN_MAX_FRAME,
  Message,
  PROTOCOL_VERSION,
  QuiverClient,
  QuiverError,
  Subscription,
  codeLabel,
  connect,
  decodeCommand,
  decodeEvent,
  decodeLatestDatagram,
  encodeCommand,
  encodeEvent,
  encodeLatestDatagram,
  encodePublishDatagram,
  forgetWebTransportFailures
};
