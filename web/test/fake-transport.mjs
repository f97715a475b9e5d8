// In-memory stand-ins for the browser's WebTransport and WebSocket and for a Quiver server, so the
// client's session logic (handshake, streams, reconnects, fallback, pacing) is tested in Node
// without a network. Both fakes have the same server-side API (`expect`, `send`, `welcome`,
// `openStream`, `kill`), so a test can run over either transport.
import { FrameDecoder, QuiverClient, decodeCommand, encodeEvent } from '../dist/quiver.js';

const TIMEOUT_MS = 3000;

/** `[id, event]` pairs encoded back to back: several frames for one read. */
export function encodeFrames(frames) {
  const parts = frames.map(([id, event]) => encodeEvent({ id, event }));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Values pushed by one side, awaited by the other, with a deadline. */
class Channel {
  items = [];
  waiters = [];

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  next(what, ms = TIMEOUT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      const waiter = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.push(waiter);
    });
  }
}

export class FakeNetwork {
  connections = new Channel();
  /** Every connection attempt, in order, over either transport. */
  attempts = [];
  /** Decides per CONNECT whether the WebTransport handshake succeeds. `'silent'` never answers
   *  (blocked UDP). */
  accept = () => true;
  /** Decides per WebSocket whether the upgrade succeeds: false fails it as browsers do (`error`,
   *  then `close` 1006); `'error'` fires only the `error`, as node's WebSocket (undici) does for
   *  a refused connection. */
  acceptWebSocket = () => true;
  /** Decides per WebTransport session whether its control stream opens. `'silent'` never
   *  settles `createBidirectionalStream` (a browser waiting for stream credit that never comes). */
  controlStream = () => true;

  get WebTransport() {
    const net = this;
    return class {
      constructor(url, options) {
        const conn = new FakeConnection(url, options, net.accept(new URL(url)), net.controlStream(new URL(url)));
        net.attempts.push(conn);
        net.connections.push(conn);
        // A constructor may return another object: the client gets the connection's browser side.
        return conn.client;
      }
    };
  }

  get WebSocket() {
    const net = this;
    return class {
      constructor(url, protocols = []) {
        const offered = typeof protocols === 'string' ? [protocols] : [...protocols];
        const token = offeredToken(offered) ?? new URL(url).searchParams.get('token');
        const conn = new FakeWebSocketConnection(url, net.acceptWebSocket(new URL(url), token), offered);
        net.attempts.push(conn);
        net.connections.push(conn);
        return conn.client;
      }
    };
  }

  nextConnection(ms) {
    return this.connections.next('a connection attempt', ms);
  }
}

/**
 * The server side shared by both fakes: decoded commands, and optionally a server that answers by
 * itself and meters commands like the real one (token bucket, `commandsPerSecond` sustained and
 * as burst), refusing the excess with 107 rate_limited.
 */
class FakeServer {
  commands = new Channel();
  /** Every command received, in order. */
  received = [];
  /** Commands refused as rate_limited. */
  rateLimited = 0;
  /** When set, Subscribe (with its stream), Unsubscribe, Publish (ack) and Ping are answered by
   *  the fake. */
  autoAnswer = false;
  limits = { maxFrame: 65536, maxPayload: 65000, maxSubscriptions: 16, commandsPerSecond: 100 };
  bucket = null;

  onCommand(frame) {
    this.received.push(frame);
    if (frame.command.type !== 'Hello' && this.bucket && !this.take()) {
      this.rateLimited++;
      this.send(frame.id, { type: 'Error', code: 107, message: 'rate limited' });
      return;
    }
    if (this.autoAnswer && this.answer(frame)) return;
    this.commands.push(frame);
  }

  /** Meters commands from now on at `limits.commandsPerSecond` (what Welcome announced). */
  meter() {
    const rate = this.limits.commandsPerSecond;
    this.bucket = { tokens: rate, last: performance.now(), rate };
  }

