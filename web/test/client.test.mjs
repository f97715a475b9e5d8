import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { QuiverClient, QuiverError, connect, encodeLatestDatagram, encodePublishDatagram } from '../dist/quiver.js';
import { FakeNetwork, connected as connectedOver, encodeFrames, fakeClient, once, waitUntil } from './fake-transport.mjs';

const HASH = 'ab'.repeat(32);
const text = (s) => new TextEncoder().encode(s);

const connected = (net, client, welcome) => connectedOver(net, client, { welcome });

/** A fake client over one transport, trusting HASH. */
function setup(options = {}, transport = 'webtransport') {
  return fakeClient({ serverCertificateHashes: [HASH], transports: [transport], ...options });
}

/** Makes the fake server refuse connections for which `refused(url)` holds, on both transports. */
function refuse(net, refused) {
  net.accept = (url) => !refused(url, url.searchParams.get('token'));
  net.acceptWebSocket = (url, token) => !refused(url, token);
}

/** Several frames in one read: one WebSocket message, or one chunk of the control stream. */
function sendTogether(conn, frames) {
  conn.sendRaw(encodeFrames(frames));
}

/**
 * The reply to `cmd` (a `Subscribe`), publications of epoch 5 at `publications`' offsets and an
 * unsolicited `Unsubscribed { code }`, all arriving together: over WebSocket in one message; over
 * WebTransport the publications on the room's stream first (held until the reply), then the reply
 * and the `Unsubscribed` in one read of the control stream.
 */
async function subscribedThenEnded(conn, cmd, { head, recovery = { type: 'NotRequested' }, publications, code }) {
  const room = cmd.command.room;
  const position = head === null ? null : { epoch: 5n, offset: head };
  const reply = [cmd.id, { type: 'Subscribed', room, position, recovery }];
  const pubs = publications.map(([offset, payload]) => [0, { type: 'Publication', room, position: { epoch: 5n, offset }, payload: text(payload) }]);
  const end = [0, { type: 'Unsubscribed', room, code, reason: 'ended by the server' }];
  if (conn.transport === 'websocket') {
    conn.sendFrames([[cmd.id, { type: 'SubscriptionStream', room }], reply, ...pubs, end]);
    return;
  }
  const stream = conn.openStream();
  stream.send(cmd.id, { type: 'SubscriptionStream', room });
  for (const [id, event] of pubs) stream.send(id, event);
  await new Promise((r) => setTimeout(r, 30));
  sendTogether(conn, [reply, end]);
}

test('handshake over WebTransport: token in the query, pinned hash, Hello, Welcome', async (t) => {
  const { net, client } = setup();
  t.after(() => client.close());
  const states = [];
  client.on('state', (s) => states.push(s));
  const conn = await net.nextConnection();
  assert.equal(conn.transport, 'webtransport');
  assert.equal(conn.token, 'tok-1');
  assert.equal(conn.url.pathname, '/v1');
  assert.equal(conn.options.serverCertificateHashes[0].algorithm, 'sha-256');
  assert.deepEqual([...conn.options.serverCertificateHashes[0].value], new Array(32).fill(0xab));
  const hello = await conn.welcome({ tenant: 'acme', user: 'alice', expiresAt: 1_900_000_000n });
  assert.deepEqual(hello.command, { type: 'Hello', version: 1, client: 'quiver-ts/0.2' });
  await client.ready();
  assert.deepEqual(states, ['connected']);
  assert.equal(client.info.tenant, 'acme');
  assert.equal(client.info.expiresAt, 1_900_000_000);
  assert.equal(client.transport, 'webtransport');
});

test('handshake over WebSocket: wss://HOST:PORT/v1/ws, the token offered as a subprotocol (never in the URL), one frame per message', async (t) => {
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  const conn = await net.nextConnection();
  assert.equal(conn.transport, 'websocket');
  assert.equal(conn.url.protocol, 'wss:');
  assert.equal(conn.url.host, '127.0.0.1:4433');
  assert.equal(conn.url.pathname, '/v1/ws');
  assert.equal(conn.url.search, '');
  assert.deepEqual(conn.offered, ['quiver', 'quiver.token.tok-1']);
  assert.equal(conn.token, 'tok-1');
  const hello = await conn.welcome({ tenant: 'acme', user: 'alice' });
  assert.deepEqual(hello.command, { type: 'Hello', version: 1, client: 'quiver-ts/0.2' });
  await client.ready();
  assert.equal(client.transport, 'websocket');
  assert.equal(conn.client.binaryType, 'arraybuffer');
  const pong = client.ping();
  conn.send((await conn.expect('Ping')).id, { type: 'Pong' });
  await pong;
  assert.deepEqual(conn.violations, []);
});

test('over WebSocket, a token a subprotocol cannot carry goes in the query (PROTOCOL.md section 9.1)', async (t) => {
  const net = new FakeNetwork();
  const client = new QuiverClient({ url: 'wss://h:1/v1/ws', token: () => 'opaque token/with=signs', heartbeat: false, pingIntervalMs: 0, WebSocket: net.WebSocket });
  t.after(() => client.close());
  const conn = await net.nextConnection();
  assert.deepEqual(conn.offered, []);
  assert.equal(conn.url.searchParams.get('token'), 'opaque token/with=signs');
  await conn.welcome({ tenant: 'acme', user: 'alice' });
  await client.ready();
});

test('connect() resolves connected; bad options are clear errors', async () => {
  const net = new FakeNetwork();
  const pending = connect({ url: 'https://h:1/v1', token: () => 'x', WebTransport: net.WebTransport, pingIntervalMs: 0 });
  await (await net.nextConnection()).welcome();
  const client = await pending;
  assert.equal(client.state, 'connected');
  // `closed` as soon as close() is called, not once it is awaited (outside audit 63, F4).
  const closing = client.close();
  assert.equal(client.state, 'closed');
  await closing;
  assert.equal(client.state, 'closed');

  const base = { url: 'https://h:1/v1', token: () => 'x', WebTransport: net.WebTransport };
  assert.throws(() => new QuiverClient({ ...base, url: 'http://h/v1' }), /https: \(WebTransport\) or ws:\/wss: \(WebSocket\)/);
  assert.throws(() => new QuiverClient({ ...base, token: 'x' }), /token must be a function/);
  assert.throws(() => new QuiverClient({ ...base, serverCertificateHashes: ['abc'] }), /64 hex digits/);
  assert.throws(() => new QuiverClient({ ...base, WebTransport: undefined, WebSocket: undefined }), /no usable transport: WebTransport is not available.*WebSocket is not available/);
  assert.throws(() => new QuiverClient({ ...base, transports: [] }), /transports must list/);
  assert.throws(() => new QuiverClient({ ...base, transports: ['sse'] }), /transports must list/);
  assert.throws(() => new QuiverClient({ ...base, webSocketUrl: 'https://h/v1/ws' }), /ws: or wss:/);
  for (const bad of [Number.NaN, -1, Number.POSITIVE_INFINITY, '5']) {
    assert.throws(() => new QuiverClient({ ...base, webTransportRetryMs: bad }), /webTransportRetryMs must be a finite number/);
  }
  // The Hello goes before the server's max_frame is known: a name past what every server takes
  // would close the client for good (outside audit 115, F1).
  assert.throws(() => new QuiverClient({ ...base, clientName: 'n'.repeat(1025) }), /clientName must be a string of at most 1024 bytes \(UTF-8\), got 1025 bytes/);
  assert.throws(() => new QuiverClient({ ...base, clientName: 'é'.repeat(513) }), /got 1026 bytes/);
  new QuiverClient({ ...base, clientName: 'n'.repeat(1024), reconnect: false }).close();
});

/** A WebTransport client subscribed to chat.lobby (its stream open, `Subscribed` at `position`),
 *  that collects the texts it receives in `got`; `live` writes on the room's stream. */
async function subscribedOverWebTransport(t, position) {
  const { net, client } = setup({}, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const got = [];
  const subscribed = client.subscribe('chat.lobby', (m) => got.push(m.text()));
  const cmd = await conn.expect('Subscribe');
  const live = conn.openStream();
  live.send(cmd.id, { type: 'SubscriptionStream', room: 'chat.lobby' });
  conn.send(cmd.id, { type: 'Subscribed', room: 'chat.lobby', position, recovery: { type: 'NotRequested' } });
  await subscribed;
  return { net, client, live, got };
}

test('over webtransport, a room stream the server ends without an Unsubscribed ends the session after 5 s; the next one subscribes again', async (t) => {
  // Outside client audit 14 (M2, on the Rust client): the room went silently dead.
  const { net, client, live, got } = await subscribedOverWebTransport(t, null);
  live.send(0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('one') });
  const ended = Date.now();
  live.close();
  const error = once(client, 'error', (e) => e.kind === 'protocol' && /without an Unsubscribed/.test(e.message), 8_000);
  const [e] = await error;
  assert.ok(Date.now() - ended >= 4_500, `ended after ${Date.now() - ended} ms`);
  assert.equal(e.room, 'chat.lobby');
  const again = await connected(net, client);
  const resub = await again.expect('Subscribe');
  assert.equal(resub.command.room, 'chat.lobby');
  assert.deepEqual(got, ['one']);
});

test('over webtransport, a bad frame on a room stream ends the session; the next one subscribes again, resuming', async (t) => {
  // Outside audit 68 (3): the stream alone was cancelled, and the room went silently dead.
  const { net, client, live, got } = await subscribedOverWebTransport(t, { epoch: 5n, offset: 1n });
  live.send(0, { type: 'Publication', room: 'chat.lobby', position: { epoch: 5n, offset: 2n }, payload: text('one') });
  const states = [];
  client.on('state', (state) => states.push(state));
  // Another room's publication on this room's stream.
  live.send(0, { type: 'Publication', room: 'chat.other', position: null, payload: text('stray') });
  const again = await connected(net, client);
  const resub = await again.expect('Subscribe');
  assert.equal(resub.command.room, 'chat.lobby');
  assert.deepEqual(resub.command.resume, { epoch: 5n, offset: 2n });
  assert.ok(states.includes('disconnected'), states.join());
  assert.deepEqual(got, ['one']);
});

