// A slow, stalled or hostile server (outside audit 104): a Subscribe answered late, a resume
// answered NotRequested, a server that stops reading, a control stream that never opens, timer
// delays past setTimeout's limit, watch timers piling up with room churn, and a reserved end code
// on a session that stays up. Against the in-memory fakes (a huge Presence list: codec.test.mjs).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { QuiverClient } from '../dist/quiver.js';
import { FakeNetwork, connected as connectedOver, fakeClient, once, waitUntil } from './fake-transport.mjs';

const HASH = 'ab'.repeat(32);
const text = (s) => new TextEncoder().encode(s);
const connected = (net, client, welcome) => connectedOver(net, client, { welcome });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function setup(options = {}, transport = 'webtransport') {
  return fakeClient({ serverCertificateHashes: [HASH], transports: [transport], ...options });
}

/** The events of one subscription's stream, on its own stream (WebTransport) or the socket. */
function opened(conn, cmd) {
  const stream = conn.openStream();
  stream.send(cmd.id, { type: 'SubscriptionStream', room: cmd.command.room });
  return stream;
}

for (const transport of ['webtransport', 'websocket']) {
  describe(`over ${transport}`, () => {
    test('a Subscribe answered after requestTimeoutMs is not sent again: the late Subscribed is taken', { timeout: 10_000 }, async (t) => {
      // Outside audit 104, F1.
      const { net, client } = setup({ requestTimeoutMs: 200 }, transport);
      t.after(() => client.close());
      const conn = await connected(net, client);
      const got = [];
      let settled = null;
      const sub = client.subscribe('chat.a', (m) => got.push(m.text()));
      sub.then(() => (settled = 'resolved'), (e) => (settled = e));
      const timedOut = once(client, 'error', (e) => e.kind === 'timeout');
      const first = await conn.expect('Subscribe');
      await timedOut;
      assert.equal(settled, null);
      // Any Subscribe sent again is refused, as the server would (the first one took effect).
      let done = false;
      const refuseRepeats = (async () => {
        while (!done) {
          const again = await conn.expect('Subscribe', 50).catch(() => null);
          if (again) conn.send(again.id, { type: 'Error', code: 104, message: 'already subscribed' });
        }
      })();
      await sleep(300);
      const stream = opened(conn, first);
      conn.send(first.id, { type: 'Subscribed', room: 'chat.a', position: null, recovery: { type: 'NotRequested' } });
      stream.send(0, { type: 'Publication', room: 'chat.a', position: null, payload: text('late but live') });
      await sub;
      await waitUntil(() => got.length === 1);
      assert.deepEqual(got, ['late but live']);
      done = true;
      await refuseRepeats;
      assert.equal(conn.received.filter((f) => f.command.type === 'Subscribe').length, 1);
    });

    test('a resume answered NotRequested is a failed recovery, and reported', { timeout: 10_000 }, async (t) => {
      // Outside audit 104, F2.
      const { net, client } = setup({}, transport);
      t.after(() => client.close());
      const conn = await connected(net, client);
      const recovery = once(client, 'recovery');
      const broken = once(client, 'error', (e) => e.kind === 'protocol' && /NotRequested answering a resume/.test(e.message));
      const sub = client.subscribe('chat.r', () => {}, { resume: { epoch: 5n, offset: 3n } });
      const cmd = await conn.expect('Subscribe');
      assert.deepEqual(cmd.command.resume, { epoch: 5n, offset: 3n });
      opened(conn, cmd);
      conn.send(cmd.id, { type: 'Subscribed', room: 'chat.r', position: { epoch: 5n, offset: 10n }, recovery: { type: 'NotRequested' } });
      const [info] = await recovery;
      assert.equal(info.recovery.type, 'Failed');
      assert.deepEqual(info.resumedFrom, { epoch: 5n, offset: 3n });
      await broken;
      assert.equal((await sub).recovery.type, 'Failed');
    });

    test('call() with a timeoutMs past setTimeout\'s limit waits for its Reply', { timeout: 10_000 }, async (t) => {
      // Outside audit 104, F6.
      const { net, client } = setup({}, transport);
      t.after(() => client.close());
      const conn = await connected(net, client);
      const answer = client.call('m', 'x', { timeoutMs: 2 ** 31 });
      const cmd = await conn.expect('Call');
      await sleep(50);
      conn.send(cmd.id, { type: 'Reply', payload: text('done') });
      assert.equal(new TextDecoder().decode(await answer), 'done');
    });

    test('an unsolicited Unsubscribed 113 on a session that stays up subscribes again, resuming', { timeout: 10_000 }, async (t) => {
      // Outside audit 104, F8.
      const { net, client } = setup({}, transport);
      t.after(() => client.close());
      const conn = await connected(net, client);
      const got = [];
      const sub = client.subscribe('chat.s', (m) => got.push(m.text()));
      const cmd = await conn.expect('Subscribe');
      const stream = opened(conn, cmd);
      conn.send(cmd.id, { type: 'Subscribed', room: 'chat.s', position: { epoch: 1n, offset: 4n }, recovery: { type: 'NotRequested' } });
      stream.send(0, { type: 'Publication', room: 'chat.s', position: { epoch: 1n, offset: 5n }, payload: text('five') });
      await sub;
      await waitUntil(() => got.length === 1);
      conn.send(0, { type: 'Unsubscribed', room: 'chat.s', code: 113, reason: 'closing' });
      const again = await conn.expect('Subscribe', 2000);
      assert.equal(again.command.room, 'chat.s');
      assert.deepEqual(again.command.resume, { epoch: 1n, offset: 5n });
      assert.equal(client.state, 'connected');
    });
  });
}

