// Shared by the demo pages (/arena, /orders): the development token from /dev/bootstrap, a
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

/** A client for the development server; `?transport=websocket|webtransport` pins one. */
export async function devClient() {
  let boot = await bootstrap();
  let firstToken = boot.token;
  const pinned = new URLSearchParams(location.search).get('transport');
  const client = new QuiverClient({
    ...(pinned === 'websocket' || pinned === 'webtransport' ? { transports: [pinned] } : {}),
    url: boot.url,
    webSocketUrl: boot.ws_url,
    serverCertificateHashes: [boot.cert_sha256],
    token: async () => {
      if (firstToken) {
        const t = firstToken;
        firstToken = null;
        return t;
      }
      const fresh = await bootstrap(boot.user);
      if (fresh.cert_sha256 !== boot.cert_sha256) location.reload();
      boot = fresh;
      return fresh.token;
    },
  });
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
