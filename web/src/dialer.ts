// Where and how the client connects: the servers (`url`, or each of `urls`) taken in turn, one per
// connection attempt, and on each the transports to try, in order. WebTransport is skipped where
// it failed before and WebSocket then worked, or once this client's WebTransport sessions could
// not carry its subscriptions (`avoidWebTransport`). The client (client.ts) runs the attempts.

import { QuiverError } from './errors.js';
import { type ResolvedOptions, type Target } from './options.js';
import {
  openWebSocket,
  openWebTransport,
  rememberWebTransportFailure,
  webTransportFailedBefore,
  type Link,
  type TransportKind,
  type WebSocketConstructor,
  type WebTransportConstructor,
} from './transport.js';

/** What a subprotocol may hold (RFC 6455 §4.1: an RFC 7230 token); `new WebSocket` throws a
 *  SyntaxError for anything else. */
const SUBPROTOCOL_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

export interface DialerParts {
  readonly opts: ResolvedOptions;
  readonly transports: readonly TransportKind[];
  readonly targets: readonly Target[];
  readonly hashes: WebTransportHash[];
  readonly WT: WebTransportConstructor | undefined;
  readonly WS: WebSocketConstructor | undefined;
}

export class Dialer {
  /** Index in `targets` of the current (or next) connection attempt's server. */
  private index = 0;
  /** Set when this client's WebTransport sessions cannot carry its subscriptions. */
  private avoidWebTransport = false;

  constructor(private readonly parts: DialerParts) {}

  /** The server of the current (or next) connection attempt. */
  target(): Target {
    return this.parts.targets[this.index]!;
  }

  /** Every attempt after the first goes to the next server, round robin (as the Rust client's
   *  `--url a,b`): a dead instance costs one attempt, not the rest of the outage. */
  advance(): void {
    this.index = (this.index + 1) % this.parts.targets.length;
  }

  /** Transports to try now at `target`, in order: those it has a URL for, WebTransport skipped
   *  once it failed there where WebSocket then worked, when another transport follows it. */
  candidates(target: Target): TransportKind[] {
    const { transports, WT, WS, opts } = this.parts;
    const here = transports.filter((t) => (t === 'webtransport' ? WT && target.wtUrl : WS && target.wsUrl));
    return here.filter(
      (t, i) =>
        !(
          t === 'webtransport' &&
          i < here.length - 1 &&
          (this.avoidWebTransport || (target.wtUrl && webTransportFailedBefore(target.wtUrl, opts.remember, opts.webTransportRetryMs)))
        ),
    );
  }

  /** Opens `kind` to `target` with `token`: on WebTransport in the URL (a browser can set no
   *  header on the CONNECT, PROTOCOL.md §1); on WebSocket offered as the subprotocol
   *  `quiver.token.JWT` beside `quiver` (§9.1), which keeps it out of the URL and so out of
   *  proxies' access logs, unless the token has characters a subprotocol cannot carry (a JWT
   *  never has). `signal` gives the handshake up (the client closed). */
  open(kind: TransportKind, target: Target, token: string, timeoutMs: number, signal?: AbortSignal): Promise<Link> {
    const { WT, WS, hashes, opts } = this.parts;
    if (kind === 'webtransport' && WT && target.wtUrl) {
      const url = new URL(target.wtUrl);
      url.searchParams.set('token', token);
      return openWebTransport(WT, url, hashes.length ? { serverCertificateHashes: hashes } : {}, timeoutMs, opts.maxFrame, signal);
    }
    if (kind === 'websocket' && WS && target.wsUrl) {
      const url = new URL(target.wsUrl);
      if (SUBPROTOCOL_TOKEN.test(token)) return openWebSocket(WS, url, timeoutMs, opts.maxFrame, ['quiver', `quiver.token.${token}`], signal);
      url.searchParams.set('token', token);
      return openWebSocket(WS, url, timeoutMs, opts.maxFrame, [], signal);
    }
    return Promise.reject(new QuiverError('handshake', `${kind} is not available`));
  }

  /** A session on another transport worked where WebTransport failed at `target` first. */
  workedAfterWebTransportFailed(target: Target, kind: TransportKind): void {
    if (target.wtUrl && kind !== 'webtransport') rememberWebTransportFailure(target.wtUrl, this.parts.opts.remember);
  }

  /** Whether the client can move from WebTransport to WebSocket; if so, it will from now on. */
  moveToWebSocket(): boolean {
    if (!this.parts.transports.includes('websocket')) return false;
    this.avoidWebTransport = true;
    return true;
  }
}
