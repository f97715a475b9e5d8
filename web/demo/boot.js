// Shared by the demo pages (/, /arena, /orders): the development token from /dev/bootstrap, a
// QuiverClient that fetches a fresh one on every reconnect and refresh (same user), and the
// page's state, transport and error fields (#state, #transport, #error).
import { QuiverClient } from './quiver.js';

export const $ = (id) => document.getElementById(id);

export async function bootstrap(user) {
  const query = user ? `?user=${encodeURIComponent(user)}` : '';
  const res = await fetch(`/dev/bootstrap${query}`, { cache: 'no-store' });
  if (!res.ok) throw new Error(`GET /dev/bootstrap: HTTP ${res.status} (is the server in development mode?)`);
  return res.json();
}

export function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

/**
 * A QuiverClient for the development server from a bootstrap answer: its token serves the first
 * connection, every later one (reconnects, refreshes) fetches a fresh token for the same user.
 * `?transport=websocket|webtransport` pins one transport, to compare them side by side.
 */
export function clientFor(boot) {
  let current = boot;
  let firstToken = boot.token;
  const pinned = new URLSearchParams(location.search).get('transport');
  return new QuiverClient({
    ...(pinned === 'websocket' || pinned === 'webtransport' ? { transports: [pinned] } : {}),
    url: boot.url,
    // WebTransport first, WebSocket when it is missing, refused or silent (blocked UDP). The
    // WebSocket is on the HTTP port this page came from; newer servers say so in `ws_url`.
    webSocketUrl: boot.ws_url ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`,
    serverCertificateHashes: [boot.cert_sha256],
    token: async () => {
      if (firstToken) {
        const t = firstToken;
        firstToken = null;
        return t;
      }
      const fresh = await bootstrap(current.user);
      // A regenerated development certificate cannot be pinned by a running client: start over.
      if (fresh.cert_sha256 !== current.cert_sha256) location.reload();
      current = fresh;
      return fresh.token;
    },
  });
}

/** A client for the development server, showing its state, transport and errors in the page. */
export async function devClient() {
  const boot = await bootstrap();
  const client = clientFor(boot);
  client.on('state', (state) => {
    $('state').textContent = state;
    $('state').dataset.state = state;
  });
  client.on('error', (e) => showError(e.message));
  client.on('transport', (t) => ($('transport').textContent = t === 'webtransport' ? 'WebTransport' : 'WebSocket'));
  return { client, user: boot.user };
}

/** Shows a failed start in the page. */
export function failed(e) {
  $('state').textContent = 'closed';
  $('state').dataset.state = 'closed';
  showError(e.message);
}
