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

    test('a second stream with the subscription\'s header is discarded: nothing is delivered twice', { timeout: 10_000 }, async (t) => {
      // Outside audit 121, F5 (the Rust client discards it too). Over WebSocket the "stream" is
      // the SubscriptionStream frame, sent again: it must change nothing (one socket carries
      // each publication once, so they are sent once).
      const { net, client } = setup({}, transport);
      t.after(() => client.close());
      const conn = await connected(net, client);
      const errors = [];
      client.on('error', (e) => errors.push(e.message));
      const got = [];
      const sub = client.subscribe('chat.a', (m) => got.push(m.text()));
      const cmd = await conn.expect('Subscribe');
      const first = opened(conn, cmd);
      conn.send(cmd.id, { type: 'Subscribed', room: 'chat.a', position: null, recovery: { type: 'NotRequested' } });
      await sub;
      const second = opened(conn, cmd);
      await sleep(20);
      for (const payload of ['a', 'b']) {
        for (const stream of transport === 'webtransport' ? [first, second] : [first]) stream.send(0, { type: 'Publication', room: 'chat.a', position: null, payload: text(payload) });
        await sleep(20);
      }
      await waitUntil(() => got.length >= 2);
      await sleep(100);
      assert.deepEqual(got, ['a', 'b']);
      assert.deepEqual(errors, []);
      assert.equal(client.state, 'connected');
      // The first stream is still the subscription's.
      first.send(0, { type: 'Publication', room: 'chat.a', position: null, payload: text('c') });
      await waitUntil(() => got.length >= 3);
      assert.deepEqual(got, ['a', 'b', 'c']);
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

test('over websocket, a server that stops reading: publishes wait for the transport, the excess rejects buffer_full, the session is replaced', { timeout: 20_000 }, async (t) => {
  // Outside audit 104, F3: every publish was handed to the socket at once, to pile up in
  // `bufferedAmount` without limit.
  // requestTimeoutMs is far above the 50 ms the counts are taken at, so a loaded machine's timer
  // delays cannot replace the session first (outside audit 107, F5).
  const { net, client } = setup({ requestTimeoutMs: 2000, paceCommands: false, maxQueuedPublishes: 100 }, 'websocket');
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
  const replaced = once(client, 'error', (e) => e.kind === 'timeout' && /not reading/.test(e.message), 8000);
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

test('over websocket, a send buffer that drains slowly is progress: publishes wait their turn, the session stays up', { timeout: 20_000 }, async (t) => {
  // Outside audit 104, F3. requestTimeoutMs is 40 times the drain's period, so that a loaded
  // machine's timer delays cannot make a draining buffer look stalled (outside audit 107, F5).
  const { net, client } = setup({ requestTimeoutMs: 2000, paceCommands: false }, 'websocket');
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
  // 1.2 MB a second.
  const drain = setInterval(() => (ws.bufferedAmount = Math.max(0, ws.bufferedAmount - 60_000)), 50);
  t.after(() => clearInterval(drain));
  const states = [];
  client.on('state', (s) => states.push(s));
  // 3.6 MB: over three times the budget, and 3 s to drain (over requestTimeoutMs), never stalled.
  await Promise.all(Array.from({ length: 60 }, () => client.publish('chat.x', new Uint8Array(60_000))));
  assert.equal(taken, 60);
  assert.ok(most <= 1024 * 1024, `${most} bytes buffered at most`);
  await waitUntil(() => ws.bufferedAmount === 0, 8000);
  assert.deepEqual(states, []);
});

test('over webtransport, a control stream that takes no more writes: an acknowledged publish settles, the session is replaced', { timeout: 10_000 }, async (t) => {
  // Outside audit 104, F3.
  const { net, client } = setup({ requestTimeoutMs: 1000 }, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client);
  conn.stallWrites = true;
  const replaced = once(client, 'error', (e) => e.kind === 'timeout' && /not reading/.test(e.message), 6000);
  const started = Date.now();
  await assert.rejects(client.publish('chat.x', 'x', { ack: true }), (e) => e.kind === 'closed');
  assert.ok(Date.now() - started < 5000, `settled after ${Date.now() - started} ms`);
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

/** A WebSocket whose server stops reading: `send` only adds to `bufferedAmount`. Returns the
 *  original `send`, to let the server read again. */
function stallSocket(ws) {
  const send = ws.send;
  ws.send = (data) => {
    ws.bufferedAmount += data.byteLength;
  };
  return send;
}

test('over websocket, a call() aborted while it waits for a full transport is withdrawn: the backend never gets it', { timeout: 20_000 }, async (t) => {
  // Outside audit 107, F2: the aborted call's frame stayed queued and went out once the link
  // drained, so the backend ran a call the app had given up on.
  const { net, client } = setup({ requestTimeoutMs: 5000, paceCommands: false }, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client);
  conn.autoAnswer = true;
  const ws = conn.client;
  const send = stallSocket(ws);
  // 17 frames of 60 KB fill the budget (1 MiB); 3 more, and the call, wait behind them.
  const publishes = Array.from({ length: 20 }, () => client.publish('chat.x', new Uint8Array(60_000)));
  const controller = new AbortController();
  const charged = client.call('charge', 'x', { signal: controller.signal });
  await sleep(100);
  controller.abort(new Error('gave up'));
  await assert.rejects(charged, /gave up/);
  // The server reads again: what waited goes out, the aborted call does not.
  ws.send = send;
  ws.bufferedAmount = 0;
  await Promise.all(publishes);
  const later = client.call('later', 'y');
  const cmd = await conn.expect('Call', 5000);
  assert.equal(cmd.command.method, 'later');
  conn.send(cmd.id, { type: 'Reply', payload: text('ok') });
  await later;
  assert.deepEqual(conn.received.filter((f) => f.command.type === 'Call').map((f) => f.command.method), ['later']);
  assert.equal(conn.received.filter((f) => f.command.type === 'Publish').length, 3);
  assert.equal(client.state, 'connected');
});

test('over websocket, a call() not written requestTimeoutMs after it was made is withdrawn (timeout), never sent; the session stays up', { timeout: 20_000 }, async (t) => {
  // Outside audit 107, F2: a call waiting behind a full transport that still drains (never "not
  // reading") had no deadline at all.
  const { net, client } = setup({ requestTimeoutMs: 2000, paceCommands: false }, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const ws = conn.client;
  const send = stallSocket(ws);
  // 1 MB a second: progress every 50 ms.
  const drain = setInterval(() => (ws.bufferedAmount = Math.max(0, ws.bufferedAmount - 50_000)), 50);
  t.after(() => clearInterval(drain));
  const states = [];
  client.on('state', (s) => states.push(s));
  // 17 frames of 60 KB on the socket, 70 waiting (4.2 MB: over 4 s to drain), then the call.
  const publishes = Array.from({ length: 87 }, () => client.publish('chat.x', new Uint8Array(60_000)));
  const started = performance.now();
  const outcome = client.call('charge', 'x').then(
    () => 'answered',
    (e) => e,
  );
  const settled = await Promise.race([outcome, sleep(3500).then(() => 'still waiting')]);
  assert.ok(settled instanceof Error, `the call is ${settled}`);
  assert.equal(settled.kind, 'timeout');
  assert.match(settled.message, /withdrawn, never sent/);
  assert.ok(performance.now() - started >= 1900, `withdrawn after ${performance.now() - started} ms`);
  // The server reads at full speed again: the publishes go out, the call never does.
  clearInterval(drain);
  ws.send = send;
  ws.bufferedAmount = 0;
  await Promise.all(publishes);
  await sleep(100);
  assert.equal(conn.received.filter((f) => f.command.type === 'Call').length, 0);
  assert.deepEqual(states, []);
});

test('over webtransport, one large frame on a slow link that still drains is progress: the session stays up', { timeout: 20_000 }, async (t) => {
  // Outside audit 107, F4: progress was counted per completed write, so a 1 MiB frame taking
  // longer than requestTimeoutMs to go ended the session as "not reading".
  const { net, client } = setup({ requestTimeoutMs: 1500, paceCommands: false }, 'webtransport');
  t.after(() => client.close());
  const conn = await connected(net, client, { limits: { maxFrame: 2 * 1024 * 1024, maxPayload: 2 * 1024 * 1024 } });
  conn.autoAnswer = true;
  // 300 KB a second: the frame takes about 3.5 s, a 64 KiB piece of it about 220 ms.
  conn.writeRate = 300_000;
  const states = [];
  client.on('state', (s) => states.push(s));
  const payload = new Uint8Array(1024 * 1024).fill(7);
  const started = performance.now();
  await client.publish('chat.x', payload, { ack: true });
  assert.ok(performance.now() - started > 3000, `written in ${performance.now() - started} ms`);
  const [frame] = conn.received.filter((f) => f.command.type === 'Publish');
  assert.equal(frame.command.payload.length, payload.length);
  assert.ok(frame.command.payload.every((b) => b === 7));
  assert.deepEqual(states, []);
});

test('the pump takes one pacer token per command, even when the transport fills during the pacer\'s wait', { timeout: 10_000 }, async (t) => {
  // Outside audit 107, F6: a head found full after the pacer's wait took a second token on the
  // next pass, and the client then paced below the server's rate.
  const { net, client } = setup({}, 'websocket');
  t.after(() => client.close());
  const conn = await connected(net, client);
  const ws = conn.client;
  let reserves = 0;
  client.active.pacer = {
    ready: () => false,
    reserve: () => {
      reserves++;
      if (reserves > 1) return 0;
      // The transport is over its budget once the wait ends (an urgent write, say), for a while.
      setTimeout(() => (ws.bufferedAmount = 2 * 1024 * 1024), 5);
      setTimeout(() => (ws.bufferedAmount = 0), 150);
      return 40;
    },
  };
  await Promise.all(['a', 'b', 'c'].map((s) => client.publish('chat.x', s)));
  assert.equal(conn.received.filter((f) => f.command.type === 'Publish').length, 3);
  assert.equal(reserves, 3);
});
