// Errors as the app sees them: one class, a kind saying where it came from, and the protocol code
// when the server sent one.

import { codeLabel } from './codes.js';

/** What went wrong, as the app sees it. */
export type ErrorKind =
  /** The server refused a command (`code` is an error code, e.g. 103 permission_denied). */
  | 'command'
  /** The server ended a subscription (`code`, `room`). */
  | 'subscription'
  /** No transport could open a session: unreachable, refused, or (WebTransport, which cannot
   *  tell) a refused token or a certificate mismatch. */
  | 'handshake'
  /** The server refused the token for good (WebSocket close 3007 `token_invalid`): the client
   *  stops retrying. Fix the token source, then create a new client. */
  | 'auth'
  /** The token callback threw, or a token refresh was refused. */
  | 'token'
  /** The server said Goodbye (`code` is a close code, e.g. 3002 token_expired). */
  | 'goodbye'
  /** The server sent bytes this client cannot decode. */
  | 'protocol'
  /** The connection was lost or could not be used. */
  | 'transport'
  /** No answer in time (including a server that stopped answering pings). */
  | 'timeout'
  /** The client was closed, or the request could not survive a reconnect. */
  | 'closed'
  /** Too many publishes queued while disconnected, or (publishes and calls) waiting while
   *  connected, for the pacer or for a transport full of unsent bytes: never sent. */
  | 'buffer_full'
  /** A message handler threw. */
  | 'handler';

export class QuiverError extends Error {
  override name = 'QuiverError';
  /** Protocol code (error or close code) when the server sent one. */
  readonly code: number | null;
  readonly room: string | null;
  /** @internal The command was never written, or a drain (goodbye 3000) left it unanswered: it
   *  was not carried out, and a publish may be queued again. */
  unsent = false;

  /** True when the server did not carry the command out: its session ended before the command
   *  was written, or a draining server's goodbye (close code 3000) came before the answer (such
   *  a server answers every command it carries out first). Sending it again is safe, a `call()`
   *  included. False when unknown: after any other end a command may or may not have run. */
  get notCarriedOut(): boolean {
    return this.unsent;
  }

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

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message || e.name : String(e);
}

export function asQuiverError(e: unknown): QuiverError {
  if (e instanceof QuiverError) return e;
  return new QuiverError('transport', errorMessage(e), { cause: e });
}

/** Most characters of server-chosen text that `clip` keeps. */
export const SHOWN_CHARS = 256;

/**
 * Server-chosen text (an `Error`'s message, an `Unsubscribed`'s or a `Goodbye`'s reason, a close
 * reason) as this client puts it in an error or event it hands the app: at most `SHOWN_CHARS`
 * characters, control characters escaped. Such text may be as long as a frame (`max_frame`, up
 * to 16 MiB) and hold newlines, and apps log what they are given: a server could otherwise write
 * pages into their logs, or lines that look like their own (outside audit 115, F6; the Rust
 * client's `clip` does the same).
 */
export function clip(text: string): string {
  let shown = '';
  let n = 0;
  for (const c of text) {
    if (n === SHOWN_CHARS) return `${shown}…`;
    n++;
    shown += /\p{Cc}/u.test(c) ? escapeControl(c) : c;
  }
  return shown;
}

function escapeControl(c: string): string {
  switch (c) {
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    case '\t':
      return '\\t';
    default:
      return `\\u{${c.codePointAt(0)!.toString(16)}}`;
  }
}

/** The longest delay setTimeout keeps (2^31-1 ms, 24.8 days); past it, it fires at once. */
export const MAX_TIMER = 2 ** 31 - 1;

/** `ms` as a setTimeout delay: a longer one (a call's `timeoutMs` of 2^32-1, say) fired at once,
 *  so a command timed out as soon as it was written (outside audit 104, F6). */
export function timerDelay(ms: number): number {
  return Math.min(Math.max(0, ms), MAX_TIMER);
}

/** `p`, or a `timeout` QuiverError after `ms`, or (`signal`) the signal's reason as soon as it
 *  aborts: `close()` gives up a connection attempt in whatever phase it is (outside audit 121,
 *  F2). What `p` yields after that is ignored. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    // Whichever comes first settles the promise and stops the others: a `p` that never settles
    // (a token callback that hangs) must leave no listener on the client's long-lived signal.
    const settle = (done: () => void): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      done();
    };
    const timer = setTimeout(() => settle(() => reject(new QuiverError('timeout', `${what} took longer than ${ms} ms`))), timerDelay(ms));
    const onAbort = (): void => settle(() => reject(signal?.reason));
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => settle(() => resolve(v)),
      (e: unknown) => settle(() => reject(e)),
    );
    if (signal?.aborted) onAbort();
  });
}

/** `promise`, or the signal's reason as soon as it aborts. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