test('over websocket, a server that stops reading: publishes wait for the transport, the excess rejects buffer_full, the session is replaced', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F3: every publish was handed to the socket at once, to pile up in
  // `bufferedAmount` without limit.
  const { net, client } = setup({ requestTimeoutMs: 500, paceCommands: false, maxQueuedPublishes: 100 }, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client);
  // From now on the server reads nothing: the socket only buffers.
  const ws = conn.client;
  ws.send = (data) => {
    ws.bufferedAmount += data.byteLength;
  };
  // ... while it keeps the session looking alive.
  const alive = setInterval(() => conn.send(0, { type: 'Pong' }), 100);
  t.after(() => clearInterval(alive));
  const replaced = once(client, 'error', (e) => e.kind === 'timeout' && /not reading/.test(e.message), 3000);
  const payload = new Uint8Array(60_000);
  const outcomes = Array.from({ length: 300 }, () => {
    const outcome = { state: 'pending' };
    client.publish('chat.x', payload).then(
      () => (outcome.state = 'written'),
      (e) => (outcome.state = e.kind),
    );
    return outcome;
  });
  await sleep(50);
  const count = (state) => outcomes.filter((o) => o.state === state).length;
  // The budget is max(1 MiB, 4 × max_frame): 17 frames of 60 KB go to the socket, 100 wait
  // (maxQueuedPublishes), the rest are refused.
  assert.equal(count('written'), 17);
  assert.equal(count('pending'), 100);
  assert.equal(count('buffer_full'), 183);
  assert.ok(ws.bufferedAmount <= 1024 * 1024);
  await replaced;
  // Those that waited were never written: they go out on the next session, once.
  const next = await connected(net, client);
  await waitUntil(() => count('written') === 117);
  assert.equal(next.received.filter((f) => f.command.type === 'Publish').length, 100);
});

test('over websocket, a send buffer that drains slowly is progress: publishes wait their turn, the session stays up', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F3.
  const { net, client } = setup({ requestTimeoutMs: 300, paceCommands: false }, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const ws = conn.client;
  let taken = 0;
  let most = 0;
  ws.send = (data) => {
    ws.bufferedAmount += data.byteLength;
    most = Math.max(most, ws.bufferedAmount);
    taken++;
  };
  // 2 MB a second.
  const drain = setInterval(() => (ws.bufferedAmount = Math.max(0, ws.bufferedAmount - 100_000)), 50);
  t.after(() => clearInterval(drain));
  const states = [];
  client.on('state', (s) => states.push(s));
  // 2.4 MB: over twice the budget, and over requestTimeoutMs to drain, never stalled.
  await Promise.all(Array.from({ length: 40 }, () => client.publish('chat.x', new Uint8Array(60_000))));
  assert.equal(taken, 40);
  assert.ok(most <= 1024 * 1024, `${most} bytes buffered at most`);
  await waitUntil(() => ws.bufferedAmount === 0, 5000);
  assert.deepEqual(states, []);
});