/** Subscribes `room` on `conn` as a `latest` room with the server's subscription `id`. */
async function subscribeLatest(conn, subscribing, room, id) {
  const cmd = await conn.expect('Subscribe');
  assert.equal(cmd.command.room, room);
  conn.openStream().send(cmd.id, { type: 'SubscriptionStream', room });
  conn.send(cmd.id, { type: 'Subscribed', room, position: null, recovery: { type: 'NotRequested' }, subscription: id });
  return subscribing ? await subscribing : undefined;
}

const latestValue = (subscription, sequence, value) => encodeLatestDatagram({ subscription, sequence, payload: text(value) });

test('latest ids are per session: a re-subscribe whose old id is now another room\'s leaves that room\'s datagrams alone', async (t) => {
  // Session 1 gave game.a id 5 and game.b id 1 (game.a's first Subscribe was refused, say);
  // session 2 gives game.a id 1 and game.b id 2. Taking game.b's old id out of the map used to
  // take game.a's new entry with it: game.a got no datagram for the whole session.
  const { net, client } = setup({}, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const got = { a: [], b: [] };
  const a = client.subscribe('game.a', (m) => got.a.push(m.text()));
  await subscribeLatest(conn, a, 'game.a', 5n);
  const b = client.subscribe('game.b', (m) => got.b.push(m.text()));
  await subscribeLatest(conn, b, 'game.b', 1n);
  conn.sendDatagram(latestValue(5n, 1n, 'a1'));
  conn.sendDatagram(latestValue(1n, 1n, 'b1'));
  await waitUntil(() => got.a.length === 1 && got.b.length === 1);

  conn.kill();
  const again = await connected(net, client);
  const resubscribed = once(client, 'subscribed', (s) => s.room === 'game.b');
  await subscribeLatest(again, null, 'game.a', 1n);
  await subscribeLatest(again, null, 'game.b', 2n);
  await resubscribed;
  again.sendDatagram(latestValue(1n, 1n, 'a2'));
  again.sendDatagram(latestValue(2n, 1n, 'b2'));
  await waitUntil(() => got.a.length === 2 && got.b.length === 2);
  assert.deepEqual(got, { a: ['a1', 'a2'], b: ['b1', 'b2'] });
});

test('unreliable publishes into a room known to be reliable are ordinary publishes; into a latest room, datagrams', async (t) => {
  // Outside audit 61 (M3, on the Rust client): the datagram was dropped by the server
  // (not_latest) over WebTransport, while over WebSocket the same call published.
  const { net, client } = setup({}, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const chat = client.subscribe('chat.x', () => {});
  const cmd = await conn.expect('Subscribe');
  conn.openStream().send(cmd.id, { type: 'SubscriptionStream', room: 'chat.x' });
  conn.send(cmd.id, { type: 'Subscribed', room: 'chat.x', position: null, recovery: { type: 'NotRequested' } });
  await chat;
  const game = client.subscribe('game.x', () => {});
  await subscribeLatest(conn, game, 'game.x', 1n);
  await client.publish('chat.x', 'reliable', { unreliable: true });
  const publish = await conn.expect('Publish');
  assert.equal(publish.command.room, 'chat.x');
  assert.equal(conn.datagramsReceived.length, 0);
  await client.publish('game.x', 'newest', { unreliable: true });
  assert.equal(conn.datagramsReceived.length, 1);
});

/** The datagram publications the fake server received, as hex, and what `publish(room,
 *  payload, {unreliable: true})` sends, to compare with them. */
const sentDatagrams = (conn) => conn.datagramsReceived.map((d) => Buffer.from(d).toString('hex'));
const publishDatagram = (room, payload) => Buffer.from(encodePublishDatagram(room, text(payload))).toString('hex');

test('unreliable publishes are paced with the commands: none goes once the pacer is empty, and each room\'s newest value goes later', async (t) => {
  // Outside audit 108 (F1): datagram publications went out at once, around the pacer; the server
  // meters them with the commands, so it refused the excess (rate_limited) and closed the session
  // (rate_abuse).
  const { net, client } = setup({}, 'webtransport');
  t.after(() => client.close());
  // A server limit of 10 a second: the client paces at 9 a second, bursts of 5.
  const conn = await connected(net, client, { limits: { commandsPerSecond: 10 } });
  for (let n = 0; n < 20; n++) {
    await client.publish('game.a', `a${n}`, { unreliable: true });
    await client.publish('game.b', `b${n}`, { unreliable: true });
  }
  await new Promise((r) => setTimeout(r, 0));
  const burst = ['a0', 'b0', 'a1', 'b1', 'a2'].map((v) => publishDatagram(`game.${v[0]}`, v));
  const now = sentDatagrams(conn);
  assert.deepEqual(now.slice(0, 5), burst);
  assert.ok(now.length < 8, `${now.length} datagrams written at once`);
  // Each room's newest value goes once the pacer has a token (about 110 ms apart), and no older
  // one after it.
  const newest = [publishDatagram('game.a', 'a19'), publishDatagram('game.b', 'b19')];
  await waitUntil(() => newest.every((d) => sentDatagrams(conn).includes(d)));
  await new Promise((r) => setTimeout(r, 300));
  const all = sentDatagrams(conn);
  assert.deepEqual(all.slice(-2).sort(), [...newest].sort());
  assert.ok(all.length < 10, `${all.length} datagrams written`);
  assert.equal(client.datagramsDropped, 0);
});

test('unreliable publishes waiting for the pacer: one value per room, at most 64 rooms, the rest dropped and counted', async (t) => {
  const { net, client } = setup({}, 'webtransport');
  t.after(() => client.close());
  // 2 a second: the client paces at 1 a second, bursts of 1.
  const conn = await connected(net, client, { limits: { commandsPerSecond: 2 } });
  for (let n = 0; n < 70; n++) await client.publish(`game.r${n}`, 'old', { unreliable: true });
  // The first went; 64 rooms wait; 5 rooms found no place. A newer value for a waiting room takes
  // that room's place.
  await client.publish('game.r1', 'new', { unreliable: true });
  assert.equal(client.datagramsDropped, 5);
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(sentDatagrams(conn), [publishDatagram('game.r0', 'old')]);
  await waitUntil(() => sentDatagrams(conn).length === 2, 3000);
  assert.equal(sentDatagrams(conn)[1], publishDatagram('game.r1', 'new'));
});

test('one latest id given to two rooms in one session ends the session as a protocol error', async (t) => {
  // Outside client audit 14 (L2, on the Rust client): the second room's datagrams were
  // delivered as the first's.
  const { net, client } = setup({}, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const got = [];
  const a = client.subscribe('game.a', (m) => got.push(m.text()));
  await subscribeLatest(conn, a, 'game.a', 3n);
  const error = once(client, 'error', (e) => e.kind === 'protocol' && /id 3 given to game.a and game.b/.test(e.message));
  client.subscribe('game.b', () => {}).catch(() => undefined);
  await subscribeLatest(conn, null, 'game.b', 3n);
  await error;
  const again = await connected(net, client);
  const rooms = [(await again.expect('Subscribe')).command.room, (await again.expect('Subscribe')).command.room];
  assert.deepEqual(rooms.sort(), ['game.a', 'game.b']);
  assert.deepEqual(got, []);
});

for (const transport of ['webtransport', 'websocket']) {
describe(`over ${transport}`, () => {
  test('subscribe: publications from the matching stream reach the handler; stale streams do not', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const got = [];
    const subscribed = client.subscribe('chat.lobby', (m) => got.push(m));
    const cmd = await conn.expect('Subscribe');
    assert.deepEqual(cmd.command, { type: 'Subscribe', room: 'chat.lobby', resume: null });

    // A stale stream (another subscription's id) and the live one, before the reply.
    const stale = conn.openStream();
    stale.send(cmd.id + 1000, { type: 'SubscriptionStream', room: 'chat.lobby' });
    stale.send(0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('stale') });
    const live = conn.openStream();
    live.send(cmd.id, { type: 'SubscriptionStream', room: 'chat.lobby' });
    live.send(0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('{"user":"a","text":"hi"}') });
    conn.send(cmd.id, { type: 'Subscribed', room: 'chat.lobby', position: null, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    live.send(0, { type: 'Publication', room: 'chat.lobby', position: { epoch: 1n, offset: 9n }, payload: text('two') });
    // An unknown event type on the control stream is skipped (type 42, then a Pong-like tail).
    conn.sendRaw(Uint8Array.of(0, 0, 0, 3, 0, 42, 1));
    const pong = client.ping();
    const ping = await conn.expect('Ping');
    conn.send(ping.id, { type: 'Pong' });
    assert.ok((await pong) >= 0);

    assert.deepEqual(got.map((m) => m.text()), ['{"user":"a","text":"hi"}', 'two']);
    assert.deepEqual(got[0].json(), { user: 'a', text: 'hi' });
    assert.deepEqual(sub.position, { epoch: 1n, offset: 9n });
    assert.equal(got[1].room, 'chat.lobby');
  });

  test('subscribe refused: rejects with the server code', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const p = client.subscribe('secret.room', () => {});
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Error', code: 103, message: 'no subscribe permission for room secret.room' });
    await assert.rejects(p, (e) => e instanceof QuiverError && e.code === 103 && e.label === 'permission_denied');
    // The room is free again.
    const again = client.subscribe('secret.room', () => {});
    const cmd2 = await conn.expect('Subscribe');
    conn.send(cmd2.id, { type: 'Subscribed', room: 'secret.room', position: null, recovery: { type: 'NotRequested' } });
    await again;
  });

  test('async iterator subscription and unsubscribe', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const subscribed = client.subscribe('a.b');
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'a.b', position: null, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'a.b' });
    for (const s of ['1', '2', '3']) stream.send(0, { type: 'Publication', room: 'a.b', position: null, payload: text(s) });
    const seen = [];
    const done = (async () => {
      for await (const m of sub) {
        seen.push(m.text());
        if (seen.length === 3) break; // leaving the loop unsubscribes
      }
    })();
    const unsub = await conn.expect('Unsubscribe');
    assert.equal(unsub.command.room, 'a.b');
    conn.send(unsub.id, { type: 'Unsubscribed', room: 'a.b', code: 0, reason: '' });
    await done;
    assert.deepEqual(seen, ['1', '2', '3']);
    assert.equal(sub.active, false);
  });

  test('publish with ack resolves with the position; a refusal without ack is an error event', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const acked = client.publish('chat.lobby', 'hello', { ack: true });
    const cmd = await conn.expect('Publish');
    assert.deepEqual(cmd.command, { type: 'Publish', room: 'chat.lobby', payload: text('hello'), ack: true });
    conn.send(cmd.id, { type: 'Published', position: { epoch: 7n, offset: 300n } });
    assert.deepEqual(await acked, { epoch: 7n, offset: 300n });

    assert.equal(await client.publish('x', Uint8Array.of(1, 2)), null);
    const noack = await conn.expect('Publish');
    const error = once(client, 'error');
    conn.send(noack.id, { type: 'Error', code: 103, message: 'no publish permission' });
    const [e] = await error;
    assert.equal(e.code, 103);
  });

  test('a frame over Welcome.limits.max_frame is refused locally (payload_too_large), the session stays up', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client, { limits: { maxFrame: 8192, maxPayload: 8000 } });
    await assert.rejects(client.publish('r', new Uint8Array(9000), { ack: true }), (e) => e.kind === 'command' && e.label === 'payload_too_large' && /not sent/.test(e.message));
    // Under the frame limit it goes to the server, which judges the payload.
    const ok = client.publish('r', new Uint8Array(10), { ack: true });
    const cmd = await conn.expect('Publish');
    assert.equal(cmd.command.payload.length, 10);
    conn.send(cmd.id, { type: 'Published', position: null });
    await ok;
    assert.equal(client.state, 'connected');
  });

  // Bounded: sent, a Subscribe would wait for its reply for the session's life.
  test('commands over Welcome.limits.max_frame are refused locally, never sent: the session and its rooms stay up', { timeout: 5_000 }, async (t) => {
    // The server closes the whole session over one, for good (3001, no reconnect): a room name
    // taken from a user could close the app's client (outside audit 115, F1).
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client, { limits: { maxFrame: 8192, maxPayload: 8000 } });
    const got = [];
    const ok = client.subscribe('chat.ok', (m) => got.push(m.text()));
    const cmd = await conn.expect('Subscribe');
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'chat.ok' });
    conn.send(cmd.id, { type: 'Subscribed', room: 'chat.ok', position: null, recovery: { type: 'NotRequested' } });
    await ok;
    const huge = 'a'.repeat(70_000);
    const badRoom = (e) => e.kind === 'command' && e.label === 'invalid_room' && /room name has 70000 bytes/.test(e.message) && /not sent/.test(e.message);
    await assert.rejects(client.subscribe(huge, () => {}), badRoom);
    await assert.rejects(client.presence(huge), badRoom);
    await assert.rejects(client.presenceStats(huge), badRoom);
    await assert.rejects(client.history(huge), badRoom);
    await assert.rejects(client.publish(huge, 'x', { ack: true }), badRoom);
    const tooLarge = (e) => e.kind === 'command' && e.label === 'payload_too_large' && /not sent/.test(e.message);
    await assert.rejects(client.call('m'.repeat(9000), 'x'), tooLarge);
    // A payload within max_payload, with a long method and key: past max_payload + 192.
    await assert.rejects(client.call('m'.repeat(128), new Uint8Array(8000), { idempotencyKey: 'k'.repeat(128) }), tooLarge);
    assert.deepEqual(conn.received.map((f) => f.command.type), ['Hello', 'Subscribe']);
    stream.send(0, { type: 'Publication', room: 'chat.ok', position: null, payload: text('still here') });
    await waitUntil(() => got.length === 1);
    assert.equal(client.state, 'connected');
    assert.equal(net.attempts.length, 1);
  });

  test('a refresh token over max_frame is refused locally and reported, the session stays up', async (t) => {
    let issued = 0;
    const { net, client } = setup({ token: () => (++issued === 1 ? 'tok-1' : 't'.repeat(9000)) }, transport);
    t.after(() => client.close());
    const expiresAt = BigInt(Math.floor(Date.now() / 1000) + 2);
    const conn = await connected(net, client, { expiresAt, limits: { maxFrame: 8192, maxPayload: 8000 } });
    const [e] = await once(client, 'error', (e) => e.kind === 'token');
    assert.equal(e.label, 'payload_too_large');
    assert.match(e.message, /a Refresh of \d+ bytes exceeds the server's frame limit of 8192; not sent/);
    assert.equal(conn.received.filter((f) => f.command.type === 'Refresh').length, 0);
    assert.equal(client.state, 'connected');
  });

  test('server text reaches errors and events clipped: 256 characters, control characters escaped', async (t) => {
    // Up to a frame of it, newlines included, went into the app's errors, which apps log
    // (outside audit 115, F6).
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const long = `line one\nFAKE: a log line\u001b[31m${'x'.repeat(60_000)}`;
    const clipped = (s) => {
      assert.ok(s.length < 400, `${s.length} characters`);
      assert.doesNotMatch(s, /[\n\u001b]/);
      assert.match(s, /line one\\nFAKE: a log line\\u\{1b\}\[31mxxx/);
      assert.match(s, /x…/);
    };
    // A refused command.
    const presence = client.presence('r').then(() => null, (e) => e);
    const asked = await conn.expect('Presence');
    conn.send(asked.id, { type: 'Error', code: 101, message: long });
    clipped((await presence).message);
    // A refused publish without ack (unsolicited).
    await client.publish('r', 'x');
    const pub = await conn.expect('Publish');
    const refused = once(client, 'error', (e) => e.kind === 'command');
    conn.send(pub.id, { type: 'Error', code: 103, message: long });
    clipped((await refused)[0].message);
    // A subscription the server ended.
    const sub = client.subscribe('r', () => {});
    const cmd = await conn.expect('Subscribe');
    conn.openStream().send(cmd.id, { type: 'SubscriptionStream', room: 'r' });
    conn.send(cmd.id, { type: 'Subscribed', room: 'r', position: null, recovery: { type: 'NotRequested' } });
    await sub;
    const ended = once(client, 'error', (e) => e.kind === 'subscription');
    conn.send(0, { type: 'Unsubscribed', room: 'r', code: 116, reason: long });
    clipped((await ended)[0].message);
    // A goodbye: its event and the session's cause.
    const bye = once(client, 'goodbye');
    const cause = once(client, 'state', (s) => s === 'disconnected');
    conn.send(0, { type: 'Goodbye', code: 3005, reason: long, reconnect: true });
    clipped((await bye)[0].reason);
    clipped((await cause)[1].message);
  });

  test('a Welcome.limits.max_frame below the protocol\'s 8,192 is not believed for what the client sends', async (t) => {
    // Every command, Pings included, was refused locally and the client reconnected in a loop
    // (outside client audit 13, F5).
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client, { limits: { maxFrame: 1, maxPayload: 1 } });
    const ok = client.publish('r', new Uint8Array(200), { ack: true });
    const cmd = await conn.expect('Publish');
    assert.equal(cmd.command.payload.length, 200);
    conn.send(cmd.id, { type: 'Published', position: null });
    await ok;
    assert.equal(client.state, 'connected');
  });

  test('reconnect: fresh token, re-subscribe resuming from the last position, recovery surfaced, queued publishes flushed', async (t) => {
    const { net, client, tokens } = setup({}, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const got = [];
    const subscribed = client.subscribe('dash.cpu', (m) => got.push(m.text()));
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'dash.cpu', position: { epoch: 7n, offset: 10n }, recovery: { type: 'NotRequested' } });
    await subscribed;
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
    stream.send(0, { type: 'Publication', room: 'dash.cpu', position: { epoch: 7n, offset: 11n }, payload: text('a') });
    const inflight = client.publish('dash.cpu', 'lost?', { ack: true });
    await conn.expect('Publish');

    const disconnected = once(client, 'state', (s) => s === 'disconnected');
    conn.kill();
    await disconnected;
    // An ack that the lost connection swallowed is not resent (at most once).
    await assert.rejects(inflight, (e) => e.kind === 'closed');
    const queued = client.publish('dash.cpu', 'queued', { ack: true });

    conn = await net.nextConnection();
    assert.equal(conn.token, `tok-${tokens()}`);
    assert.ok(tokens() >= 2);
    await conn.welcome();
    const resub = await conn.expect('Subscribe');
    assert.deepEqual(resub.command.resume, { epoch: 7n, offset: 11n });
    const recovery = once(client, 'recovery');
    conn.send(resub.id, { type: 'Subscribed', room: 'dash.cpu', position: { epoch: 7n, offset: 12n }, recovery: { type: 'Recovered', replayed: 1 } });
    const [info] = await recovery;
    assert.deepEqual(info, { room: 'dash.cpu', recovery: { type: 'Recovered', replayed: 1 }, resumedFrom: { epoch: 7n, offset: 11n } });
    const pub = await conn.expect('Publish');
    assert.deepEqual(pub.command.payload, text('queued'));
    conn.send(pub.id, { type: 'Published', position: null });
    assert.equal(await queued, null);

    const s2 = conn.openStream();
    s2.send(resub.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
    s2.send(0, { type: 'Publication', room: 'dash.cpu', position: { epoch: 7n, offset: 12n }, payload: text('b') });
    const ping = client.ping();
    conn.send((await conn.expect('Ping')).id, { type: 'Pong' });
    await ping;
    assert.deepEqual(got, ['a', 'b']);
  });

  // PROTOCOL.md section 7, code 3000: a command unanswered at a drain's goodbye was not carried out.
  test('acknowledged publishes a drain left unanswered are sent again, in order, on the next session; after another goodbye they reject', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const answered = client.publish('r', 'one', { ack: true });
    conn.send((await conn.expect('Publish')).id, { type: 'Published', position: null });
    assert.equal(await answered, null);
    const two = client.publish('r', 'two', { ack: true });
    const three = client.publish('r', 'three', { ack: true });
    await conn.expect('Publish');
    await conn.expect('Publish');
    conn.send(0, { type: 'Goodbye', code: 3000, reason: 'server shutting down', reconnect: true });

    conn = await connected(net, client);
    const first = await conn.expect('Publish');
    const second = await conn.expect('Publish');
    assert.deepEqual([first.command.payload, second.command.payload], [text('two'), text('three')]);
    conn.send(first.id, { type: 'Published', position: { epoch: 1n, offset: 5n } });
    conn.send(second.id, { type: 'Published', position: { epoch: 1n, offset: 6n } });
    assert.deepEqual(await two, { epoch: 1n, offset: 5n });
    assert.deepEqual(await three, { epoch: 1n, offset: 6n });

    // Any other goodbye may have come after the publish was carried out: it rejects.
    const lost = client.publish('r', 'four', { ack: true });
    await conn.expect('Publish');
    conn.send(0, { type: 'Goodbye', code: 3002, reason: 'token expired', reconnect: true });
    await assert.rejects(lost, (e) => e.kind === 'closed');
    conn = await connected(net, client);
    const ping = client.ping();
    const next = await conn.expect('Ping');
    assert.equal(conn.received.filter((f) => f.command.type === 'Publish').length, 0);
    conn.send(next.id, { type: 'Pong' });
    await ping;
  });

  test('failed handshake: error event, new token on every retry', async (t) => {
    const { net, client, tokens } = setup({}, transport);
    t.after(() => client.close());
    // The "server" accepts only the third token.
    refuse(net, (url, token) => token !== 'tok-3');
    const errors = [];
    client.on('error', (e) => errors.push(e));
    await net.nextConnection(); // tok-1, refused
    await net.nextConnection(); // tok-2, refused
    await connected(net, client);
    assert.equal(tokens(), 3);
    assert.equal(errors.length, 2);
    const reason = transport === 'webtransport' ? /Opening handshake failed/ : /closed before the upgrade completed \(code 1006\)/;
    assert.ok(errors.every((e) => e.kind === 'handshake' && reason.test(e.message)), errors.map((e) => e.message).join('\n'));
  });

  test('publishes while disconnected are bounded', async (t) => {
    const { net, client } = setup({ maxQueuedPublishes: 2 }, transport);
    t.after(() => client.close());
    refuse(net, () => true);
    const a = client.publish('r', 'a');
    const b = client.publish('r', 'b');
    await assert.rejects(client.publish('r', 'c'), (e) => e.kind === 'buffer_full');
    await client.close();
    await assert.rejects(a, (e) => e.kind === 'closed');
    await assert.rejects(b, (e) => e.kind === 'closed');
  });

  test('an acknowledged publish not sent within requestTimeoutMs while disconnected is withdrawn, never sent later', async (t) => {
    // Outside audit 46, 1: it stayed pending through the outage and was sent on the next
    // session, so an app that gave up on it and published again published twice.
    const { net, client } = setup({ requestTimeoutMs: 200 }, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const disconnected = once(client, 'state', (s) => s === 'disconnected');
    conn.kill();
    await disconnected;
    const gaveUp = client.publish('r', 'given-up', { ack: true });
    const kept = client.publish('r', 'kept');
    await assert.rejects(gaveUp, (e) => e.kind === 'timeout' && /withdrawn, never sent/.test(e.message));
    conn = await net.nextConnection();
    await conn.welcome();
    const cmd = await conn.expect('Publish');
    assert.equal(new TextDecoder().decode(cmd.command.payload), 'kept');
    await kept;
  });

  test('connected, the commands waiting for the pacer are bounded by maxQueuedPublishes', async (t) => {
    // Outside audit 46, 2: 20,000 publishes past the server's rate were all taken (160 MB).
    const { net, client } = setup({ maxQueuedPublishes: 3 }, transport);
    t.after(() => client.close());
    const conn = await connected(net, client, { limits: { commandsPerSecond: 1 } });
    const results = [];
    for (let i = 0; i < 8; i++) results.push(client.publish('r', `p${i}`).then(() => 'ok', (e) => e.kind));
    const kinds = await Promise.race([
      Promise.all(results.slice(4)),
      new Promise((r) => setTimeout(() => r('pending'), 1_000)),
    ]);
    assert.deepEqual(kinds, ['buffer_full', 'buffer_full', 'buffer_full', 'buffer_full']);
    void conn;
  });

  test('maxQueuedPublishes: 0 sends what can go at once and refuses only what would wait', async (t) => {
    // Outside audit 121, F4: 0 refused every publish and call, even on an idle connection.
    const { net, client } = setup({ maxQueuedPublishes: 0 }, transport);
    t.after(() => client.close());
    // Paced at 19 a second after a burst of 10.
    const conn = await connected(net, client, { limits: { commandsPerSecond: 20 } });
    conn.autoAnswer = true;
    assert.equal(await client.publish('r', 'acked', { ack: true }), null);
    const results = [];
    for (let i = 0; i < 12; i++) results.push(client.publish('r', `p${i}`).then(() => 'ok', (e) => e.kind));
    const calling = client.call('m', 'x').then(() => 'ok', (e) => e.kind);
    // The rest of the burst (9) is sent; what would wait for the pacer is refused, never sent.
    assert.deepEqual(await Promise.all(results), [...Array(9).fill('ok'), 'buffer_full', 'buffer_full', 'buffer_full']);
    assert.equal(await calling, 'buffer_full');
    assert.equal(conn.received.filter((f) => f.command.type === 'Publish').length, 10);
    // Once the pacer has a token again, a call goes at once too.
    await new Promise((r) => setTimeout(r, 150));
    const answered = client.call('m', 'y');
    conn.send((await conn.expect('Call')).id, { type: 'Reply', payload: text('done') });
    assert.equal(new TextDecoder().decode(await answered), 'done');
    // Disconnected, nothing may wait: refused at once.
    const disconnected = once(client, 'state', (s) => s === 'disconnected');
    conn.kill();
    await disconnected;
    await assert.rejects(client.publish('r', 'held'), (e) => e.kind === 'buffer_full');
  });

  test('unreliable publishes while disconnected: a room keeps only its newest value, and a publish that matters still fits', async (t) => {
    // Outside audit 121, F3: every stale value was queued as an ordinary publish, and they
    // filled the outbox: an acknowledged publish behind them was refused buffer_full.
    const { net, client } = setup({ maxQueuedPublishes: 100 }, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const disconnected = once(client, 'state', (s) => s === 'disconnected');
    conn.kill();
    await disconnected;
    const replaced = [];
    for (let i = 1; i <= 150; i++) replaced.push(client.publish('game.a', `a${i}`, { unreliable: true }));
    const b = client.publish('game.b', 'b1', { unreliable: true });
    const acked = client.publish('chat.x', 'kept', { ack: true });
    const newest = client.publish('game.a', 'a151', { unreliable: true });
    // Each value replaced resolves as one lost on the way would.
    assert.deepEqual(await Promise.all(replaced), replaced.map(() => null));
    conn = await net.nextConnection();
    conn.autoAnswer = true;
    await conn.welcome();
    assert.deepEqual(await Promise.all([b, acked, newest]), [null, null, null]);
    await waitUntil(() => conn.received.filter((f) => f.command.type === 'Publish').length >= 3);
    const sent = conn.received.filter((f) => f.command.type === 'Publish').map((f) => `${f.command.room} ${new TextDecoder().decode(f.command.payload)}`);
    // In their turn: the newest value of game.a behind what was published before it.
    assert.deepEqual(sent, ['game.b b1', 'chat.x kept', 'game.a a151']);
  });

  test('an acknowledged publish still waiting for the pacer requestTimeoutMs after it was made is withdrawn, never written', async (t) => {
    // Outside audit 47, N1 (as in the Rust client): a publish waiting for the pacer on a live
    // connection had no deadline at all; an app that gave up on it by its own timer and
    // published again published twice.
    const { net, client } = setup({ requestTimeoutMs: 300 }, transport);
    t.after(() => client.close());
    // Two commands a second (burst 1): each publish waits about half a second for the one before.
    const conn = await connected(net, client, { limits: { commandsPerSecond: 2 } });
    const sent = [];
    const first = client.publish('r', 'first');
    const second = client.publish('r', 'second');
    const gaveUp = client.publish('r', 'given-up', { ack: true });
    const after = client.publish('r', 'after');
    await assert.rejects(gaveUp, (e) => e.kind === 'timeout' && /withdrawn, never sent/.test(e.message));
    while (sent.length < 3) {
      const frame = await conn.commands.next('a Publish', 3_000);
      if (frame.command.type === 'Publish') sent.push(new TextDecoder().decode(frame.command.payload));
    }
    assert.deepEqual(sent, ['first', 'second', 'after']);
    await Promise.all([first, second, after]);
  });

  test('the very token refused as expired given again closes the client (3002)', async (t) => {
    // Outside audit 64 (L16): the Rust client closed, this one reconnected for ever.
    const { net, client } = setup({ token: () => 'always-the-same' }, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    conn.send(0, { type: 'Goodbye', code: 3002, reason: 'token expired', reconnect: true });
    conn = await connected(net, client);
    const closed = once(client, 'state', (s) => s === 'closed');
    conn.send(0, { type: 'Goodbye', code: 3002, reason: 'token expired', reconnect: true });
    const [, cause] = await closed;
    assert.equal(cause.code, 3002);
  });

  test('goodbye: reconnect flag honoured, code and reason surfaced', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const bye = once(client, 'goodbye');
    conn.send(0, { type: 'Goodbye', code: 3002, reason: 'token expired', reconnect: true });
    assert.deepEqual((await bye)[0], { code: 3002, reason: 'token expired', reconnect: true });
    conn = await connected(net, client);

    const closed = once(client, 'state', (s) => s === 'closed');
    conn.send(0, { type: 'Goodbye', code: 3004, reason: 'unsupported version', reconnect: false });
    const [, cause] = await closed;
    assert.equal(cause.code, 3004);
    assert.equal(cause.kind, 'goodbye');
    assert.match(cause.message, /unsupported_version/);
  });

  test('token refresh is sent ahead of expiry with a fresh token', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const expiresAt = BigInt(Math.floor(Date.now() / 1000) + 2);
    const conn = await connected(net, client, { expiresAt });
    const refresh = await conn.expect('Refresh');
    assert.equal(refresh.command.token, 'tok-2');
    conn.send(refresh.id, { type: 'Refreshed', expiresAt: expiresAt + 3600n });
  });

  test('a Refreshed that does not move the expiry is retried a second later, not in a loop', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const expiresAt = BigInt(Math.floor(Date.now() / 1000) + 2);
    const conn = await connected(net, client, { expiresAt });
    const first = await conn.expect('Refresh');
    const answered = Date.now();
    conn.send(first.id, { type: 'Refreshed', expiresAt });
    const second = await conn.expect('Refresh');
    assert.ok(Date.now() - answered >= 900, `retried after ${Date.now() - answered} ms`);
    conn.send(second.id, { type: 'Refreshed', expiresAt: expiresAt + 3600n });
  });

  test('a Refreshed whose expiry is still past backs off, doubling, not in a loop', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    // A server that moves the expiry by a second each time, still in the past (outside client
    // audit 13: 835 refreshes, and token callback calls, a second).
    let expiresAt = BigInt(Math.floor(Date.now() / 1000) - 100);
    const conn = await connected(net, client, { expiresAt });
    const gaps = [];
    let last = null;
    for (let i = 0; i < 3; i++) {
      const refresh = await conn.expect('Refresh');
      if (last !== null) gaps.push(Date.now() - last);
      expiresAt += 1n;
      last = Date.now();
      conn.send(refresh.id, { type: 'Refreshed', expiresAt });
    }
    assert.ok(gaps[0] >= 900, `first retry after ${gaps[0]} ms`);
    assert.ok(gaps[1] >= 1_800, `second retry after ${gaps[1]} ms (doubling)`);
  });

  /** Catches setTimeout's long waits (a token's refresh) so a test can fire them by hand. */
  function catchLongTimers(t) {
    const realSetTimeout = globalThis.setTimeout;
    const long = [];
    globalThis.setTimeout = (fn, ms, ...rest) => {
      if (!(ms >= 100_000)) return realSetTimeout(fn, ms, ...rest);
      long.push({ fn, ms });
      const handle = realSetTimeout(() => {}, 2 ** 31 - 1);
      handle.unref?.();
      return handle;
    };
    t.after(() => {
      globalThis.setTimeout = realSetTimeout;
    });
    return long;
  }

  test('a token is refreshed ahead by a minute or a tenth of its lifetime, whichever is larger', async (t) => {
    // PROTOCOL.md section 6; 30 s ahead left 20 s for clock skew once the token callback took
    // its 10 s (outside audit 115, F10).
    const long = catchLongTimers(t);
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const now = Math.floor(Date.now() / 1000);
    const conn = await connected(net, client, { expiresAt: BigInt(now + 3600) });
    await waitUntil(() => long.length === 1);
    // An hour's token: 6 minutes ahead.
    assert.ok(long[0].ms <= 3_240_000 + 1_000 && long[0].ms >= 3_240_000 - 2_000, `due in ${long[0].ms} ms`);
    long[0].fn();
    const refresh = await conn.expect('Refresh');
    conn.send(refresh.id, { type: 'Refreshed', expiresAt: BigInt(now + 7400) });
    await waitUntil(() => long.length === 2);
    // 7,400 s: 740 s ahead.
    assert.ok(long[1].ms <= 6_660_000 + 1_000 && long[1].ms >= 6_660_000 - 2_000, `due in ${long[1].ms} ms`);
  });

  test('a short token is refreshed at least a minute ahead', async (t) => {
    const long = catchLongTimers(t);
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    await connected(net, client, { expiresAt: BigInt(Math.floor(Date.now() / 1000) + 200) });
    await waitUntil(() => long.length === 1);
    assert.ok(long[0].ms <= 140_000 + 1_000, `due in ${long[0].ms} ms`);
  });

  test('a Refreshed that shortens the expiry is scheduled for the new expiry, not retried', async (t) => {
    // A Refresh may shorten the session (PROTOCOL.md section 6); taken as "did not move", a
    // token callback that kept handing out the shorter token was asked again and again
    // (outside audit 115, F4).
    const long = catchLongTimers(t);
    const { net, client, tokens } = setup({}, transport);
    t.after(() => client.close());
    const now = Math.floor(Date.now() / 1000);
    const conn = await connected(net, client, { expiresAt: BigInt(now + 7200) });
    await waitUntil(() => long.length === 1);
    long[0].fn();
    const first = await conn.expect('Refresh');
    conn.send(first.id, { type: 'Refreshed', expiresAt: BigInt(now + 3600) });
    await waitUntil(() => long.length === 2);
    assert.ok(long[1].ms > 3_000_000, `due in ${long[1].ms} ms`);
    await assert.rejects(conn.expect('Refresh', 1_500), /timed out/);
    assert.equal(tokens(), 2);
  });

  test('a token valid longer than a timer can wait is not refreshed early', async (t) => {
    // setTimeout keeps at most 2^31-1 ms: the refresh of a 60-day token waits in steps. Its
    // first step refreshed, and a server keeping the expiry had it retried every 30 s (outside
    // audit 73). The long timers are caught here and fired by hand.
    const MAX_TIMER = 2 ** 31 - 1;
    const realSetTimeout = globalThis.setTimeout;
    const long = [];
    globalThis.setTimeout = (fn, ms, ...rest) => {
      if (ms < MAX_TIMER) return realSetTimeout(fn, ms, ...rest);
      long.push(fn);
      const handle = realSetTimeout(() => {}, MAX_TIMER);
      handle.unref?.();
      return handle;
    };
    t.after(() => {
      globalThis.setTimeout = realSetTimeout;
    });
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const expiresAt = BigInt(Math.floor(Date.now() / 1000) + 60 * 86_400);
    const conn = await connected(net, client, { expiresAt });
    await waitUntil(() => long.length === 1);
    long[0]();
    assert.equal(long.length, 2, 'the next step is waited for');
    await assert.rejects(conn.expect('Refresh', 300), /timed out/);
  });

  test('a malformed frame from the server ends the session and reconnects', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const error = once(client, 'error', (e) => e.kind === 'protocol');
    conn.sendRaw(Uint8Array.of(0xff, 0xff, 0xff, 0xff));
    await error;
    await connected(net, client);
  });

  // A slow consumer, and a cluster replay the server could not finish (PROTOCOL.md section 5).
  for (const [code, label] of [[112, 'slow_consumer'], [117, 'unrecoverable_position'], [111, 'unavailable']]) {
    test(`a subscription the server ended with ${label} is re-subscribed, resuming`, async (t) => {
      const { net, client } = setup({}, transport);
      t.after(() => client.close());
      const conn = await connected(net, client);
      const got = [];
      const subscribed = client.subscribe('dash.fast', (m) => got.push(m.text()));
      const cmd = await conn.expect('Subscribe');
      conn.send(cmd.id, { type: 'Subscribed', room: 'dash.fast', position: null, recovery: { type: 'NotRequested' } });
      await subscribed;
      const stream = conn.openStream();
      stream.send(cmd.id, { type: 'SubscriptionStream', room: 'dash.fast' });
      stream.send(0, { type: 'Publication', room: 'dash.fast', position: { epoch: 2n, offset: 5n }, payload: text('x') });
      await waitUntil(() => got.length === 1);
      const error = once(client, 'error');
      conn.send(0, { type: 'Unsubscribed', room: 'dash.fast', code, reason: 'ended' });
      const [e] = await error;
      assert.equal(e.kind, 'subscription');
      assert.equal(e.label, label);
      assert.equal(e.room, 'dash.fast');
      const again = await conn.expect('Subscribe');
      assert.deepEqual(again.command.resume, { epoch: 2n, offset: 5n });
    });
  }

  // Outside audit G6: a Subscribed, publications and an unsolicited Unsubscribed that arrive
  // together. The Subscribed is handled after the read (its Subscribe's promise), the
  // Unsubscribed in it: everything before the end belongs to the subscription (PROTOCOL.md 9.2).
  test('Subscribed, two publications and Unsubscribed 116 together: both delivered in order, subscribe() resolves, then the end', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const log = [];
    client.on('subscribed', () => log.push('subscribed'));
    client.on('error', (e) => log.push(`error:${e.code}`));
    const subscribed = client.subscribe('hist.u', (m) => log.push(m.text()));
    const cmd = await conn.expect('Subscribe');
    await subscribedThenEnded(conn, cmd, { head: 10n, publications: [[11n, 'a'], [12n, 'b']], code: 116 });
    const sub = await subscribed;
    await waitUntil(() => log.includes('error:116'));
    assert.deepEqual(log, ['subscribed', 'a', 'b', 'error:116']);
    assert.deepEqual(sub.position, { epoch: 5n, offset: 12n });
    assert.equal(sub.active, false);
    // Ended for good: the room is free, and no Subscribe is sent by itself.
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(conn.received.filter((f) => f.command.type === 'Subscribe').length, 1);
  });

  // The app unsubscribes and subscribes again while the server is ending the old subscription:
  // the old end (sent before the new Subscribe's reply, PROTOCOL.md section 9.2) is not the new one's.
  test('an end of the old subscription that crosses an unsubscribe and a new subscribe leaves the new one alone', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const errors = [];
    client.on('error', (e) => errors.push(e));
    const first = client.subscribe('dash.x', () => {});
    const cmd1 = await conn.expect('Subscribe');
    conn.send(cmd1.id, { type: 'Subscribed', room: 'dash.x', position: null, recovery: { type: 'NotRequested' } });
    await first;
    const unsubscribed = client.unsubscribe('dash.x');
    const cmd2 = await conn.expect('Unsubscribe');
    const got = [];
    const second = client.subscribe('dash.x', (m) => got.push(m.text()));
    const cmd3 = await conn.expect('Subscribe');
    // In the server's order: its end of the old subscription, then the replies.
    sendTogether(conn, [
      [0, { type: 'Unsubscribed', room: 'dash.x', code: 112, reason: 'slow consumer' }],
      [cmd2.id, { type: 'Error', code: 105, message: 'not subscribed to dash.x' }],
      // Over WebTransport the header comes on the room's own stream (below).
      ...(transport === 'websocket' ? [[cmd3.id, { type: 'SubscriptionStream', room: 'dash.x' }]] : []),
      [cmd3.id, { type: 'Subscribed', room: 'dash.x', position: null, recovery: { type: 'NotRequested' } }],
    ]);
    await unsubscribed;
    const sub = await second;
    if (transport === 'websocket') {
      conn.send(0, { type: 'Publication', room: 'dash.x', position: null, payload: text('new') });
    } else {
      const stream = conn.openStream();
      stream.send(cmd3.id, { type: 'SubscriptionStream', room: 'dash.x' });
      stream.send(0, { type: 'Publication', room: 'dash.x', position: null, payload: text('new') });
    }
    await waitUntil(() => got.length === 1);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(sub.active, true);
    assert.deepEqual(errors.map((e) => e.message), []);
    assert.equal(conn.received.filter((f) => f.command.type === 'Subscribe').length, 2);
  });

  // Nothing follows a Goodbye (PROTOCOL.md section 7): an end read after it is not applied, and
  // the reconnect subscribes again.
  test('an Unsubscribed read after a Goodbye does not end the subscription; the next session re-subscribes', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const subscribed = client.subscribe('dash.g', () => {});
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'dash.g', position: null, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    const errors = [];
    client.on('error', (e) => errors.push(e));
    sendTogether(conn, [
      [0, { type: 'Goodbye', code: 3000, reason: 'server shutting down', reconnect: true }],
      [0, { type: 'Unsubscribed', room: 'dash.g', code: 116, reason: 'by the backend' }],
    ]);
    const next = await connected(net, client);
    const again = await next.expect('Subscribe');
    assert.equal(again.command.room, 'dash.g');
    assert.equal(sub.active, true);
    assert.deepEqual(errors.filter((e) => e.code === 116).map((e) => e.message), []);
  });

  test('a resumed subscription ended with 117 right behind its replay: the replay is delivered and the next Subscribe resumes after it', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const log = [];
    client.on('recovery', ({ recovery }) => log.push(`recovery:${recovery.type}`));
    client.on('error', (e) => log.push(`error:${e.code}`));
    const subscribed = client.subscribe('hist.r', (m) => log.push(m.text()), { resume: { epoch: 5n, offset: 10n } });
    const cmd = await conn.expect('Subscribe');
    assert.deepEqual(cmd.command.resume, { epoch: 5n, offset: 10n });
    // Three replayed announced; two sent before the replay was cut.
    await subscribedThenEnded(conn, cmd, {
      head: 13n,
      recovery: { type: 'Recovered', replayed: 3 },
      publications: [[11n, 'r11'], [12n, 'r12']],
      code: 117,
    });
    const sub = await subscribed;
    const again = await conn.expect('Subscribe');
    assert.deepEqual(log, ['recovery:Recovered', 'r11', 'r12', 'error:117']);
    assert.deepEqual(again.command.resume, { epoch: 5n, offset: 12n });
    assert.equal(sub.active, true);
    conn.send(again.id, { type: 'Subscribed', room: 'hist.r', position: { epoch: 5n, offset: 13n }, recovery: { type: 'Recovered', replayed: 1 } });
    await waitUntil(() => log.at(-1) === 'recovery:Recovered');
  });

  test('a server that ends every subscription (112) is re-subscribed with a growing backoff, reset once one lasted', { timeout: 15_000 }, async (t) => {
    const initialDelayMs = 100;
    const { net, client } = setup({ reconnect: { initialDelayMs, maxDelayMs: 10_000 } }, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    client.on('error', () => {});
    client.subscribe('dash.s', () => {}).catch(() => undefined);
    const start = Date.now();
    const times = [];
    let cmd;
    for (;;) {
      cmd = await conn.expect('Subscribe', 5_000);
      times.push(Date.now() - start);
      if (times.at(-1) >= 2_500) break;
      await subscribedThenEnded(conn, cmd, { head: null, publications: [], code: 112 });
    }
    const inWindow = times.length - 1;
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    // Delays in [c/2, c] with c = 100, 200, 400, 800, 1600 ms: 4 to 6 Subscribes in 2.5 s (a
    // fixed delay of 100 ms would make it about 25).
    assert.ok(inWindow >= 4 && inWindow <= 6, `${inWindow} Subscribes in 2.5 s, at ${times.join(', ')} ms`);
    assert.ok(gaps[3] >= 350, `the fourth re-subscribe came ${gaps[3]} ms after the third (${gaps.join(', ')})`);
    // A subscription that lasted 5 s (STABLE_MS) starts the backoff again.
    conn.send(cmd.id, { type: 'Subscribed', room: 'dash.s', position: null, recovery: { type: 'NotRequested' } });
    await new Promise((r) => setTimeout(r, 5_200));
    const endedAt = Date.now();
    conn.send(0, { type: 'Unsubscribed', room: 'dash.s', code: 112, reason: 'slow' });
    await conn.expect('Subscribe', 3_000);
    assert.ok(Date.now() - endedAt < 300, `re-subscribed ${Date.now() - endedAt} ms after a subscription that lasted 5 s`);
  });

  test('a throwing message handler is reported and does not stop deliveries', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const got = [];
    const subscribed = client.subscribe('r', (m) => {
      got.push(m.text());
      if (got.length === 1) throw new Error('boom');
    });
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'r', position: null, recovery: { type: 'NotRequested' } });
    await subscribed;
    const error = once(client, 'error');
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'r' });
    stream.send(0, { type: 'Publication', room: 'r', position: null, payload: text('1') });
    stream.send(0, { type: 'Publication', room: 'r', position: null, payload: text('2') });
    const [e] = await error;
    assert.equal(e.kind, 'handler');
    await waitUntil(() => got.length === 2);
    assert.deepEqual(got, ['1', '2']);
  });

  test('presence: the Presence command resolves with the members; a refusal rejects without an error event', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    await assert.rejects(client.presence('chat.lobby'), (e) => e.kind === 'closed');
    const conn = await connected(net, client);
    const members = [
      { user: 'alice', session: 's1' },
      { user: 'alice', session: 's2' },
    ];
    const asked = client.presence('chat.lobby');
    const cmd = await conn.expect('Presence');
    assert.deepEqual(cmd.command, { type: 'Presence', room: 'chat.lobby' });
    conn.send(cmd.id, { type: 'Presence', room: 'chat.lobby', members });
    assert.deepEqual(await asked, members);

    const errors = [];
    client.on('error', (e) => errors.push(e));
    const refused = client.presence('dash.cpu');
    const cmd2 = await conn.expect('Presence');
    conn.send(cmd2.id, { type: 'Error', code: 101, message: 'no presence in namespace dash' });
    await assert.rejects(refused, (e) => e instanceof QuiverError && e.kind === 'command' && e.label === 'bad_request');
    assert.deepEqual(errors, []);
  });

  test('presenceStats: the PresenceStats command resolves with the counts; a refusal rejects', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    await assert.rejects(client.presenceStats('chat.lobby'), (e) => e.kind === 'closed');
    const conn = await connected(net, client);
    const asked = client.presenceStats('chat.lobby');
    const cmd = await conn.expect('PresenceStats');
    assert.deepEqual(cmd.command, { type: 'PresenceStats', room: 'chat.lobby' });
    conn.send(cmd.id, { type: 'PresenceStats', room: 'chat.lobby', sessions: 300, users: 2 });
    assert.deepEqual(await asked, { sessions: 300, users: 2 });
    const refused = client.presenceStats('dash.cpu');
    const cmd2 = await conn.expect('PresenceStats');
    conn.send(cmd2.id, { type: 'Error', code: 103, message: 'no subscribe permission for room dash.cpu' });
    await assert.rejects(refused, (e) => e instanceof QuiverError && e.label === 'permission_denied');
  });

  test('presence changes on the subscription stream reach onPresence; stale streams do not; subscribed fires on every (re)subscribe', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const changes = [];
    const confirmed = [];
    client.on('subscribed', (sub) => confirmed.push(sub.room));
    const got = [];
    const subscribed = client.subscribe('chat.lobby', (m) => got.push(m.text()), { onPresence: (c) => changes.push(c) });
    const cmd = await conn.expect('Subscribe');
    const stale = conn.openStream();
    stale.send(cmd.id + 1000, { type: 'SubscriptionStream', room: 'chat.lobby' });
    stale.send(0, { type: 'Joined', room: 'chat.lobby', member: { user: 'ghost', session: 's0' } });
    conn.send(cmd.id, { type: 'Subscribed', room: 'chat.lobby', position: null, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    assert.deepEqual(confirmed, ['chat.lobby']);
    const live = conn.openStream();
    live.send(cmd.id, { type: 'SubscriptionStream', room: 'chat.lobby' });
    live.send(0, { type: 'Joined', room: 'chat.lobby', member: { user: 'bob', session: 's2' } });
    live.send(0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('hi') });
    live.send(0, { type: 'Left', room: 'chat.lobby', member: { user: 'bob', session: 's2' } });
    await waitUntil(() => changes.length === 2);
    assert.deepEqual(changes, [
      { type: 'Joined', room: 'chat.lobby', member: { user: 'bob', session: 's2' } },
      { type: 'Left', room: 'chat.lobby', member: { user: 'bob', session: 's2' } },
    ]);
    assert.deepEqual(got, ['hi']);
    // Presence changes carry no position: the resume point stays where publications left it.
    assert.equal(sub.position, null);

    // After a reconnect the app learns from `subscribed` when to ask for a fresh list.
    conn.kill();
    conn = await connected(net, client);
    const resub = await conn.expect('Subscribe');
    const again = once(client, 'subscribed');
    conn.send(resub.id, { type: 'Subscribed', room: 'chat.lobby', position: null, recovery: { type: 'NotRequested' } });
    assert.equal((await again)[0], sub);
    const s2 = conn.openStream();
    s2.send(resub.id, { type: 'SubscriptionStream', room: 'chat.lobby' });
    s2.send(0, { type: 'Joined', room: 'chat.lobby', member: { user: 'carol', session: 's3' } });
    await waitUntil(() => changes.length === 3);
    assert.equal(changes[2].member.user, 'carol');
  });

  test('iterator subscriptions get presence changes too; a throwing presence handler is reported', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const changes = [];
    const subscribed = client.subscribe('chat.lobby', undefined, {
      onPresence: (c) => {
        changes.push(c.type);
        if (changes.length === 1) throw new Error('boom');
      },
    });
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'chat.lobby', position: null, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    const error = once(client, 'error');
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'chat.lobby' });
    stream.send(0, { type: 'Joined', room: 'chat.lobby', member: { user: 'a', session: '1' } });
    stream.send(0, { type: 'Left', room: 'chat.lobby', member: { user: 'a', session: '1' } });
    stream.send(0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('m') });
    const [e] = await error;
    assert.equal(e.kind, 'handler');
    assert.equal(e.room, 'chat.lobby');
    const { value } = await sub[Symbol.asyncIterator]().next();
    assert.equal(value.text(), 'm');
    assert.deepEqual(changes, ['Joined', 'Left']);
  });

  // Outside audit F6: a server whose positions go backwards, or whose replay contradicts its own
  // `Recovered`, is not believed.
  test('a replay shorter than Recovered announced is reported as a failed recovery', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const log = [];
    client.on('recovery', ({ recovery }) => log.push(`recovery:${recovery.type}`));
    const subscribed = client.subscribe('hist.a', (m) => log.push(m.text()));
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'hist.a', position: { epoch: 1n, offset: 10n }, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'hist.a' });
    stream.send(0, { type: 'Publication', room: 'hist.a', position: { epoch: 1n, offset: 11n }, payload: text('a') });
    await waitUntil(() => log.length === 1);
    conn.kill();
    conn = await connected(net, client);
    const resub = await conn.expect('Subscribe');
    assert.deepEqual(resub.command.resume, { epoch: 1n, offset: 11n });
    // Three replayed publications announced, one sent, then a live one (after position 20).
    conn.send(resub.id, { type: 'Subscribed', room: 'hist.a', position: { epoch: 1n, offset: 20n }, recovery: { type: 'Recovered', replayed: 3 } });
    const s2 = conn.openStream();
    s2.send(resub.id, { type: 'SubscriptionStream', room: 'hist.a' });
    s2.send(0, { type: 'Publication', room: 'hist.a', position: { epoch: 1n, offset: 12n }, payload: text('replayed') });
    s2.send(0, { type: 'Publication', room: 'hist.a', position: { epoch: 1n, offset: 21n }, payload: text('live') });
    await waitUntil(() => log.includes('live'));
    assert.deepEqual(log, ['a', 'recovery:Recovered', 'replayed', 'recovery:Failed', 'live']);
    assert.deepEqual(sub.recovery, { type: 'Failed' });
  });

  test('publications whose positions do not move forward are dropped, and not resumed from', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    let conn = await connected(net, client);
    const got = [];
    const subscribed = client.subscribe('hist.a', (m) => got.push(m.text()));
    const cmd = await conn.expect('Subscribe');
    conn.send(cmd.id, { type: 'Subscribed', room: 'hist.a', position: { epoch: 1n, offset: 10n }, recovery: { type: 'NotRequested' } });
    const sub = await subscribed;
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'hist.a' });
    const sent = [
      [{ epoch: 1n, offset: 11n }, 'a'],
      [{ epoch: 1n, offset: 13n }, 'b'],
      [{ epoch: 1n, offset: 12n }, 'backwards'],
      [{ epoch: 1n, offset: 13n }, 'repeated'],
      [{ epoch: 1n, offset: 14n }, 'c'],
      [{ epoch: 2n, offset: 99n }, 'other epoch'],
      [{ epoch: 1n, offset: 9n }, 'before Subscribed'],
      [null, 'end'],
    ];
    for (const [position, payload] of sent) stream.send(0, { type: 'Publication', room: 'hist.a', position, payload: text(payload) });
    await waitUntil(() => got.includes('end'));
    const delivered = [...got];
    conn.kill();
    conn = await connected(net, client);
    const resub = await conn.expect('Subscribe');
    assert.deepEqual([delivered, resub.command.resume], [['a', 'b', 'c', 'end'], { epoch: 1n, offset: 14n }]);
    assert.deepEqual(sub.position, { epoch: 1n, offset: 14n });
  });

  test('publications that come before Subscribed are held, then judged against it', async (t) => {
    const { net, client } = setup({}, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const log = [];
    client.on('recovery', ({ recovery }) => log.push(`recovery:${recovery.type}`));
    const subscribed = client.subscribe('hist.b', (m) => log.push(m.text()), { resume: { epoch: 1n, offset: 50n } });
    const cmd = await conn.expect('Subscribe');
    // The stream overtakes the reply: a failed resume continuing in a new epoch (below the
    // resume point's offset, which is not a step back), with one publication before the
    // position the reply will announce.
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'hist.b' });
    for (const [offset, payload] of [[4n, 'new'], [2n, 'before Subscribed'], [5n, 'newer']]) {
      stream.send(0, { type: 'Publication', room: 'hist.b', position: { epoch: 2n, offset }, payload: text(payload) });
    }
    conn.send(cmd.id, { type: 'Subscribed', room: 'hist.b', position: { epoch: 2n, offset: 3n }, recovery: { type: 'Failed' } });
    const sub = await subscribed;
    await waitUntil(() => log.includes('newer'));
    assert.deepEqual(log, ['recovery:Failed', 'new', 'newer']);
    assert.deepEqual(sub.position, { epoch: 2n, offset: 5n });
  });

  test('a session that answers no Ping while its rooms still deliver is left (presumed hung)', async (t) => {
    // Outside audit 115, F5: a failed RTT ping was ignored whenever anything else had arrived
    // since, so a session whose rooms delivered while it answered nothing was kept for good.
    const { net, client } = setup({ pingIntervalMs: 150, requestTimeoutMs: 400 }, transport);
    t.after(() => client.close());
    const conn = await connected(net, client);
    const left = once(client, 'state', (s) => s === 'disconnected', 3000);
    const sub = client.subscribe('dash.cpu', () => {});
    // The session's first Ping is answered; from the subscription on, none is.
    let cmd = await conn.commands.next('a command');
    for (; cmd.command.type === 'Ping'; cmd = await conn.commands.next('a command')) {
      conn.send(cmd.id, { type: 'Pong' });
    }
    assert.equal(cmd.command.type, 'Subscribe');
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
    conn.send(cmd.id, { type: 'Subscribed', room: 'dash.cpu', position: null, recovery: { type: 'NotRequested' } });
    await sub;
    // The room delivers every 50 ms; the Pings go unanswered.
    let n = 0;
    const flowing = setInterval(() => {
      stream.send(0, { type: 'Publication', room: 'dash.cpu', position: null, payload: text(`v${n++}`) });
    }, 50);
    t.after(() => clearInterval(flowing));
    const [, cause] = await left;
    clearInterval(flowing);
    assert.match(cause.message, /presumed hung/);
  });

  test('the first ping of a session is written before the (re)subscribes and queued publishes', async (t) => {
    // The server answers control-stream commands in order: a ping queued behind the subscribes
    // would measure their processing, not the round trip (the demo showed 37-310 ms on loopback).
    const { net, client } = setup({ pingIntervalMs: 60_000 }, transport);
    t.after(() => client.close());
    const subscribed = client.subscribe('dash.cpu', () => {});
    const published = client.publish('dash.cpu', 'queued');
    client.on('state', (s) => {
      if (s === 'connected') client.subscribe('chat.lobby', () => {}).catch(() => undefined);
    });
    const conn = await net.nextConnection();
    await conn.welcome();
    const first = await conn.commands.next('the first command after Welcome');
    assert.equal(first.command.type, 'Ping', `first command after Welcome: ${first.command.type}`);
    const rest = [];
    for (let i = 0; i < 3; i++) rest.push(await conn.commands.next('a command'));
    // The listener's subscribe is sent by subscribe() itself, once; then the re-subscribe, the
    // queued publish, and nothing more.
    assert.deepEqual(rest.map((f) => [f.command.type, f.command.room]), [
      ['Subscribe', 'chat.lobby'],
      ['Subscribe', 'dash.cpu'],
      ['Publish', 'dash.cpu'],
    ]);
    // The pong is answered before the subscribes are, and the RTT is reported without them.
    const rtt = once(client, 'rtt');
    conn.send(first.id, { type: 'Pong' });
    await rtt;
    await published;
    for (const f of rest.slice(0, 2)) {
      conn.send(f.id, { type: 'Subscribed', room: f.command.room, position: null, recovery: { type: 'NotRequested' } });
    }
    await subscribed;
    const ping = client.ping();
    const next = await conn.commands.next('the next command');
    assert.equal(next.command.type, 'Ping', `no duplicate command was sent: ${next.command.type}`);
    conn.send(next.id, { type: 'Pong' });
    await ping;
  });
});
}