  take() {
    const b = this.bucket;
    const now = performance.now();
    b.tokens = Math.min(b.rate, b.tokens + ((now - b.last) / 1000) * b.rate);
    b.last = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  answer({ id, command }) {
    switch (command.type) {
      case 'Subscribe':
        this.openStream().send(id, { type: 'SubscriptionStream', room: command.room });
        this.send(id, { type: 'Subscribed', room: command.room, position: null, recovery: { type: 'NotRequested' } });
        return true;
      case 'Unsubscribe':
        this.send(id, { type: 'Unsubscribed', room: command.room, code: 0, reason: '' });
        return true;
      case 'Publish':
        if (command.ack) this.send(id, { type: 'Published', position: null });
        return true;
      case 'Ping':
        this.send(id, { type: 'Pong' });
        return true;
      default:
        return false;
    }
  }

  /** Next command from the client, checked to be of `type`. */
  async expect(type, ms) {
    const frame = await this.commands.next(`a ${type} command`, ms);
    if (frame?.command.type !== type) {
      throw new Error(`expected ${type}, got ${JSON.stringify(frame, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))}`);
    }
    return frame;
  }

  /** Completes the handshake: reads Hello, answers Welcome. With `meter`, the session's rate
   *  limit starts with the Welcome, as on the real server. */
  async welcome({ expiresAt = null, tenant = 't', user = 'u', limits = {}, meter = false } = {}) {
    const hello = await this.expect('Hello');
    Object.assign(this.limits, limits);
    if (meter) this.meter();
    this.send(hello.id, { type: 'Welcome', version: 1, session: 's', user, tenant, expiresAt, limits: this.limits });
    return hello;
  }
}

export class FakeConnection extends FakeServer {
  transport = 'webtransport';

  /** The token the client sent (a WebTransport CONNECT carries it in the query, §1). */
  get token() {
    return this.url.searchParams.get('token');
  }
  closedByClient = null;
  /** Datagrams the client sent. */
  datagramsReceived = [];
  /** When set, the control stream takes no more writes: each never completes (a server that
   *  gives no flow-control credit). */
  stallWrites = false;
  /** When set, the control stream takes this many bytes a second: each write completes once its
   *  bytes have gone at that rate (a slow link that still drains). */
  writeRate = 0;
  /** Set once the client finished (FIN) its control stream. */
  finishedByClient = false;
  /** When set, a FIN from the client is not answered with the session's close. */
  ignoreFin = false;

  constructor(url, options, accepted, controlStream = true) {
    super();
    this.url = new URL(url);
    this.options = options;
    let resolveClosed, rejectClosed;
    const closed = new Promise((res, rej) => ((resolveClosed = res), (rejectClosed = rej)));
    this.resolveClosed = resolveClosed;
    this.rejectClosed = rejectClosed;
    const incoming = new ReadableStream({ start: (c) => (this.uniController = c) });
    const decoder = new FrameDecoder();
    const ready =
      accepted === 'silent'
        ? new Promise(() => {})
        : accepted
          ? Promise.resolve()
          : Promise.reject(new Error('WebTransportError: Opening handshake failed.'));
    this.client = {
      ready,
      closed,
      incomingUnidirectionalStreams: incoming,
      datagrams: {
        maxDatagramSize: 1200,
        readable: new ReadableStream({ start: (c) => (this.datagramController = c) }),
        writable: new WritableStream({ write: (d) => this.datagramsReceived.push(d) }),
      },
      createBidirectionalStream: async () => {
        if (controlStream === 'silent') await new Promise(() => {});
        return {
          readable: new ReadableStream({ start: (c) => (this.controlController = c) }),
          writable: new WritableStream({
            write: (chunk) => {
              if (this.stallWrites) return new Promise(() => {});
              const take = () => {
                // As the server, which takes frames up to the max_frame its Welcome announced.
                decoder.maxFrame = Math.max(decoder.maxFrame, this.limits.maxFrame);
                for (const body of decoder.push(chunk)) this.onCommand(decodeCommand(body));
              };
              if (this.writeRate > 0) return new Promise((r) => setTimeout(r, (chunk.length / this.writeRate) * 1000)).then(take);
              take();
            },
            // As the server (PROTOCOL.md section 2): the client's FIN is leaving, and the
            // session's connection is closed with code 0, unless `ignoreFin`.
            close: () => {
              this.finishedByClient = true;
              if (!this.ignoreFin) this.resolveClosed({ closeCode: 0, reason: '' });
            },
          }),
        };
      },
      close: (info) => {
        this.closedByClient = info ?? {};
        this.resolveClosed({ closeCode: info?.closeCode ?? 0, reason: info?.reason ?? '' });
      },
    };
    ready.catch(() => undefined);
    if (accepted === false) this.rejectClosed(new Error('WebTransportError: Opening handshake failed.'));
    closed.catch(() => undefined);
  }

