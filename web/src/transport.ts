// How bytes move (PROTOCOL.md sections 2 and 9): a `Link` is one open connection over one
// transport. It writes command frames and turns what the server sends into control events and
// subscription events; the session above it (session.ts) is the same for every transport.

import { DecodeError, FrameDecoder, decodeEvent, type Event } from './codec.js';
import { QuiverError, clip, errorMessage, withTimeout } from './errors.js';

export type TransportKind = 'webtransport' | 'websocket';
export const TRANSPORT_KINDS: readonly TransportKind[] = ['webtransport', 'websocket'];

export type WebTransportConstructor = new (url: string, options?: WebTransportOptions) => WebTransport;
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;

/** Events that belong to one subscription (a WebTransport subscription stream's frames). */
export type SubscriptionEvent = Extract<Event, { type: 'Publication' | 'Joined' | 'Left' | 'Latest' }>;

/** What a link reports to the session that owns it. */
export interface LinkHandler {
  /** Bytes arrived from the server: proof that it is alive. */
  received(): void;
  /** An event that belongs to no subscription: replies, `Goodbye`, `Unsubscribed`, ... */
  control(id: number, event: Event): void;
  /** A `SubscriptionStream` for `room` with frame id `id` arrived: whether `id` is the latest
   *  `Subscribe` of the room (its current subscription), whose events are to be delivered. */
  streamOpened(room: string, id: number): boolean;
  /** An event of the subscription whose `SubscriptionStream` carried `id`; false if stale. */
  subscription(id: number, event: SubscriptionEvent): boolean;
  /** The stream of the subscription `id` of `room` ended (finished or reset by the server). */
  streamEnded(room: string, id: number): void;
  /** A QUIC datagram from the server (a value of a `latest` room; WebTransport only). */
  datagram(bytes: Uint8Array): void;
  /** A problem that spoils one subscription, not the connection. */
  report(error: QuiverError): void;
  /** The link is gone. `close` is the close code and reason when the transport carried them. */
  closed(cause: QuiverError, close: { code: number; reason: string } | null): void;
}

export interface Link {
  readonly kind: TransportKind;
  /** Largest frame accepted from the server (raised by `Welcome.limits.max_frame`). */
  maxFrame: number;
  /** Starts reading; everything from the server goes to `handler` from here on. */
  start(handler: LinkHandler): Promise<void>;
  /** Writes one complete command frame. */
  write(frame: Uint8Array): Promise<void>;
  /** Bytes handed to `write` that the transport has not taken yet: WebSocket's
   *  `bufferedAmount`, or the WebTransport writes not completed. */
  readonly backlog: number;
  /** Bytes the transport has taken since the link opened; only grows (progress). */
  readonly taken: number;
  /** Closes the connection from this side; the handler hears nothing more. */
  close(reason: string): void;
  /** Leaves after what was written (PROTOCOL.md section 3): finishes the control stream
   *  (WebTransport) or sends the close frame behind the buffered messages (WebSocket). The server
   *  then closes the connection, which the handler hears as any close. */
  leave(): void;
  /** Sends one datagram if the transport has them and it fits; false otherwise. Never waits:
   *  a datagram the browser cannot queue is dropped, as the network might. */
  sendDatagram(bytes: Uint8Array): boolean;
  /** Whether a datagram of `size` bytes could be sent now (`sendDatagram` would take it). */
  datagramFits(size: number): boolean;
}

/**
 * Opens a WebTransport session and waits until it is ready, at most `timeoutMs`. Every failure is
 * a `handshake` error: browsers report a refused token, a certificate mismatch and an unreachable
 * server alike, and blocked UDP is silent, hence the deadline. `signal` (the client's `close()`)
 * gives the handshake up at once, kind `closed`.
 */
export async function openWebTransport(
  WT: WebTransportConstructor,
  url: URL,
  options: WebTransportOptions,
  timeoutMs: number,
  maxFrame: number,
  signal?: AbortSignal,
): Promise<Link> {
  let wt: WebTransport;
  try {
    wt = new WT(url.href, options);
  } catch (e) {
    throw new QuiverError('handshake', `WebTransport to ${redact(url)} could not start: ${errorMessage(e)}`, { cause: e });
  }
  // Settles when the connection ends; observed by the link, silenced here.
  wt.closed.catch(() => undefined);
  try {
    // Given up on a close(), which otherwise waited out the deadline (outside audit 121, F2).
    await withTimeout(wt.ready, timeoutMs, 'WebTransport handshake', signal);
  } catch (e) {
    closeWebTransport(wt, '');
    if (signal?.aborted) throw new QuiverError('closed', `WebTransport to ${redact(url)} given up during its handshake: client closed`, { cause: e });
    throw new QuiverError(
      'handshake',
      `WebTransport to ${redact(url)} failed (server unreachable, UDP blocked, token refused or certificate mismatch): ${errorMessage(e)}`,
      { cause: e },
    );
  }
  return new WebTransportLink(wt, maxFrame, timeoutMs);
}

