// Live demo: a dashboard of eight rooms fed by the server's demo publisher, and a chat room.
// Served by `quiver serve` in development mode, which also answers /dev/bootstrap.
import { $, bootstrap, clientFor, failed, showError } from './boot.js';

const TILE_ROOMS = Array.from({ length: 8 }, (_, i) => `dash.tile.${i}`);
const CHAT_ROOM = 'chat.lobby';
const HISTORY = 60; // points in each sparkline

/** One dashboard tile; messages only record data, drawing happens once per animation frame. */
class Tile {
  constructor(room) {
    const node = $('tile-template').content.firstElementChild.cloneNode(true);
    node.dataset.room = room;
    node.dataset.count = '0';
    node.querySelector('h3').textContent = room;
    $('tiles').append(node);
    this.node = node;
    this.value = node.querySelector('.value');
    this.line = node.querySelector('polyline');
    this.rate = node.querySelector('.rate');
    this.lag = node.querySelector('.lag');
    this.history = [];
    this.count = 0;
    this.countAtLastRate = 0;
    this.latest = null;
    this.dirty = false;
  }

  onMessage(message) {
    let data;
    try {
      data = message.json();
    } catch {
      return; // not a dashboard sample; ignore rather than break the tile
    }
    if (typeof data?.v !== 'number') return;
    this.latest = data;
    this.history.push(data.v);
    if (this.history.length > HISTORY) this.history.shift();
    this.count++;
    this.dirty = true;
  }

  draw() {
    if (!this.dirty) return;
    this.dirty = false;
    this.node.dataset.count = String(this.count);
    this.value.textContent = this.latest.v.toFixed(1);
    if (typeof this.latest.t === 'number') this.lag.textContent = String(Math.max(0, Date.now() - this.latest.t));
    const min = Math.min(...this.history);
    const span = Math.max(Math.max(...this.history) - min, 1);
    this.line.setAttribute(
      'points',
      this.history.map((v, i) => `${((i / (HISTORY - 1)) * 100).toFixed(1)},${(29 - ((v - min) / span) * 28).toFixed(1)}`).join(' '),
    );
  }

  tickRate(seconds) {
    this.rate.textContent = String(Math.round((this.count - this.countAtLastRate) / seconds));
    this.countAtLastRate = this.count;
  }
}

function appendChat(parts) {
  const log = $('chat-log');
  const li = document.createElement('li');
  if (parts.system) {
    li.className = 'system';
    li.textContent = parts.system;
  } else {
    const user = document.createElement('span');
    user.className = 'user';
    user.textContent = parts.user;
    li.append(user, document.createTextNode(parts.text));
  }
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(li);
  while (log.children.length > 200) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

/**
 * Who is in the chat room: a snapshot from `presence()`, kept current by the subscription's
 * Joined/Left. Keyed by session, since one user may have several tabs open.
 */
class Presence {
  constructor(me) {
    this.me = me;
    this.sessions = new Map(); // session -> user
    this.synced = false;
  }

  reset(members) {
    this.sessions = new Map(members.map((m) => [m.session, m.user]));
    this.synced = true;
    this.draw();
  }

  apply({ type, member }) {
    // Changes alone, without a snapshot to apply them to, would show a partial list.
    if (!this.synced) return;
    if (type === 'Joined') this.sessions.set(member.session, member.user);
    else this.sessions.delete(member.session);
    this.draw();
  }

  hide() {
    this.synced = false;
    $('presence').hidden = true;
  }

  draw() {
    const tabs = new Map(); // user -> sessions
    for (const user of this.sessions.values()) tabs.set(user, (tabs.get(user) ?? 0) + 1);
    const items = [...tabs].sort(([a], [b]) => a.localeCompare(b)).map(([user, n]) => {
      const li = document.createElement('li');
      li.dataset.user = user;
      li.textContent = n > 1 ? `${user} ×${n}` : user;
      if (user === this.me) li.className = 'me';
      return li;
    });
    $('presence-list').replaceChildren(...items);
    $('presence-count').textContent = String(tabs.size);
    $('presence').hidden = false;
  }
}

async function main() {
  const boot = await bootstrap();
  $('user').textContent = boot.user;
  const client = clientFor(boot);

  // For devtools and the browser tests: `quiverDemo.client.transport` and the like.
  window.quiverDemo = { client };

  client.on('state', (state) => {
    $('state').textContent = state;
    $('state').dataset.state = state;
    if (state === 'connected') showError('');
  });
  client.on('error', (e) => {
    // Errors with a room concern one subscription; the rest are about the connection.
    showError(e.room ? `${e.room}: ${e.message}` : e.message);
    console.warn('quiver:', e.kind, e.code ?? '', e.message);
  });
  client.on('transport', (transport, skipped) => {
    $('transport').textContent = transport === 'webtransport' ? 'WebTransport' : 'WebSocket';
    $('transport').dataset.transport = transport;
    if (skipped) console.info('quiver: on', transport, 'because', skipped.message);
  });
  client.on('rtt', (ms) => ($('rtt').textContent = `${ms.toFixed(1)} ms`));
  client.on('recovery', ({ room, recovery }) => {
    if (room === CHAT_ROOM && recovery.type === 'Failed') {
      appendChat({ system: 'Reconnected; messages sent while you were away may be missing.' });
    }
  });

  const presence = new Presence(boot.user);
  // Fetched after every (re)subscribe: once the server has confirmed the subscription, every
  // change after the snapshot also arrives as Joined/Left, and changes missed while disconnected
  // are covered by the new snapshot.
  client.on('subscribed', (sub) => {
    if (sub.room !== CHAT_ROOM) return;
    client.presence(CHAT_ROOM).then(
      (members) => presence.reset(members),
      // Presence is optional (off for the namespace, or the connection just dropped): no banner.
      (e) => {
        presence.hide();
        console.info('quiver: no presence for', CHAT_ROOM, e.label ?? '', e.message);
      },
    );
  });

  const tiles = TILE_ROOMS.map((room) => new Tile(room));
  const subscribing = tiles.map((tile, i) => client.subscribe(TILE_ROOMS[i], (m) => tile.onMessage(m)));
  subscribing.push(
    client.subscribe(
      CHAT_ROOM,
      (m) => {
        try {
          const { user, text } = m.json();
          appendChat({ user: String(user), text: String(text) });
        } catch {
          // Not the page's JSON: plain text, as `quiver pub chat.lobby hi` sends (a
          // publication carries no sender; the page's own messages name theirs).
          appendChat({ user: 'plain text', text: m.text() });
        }
      },
      { onPresence: (change) => presence.apply(change) },
    ),
  );
  for (const p of subscribing) p.catch((e) => showError(e.message));

  const frame = () => {
    for (const tile of tiles) tile.draw();
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  setInterval(() => tiles.forEach((t) => t.tickRate(1)), 1000);

  $('chat-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = $('chat-input');
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    try {
      await client.publish(CHAT_ROOM, JSON.stringify({ user: boot.user, text }), { ack: true });
    } catch (e) {
      showError(`message not sent: ${e.message}`);
      input.value = text;
    }
  });
}

main().catch(failed);
