// One session on one link, whatever the transport: commands and their replies, the pacing of
// commands to the server's rate limit, liveness pings, and token refresh. The client
// (client.ts) opens sessions, one after another, and carries the app's state across them.

import { LENGTH_PREFIX, MIN_MAX_FRAME, encodeCommand, type Command, type Event } from './codec.js';
import { CloseCode, ErrorCode, codeLabel } from './codes.js';
import { MAX_TIMER, QuiverError, asQuiverError, clip, errorMessage, timerDelay } from './errors.js';
import { Pacer } from './pacer.js';
import type { Link, LinkHandler, SubscriptionEvent, TransportKind } from './transport.js';

export interface GoodbyeInfo {
  code: number;
  reason: string;
  reconnect: boolean;
}

/** What a session asks of the client that owns it. */
export interface SessionOwner {
  /** Control events that answer no pending command (Goodbye, unsolicited Unsubscribed, late
   *  replies, refusals of publishes sent without ack). */
  onUnsolicited(session: Session, id: number, event: Event): void;
  streamOpened(room: string, id: number): boolean;
  deliver(id: number, event: SubscriptionEvent): boolean;
  /** The stream of subscription `id` of `room` ended on this session. */
  streamEnded(session: Session, room: string, id: number): void;
  report(error: QuiverError): void;
  onRtt(ms: number): void;
  /** A datagram from the server (a value of a `latest` room). */
  datagram(session: Session, bytes: Uint8Array): void;
}

interface PendingRequest {
  type: Command['type'];
  resolve: (e: Event) => void;
  reject: (e: QuiverError) => void;
  /** Started once the command is written: time spent waiting for the pacer is not the server's. */
  timer: ReturnType<typeof setTimeout> | null;
}

interface QueuedWrite {
  /** The command's frame id. */
  id: number;
  type: Command['type'];
  bytes: Uint8Array;
  /** Waits while the transport holds more than the send budget (`sendBudget`). */
  bounded: boolean;
  resolve: () => void;
  reject: (e: QuiverError) => void;
}

export interface SendOptions {
  /** Sent at once, ahead of commands waiting for the pacer (pings, refreshes): it still counts
   *  against the rate, so the commands behind it wait that much longer. */
  urgent?: boolean;
  /** Refused, kind `buffer_full` (never sent), where it would have to wait for the pacer or for
   *  the transport: no command may wait (`maxQueuedPublishes: 0`). */
  noWait?: boolean;
}

export interface RequestOptions extends SendOptions {
  /** How long the reply may take once the command is written; `requestTimeoutMs` when absent. */
  timeoutMs?: number;
  /** When the command, still waiting for the pacer then, is withdrawn (`performance.now()`). */
  writeBy?: number;
  /** Called when the reply is late, instead of rejecting: the command stays pending, and its
   *  reply, when it comes, settles the promise (a `Subscribe`: see `Subscriptions.send`). */
  onTimeout?: (late: QuiverError) => void;
  /** Once aborted, the command, if still waiting to be written, is withdrawn: never sent (a
   *  call whose app gave up must not reach the backend later; outside audit 107, F2). */
  signal?: AbortSignal;
}

// What may sit in the transport unsent (`Link.backlog`) before publishes and calls wait, as they
// wait for the pacer (bounded by the client's `maxQueuedPublishes`): at least this, and room for
// 4 of the server's largest frames. A server that stops reading made the client hand every
// publish to the transport, to pile up there without limit (outside audit 104, F3).
const SEND_BUFFER_MIN = 1024 * 1024;
// Commands that carry the app's payloads wait past the budget; the rest (subscribes, pings,
// refreshes, ...) are small and few, and go out as before.
const BOUNDED = new Set<Command['type']>(['Publish', 'Call']);
// How often a full transport is looked at again: WebSocket has no event for `bufferedAmount`
// going down (a WebTransport write that completes wakes the wait at once).
const SEND_POLL_MS = 20;

// Most rooms whose newest datagram publication waits for a pacer token (`publishDatagram`); a
// value for another room is dropped.
export const HELD_DATAGRAM_ROOMS = 64;

// Close codes after which reconnecting makes no sense (PROTOCOL.md section 7), for a close that
// arrives without its Goodbye frame.
const FINAL_CLOSE_CODES = new Set<number>([
  CloseCode.protocol_error,
  CloseCode.unsupported_version,
  CloseCode.token_invalid,
  CloseCode.disconnected,
]);