test('a Welcome announcing a 4 GiB max_frame does not raise the inbound limit past maxFrameCeiling', async (t) => {
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client, { limits: { maxFrame: 4294967295, maxPayload: 4294967000 } });
  const got = [];
  const subscribed = client.subscribe('r.big', (m) => got.push(m.bytes.length));
  const cmd = await conn.expect('Subscribe');
  conn.send(cmd.id, { type: 'Subscribed', room: 'r.big', position: null, recovery: { type: 'NotRequested' } });
  await subscribed;
  const left = once(client, 'state', (s) => s !== 'connected');
  // 2 MiB: over the default ceiling of 1 MiB, so the connection ends as a protocol error.
  conn.send(0, { type: 'Publication', room: 'r.big', position: null, payload: new Uint8Array(2 * 1024 * 1024) });
  await left;
  assert.deepEqual(got, []);
});

test('a server that sends over 10,000 events of a room before its Subscribed has its session replaced', async (t) => {
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  let conn = await connected(net, client);
  const got = [];
  client.subscribe('hist.c', (m) => got.push(m.text()), { resume: { epoch: 1n, offset: 5n } }).catch(() => undefined);
  const cmd = await conn.expect('Subscribe');
  const left = once(client, 'state', (s) => s !== 'connected');
  const stream = conn.openStream();
  stream.send(cmd.id, { type: 'SubscriptionStream', room: 'hist.c' });
  for (let i = 1n; i <= 10_001n; i++) {
    stream.send(0, { type: 'Publication', room: 'hist.c', position: { epoch: 1n, offset: 5n + i }, payload: text('x') });
  }
  await left;
  conn = await connected(net, client);
  const resub = await conn.expect('Subscribe');
  // Nothing held was delivered, so nothing is skipped: the resume point did not move.
  assert.deepEqual(resub.command.resume, { epoch: 1n, offset: 5n });
  assert.deepEqual(got, []);
});