test('over webtransport, a control stream that takes no more writes: an acknowledged publish settles, the session is replaced', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F3.
  const { net, client } = setup({ requestTimeoutMs: 300 }, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  conn.stallWrites = true;
  const replaced = once(client, 'error', (e) => e.kind === 'timeout' && /not reading/.test(e.message), 2000);
  const started = Date.now();
  await assert.rejects(client.publish('chat.x', 'x', { ack: true }), (e) => e.kind === 'closed');
  assert.ok(Date.now() - started < 1000, `settled after ${Date.now() - started} ms`);
  await replaced;
  // The next session works.
  await connected(net, client);
});

test('a WebTransport control stream that never opens: the attempt falls back to WebSocket within its deadline', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F4.
  const { net, client } = fakeClient({ serverCertificateHashes: [HASH], connectTimeoutMs: 300 });
  t.after(() => client.close());
  net.controlStream = () => 'silent';
  const first = await net.nextConnection();
  assert.equal(first.transport, 'webtransport');
  const second = await net.nextConnection(1000);
  assert.equal(second.transport, 'websocket');
  await second.welcome();
  await client.ready();
  assert.equal(client.transport, 'websocket');
  assert.ok(first.closedByClient, 'the stuck WebTransport session was closed');
});

test('close() during a WebTransport attempt whose control stream never opens resolves at once', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F4.
  const { net, client } = setup({ connectTimeoutMs: 60_000 }, 'webtransport');
  net.controlStream = () => 'silent';
  const conn = await net.nextConnection();
  await sleep(50);
  const started = Date.now();
  await client.close();
  assert.ok(Date.now() - started < 500, `closed after ${Date.now() - started} ms`);
  assert.ok(conn.closedByClient);
  assert.equal(client.state, 'closed');
});

test('delay options: bad values are TypeErrors, values past setTimeout\'s limit wait that long', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F6.
  const net = new FakeNetwork();
  const base = { url: 'https://h:1/v1', token: () => 'x', WebTransport: net.WebTransport, pingIntervalMs: 0, heartbeat: false };
  for (const name of ['requestTimeoutMs', 'connectTimeoutMs', 'webTransportTimeoutMs']) {
    for (const bad of [Number.NaN, -1, 0, '5']) {
      assert.throws(() => new QuiverClient({ ...base, [name]: bad }), new RegExp(`${name} must be a number of milliseconds`));
    }
  }
  assert.throws(() => new QuiverClient({ ...base, pingIntervalMs: -5 }), /pingIntervalMs must be/);
  assert.throws(() => new QuiverClient({ ...base, heartbeat: { idleMs: Number.NaN } }), /heartbeat.idleMs must be/);

  // A requestTimeoutMs of 2^31 fired at once: every command timed out as soon as it was written.
  const { net: net2, client: c } = setup({ requestTimeoutMs: 2 ** 31 }, 'websocket');
  t.after(() => c.close());
  const conn = await connected(net2, c);
  const pong = c.ping();
  const ping = await conn.expect('Ping');
  await sleep(50);
  conn.send(ping.id, { type: 'Pong' });
  await pong;
});

test('watch timers of room churn are not kept for the whole session, and go with it', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F7.
  const { net, client } = setup({ streamTimeoutMs: 60_000, paceCommands: false }, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  // Reactions added to the session's `done` live as long as the session: one per ended stream
  // was memory that grew with churn.
  const session = client.active;
  let reactions = 0;
  const then = session.done.then.bind(session.done);
  session.done.then = (...args) => {
    reactions++;
    return then(...args);
  };
  for (let i = 0; i < 1000; i++) {
    let delivered;
    const arrived = new Promise((r) => (delivered = r));
    const sub = client.subscribe('chat.c', () => delivered());
    const cmd = await conn.expect('Subscribe');
    // Subscribed before the stream (a stream watch), and the stream's end (an end watch).
    conn.send(cmd.id, { type: 'Subscribed', room: 'chat.c', position: null, recovery: { type: 'NotRequested' } });
    await sub;
    const stream = opened(conn, cmd);
    stream.send(0, { type: 'Publication', room: 'chat.c', position: null, payload: text(`${i}`) });
    await arrived;
    const out = client.unsubscribe('chat.c');
    const un = await conn.expect('Unsubscribe');
    conn.send(un.id, { type: 'Unsubscribed', room: 'chat.c', code: 0, reason: '' });
    stream.close();
    await out;
  }
  assert.equal(reactions, 0);
  await waitUntil(() => client.subs.pendingTimers >= 1000);
  // They go with the session, not with their own time (5 to 8 s).
  conn.kill();
  await waitUntil(() => client.state !== 'connected');
  assert.equal(client.subs.pendingTimers, 0);
});