/** The error a Goodbye ends the session with: a refused token is an `auth` error. */
export function goodbyeError(g: GoodbyeInfo): QuiverError {
  const what = `${codeLabel(g.code)} (${g.code})${g.reason ? ` ${g.reason}` : ''}`;
  if (g.code === CloseCode.token_invalid) {
    return new QuiverError('auth', `the server refused the token: ${what}`, { code: g.code });
  }
  return new QuiverError('goodbye', `server closed the session: ${what}`, { code: g.code });
}

const now = (): number => performance.now();

export class Session implements LinkHandler {
  goodbye: GoodbyeInfo | null = null;
  /** The goodbye came as a `Goodbye` frame, read in order behind every answer sent before it;
   *  a bare close code does not say those answers arrived. */
  private goodbyeFrame = false;
  ended = false;
  /** Whether `leave` began: no command is taken any more. */
  leaving = false;
  /** Why the session ended, once it has. */
  cause: QuiverError | null = null;
  readonly done: Promise<QuiverError>;
  private resolveDone!: (cause: QuiverError) => void;
  private readonly pending = new Map<number, PendingRequest>();
  private readonly queue: QueuedWrite[] = [];
  private pacer: Pacer | null = null;
  /** Datagram publications waiting for a pacer token: each room's newest, in the order the rooms
   *  first waited (`publishDatagram`), each with its turn (counted up as rooms begin to wait, so
   *  the map is in the order of its turns). */
  private readonly heldDatagrams = new Map<string, { bytes: Uint8Array; turn: number }>();
  /** The turn the next room to begin waiting gets (`datagramsSent`'s mark). */
  private nextTurn = 0;
  /** `datagramsSent` waiters: each resolves once no room whose turn came before its mark waits. */
  private readonly datagramWaiters: Array<{ mark: number; resolve: () => void; reject: (e: QuiverError) => void }> = [];
  private datagramTimer: ReturnType<typeof setTimeout> | null = null;
  private pumping = false;
  private pumpTimer: ReturnType<typeof setTimeout> | null = null;
  private wakePump: (() => void) | null = null;
  /** Ends the pump's wait for a full transport (not a wait for the pacer). */
  private wakeFull: (() => void) | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  /** Watches a transport holding unsent bytes (`watchSending`). */
  private sendTimer: ReturnType<typeof setTimeout> | null = null;
  private lastReceived = now();
  private connectedAt = 0;
  /** Largest frame body the server takes (`Welcome.limits.max_frame`). Before the Welcome (the
   *  Hello), the least any server takes (PROTOCOL.md section 3): a server whose `max_frame` is
   *  lower than the default closes the session for good (3001, no reconnect) over a larger one. */
  private sendLimit = MIN_MAX_FRAME;

  constructor(
    readonly link: Link,
    private readonly requestTimeoutMs: number,
    private readonly owner: SessionOwner,
    private readonly onGoodbye: (g: GoodbyeInfo) => void,
  ) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  get kind(): TransportKind {
    return this.link.kind;
  }

  async start(): Promise<void> {
    try {
      await this.link.start(this);
    } catch (e) {
      const err = asQuiverError(e);
      this.end(err);
      throw err;
    }
  }

  markConnected(): void {
    this.connectedAt = Date.now();
  }

  connectedFor(): number {
    return this.connectedAt ? Date.now() - this.connectedAt : 0;
  }

  raiseMaxFrame(announced: number): void {
    this.link.maxFrame = Math.max(this.link.maxFrame, announced);
  }

  /** Frames over `maxFrame` are refused here: the server would close the whole session over one
   *  (protocol_error), where the app only needs that one command refused. */
  limitFrames(maxFrame: number): void {
    if (maxFrame > 0) this.sendLimit = maxFrame;
  }

  /** Paces every later command to `commandsPerSecond` (from `Welcome.limits`). */
  pace(commandsPerSecond: number): void {
    this.pacer = Pacer.forServerLimit(commandsPerSecond, now());
  }