test('presence events before a Subscribed that never comes count their bytes: past 16 MiB the session is replaced', async (t) => {
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  const big = { limits: { maxFrame: 1024 * 1024, maxPayload: 1024 * 1024 - 1024 } };
  let conn = await connected(net, client, big);
  const presence = [];
  client.subscribe('chat.p', () => {}, { onPresence: (e) => presence.push(e.type) }).catch(() => undefined);
  const cmd = await conn.expect('Subscribe');
  const left = once(client, 'state', (s) => s !== 'connected');
  const replaced = once(client, 'error', (e) => e.kind === 'protocol' && /before Subscribed/.test(e.message));
  const stream = conn.openStream();
  stream.send(cmd.id, { type: 'SubscriptionStream', room: 'chat.p' });
  // 90 events of 200 KB (user) + 200 KB (session): 36 MB, far under 10,000 events, over 16 MiB.
  const member = (i) => ({ user: 'U'.repeat(200_000), session: `${i}`.padStart(200_000, 's') });
  for (let i = 0; i < 90; i++) stream.send(0, { type: i % 2 ? 'Left' : 'Joined', room: 'chat.p', member: member(i) });
  await Promise.all([left, replaced]);
  conn = await connected(net, client, big);
  const resub = await conn.expect('Subscribe');
  assert.equal(resub.command.room, 'chat.p');
  assert.deepEqual(presence, []);
});