/** The largest piece of a frame handed to the control stream's writer in one write. */
const WRITE_CHUNK = 64 * 1024;

/** One WebTransport session: a control stream, and one server-opened stream per subscription. */
class WebTransportLink implements Link {
  readonly kind = 'webtransport';
  private writer: WritableStreamDefaultWriter<Uint8Array> | null = null;
  private handler: LinkHandler | null = null;
  private done = false;
  /** Rejects the wait for the control stream when the link is closed meanwhile. */
  private abortStart: ((e: QuiverError) => void) | null = null;
  backlog = 0;
  taken = 0;

  constructor(
    private readonly wt: WebTransport,
    public maxFrame: number,
    /** How long opening the control stream may take. */
    private readonly openTimeoutMs: number,
  ) {}

  async start(handler: LinkHandler): Promise<void> {
    this.handler = handler;
    this.wt.closed.then(
      (info) =>
        this.finish(
          new QuiverError('transport', `session closed by the server (code ${info.closeCode ?? 0}${info.reason ? `: ${clip(info.reason)}` : ''})`),
          { code: info.closeCode ?? 0, reason: info.reason ?? '' },
        ),
      (e: unknown) => this.finish(new QuiverError('transport', `connection lost: ${errorMessage(e)}`), null),
    );
    let bidi: WebTransportBidirectionalStream;
    try {
      // A browser that waits for the server's stream credit (`waitUntilAvailable`, or older
      // implementations) waited for ever when none came: no error, no fallback, and `close()`
      // hung (outside audit 104, F4). Bounded like the handshake, and given up on a close.
      const aborted = new Promise<never>((_, reject) => (this.abortStart = reject));
      if (this.done) this.abortStart?.(new QuiverError('closed', 'closed'));
      bidi = await withTimeout(Promise.race([this.wt.createBidirectionalStream(), aborted]), this.openTimeoutMs, 'opening the control stream');
    } catch (e) {
      const err = new QuiverError('transport', `could not open the control stream: ${errorMessage(e)}`, { cause: e });
      this.finish(err, null);
      closeWebTransport(this.wt, '');
      throw err;
    } finally {
      this.abortStart = null;
    }
    this.writer = bidi.writable.getWriter();
    void this.readControl(bidi.readable);
    void this.acceptStreams();
    void this.readDatagrams();
  }

  private datagramWriter: WritableStreamDefaultWriter<Uint8Array> | null = null;

  datagramFits(size: number): boolean {
    const datagrams = this.wt.datagrams;
    return !this.done && !!datagrams && size <= datagrams.maxDatagramSize;
  }

  sendDatagram(bytes: Uint8Array): boolean {
    const datagrams = this.wt.datagrams;
    if (!this.datagramFits(bytes.length) || !datagrams) return false;
    try {
      this.datagramWriter ??= datagrams.writable.getWriter();
      // Not awaited: datagrams are fire and forget; a full queue drops them.
      this.datagramWriter.write(bytes).catch(() => undefined);
      return true;
    } catch {
      return false;
    }
  }