  /** Whether anything arrived from the server after `since` (a `performance.now()` time). */
  heardSince(since: number): boolean {
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
  startHeartbeat(idleMs: number, timeoutMs: number): void {
    let pingedAt = -Infinity;
    const schedule = (at: number): void => {
      if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
      this.heartbeatTimer = setTimeout(check, Math.max(0, at - now()));
    };
    const check = (): void => {
      // Called by its timer, or by a Pong (below) while the timer for `pingedAt + timeoutMs` is
      // still pending: that one is superseded and cleared here. Merely forgotten, each answered
      // Ping left a timer chain running beside the new one, one more per idle period, and `end`
      // cleared only the newest (outside audit 121, F1).
      if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
      this.heartbeatTimer = null;
      // Leaving, the heartbeat is off (`leave`): a Pong arriving then must not restart it.
      if (this.ended || this.leaving) return;
      const t = now();
      const last = this.lastReceived;
      if (pingedAt > last) {
        // A ping is out and nothing has arrived since.
        if (t - pingedAt >= timeoutMs) {
          this.end(new QuiverError('timeout', `the server sent nothing for ${Math.round(t - last)} ms, not even a Pong within ${timeoutMs} ms: connection presumed dead`));
        } else {
          schedule(pingedAt + timeoutMs);
        }
      } else if (t - last >= idleMs) {
        pingedAt = t;
        this.request(0, { type: 'Ping' }, { urgent: true, timeoutMs }).then(
          () => {
            this.owner.onRtt(now() - t);
            check(); // the next ping is due idleMs after this Pong
          },
          () => undefined, // judged by what arrives, not by this reply alone
        );
        schedule(t + timeoutMs);
      } else {
        schedule(last + idleMs);
      }
    };
    schedule(this.lastReceived + idleMs);
  }

  /** Commands waiting for the pacer (not written yet). */
  get waiting(): number {
    return this.queue.length;
  }

  /** Writes one command (through the pacer); resolves once it is handed to the transport. */
  send(frame: { id: number; command: Command }, options: SendOptions = {}): Promise<void> {
    if (this.ended) return Promise.reject(unsent(new QuiverError('closed', 'not connected')));
    if (this.leaving) return Promise.reject(unsent(new QuiverError('closed', 'client closed')));
    let bytes: Uint8Array;
    try {
      bytes = encodeCommand(frame);
    } catch (e) {
      return Promise.reject(e);
    }
    if (bytes.length - LENGTH_PREFIX > this.sendLimit) return Promise.reject(tooLarge(frame.command, bytes.length - LENGTH_PREFIX, this.sendLimit));
    const bounded = BOUNDED.has(frame.command.type);
    const pacer = this.pacer;
    // Behind anything already waiting, so that publishes keep their order.
    if (options.urgent || (this.queue.length === 0 && !(bounded && this.full(bytes.length)) && (!pacer || pacer.ready(now())))) {
      pacer?.reserve(now());
      return this.write(bytes);
    }
    if (options.noWait) {
      return Promise.reject(
        new QuiverError('buffer_full', `${frame.command.type} not written: it would wait (the server's rate limit, or a transport still full) and maxQueuedPublishes is 0`),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ id: frame.id, type: frame.command.type, bytes, bounded, resolve, reject });
      this.pump();
    });
  }

  /** Most bytes the transport may hold unsent before publishes and calls wait. */
  get sendBudget(): number {
    return Math.max(SEND_BUFFER_MIN, 4 * this.sendLimit);
  }

  /** Whether a frame of `size` bytes would take the transport past the send budget. */
  private full(size: number): boolean {
    return this.link.backlog + size > this.sendBudget;
  }

  /**
   * Sends a command and waits for the event with its id; an `Error` reply rejects. `id` 0 takes
   * the next id from the owner's counter (see `nextId`).
   */
  request(id: number, command: Command, options: RequestOptions = {}): Promise<Event> {
    if (this.ended) return Promise.reject(unsent(new QuiverError('closed', 'not connected')));
    const frameId = id === 0 ? this.nextId() : id;
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    return new Promise<Event>((resolve, reject) => {
      const entry: PendingRequest = { type: command.type, resolve, reject, timer: null };
      this.pending.set(frameId, entry);
      const written = this.send({ id: frameId, command }, options);
      // Still waiting for the pacer at `writeBy`: withdrawn, never written (an acknowledged
      // publish whose caller would otherwise time out and retry while it still goes out later).
      const withdrawAt = options.writeBy;
      const withdrawal =
        withdrawAt === undefined ? null : setTimeout(() => this.withdraw(frameId, command.type), Math.max(0, withdrawAt - now()));
      const { signal } = options;
      const onAbort = (): void => this.withdraw(frameId, command.type, 'aborted');
      signal?.addEventListener('abort', onAbort, { once: true });
      const settled = (): void => {
        if (withdrawal) clearTimeout(withdrawal);
        signal?.removeEventListener('abort', onAbort);
      };
      written.then(settled, settled);
      written.then(
        () => {
          if (this.pending.get(frameId) !== entry) return;
          entry.timer = setTimeout(() => {
            entry.timer = null;
            const late = new QuiverError('timeout', `no reply to ${command.type} within ${timeoutMs} ms`);
            if (options.onTimeout) {
              options.onTimeout(late);
              return;
            }
            this.pending.delete(frameId);
            reject(late);
          }, timerDelay(timeoutMs));
        },
        (e: unknown) => {
          if (this.pending.get(frameId) === entry) this.pending.delete(frameId);
          reject(asQuiverError(e));
        },
      );
    });
  }

  /** Takes command `id` out of the pacer's queue, if it still waits there (a no-op once it is
   *  written), and rejects its write with kind `timeout` (`closed` for an aborted signal, whose
   *  reason the caller rejects with first); not `unsent`: it must not be sent on a later session
   *  either. */
  private withdraw(id: number, what: string, why: 'deadline' | 'aborted' = 'deadline'): void {
    const at = this.queue.findIndex((q) => q.id === id);
    if (at < 0) return;
    const [item] = this.queue.splice(at, 1);
    const waiting = `still waiting for the server's rate limit, or for the transport to take what it holds`;
    item?.reject(
      why === 'aborted'
        ? new QuiverError('closed', `${what} aborted ${waiting}: withdrawn, never sent`)
        : new QuiverError('timeout', `${what} ${waiting}, ${this.requestTimeoutMs} ms after it was made: withdrawn, never sent (sending it again is safe)`),
    );
  }

  /** Whether the command `id` still waits for its reply: none of its reply has arrived. */
  awaitsReply(id: number): boolean {
    return this.pending.has(id);
  }

  /** @internal Set by the client: command ids are unique across sessions. */
  nextId: () => number = () => {
    throw new Error('Session.nextId not set');
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
  async leave(ms: number): Promise<void> {
    if (this.ended || this.leaving) return;
    this.leaving = true;
    const deadline = now() + ms;
    // A heartbeat's Ping would only wait behind the rest (and declare the server dead meanwhile).
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const withdrawn = this.queue.filter((q) => q.type !== 'Publish');
    for (const q of withdrawn) this.queue.splice(this.queue.indexOf(q), 1);
    for (const q of withdrawn) q.reject(unsent(new QuiverError('closed', `client closed before the ${q.type} was written: never sent`)));
    const publishAwaited = (): boolean => {
      for (const p of this.pending.values()) if (p.type === 'Publish') return true;
      return false;
    };
    // Held datagram values wait for the pacer at most half the time: the FIN must still go
    // before the deadline, else the close discards the publishes the server has not read
    // (review 131, R1: commands take the tokens first, so held values could keep it from ever
    // going). Past that they are dropped, as a full pacer drops them.
    const datagramsUntil = now() + ms / 2;
    const datagramsHeld = (): boolean => {
      if (this.heldDatagrams.size === 0) return false;
      if (now() < datagramsUntil) return true;
      this.heldDatagrams.clear();
      return false;
    };
    while (!this.ended && (this.queue.length > 0 || datagramsHeld() || publishAwaited()) && now() < deadline) {
      await new Promise<void>((resolve) => setTimeout(resolve, Math.max(1, Math.min(SEND_POLL_MS, deadline - now()))));
    }
    if (!this.ended && this.queue.length === 0 && !datagramsHeld() && now() < deadline) {
      this.link.leave();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.done, new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - now()))))]);
      clearTimeout(timer);
    }
    this.end(new QuiverError('closed', 'client closed'), true);
  }

  /** Ends the session once; every waiter learns why. */
  end(cause: QuiverError, byClient = false): void {
    if (this.ended) return;
    this.ended = true;
    this.cause = cause;
    const closed = (): QuiverError =>
      new QuiverError('closed', `session ended: ${cause.message}`, {
        cause,
        ...(cause.code !== null ? { code: cause.code } : {}),
      });
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    if (this.sendTimer) clearTimeout(this.sendTimer);
    if (this.pumpTimer) clearTimeout(this.pumpTimer);
    if (this.datagramTimer) clearTimeout(this.datagramTimer);
    this.heldDatagrams.clear();
    // The values a `flush()` waited for are dropped with the session.
    for (const w of this.datagramWaiters.splice(0)) w.reject(closed());
    this.wakePump?.();
    // A command still waiting for the pacer was never written, and one a drain's goodbye (3000)
    // left unanswered was not carried out (the server answers every command it carries out
    // before that goodbye): either way the client may send it again (`unsent`). They are
    // rejected in id order, so that publishes queued again keep their order.
    // Only a goodbye frame says so: after a bare close code 3000 an answer before it may have
    // been lost with the connection (PROTOCOL.md section 7), and a publish sent again was
    // published twice (outside audit 68, 2).
    const drained = this.goodbyeFrame && this.goodbye?.code === CloseCode.shutdown;
    const queued = new Set<number>();
    const rejections: Array<[number, () => void]> = [];
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
    // Stable: a queued request's write is rejected before the request itself.
    rejections.sort((a, b) => a[0] - b[0]);
    for (const [, reject] of rejections) reject();
    this.link.close(byClient ? 'client closed' : '');
    this.resolveDone(cause);
  }

  // LinkHandler

  received(): void {
    this.lastReceived = now();
  }

  control(id: number, event: Event): void {
    // Nothing follows a Goodbye (PROTOCOL.md section 7), and what an ended session's link still
    // hands over must not reach the client's state, which the next session owns by now.
    if (this.ended) return;
    if (event.type === 'Goodbye') {
      this.goodbyeFrame = !this.ended;
      this.setGoodbye({ code: event.code, reason: clip(event.reason), reconnect: event.reconnect });
      return;
    }
    const pending = id === 0 ? undefined : this.pending.get(id);
    if (!pending) {
      this.owner.onUnsolicited(this, id, event);
      return;
    }
    this.pending.delete(id);
    if (pending.timer) clearTimeout(pending.timer);
    if (event.type === 'Error') {
      pending.reject(new QuiverError('command', `${codeLabel(event.code)}: ${clip(event.message)}`, { code: event.code }));
    } else {
      pending.resolve(event);
    }
  }

  streamOpened(room: string, id: number): boolean {
    return this.owner.streamOpened(room, id);
  }

  subscription(id: number, event: SubscriptionEvent): boolean {
    return this.owner.deliver(id, event);
  }

  streamEnded(room: string, id: number): void {
    if (!this.ended) this.owner.streamEnded(this, room, id);
  }

  datagram(bytes: Uint8Array): void {
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
  publishDatagram(room: string, bytes: Uint8Array): 'sent' | 'held' | 'dropped' | null {
    if (this.ended || !this.link.datagramFits(bytes.length)) return null;
    const held = this.heldDatagrams;
    const waiting = held.get(room);
    if (waiting) {
      // The newer value takes the older one's place and turn.
      waiting.bytes = bytes;
    } else {
      if (held.size >= HELD_DATAGRAM_ROOMS) return 'dropped';
      held.set(room, { bytes, turn: this.nextTurn++ });
    }
    this.flushDatagrams();
    return held.has(room) ? 'held' : 'sent';
  }

  /**
   * Resolves once every datagram publication held for the pacer now has been handed to the
   * transport (its room's newest by then: a newer value of such a room takes its turn; a room
   * that begins to wait later does not hold it back); at once when none is held. Rejects, kind
   * `closed`, if the session ends first (the values still held are dropped with it).
   */
  datagramsSent(): Promise<void> {
    if (this.ended) return Promise.reject(unsent(new QuiverError('closed', 'not connected')));
    const mark = this.nextTurn;
    return new Promise<void>((resolve, reject) => {
      this.datagramWaiters.push({ mark, resolve, reject });
      this.releaseDatagramWaiters();
    });
  }

  /** Resolves the `datagramsSent` waiters whose rooms have all had their value sent. */
  private releaseDatagramWaiters(): void {
    // The first room held has the earliest turn: the map is in the order of the turns.
    const first = this.heldDatagrams.values().next();
    const oldest = first.done ? Infinity : first.value.turn;
    while (this.datagramWaiters.length > 0 && this.datagramWaiters[0]!.mark <= oldest) {
      this.datagramWaiters.shift()!.resolve();
    }
  }

  /** Sends the held datagram publications, in order, while the pacer has tokens free; then
   *  looks again when the next one is due (the pump may take it first). */
  private flushDatagrams(): void {
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
      // One the link no longer takes (it is closing) is lost, as the network might lose it.
      if (this.link.sendDatagram(bytes)) pacer?.reserve(now());
    }
    this.releaseDatagramWaiters();
  }

  report(error: QuiverError): void {
    this.owner.report(error);
  }

  closed(cause: QuiverError, close: { code: number; reason: string } | null): void {
    // The server's close answering `leave`'s end of the control stream, or any other end then.
    if (this.leaving && !this.goodbye) {
      this.end(new QuiverError('closed', 'client closed'));
      return;
    }
    // A protocol close code without its Goodbye frame still says what happened (WebSocket).
    if (!this.goodbye && close && codeLabel(close.code) !== `code_${close.code}` && close.code >= CloseCode.shutdown) {
      this.setGoodbye({ code: close.code, reason: clip(close.reason), reconnect: !FINAL_CLOSE_CODES.has(close.code) });
      return;
    }
    this.end(this.goodbye ? goodbyeError(this.goodbye) : cause);
  }

  private setGoodbye(g: GoodbyeInfo): void {
    if (this.ended) return;
    this.goodbye = g;
    this.onGoodbye(g);
    this.end(goodbyeError(g));
  }

  private async write(bytes: Uint8Array): Promise<void> {
    if (this.ended) throw unsent(new QuiverError('closed', 'not connected'));
    try {
      const written = this.link.write(bytes);
      this.watchSending();
      await written;
      this.wakeFull?.();
    } catch (e) {
      const err = asQuiverError(e);
      if (err.kind !== 'closed') this.end(new QuiverError('transport', `write failed: ${errorMessage(e)}`, { cause: e }));
      throw new QuiverError('closed', err.message, { cause: e });
    }
  }

  /** Writes queued commands in order, each when the pacer allows and, for publishes and calls,
   *  once the transport holds no more than the send budget. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    void (async () => {
      // A pacer token taken for the head and not used yet: `reserve` always takes one, so a head
      // looked at again after the pacer's wait (withdrawn, or the transport full by then) must
      // not take a second (outside audit 107, F6: the client then paced below the server's rate).
      let reserved = false;
      try {
        while (this.queue.length > 0 && !this.ended) {
          const head = this.queue[0]!;
          if (head.bounded && this.full(head.bytes.length)) {
            // Waits for the transport to take some; `watchSending` ends the session if it
            // takes none for `requestTimeoutMs` (and what waits here then was never written).
            await this.pause(SEND_POLL_MS, true);
            continue;
          }
          if (!reserved && this.pacer) {
            reserved = true;
            const wait = this.pacer.reserve(now());
            if (wait > 0) {
              await this.pause(wait, false);
              // Withdrawals, or other writes, during the pacer's wait: the head is looked at again.
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
  private pause(ms: number, forRoom: boolean): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
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
  private watchSending(): void {
    if (this.sendTimer || this.ended || this.link.backlog === 0) return;
    const limit = this.requestTimeoutMs;
    const period = Math.min(1_000, Math.max(10, limit / 4));
    let taken = this.link.taken;
    let since = now();
    const check = (): void => {
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
            'timeout',
            `the server took none of the ${backlog} bytes waiting to be sent for ${limit} ms: not reading; commands already sent may or may not have been carried out`,
          ),
        );
        return;
      }
      this.sendTimer = setTimeout(check, period);
    };
    this.sendTimer = setTimeout(check, period);
  }
}

// Longest room name (PROTOCOL.md section 4), in UTF-8 bytes.
const MAX_ROOM_BYTES = 128;
const utf8 = new TextEncoder();

/**
 * The local refusal of a command whose frame exceeds the server's `max_frame`: the server would
 * close the whole session over it, for good (3001 protocol_error, no reconnect), taking every
 * subscription with it, where only this command is wrong (outside audit 115, F1, found in the
 * Rust client: a room name from a user could close the app's client). A room name over the
 * protocol's 128 bytes is what makes a room command that large: `invalid_room`, as the server
 * answers a long name that fits a frame; anything else (a payload, a call's method or key, a
 * token) is `payload_too_large`.
 */