test('frames held before Subscribed share one budget across rooms: many rooms each under 16 MiB but together over it replace the session', async (t) => {
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  const big = { limits: { maxFrame: 1024 * 1024, maxPayload: 1024 * 1024 - 1024, maxSubscriptions: 64 } };
  let conn = await connected(net, client, big);
  const rooms = Array.from({ length: 6 }, (_, i) => `chat.r${i}`);
  for (const room of rooms) client.subscribe(room, () => {}).catch(() => undefined);
  const left = once(client, 'state', (s) => s !== 'connected');
  const replaced = once(client, 'error', (e) => e.kind === 'protocol' && /before Subscribed/.test(e.message));
  // 6 rooms × 4 publications of 900 KB: 3.6 MB a room, 21.6 MB in all.
  const payload = new Uint8Array(900_000);
  for (let r = 0; r < rooms.length; r++) {
    const cmd = await conn.expect('Subscribe');
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: cmd.command.room });
    for (let i = 0; i < 4; i++) stream.send(0, { type: 'Publication', room: cmd.command.room, position: null, payload });
  }
  await Promise.all([left, replaced]);
  conn = await connected(net, client, big);
  const resubscribed = [];
  for (let r = 0; r < rooms.length; r++) resubscribed.push((await conn.expect('Subscribe')).command.room);
  assert.deepEqual(resubscribed.sort(), rooms);
});