  private async readDatagrams(): Promise<void> {
    const datagrams = this.wt.datagrams;
    if (!datagrams) return;
    const reader = datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this.handler?.received();
        this.handler?.datagram(value);
      }
    } catch {
      // The session ended; `closed` reports why.
    }
  }

  async write(frame: Uint8Array): Promise<void> {
    const writer = this.writer;
    if (!writer) throw new QuiverError('closed', 'not connected');
    // In pieces of WRITE_CHUNK, all queued at once (so that frames written together never
    // interleave), each counted as taken when its write completes: progress (`taken`) that moved
    // only once a whole frame was taken ended a session on a slow but draining link when one
    // large frame took `requestTimeoutMs` (outside audit 107, F4).
    const writes: Array<Promise<void>> = [];
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
          (e: unknown) => {
            this.backlog -= piece.length;
            throw e;
          },
        ),
      );
    }
    // Every piece settled (none left counted in `backlog`); the first failure, if any.
    const outcomes = await Promise.allSettled(writes);
    for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
  }

  close(reason: string): void {
    this.done = true;
    this.abortStart?.(new QuiverError('closed', 'closed before the control stream opened'));
    closeWebTransport(this.wt, reason);
  }

  leave(): void {
    // Behind every write handed over: the server carries out what came before the FIN, then
    // closes the session (PROTOCOL.md section 2). A writer that cannot close (the session is
    // gone) has nothing left to finish.
    this.writer?.close().catch(() => undefined);
  }

  private finish(cause: QuiverError, close: { code: number; reason: string } | null): void {
    if (this.done) return;
    this.done = true;
    this.handler?.closed(cause, close);
  }

  private async readControl(readable: ReadableStream<Uint8Array>): Promise<void> {
    const reader = readable.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.handler?.received();
        decoder.maxFrame = this.maxFrame;
        for (const body of decoder.push(value)) {
          const frame = decodeEvent(body);
          if (frame) this.handler?.control(frame.id, frame.event);
        }
      }
      this.finish(new QuiverError('transport', 'the server closed the control stream'), null);
    } catch (e) {
      if (e instanceof DecodeError) {
        this.finish(new QuiverError('protocol', `bad frame from the server on the control stream: ${e.message}`, { cause: e }), null);
      } else {
        this.finish(new QuiverError('transport', `control stream failed: ${errorMessage(e)}`), null);
      }
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
   *  presence changes of that room. */
  private async readSubscription(stream: ReadableStream<Uint8Array>): Promise<void> {
    const reader = stream.getReader();
    const decoder = new FrameDecoder(this.maxFrame);
    let header: { id: number; room: string } | null = null;
    // A stale stream (an earlier subscription's) is read to its end and discarded.
    let draining = false;
    try {
      for (;;) {
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
            if (event.type !== 'SubscriptionStream') throw new DecodeError(`subscription stream starts with ${event.type}`);
            header = { id: frame.id, room: event.room };
            if (!this.handler.streamOpened(header.room, header.id)) draining = true;
          } else if (event.type === 'Publication' || event.type === 'Joined' || event.type === 'Left' || event.type === 'Latest') {
            if (event.room !== header.room) throw new DecodeError(`${event.type} for ${clip(event.room)} on the stream of ${clip(header.room)}`);
            if (!this.handler.subscription(header.id, event)) draining = true;
          }
          if (draining) break;
        }
      }
    } catch (e) {
      if (e instanceof DecodeError) {
        // The session ends, as for a bad frame on the control stream or on WebSocket: the
        // client reconnects and its subscriptions resume. Cancelling this stream alone left the
        // subscription silent for good (the server ends it, 120 stream_stopped; outside audit
        // 68, 3); the Rust client reconnects too.
        reader.cancel().catch(() => undefined);
        this.finish(
          new QuiverError('protocol', `bad frame on the stream of ${header ? clip(header.room) : 'an unknown room'}: ${e.message}`, {
            cause: e,
            ...(header ? { room: clip(header.room) } : {}),
          }),
          null,
        );
      }
      // Otherwise the stream was reset or the session ended: the subscription hears of it if
      // no `Unsubscribed` follows (`Subscriptions.streamEnded`).
      else if (header !== null && !draining) this.handler?.streamEnded(header.room, header.id);
    }
  }
}

function closeWebTransport(wt: WebTransport, reason: string): void {
  try {
    wt.close({ closeCode: 0, reason });
  } catch {
    // Already closed.
  }
}

/**
 * Opens a WebSocket and waits for the upgrade, at most `timeoutMs`. A failed upgrade is a
 * `handshake` error; a refused token is not one: the server accepts the upgrade to say so with a
 * Goodbye (PROTOCOL.md 9.1), which the session reads like any other. `signal` (the client's
 * `close()`) gives the upgrade up at once, kind `closed`.
 */