function tooLarge(command: Command, size: number, limit: number): QuiverError {
  const room = 'room' in command ? utf8.encode(command.room).length : 0;
  const longRoom = room > MAX_ROOM_BYTES;
  const why = longRoom ? ` (its room name has ${room} bytes; the protocol allows ${MAX_ROOM_BYTES})` : '';
  const label = longRoom ? 'invalid_room' : 'payload_too_large';
  return new QuiverError('command', `${label}: a ${command.type} of ${size} bytes exceeds the server's frame limit of ${limit}${why}; not sent`, {
    code: longRoom ? ErrorCode.invalid_room : ErrorCode.payload_too_large,
    ...('room' in command ? { room: command.room } : {}),
  });
}

function unsent(e: QuiverError): QuiverError {
  e.unsent = true;
  return e;
}

/** Milliseconds until a token expiring at `expiresAt` (Unix seconds), valid for `lifetimeMs`
 * when it was given, is refreshed: ahead by a minute or a tenth of its lifetime, whichever is
 * larger (PROTOCOL.md section 6: a margin for clock skew and for fetching the token; this was at
 * most a minute, and less for tokens under 5 minutes: outside audit 115, F10, found in the Rust
 * client), but never by more than half of what remains, so that one failure can be retried. */
function refreshDelay(expiresAt: number, lifetimeMs: number): number {
  const remaining = expiresAt * 1000 - Date.now();
  return Math.max(0, remaining - Math.min(remaining / 2, Math.max(60_000, lifetimeMs / 10)));
}