test('a timed-out Subscribe is not sent again: its stream stays held for its late reply, given back to the session budget once answered', { timeout: 15_000 }, async (t) => {
  // The server carries a session's commands out in order and answers each one, so a Subscribe
  // that times out (a slow subscribe hook, a replay waiting for NATS) still takes effect. Sending
  // it again got 104 already_subscribed and lost the subscription while the server kept it
  // (outside audit 104, F1), so the client now waits for the late reply instead, as the Rust
  // client does; what the stream sends meanwhile is held for that reply (dropping it would lose
  // the start of a replay) and counts against the session's budget until then.
  const { net, client } = setup({ requestTimeoutMs: 300 }, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client, { limits: { maxFrame: 1024 * 1024, maxPayload: 1024 * 1024 - 1024 } });
  const states = [];
  client.on('state', (s) => states.push(s));
  const got = { 'chat.a': 0, 'chat.b': 0 };
  const sub = (room) => client.subscribe(room, () => got[room]++);
  // 12 publications of 900 KB (10.8 MB) before the reply: two such rooms at once are over 16 MiB.
  const payload = new Uint8Array(900_000);
  const hold = (cmd) => {
    const stream = conn.openStream();
    stream.send(cmd.id, { type: 'SubscriptionStream', room: cmd.command.room });
    for (let i = 0; i < 12; i++) stream.send(0, { type: 'Publication', room: cmd.command.room, position: null, payload });
  };
  const answer = (cmd) => conn.send(cmd.id, { type: 'Subscribed', room: cmd.command.room, position: null, recovery: { type: 'NotRequested' } });
  const a = sub('chat.a');
  const timedOut = once(client, 'error', (e) => e.kind === 'timeout');
  const first = await conn.expect('Subscribe');
  hold(first);
  const [late] = await timedOut;
  // Not sent again (the old retry came after 50 to 100 ms here).
  await assert.rejects(conn.expect('Subscribe', 600), /timed out/);
  assert.equal(late.room, 'chat.a');
  assert.match(late.message, /still waiting/);
  assert.equal(got['chat.a'], 0);
  // The late reply is taken, and what was held for it delivered.
  answer(first);
  await a;
  await waitUntil(() => got['chat.a'] === 12);
  // Given back to the budget with that reply: chat.b may hold as much.
  const b = sub('chat.b');
  const forB = await conn.expect('Subscribe');
  hold(forB);
  answer(forB);
  await b;
  await waitUntil(() => got['chat.b'] === 12);
  assert.deepEqual(states, []);
  assert.equal(conn.received.filter((f) => f.command.type === 'Subscribe').length, 2);
});