  send(id, event) {
    this.controlController.enqueue(encodeEvent({ id, event }));
  }

  sendRaw(bytes) {
    this.controlController.enqueue(bytes);
  }

  /** Sends a datagram of the session (a `latest` value, PROTOCOL.md section 10). */
  sendDatagram(bytes) {
    this.datagramController.enqueue(bytes);
  }

  /** Opens a server-to-client stream; returns a writer of events on it. */
  openStream() {
    let controller;
    this.uniController.enqueue(new ReadableStream({ start: (c) => (controller = c) }));
    return {
      send: (id, event) => controller.enqueue(encodeEvent({ id, event })),
      close: () => controller.close(),
    };
  }

  /** The connection dies without a close handshake (server killed). */
  kill() {
    this.rejectClosed(new Error('WebTransportError: Connection lost.'));
    const err = new Error('Connection lost.');
    this.controlController?.error(err);
    this.uniController.error(err);
    this.datagramController.error(err);
  }
}

/** Event objects as a browser's WebSocket dispatches them. */
function wsEvent(type, props = {}) {
  return Object.assign(new Event(type), props);
}

/**
 * A WebSocket to a fake Quiver server. Events are dispatched in order as macrotasks, as browsers
 * do. Every message the client sends is checked to hold exactly one frame (PROTOCOL.md 9.2).
 */
/** The token offered as the subprotocol `quiver.token.JWT` beside `quiver`, if any. */
function offeredToken(offered) {
  const entry = offered.find((p) => p.startsWith('quiver.token.'));
  if (entry === undefined) return null;
  if (!offered.includes('quiver')) throw new Error('a token offered without quiver beside it (the server answers 400)');
  return entry.slice('quiver.token.'.length);
}

export class FakeWebSocketConnection extends FakeServer {
  transport = 'websocket';

  /** The token the client sent: offered as a subprotocol, else in the query (§9.1). */
  get token() {
    return offeredToken(this.offered) ?? this.url.searchParams.get('token');
  }

  closedByClient = null;
  /** Client messages that did not hold exactly one complete frame. */
  violations = [];
  /** Server-side close, once sent. */
  closedByServer = null;

  constructor(url, accepted, offered = []) {
    super();
    this.url = new URL(url);
    /** The subprotocols the client offered. */
    this.offered = offered;
    const ws = new EventTarget();
    this.client = ws;
    // As the server (PROTOCOL.md §9.2): `quiver` is selected whenever offered.
    ws.protocol = offered.includes('quiver') ? 'quiver' : '';
    ws.binaryType = 'blob';
    ws.readyState = 0;
    ws.bufferedAmount = 0;
    ws.url = url;
    ws.send = (data) => {
      if (ws.readyState !== 1) throw new Error('InvalidStateError: WebSocket is not open');
      const bytes = new Uint8Array(data.buffer ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data);
      const decoder = new FrameDecoder();
      let frames;
      try {
        frames = decoder.push(bytes);
      } catch (e) {
        this.violations.push(`undecodable message: ${e.message}`);
        return;
      }
      if (frames.length !== 1 || decoder.buffered !== 0) {
        this.violations.push(`message with ${frames.length} frames and ${decoder.buffered} bytes left over`);
      }
      for (const body of frames) this.onCommand(decodeCommand(body));
    };
    ws.close = (code = 1000, reason = '') => {
      if (ws.readyState >= 2) return;
      ws.readyState = 2;
      this.closedByClient = { code, reason };
      this.dispatch(() => {
        ws.readyState = 3;
        return wsEvent('close', { code, reason, wasClean: true });
      });
    };
    this.dispatch(() => {
      if (accepted && accepted !== 'error') {
        ws.readyState = 1;
        return wsEvent('open');
      }
      ws.readyState = 3;
      ws.dispatchEvent(wsEvent('error'));
      if (accepted === 'error') return null;
      return wsEvent('close', { code: 1006, reason: '', wasClean: false });
    });
  }