export async function openWebSocket(
  WS: WebSocketConstructor,
  url: URL,
  timeoutMs: number,
  maxFrame: number,
  protocols: string[] = [],
  signal?: AbortSignal,
): Promise<Link> {
  let ws: WebSocket;
  try {
    ws = protocols.length ? new WS(url.href, protocols) : new WS(url.href);
  } catch (e) {
    throw new QuiverError('handshake', `WebSocket to ${redact(url)} could not start: ${errorMessage(e)}`, { cause: e });
  }
  ws.binaryType = 'arraybuffer';
  // Listening from the start: the server may send its Goodbye right after the upgrade.
  const link = new WebSocketLink(ws, maxFrame);
  const opened = new Promise<void>((resolve, reject) => {
    if (ws.readyState === 1) resolve();
    ws.addEventListener('open', () => resolve());
    ws.addEventListener('close', (ev) => reject(new Error(`closed before the upgrade completed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`)));
    // Browsers follow a failed upgrade's `error` with a `close` in the same task, which says
    // more (its code) and settles this first. Node's WebSocket (undici) fires only the `error`
    // for a refused connection: without this the attempt would wait out the whole timeout. A
    // later `close` finds the promise settled, and the link, unstarted, reports nothing.
    ws.addEventListener('error', () => {
      setTimeout(() => reject(new Error('error before the upgrade completed (refused or unreachable)')), 0);
    });
  });
  try {
    // Given up on a close(), which otherwise waited out the deadline (outside audit 121, F2).
    await withTimeout(opened, timeoutMs, 'WebSocket upgrade', signal);
  } catch (e) {
    link.close('');
    if (signal?.aborted) throw new QuiverError('closed', `WebSocket to ${redact(url)} given up during its upgrade: client closed`, { cause: e });
    throw new QuiverError('handshake', `WebSocket to ${redact(url)} failed (server unreachable or refused): ${errorMessage(e)}`, { cause: e });
  }
  return link;
}

/** WebSocket close codes at or above this are the protocol's (PROTOCOL.md section 7). */
const PROTOCOL_CLOSE_CODES = 3000;

/**
 * One WebSocket carrying everything (PROTOCOL.md 9.2): control events and every subscription's
 * events interleaved, one or more complete frames per message.
 */
class WebSocketLink implements Link {
  readonly kind = 'websocket';
  private handler: LinkHandler | null = null;
  /** Messages and the close that arrived before `start`. */
  private early: (ArrayBuffer | { cause: QuiverError; close: { code: number; reason: string } })[] = [];
  private decoder: FrameDecoder;
  /** Per room, the id of the `SubscriptionStream` whose frames are being accepted. */
  private readonly streams = new Map<string, number>();
  private done = false;
  /** Bytes handed to `ws.send` since the socket opened. */
  private written = 0;

  constructor(
    private readonly ws: WebSocket,
    public maxFrame: number,
  ) {
    this.decoder = new FrameDecoder(maxFrame);
    ws.addEventListener('message', (ev: MessageEvent) => {
      if (this.done) return;
      if (!(ev.data instanceof ArrayBuffer)) {
        this.fail(new QuiverError('protocol', 'the server sent a text message; only binary messages are used'));
      } else if (this.handler) {
        this.onMessage(ev.data);
      } else {
        this.early.push(ev.data);
      }
    });
    ws.addEventListener('close', (ev: CloseEvent) => {
      const close = { code: ev.code, reason: ev.reason };
      const label = ev.code >= PROTOCOL_CLOSE_CODES ? 'closed by the server' : 'connection closed';
      const cause = new QuiverError('transport', `${label} (code ${ev.code}${ev.reason ? `: ${clip(ev.reason)}` : ''})`);
      if (this.handler) this.finish(cause, close);
      else this.early.push({ cause, close });
    });
  }

  async start(handler: LinkHandler): Promise<void> {
    this.handler = handler;
    for (const item of this.early.splice(0)) {
      if (item instanceof ArrayBuffer) this.onMessage(item);
      else this.finish(item.cause, item.close);
    }
  }

  async write(frame: Uint8Array): Promise<void> {
    // Exactly one frame per message (PROTOCOL.md 9.2).
    if (this.done || this.ws.readyState !== 1) throw new QuiverError('closed', 'the WebSocket is not open');
    this.ws.send(frame);
    this.written += frame.length;
  }

  get backlog(): number {
    return Number(this.ws.bufferedAmount) || 0;
  }

  get taken(): number {
    return this.written - this.backlog;
  }

  sendDatagram(): boolean {
    return false;
  }

  datagramFits(): boolean {
    return false;
  }

  close(reason: string): void {
    this.done = true;
    try {
      this.ws.close(1000, truncateUtf8(reason, 123));
    } catch {
      // Already closing.
    }
  }

  leave(): void {
    // The close frame goes behind what `bufferedAmount` holds; the server's close answers it.
    try {
      this.ws.close(1000, 'client closed');
    } catch {
      // Already closing.
    }
  }

  private fail(cause: QuiverError): void {
    this.finish(cause, null);
    this.close('');
  }

  private finish(cause: QuiverError, close: { code: number; reason: string } | null): void {
    if (this.done) return;
    this.done = true;
    this.handler?.closed(cause, close);
  }

