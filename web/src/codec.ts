// Quiver wire format, version 1 (PROTOCOL.md section 3): length-prefixed frames whose bodies are
// postcard-encoded envelopes. Sans-IO: everything here works on byte arrays only, so it is tested
// in Node against the Rust reference vectors without a network.

/** Bytes in the big-endian length prefix of every frame. */
export const LENGTH_PREFIX = 4;
/** The protocol's default maximum frame body (`Welcome.limits.max_frame` may announce another). */
export const DEFAULT_MAX_FRAME = 64 * 1024;
/** The smallest `max_frame` a server announces (PROTOCOL §3). */
export const MIN_MAX_FRAME = 8 * 1024;
/** The largest `max_frame` a server may announce (16 MiB, PROTOCOL.md §3): no client takes a
 *  larger frame, whatever a server says. */
export const MAX_MAX_FRAME = 16 * 1024 * 1024;
/** Protocol version spoken by this codec (`Hello.version`, CONNECT path `/v1`). */
export const PROTOCOL_VERSION = 1;

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

export type Recovery =
  | { type: 'NotRequested' }
  | { type: 'Recovered'; replayed: number }
  | { type: 'Failed' };

/** Client to server. The order of the variants in `COMMAND_TYPES` is the wire format. */
export type Command =
  | { type: 'Hello'; version: number; client: string }
  | { type: 'Subscribe'; room: string; resume: Position | null }
  | { type: 'Unsubscribe'; room: string }
  | { type: 'Publish'; room: string; payload: Uint8Array; ack: boolean }
  | { type: 'Ping' }
  | { type: 'Refresh'; token: string }
  | { type: 'Presence'; room: string }
  | { type: 'History'; room: string; since: Position | null; limit: number }
  /** `timeoutMs` 0 takes the server's default; `idempotencyKey` '' for none (PROTOCOL.md §11). */
  | { type: 'Call'; method: string; payload: Uint8Array; timeoutMs: number; idempotencyKey: string }
  | { type: 'PresenceStats'; room: string };