  /** Dispatches the event `make` returns, after everything dispatched before it. */
  dispatch(make) {
    setImmediate(() => {
      const ev = make();
      if (ev) this.client.dispatchEvent(ev);
    });
  }

  /** One message holding `bytes` (any number of frames, or a part of one). */
  sendRaw(bytes) {
    const copy = new Uint8Array(bytes);
    this.dispatch(() => (this.client.readyState === 1 ? wsEvent('message', { data: copy.buffer }) : null));
  }

  send(id, event) {
    this.sendRaw(encodeEvent({ id, event }));
  }

  /** Several frames in one message. */
  sendFrames(frames) {
    this.sendRaw(encodeFrames(frames));
  }

  sendText(text) {
    this.dispatch(() => wsEvent('message', { data: text }));
  }

  /** Subscription events travel on the same socket; the "stream" is just a label. */
  openStream() {
    return { send: (id, event) => this.send(id, event), close: () => {} };
  }

  /** The server closes the socket with `code` (after whatever was sent before). */
  closeWith(code, reason = '') {
    this.closedByServer = { code, reason };
    this.dispatch(() => {
      if (this.client.readyState === 3) return null;
      this.client.readyState = 3;
      return wsEvent('close', { code, reason, wasClean: true });
    });
  }

  /** Goodbye, then the close with the same code (PROTOCOL.md 9.2). */
  goodbye(code, reason, reconnect) {
    this.send(0, { type: 'Goodbye', code, reason, reconnect });
    this.closeWith(code, reason);
  }

  /** The connection dies without a close handshake (server killed). */
  kill() {
    this.dispatch(() => {
      if (this.client.readyState === 3) return null;
      this.client.readyState = 3;
      return wsEvent('close', { code: 1006, reason: '', wasClean: false });
    });
  }
}

/** Resolves when `emitter.on(event)` fires with arguments matching `predicate`. */
export function once(client, event, predicate = () => true, ms = TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${ms} ms waiting for '${event}'`));
    }, ms);
    const off = client.on(event, (...args) => {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

export async function waitUntil(check, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A client on a fresh fake network whose token callback hands out tok-1, tok-2, ... Heartbeat
 * and RTT pings are off so that tests see only the commands they cause; backoff is short.
 */
export function fakeClient(options = {}) {
  const net = new FakeNetwork();
  let issued = 0;
  const client = new QuiverClient({
    url: 'https://127.0.0.1:4433/v1',
    token: async () => `tok-${++issued}`,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    pingIntervalMs: 0,
    heartbeat: false,
    WebTransport: net.WebTransport,
    WebSocket: net.WebSocket,
    ...options,
  });
  return { net, client, tokens: () => issued };
}

/** Takes the next connection attempt (over `transport`, when given), completes the handshake
 *  and waits for the client to be connected. */
export async function connected(net, client, { transport, welcome } = {}) {
  const conn = await net.nextConnection();
  if (transport && conn.transport !== transport) throw new Error(`expected a ${transport} attempt, got ${conn.transport} (${conn.url})`);
  await conn.welcome(welcome);
  await client.ready();
  return conn;
}