  private onMessage(data: ArrayBuffer): void {
    const handler = this.handler;
    if (!handler || this.done) return;
    handler.received();
    this.decoder.maxFrame = this.maxFrame;
    let bodies: Uint8Array[];
    try {
      bodies = this.decoder.push(new Uint8Array(data));
      // A frame never spans two messages.
      if (this.decoder.buffered !== 0) throw new DecodeError('a message ends inside a frame');
    } catch (e) {
      this.fail(new QuiverError('protocol', `bad message from the server: ${errorMessage(e)}`, { cause: e }));
      return;
    }
    for (const body of bodies) {
      let frame;
      try {
        frame = decodeEvent(body);
      } catch (e) {
        this.fail(new QuiverError('protocol', `bad frame from the server: ${errorMessage(e)}`, { cause: e }));
        return;
      }
      if (frame) this.route(handler, frame.id, frame.event);
      if (this.done) return;
    }
  }

  /** Tells subscriptions apart (PROTOCOL.md 9.2): a room's events are accepted after its
   *  current `SubscriptionStream` and until its `Unsubscribed`; anything else naming it is stale. */
  private route(handler: LinkHandler, id: number, event: Event): void {
    switch (event.type) {
      case 'SubscriptionStream':
        // The current subscription's header again changes nothing here (one socket carries one
        // copy of each event); asked again, the handler refuses a second stream, which would
        // silence the room (outside audit 121, F5).
        if (this.streams.get(event.room) === id) return;
        if (handler.streamOpened(event.room, id)) this.streams.set(event.room, id);
        else this.streams.delete(event.room);
        return;
      case 'Publication':
      case 'Latest':
      case 'Joined':
      case 'Left': {
        const stream = this.streams.get(event.room);
        if (stream !== undefined && !handler.subscription(stream, event)) this.streams.delete(event.room);
        return;
      }
      case 'Unsubscribed':
        this.streams.delete(event.room);
        handler.control(id, event);
        return;
      default:
        handler.control(id, event);
    }
  }
}

/** The URL without its query (which holds the token), for messages. */
function redact(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

function truncateUtf8(s: string, maxBytes: number): string {
  const bytes = new TextEncoder().encode(s);
  if (bytes.length <= maxBytes) return s;
  return new TextDecoder().decode(bytes.subarray(0, maxBytes)).replace(/\uFFFD$/, '');
}

// A WebTransport that failed where WebSocket then worked, remembered per URL (with when) so that
// reconnects go straight to WebSocket instead of waiting for the WebTransport deadline again,
// until `webTransportRetryMs` has passed: a server restarting during an attempt fails it too,
// and a client kept on WebSocket for good lost its streams and datagrams (outside audit 61, M1).
const failedWebTransport = new Map<string, number>();
const STORAGE_PREFIX = 'quiver.webtransport-failed:';

/** Where a failed WebTransport is remembered: this page (module state), also `sessionStorage`
 *  (survives reloads of the tab), or nowhere. */
export type RememberFailure = 'page' | 'sessionStorage' | false;

function storage(): Storage | null {
  try {
    return (globalThis as { sessionStorage?: Storage }).sessionStorage ?? null;
  } catch {
    return null; // e.g. storage disabled for the page
  }
}

export function webTransportFailedBefore(url: URL, remember: RememberFailure, retryMs: number): boolean {
  if (remember === false) return false;
  const key = redact(url);
  let at = failedWebTransport.get(key);
  if (at === undefined && remember === 'sessionStorage') {
    try {
      at = Number(storage()?.getItem(STORAGE_PREFIX + key) ?? Number.NaN);
    } catch {
      at = undefined;
    }
  }
  // A time in the future (a clock set back, an edited sessionStorage) is not believed: it would
  // keep the client on WebSocket until then, past `retryMs` (outside audit 62).
  const ago = Date.now() - (at ?? Number.NaN);
  return Number.isFinite(ago) && ago >= 0 && ago < retryMs;
}

export function rememberWebTransportFailure(url: URL, remember: RememberFailure): void {
  if (remember === false) return;
  const key = redact(url);
  const now = Date.now();
  failedWebTransport.set(key, now);
  if (remember !== 'sessionStorage') return;
  try {
    storage()?.setItem(STORAGE_PREFIX + key, String(now));
  } catch {
    // Quota or privacy settings: the page-lifetime memory still holds.
  }
}

/** Forgets every remembered WebTransport failure (this page's, and in `sessionStorage`), so the
 *  next connection attempt tries WebTransport first again. */
export function forgetWebTransportFailures(): void {
  failedWebTransport.clear();
  const s = storage();
  if (!s) return;
  try {
    for (let i = s.length - 1; i >= 0; i--) {
      const key = s.key(i);
      if (key?.startsWith(STORAGE_PREFIX)) s.removeItem(key);
    }
  } catch {
    // Nothing to forget where storage is unavailable.
  }
}