/** Keeps the session's token fresh: sends `Refresh` ahead of `expires_at`. */
export class Refresher {
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Refreshes in a row whose new expiry was due again at once: the backoff's exponent. */
  private strikes = 0;

  constructor(
    private readonly session: Session,
    private readonly token: () => string | Promise<string>,
    private readonly report: (e: QuiverError) => void,
  ) {}

  /** `lifetimeMs`: how long the token was valid when given (now, unless a step of a long wait). */
  schedule(expiresAt: number | null, lifetimeMs = expiresAt === null ? 0 : expiresAt * 1000 - Date.now()): void {
    this.stop();
    if (expiresAt === null) return;
    const delay = refreshDelay(expiresAt, lifetimeMs);
    // setTimeout fires at once beyond 2^31-1 ms (24.8 days): a longer wait goes in steps. A
    // refresh at the first step of a token whose expiry the server keeps was answered with the
    // same expiry and retried every 30 s for the rest of its life (outside audit 73).
    this.timer =
      delay > MAX_TIMER
        ? setTimeout(() => this.schedule(expiresAt, lifetimeMs), MAX_TIMER)
        : setTimeout(() => void this.refresh(expiresAt), delay);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private async refresh(expiresAt: number): Promise<void> {
    try {
      const token = await this.token();
      const reply = await this.session.request(0, { type: 'Refresh', token }, { urgent: true });
      if (reply.type === 'Refreshed') {
        const next = reply.expiresAt === null ? null : Number(reply.expiresAt);
        // An expiry that did not move, or that is due again at once (still in the past), is
        // tried again after a backoff from 1 s doubling to 30 s, never in a loop: outside
        // audits saw 745 refreshes a second against a server that kept the expiry, and 835
        // (each a call of the token callback) against one that moved it a second, still past.
        // An earlier one is the token's new expiry (a `Refresh` may shorten the session,
        // PROTOCOL.md section 6), scheduled as any other: taken as "not moved", a provider that
        // kept handing out the shorter token was asked again and again until it expired
        // (outside audit 115, F4).
        if (next !== null && (next === expiresAt || refreshDelay(next, next * 1000 - Date.now()) < 1_000)) {
          const wait = Math.min(1_000 * 2 ** this.strikes, 30_000);
          this.strikes = Math.min(this.strikes + 1, 16);
          this.timer = setTimeout(() => void this.refresh(next), wait);
          return;
        }
        this.strikes = 0;
        this.schedule(next);
        return;
      }
      throw new QuiverError('protocol', `expected Refreshed, got ${reply.type}`);
    } catch (e) {
      if (this.session.ended || this.session.leaving) return;
      const err = asQuiverError(e);
      this.report(new QuiverError('token', `token refresh failed: ${err.message}`, { cause: err, ...(err.code !== null ? { code: err.code } : {}) }));
      // Try again while there is time; if the token still expires, the server says Goodbye
      // (token_expired, reconnect) and the reconnect brings a fresh token.
      const remaining = expiresAt * 1000 - Date.now();
      if (remaining > 2_000) this.timer = setTimeout(() => void this.refresh(expiresAt), Math.min(remaining / 2, 30_000));
    }
  }
}