/** Server to client. The order of the variants in `EVENT_TYPES` is the wire format. */
export type Event =
  | {
      type: 'Welcome';
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
  | { type: 'Subscribed'; room: string; position: Position | null; recovery: Recovery; subscription?: bigint | null }
  | { type: 'Unsubscribed'; room: string; code: number; reason: string }
  | { type: 'Published'; position: Position | null }
  | { type: 'Pong' }
  | { type: 'Refreshed'; expiresAt: bigint | null }
  | { type: 'Error'; code: number; message: string }
  | { type: 'Publication'; room: string; position: Position | null; payload: Uint8Array }
  | { type: 'SubscriptionStream'; room: string }
  | { type: 'Goodbye'; code: number; reason: string; reconnect: boolean }
  /** `truncated`: the server listed only the members that fit in one frame (older servers never
   *  send the field; it then reads as false). */
  | { type: 'Presence'; room: string; members: Member[]; truncated: boolean }
  | { type: 'Joined'; room: string; member: Member }
  | { type: 'Left'; room: string; member: Member }
  /** A page of a history room, oldest first; `truncated`: more is kept after the last one. */
  | { type: 'History'; room: string; position: Position | null; publications: HistoryItem[]; truncated: boolean }
  /** A value of a `latest` room that did not go as a datagram (PROTOCOL.md section 10). */
  | { type: 'Latest'; room: string; sequence: bigint; payload: Uint8Array }
  | { type: 'Reply'; payload: Uint8Array }
  /** Every session in a room, on every instance, and its distinct users, counted. */
  | { type: 'PresenceStats'; room: string; sessions: number; users: number };

export interface ClientFrame {
  id: number;
  command: Command;
}

export interface ServerFrame {
  id: number;
  event: Event;
}

export type CommandType = Command['type'];
export type EventType = Event['type'];

export const COMMAND_TYPES: readonly CommandType[] = [
  'Hello',
  'Subscribe',
  'Unsubscribe',
  'Publish',
  'Ping',
  'Refresh',
  'Presence',
  'History',
  'Call',
  'PresenceStats',
];

export const EVENT_TYPES: readonly EventType[] = [
  'Welcome',
  'Subscribed',
  'Unsubscribed',
  'Published',
  'Pong',
  'Refreshed',
  'Error',
  'Publication',
  'SubscriptionStream',
  'Goodbye',
  'Presence',
  'Joined',
  'Left',
  'History',
  'Latest',
  'Reply',
  'PresenceStats',
];

const RECOVERY_TYPES: readonly Recovery['type'][] = ['NotRequested', 'Recovered', 'Failed'];

/** Bytes that are not a valid frame or message of this protocol. The stream is unusable after. */
export class DecodeError extends Error {
  override name = 'DecodeError';
}

const MAX_U16 = 0xffff;
const MAX_U32 = 0xffff_ffff;
const MAX_U64 = (1n << 64n) - 1n;
/** The most publications a `History` page may carry: the server caps `limit` at this. */
const MAX_HISTORY_ITEMS = 1000;
/** The most members of a `Presence` list decoded; the rest are skipped and the list reads as
 *  `truncated`, as the server's own cut at one frame does. A frame of empty members (2 bytes
 *  each) decoded into half a million objects per MiB, unasked for (outside audit 104, F5); a real
 *  list this long (16-digit session ids: frames over 180 KB) is better followed with `Joined` and
 *  `Left`, or counted with `PresenceStats`. */
const MAX_PRESENCE_MEMBERS = 10_000;

const utf8Encoder = new TextEncoder();
// `fatal` makes invalid UTF-8 an error, as it is for postcard's `String`.
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  private buf = new Uint8Array(64);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  /** Unsigned LEB128 of a u16/u32 held in a JS number. */
  varint(value: number, max: number): void {
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(`${value} is not an integer in 0..=${max}`);
    }
    let v = value;
    while (v >= 0x80) {
      this.byte((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.byte(v);
  }

  varint64(value: bigint): void {
    if (typeof value !== 'bigint' || value < 0n || value > MAX_U64) {
      throw new RangeError(`${String(value)} is not a u64 (pass a BigInt)`);
    }
    let v = value;
    while (v >= 0x80n) {
      this.byte(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.byte(Number(v));
  }

  bool(value: boolean): void {
    this.byte(value ? 1 : 0);
  }

  bytes(value: Uint8Array): void {
    this.varint(value.length, MAX_U32);
    this.raw(value);
  }

  string(value: string): void {
    this.bytes(utf8Encoder.encode(value));
  }

  option<T>(value: T | null, write: (v: T) => void): void {
    if (value === null) {
      this.byte(0);
    } else {
      this.byte(1);
      write(value);
    }
  }

  position(p: Position): void {
    this.varint64(p.epoch);
    this.varint64(p.offset);
  }

  member(m: Member): void {
    this.string(m.user);
    this.string(m.session);
  }

  /** The bytes written, with no length prefix (datagrams). */
  body(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  /** The body with its length prefix in front. */
  frame(): Uint8Array {
    const out = new Uint8Array(LENGTH_PREFIX + this.len);
    new DataView(out.buffer).setUint32(0, this.len);
    out.set(this.buf.subarray(0, this.len), LENGTH_PREFIX);
    return out;
  }
}

class Reader {
  private pos = 0;

  constructor(private readonly buf: Uint8Array) {}

  byte(): number {
    const b = this.buf[this.pos];
    if (b === undefined) throw new DecodeError('unexpected end of frame');
    this.pos++;
    return b;
  }

  /** u16/u32 varint: at most ceil(bits/7) bytes and no bits beyond the type's width. */
  varint(max: number, maxBytes: number): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) {
        if (value > max) throw new DecodeError(`varint ${value} overflows its type (max ${max})`);
        return value;
      }
      scale *= 0x80;
    }
    throw new DecodeError('varint too long');
  }

  u16(): number {
    return this.varint(MAX_U16, 3);
  }

  u32(): number {
    return this.varint(MAX_U32, 5);
  }

  u64(): bigint {
    let value = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      const b = this.byte();
      value |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) {
        if (value > MAX_U64) throw new DecodeError('varint overflows u64');
        return value;
      }
      shift += 7n;
    }
    throw new DecodeError('varint too long');
  }

  /** A bool appended at the end of a message by a later revision: absent (the frame ends
   *  here) reads as false. */
  trailingBool(): boolean {
    return this.pos < this.buf.length ? this.bool() : false;
  }

  /** An `Option` appended by a later revision and left out when `None`: absent reads as null. */
  trailingOption<T>(read: () => T): T | null {
    return this.pos < this.buf.length ? this.option(read) : null;
  }

  /** Everything left (a datagram's payload). */
  rest(): Uint8Array {
    const out = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return out;
  }

  bool(): boolean {
    const b = this.byte();
    if (b > 1) throw new DecodeError(`invalid bool byte ${b}`);
    return b === 1;
  }

  bytes(): Uint8Array {
    const len = this.u32();
    // Checked against what is actually there, so a hostile length allocates nothing.
    if (len > this.buf.length - this.pos) throw new DecodeError('length exceeds frame');
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  string(): string {
    try {
      return utf8Decoder.decode(this.bytes());
    } catch (e) {
      if (e instanceof DecodeError) throw e;
      throw new DecodeError('string is not valid UTF-8');
    }
  }

  option<T>(read: () => T): T | null {
    const tag = this.byte();
    if (tag === 0) return null;
    if (tag === 1) return read();
    throw new DecodeError(`invalid option tag ${tag}`);
  }

  position(): Position {
    return { epoch: this.u64(), offset: this.u64() };
  }

  member(): Member {
    return { user: this.string(), session: this.string() };
  }

  /** A `Presence` list's first `most` members; the rest are skipped (their shape checked, nothing
   *  allocated), `cut` saying so. */
  members(most: number): { members: Member[]; cut: boolean } {
    const count = this.u32();
    // Every member takes at least two bytes.
    if (count * 2 > this.buf.length - this.pos) throw new DecodeError('count exceeds frame');
    const members: Member[] = [];
    for (let i = 0; i < count; i++) {
      if (i < most) {
        members.push(this.member());
      } else {
        this.skip();
        this.skip();
      }
    }
    return { members, cut: count > most };
  }

  /** Steps over a `Bytes` or `String` without reading it. */
  private skip(): void {
    const len = this.u32();
    if (len > this.buf.length - this.pos) throw new DecodeError('length exceeds frame');
    this.pos += len;
  }

  /** postcard `Vec<T>`: varint count, then the elements. */
  list<T>(read: () => T, most = Infinity): T[] {
    const count = this.u32();
    // Every element takes at least one byte, so a hostile count fails here, not after allocating.
    if (count > this.buf.length - this.pos) throw new DecodeError('count exceeds frame');
    if (count > most) throw new DecodeError(`${count} items where the protocol allows at most ${most}`);
    const out: T[] = [];
    for (let i = 0; i < count; i++) out.push(read());
    return out;
  }
}

/** Encodes a command as a complete frame, length prefix included. Throws RangeError on values
 *  that do not fit their wire type. */
export function encodeCommand(frame: ClientFrame): Uint8Array {
  const w = new Writer();
  const c = frame.command;
  w.varint(frame.id, MAX_U32);
  w.varint(COMMAND_TYPES.indexOf(c.type), MAX_U32);
  switch (c.type) {
    case 'Hello':
      w.varint(c.version, MAX_U16);
      w.string(c.client);
      break;
    case 'Subscribe':
      w.string(c.room);
      w.option(c.resume, (p) => w.position(p));
      break;
    case 'Unsubscribe':
      w.string(c.room);
      break;
    case 'Publish':
      w.string(c.room);
      w.bytes(c.payload);
      w.bool(c.ack);
      break;
    case 'Ping':
      break;
    case 'Refresh':
      w.string(c.token);
      break;
    case 'Presence':
      w.string(c.room);
      break;
    case 'History':
      w.string(c.room);
      w.option(c.since, (p) => w.position(p));
      w.varint(c.limit, MAX_U32);
      break;
    case 'Call':
      w.string(c.method);
      w.bytes(c.payload);
      w.varint(c.timeoutMs, MAX_U32);
      w.string(c.idempotencyKey);
      break;
    case 'PresenceStats':
      w.string(c.room);
      break;
  }
  return w.frame();
}

/** Encodes an event as a complete frame (what a server sends; used by tests and fakes). */
export function encodeEvent(frame: ServerFrame): Uint8Array {
  const w = new Writer();
  const e = frame.event;
  w.varint(frame.id, MAX_U32);
  w.varint(EVENT_TYPES.indexOf(e.type), MAX_U32);
  switch (e.type) {
    case 'Welcome':
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
    case 'Subscribed':
      w.string(e.room);
      w.option(e.position, (p) => w.position(p));
      w.varint(RECOVERY_TYPES.indexOf(e.recovery.type), MAX_U32);
      if (e.recovery.type === 'Recovered') w.varint(e.recovery.replayed, MAX_U32);
      // Appended, and left out entirely when absent (PROTOCOL.md section 8).
      if (e.subscription != null) w.option(e.subscription, (v) => w.varint64(v));
      break;
    case 'Unsubscribed':
      w.string(e.room);
      w.varint(e.code, MAX_U16);
      w.string(e.reason);
      break;
    case 'Published':
      w.option(e.position, (p) => w.position(p));
      break;
    case 'Pong':
      break;
    case 'Refreshed':
      w.option(e.expiresAt, (v) => w.varint64(v));
      break;
    case 'Error':
      w.varint(e.code, MAX_U16);
      w.string(e.message);
      break;
    case 'Publication':
      w.string(e.room);
      w.option(e.position, (p) => w.position(p));
      w.bytes(e.payload);
      break;
    case 'SubscriptionStream':
      w.string(e.room);
      break;
    case 'Goodbye':
      w.varint(e.code, MAX_U16);
      w.string(e.reason);
      w.bool(e.reconnect);
      break;
    case 'Presence':
      w.string(e.room);
      w.varint(e.members.length, MAX_U32);
      for (const m of e.members) w.member(m);
      w.bool(e.truncated);
      break;
    case 'Joined':
    case 'Left':
      w.string(e.room);
      w.member(e.member);
      break;
    case 'History':
      w.string(e.room);
      w.option(e.position, (p) => w.position(p));
      w.varint(e.publications.length, MAX_U32);
      for (const item of e.publications) {
        w.position(item.position);
        w.bytes(item.payload);
      }
      w.bool(e.truncated);
      break;
    case 'Latest':
      w.string(e.room);
      w.varint64(e.sequence);
      w.bytes(e.payload);
      break;
    case 'Reply':
      w.bytes(e.payload);
      break;
    case 'PresenceStats':
      w.string(e.room);
      w.varint(e.sessions, MAX_U32);
      w.varint(e.users, MAX_U32);
      break;
  }
  return w.frame();
}

/**
 * Decodes one frame body (no length prefix) from the server. Returns null for an event type this
 * version does not know: the protocol says to skip such frames. Throws DecodeError on malformed
 * bytes. Bytes after a complete message are ignored (later revisions may append fields).
 * Byte fields are views into `body`.
 */
export function decodeEvent(body: Uint8Array): ServerFrame | null {
  const r = new Reader(body);
  const id = r.u32();
  const type = EVENT_TYPES[r.u32()];
  if (type === undefined) return null;
  let event: Event;
  switch (type) {
    case 'Welcome': {
      const version = r.u16();
      const session = r.string();
      const user = r.string();
      const tenant = r.string();
      const expiresAt = r.option(() => r.u64());
      const limits: Limits = {
        maxFrame: r.u32(),
        maxPayload: r.u32(),
        maxSubscriptions: r.u32(),
        commandsPerSecond: r.u32(),
      };
      event = { type, version, session, user, tenant, expiresAt, limits };
      break;
    }
    case 'Subscribed': {
      const room = r.string();
      const position = r.option(() => r.position());
      const recovery = readRecovery(r);
      const subscription = r.trailingOption(() => r.u64());
      // Only `latest` rooms have the field (as the Rust reference's JSON has it only then).
      event = subscription === null ? { type, room, position, recovery } : { type, room, position, recovery, subscription };
      break;
    }
    case 'Unsubscribed':
      event = { type, room: r.string(), code: r.u16(), reason: r.string() };
      break;
    case 'Published':
      event = { type, position: r.option(() => r.position()) };
      break;
    case 'Pong':
      event = { type };
      break;
    case 'Refreshed':
      event = { type, expiresAt: r.option(() => r.u64()) };
      break;
    case 'Error':
      event = { type, code: r.u16(), message: r.string() };
      break;
    case 'Publication': {
      const room = r.string();
      const position = r.option(() => r.position());
      event = { type, room, position, payload: r.bytes() };
      break;
    }
    case 'SubscriptionStream':
      event = { type, room: r.string() };
      break;
    case 'Goodbye':
      event = { type, code: r.u16(), reason: r.string(), reconnect: r.bool() };
      break;
    case 'Presence': {
      const room = r.string();
      const { members, cut } = r.members(MAX_PRESENCE_MEMBERS);
      event = { type, room, members, truncated: r.trailingBool() || cut };
      break;
    }
    case 'Joined':
    case 'Left':
      event = { type, room: r.string(), member: r.member() };
      break;
    case 'History': {
      const room = r.string();
      const position = r.option(() => r.position());
      // At most the server's cap on `limit` (PROTOCOL.md section 5): a page of a million 3-byte
      // items would otherwise cost ~90 times its frame in objects (outside audit).
      const publications = r.list(() => ({ position: r.position(), payload: r.bytes() }), MAX_HISTORY_ITEMS);
      event = { type, room, position, publications, truncated: r.bool() };
      break;
    }
    case 'Latest':
      event = { type, room: r.string(), sequence: r.u64(), payload: r.bytes() };
      break;
    case 'Reply':
      event = { type, payload: r.bytes() };
      break;
    case 'PresenceStats':
      event = { type, room: r.string(), sessions: r.u32(), users: r.u32() };
      break;
  }
  return { id, event };
}

/** A datagram from the server: the newest value of a `latest` subscription (PROTOCOL.md
 *  section 10). Throws DecodeError on a malformed header. */
export interface LatestDatagram {
  subscription: bigint;
  sequence: bigint;
  payload: Uint8Array;
}

export function decodeLatestDatagram(datagram: Uint8Array): LatestDatagram {
  const r = new Reader(datagram);
  return { subscription: r.u64(), sequence: r.u64(), payload: r.rest() };
}

/** Encodes a server datagram (used by tests and fakes). */
export function encodeLatestDatagram(d: LatestDatagram): Uint8Array {
  const w = new Writer();
  w.varint64(d.subscription);
  w.varint64(d.sequence);
  w.raw(d.payload);
  return w.body();
}

/** A client datagram: an unacknowledged publication to a `latest` room. */
export function encodePublishDatagram(room: string, payload: Uint8Array): Uint8Array {
  const w = new Writer();
  w.string(room);
  w.raw(payload);
  return w.body();
}

function readRecovery(r: Reader): Recovery {
  const type = RECOVERY_TYPES[r.u32()];
  if (type === undefined) throw new DecodeError('unknown recovery variant');
  return type === 'Recovered' ? { type, replayed: r.u32() } : { type };
}

/** Decodes one frame body from a client (what a server reads; used by tests and fakes).
 *  Returns null for an unknown command type. */
export function decodeCommand(body: Uint8Array): ClientFrame | null {
  const r = new Reader(body);
  const id = r.u32();
  const type = COMMAND_TYPES[r.u32()];
  if (type === undefined) return null;
  let command: Command;
  switch (type) {
    case 'Hello':
      command = { type, version: r.u16(), client: r.string() };
      break;
    case 'Subscribe': {
      const room = r.string();
      command = { type, room, resume: r.option(() => r.position()) };
      break;
    }
    case 'Unsubscribe':
      command = { type, room: r.string() };
      break;
    case 'Publish':
      command = { type, room: r.string(), payload: r.bytes(), ack: r.bool() };
      break;
    case 'Ping':
      command = { type };
      break;
    case 'Refresh':
      command = { type, token: r.string() };
      break;
    case 'Presence':
      command = { type, room: r.string() };
      break;
    case 'History': {
      const room = r.string();
      const since = r.option(() => r.position());
      command = { type, room, since, limit: r.u32() };
      break;
    }
    case 'Call':
      command = { type, method: r.string(), payload: r.bytes(), timeoutMs: r.u32(), idempotencyKey: r.string() };
      break;
    case 'PresenceStats':
      command = { type, room: r.string() };
      break;
  }
  return { id, command };
}

/**
 * Splits a byte stream into frame bodies. The announced length is checked against `maxFrame`
 * as soon as the 4-byte prefix is in, before any of the body is buffered, so a peer can never
 * make it hold more than one partial frame of at most `maxFrame` bytes.
 *
 * After an error the stream is out of sync: stop reading it.
 */
export class FrameDecoder {
  private readonly header = new Uint8Array(LENGTH_PREFIX);
  private headerFill = 0;
  private body: Uint8Array | null = null;
  private bodyFill = 0;
  private failed: DecodeError | null = null;

  constructor(public maxFrame: number = DEFAULT_MAX_FRAME) {
    if (!Number.isInteger(maxFrame) || maxFrame < 1) {
      throw new RangeError(`maxFrame must be a positive integer, got ${maxFrame}`);
    }
  }

  /** Feeds bytes read from the stream; returns every frame body they complete, in order. */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.failed) throw this.failed;
    const frames: Uint8Array[] = [];
    let off = 0;
    while (off < chunk.length) {
      if (this.body === null) {
        const take = Math.min(LENGTH_PREFIX - this.headerFill, chunk.length - off);
        this.header.set(chunk.subarray(off, off + take), this.headerFill);
        this.headerFill += take;
        off += take;
        if (this.headerFill < LENGTH_PREFIX) break;
        const len = new DataView(this.header.buffer).getUint32(0);
        this.headerFill = 0;
        if (len === 0) throw this.fail('empty frame');
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
  get buffered(): number {
    return this.body === null ? this.headerFill : LENGTH_PREFIX + this.bodyFill;
  }

  private fail(message: string): DecodeError {
    this.failed = new DecodeError(message);
    this.body = null;
    return this.failed;
  }
}