test('a Welcome of another protocol version is refused, and the client closes: reconnecting will not change it', async (t) => {
  // PROTOCOL.md section 8: as after Goodbye 3004 unsupported_version.
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  const conn = await net.nextConnection();
  const refused = once(client, 'error', (e) => e.kind === 'protocol' && /version 2/.test(e.message));
  const closed = once(client, 'state', (s) => s === 'closed');
  const hello = await conn.expect('Hello');
  conn.send(hello.id, { type: 'Welcome', version: 2, session: 's', user: 'u', tenant: 't', expiresAt: null, limits: conn.limits });
  const [e] = await refused;
  assert.equal(e.code, 3004);
  await closed;
  await assert.rejects(client.ready(), (err) => err.code === 3004);
  await assert.rejects(net.nextConnection(300), /timed out/);
  assert.equal(net.attempts.length, 1);
});

test('maxQueuedPublishes must be an integer, 0 or more', () => {
  // Outside audit 121, F4: NaN was taken silently, as no bound at all.
  const net = new FakeNetwork();
  const base = { url: 'https://h:1/v1', token: () => 'x', WebTransport: net.WebTransport, pingIntervalMs: 0, heartbeat: false, reconnect: false };
  for (const bad of [Number.NaN, -1, 1.5, Infinity, '5', null]) {
    assert.throws(() => new QuiverClient({ ...base, maxQueuedPublishes: bad }), (e) => e instanceof TypeError && /maxQueuedPublishes must be an integer, 0 or more/.test(e.message), String(bad));
  }
  for (const good of [0, 1, 1000]) void new QuiverClient({ ...base, maxQueuedPublishes: good }).close();
});
