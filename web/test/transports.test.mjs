// WebSocket framing and refusals (PROTOCOL.md 9.1, 9.2) and the fallback from WebTransport to
// WebSocket, on the fake transports.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { QuiverClient, forgetWebTransportFailures } from '../dist/quiver.js';
import { FakeNetwork, connected, fakeClient, once, waitUntil } from './fake-transport.mjs';

const text = (s) => new TextEncoder().encode(s);
const NOT_REQUESTED = { type: 'NotRequested' };

// The client remembers a failed WebTransport per URL for the page's lifetime (module state):
// every test gets its own port so that tests do not share that memory.
let port = 5000;

function setup(options = {}) {
  const url = `https://127.0.0.1:${++port}/v1`;
  return { url, ...fakeClient({ url, webTransportTimeoutMs: 200, ...options }) };
}

/** Resolves with the next connection attempt over `transport`, skipping none: a different
 *  transport first is a test failure. */
async function next(net, transport, ms) {
  const conn = await net.nextConnection(ms);
  assert.equal(conn.transport, transport, `expected a ${transport} attempt, got ${conn.transport} (${conn.url})`);
  return conn;
}

/** No connection attempt within `ms`. */
async function noAttempt(net, ms = 150) {
  await assert.rejects(net.nextConnection(ms), /timed out/);
}

describe('WebSocket', () => {
  test('several frames in one server message: reply, subscription header and publication', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const conn = await connected(net, client, { transport: 'websocket' });
    const got = [];
    const subscribed = client.subscribe('chat.lobby', (m) => got.push(m.text()));
    const cmd = await conn.expect('Subscribe');
    conn.sendFrames([
      [cmd.id, { type: 'SubscriptionStream', room: 'chat.lobby' }],
      [0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('one') }],
      [cmd.id, { type: 'Subscribed', room: 'chat.lobby', position: null, recovery: NOT_REQUESTED }],
      [0, { type: 'Publication', room: 'chat.lobby', position: null, payload: text('two') }],
    ]);
    await subscribed;
    await waitUntil(() => got.length === 2);
    assert.deepEqual(got, ['one', 'two']);
    assert.deepEqual(conn.violations, []);
  });

  test('stale frames are discarded: before the current SubscriptionStream, after Unsubscribed, or of an older Subscribe', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const conn = await connected(net, client, { transport: 'websocket' });
    const got = [];
    const presence = [];
    const subscribed = client.subscribe('dash.cpu', (m) => got.push(m.text()), { onPresence: (c) => presence.push(c.member.user) });
    const first = await conn.expect('Subscribe');
    // Before its SubscriptionStream, a frame naming the room belongs to no known subscription.
    conn.send(0, { type: 'Publication', room: 'dash.cpu', position: null, payload: text('too early') });
    conn.send(first.id, { type: 'Subscribed', room: 'dash.cpu', position: null, recovery: NOT_REQUESTED });
    await subscribed;
    conn.send(first.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
    conn.send(0, { type: 'Publication', room: 'dash.cpu', position: null, payload: text('a') });
    conn.send(0, { type: 'Joined', room: 'dash.cpu', member: { user: 'bob', session: 's2' } });
    await waitUntil(() => got.length === 1 && presence.length === 1);

    // The server ends the subscription (slow consumer); the client subscribes again.
    conn.send(0, { type: 'Unsubscribed', room: 'dash.cpu', code: 112, reason: 'queue full' });
    conn.send(0, { type: 'Publication', room: 'dash.cpu', position: null, payload: text('after unsubscribed') });
    const again = await conn.expect('Subscribe');
    assert.notEqual(again.id, first.id);
    // A header with the older id does not reopen the room.
    conn.send(first.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
    conn.send(0, { type: 'Publication', room: 'dash.cpu', position: null, payload: text('old subscription') });
    conn.send(0, { type: 'Left', room: 'dash.cpu', member: { user: 'bob', session: 's2' } });
    conn.send(again.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
    conn.send(0, { type: 'Publication', room: 'dash.cpu', position: null, payload: text('b') });
    conn.send(again.id, { type: 'Subscribed', room: 'dash.cpu', position: null, recovery: NOT_REQUESTED });
    // Another room's frames are unaffected by dash.cpu's bookkeeping.
    await waitUntil(() => got.length === 2);
    const pong = client.ping();
    conn.send((await conn.expect('Ping')).id, { type: 'Pong' });
    await pong;
    assert.deepEqual(got, ['a', 'b']);
    assert.deepEqual(presence, ['bob']);
  });

  test('a frame split across two messages is a protocol error; the client reconnects', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const conn = await connected(net, client, { transport: 'websocket' });
    const error = once(client, 'error', (e) => e.kind === 'protocol');
    const frame = new Uint8Array([0, 0, 0, 2, 0, 4]); // a Pong, id 0
    conn.sendRaw(frame.subarray(0, 3));
    conn.sendRaw(frame.subarray(3));
    const [e] = await error;
    assert.match(e.message, /a message ends inside a frame/);
    await next(net, 'websocket');
  });

  // Node's WebSocket (undici) fires only `error` for a refused connection; browsers fire `error`
  // then `close`. Either way the attempt fails at once, once, and the next comes after the backoff
  // (at most 50 ms here), not after connectTimeoutMs (10 s).
  for (const [refusal, reason] of [
    ['error', /error before the upgrade completed/],
    [false, /closed before the upgrade completed \(code 1006\)/],
  ]) {
    test(`a refused upgrade (${refusal === 'error' ? 'error only, as in node' : 'error then close, as in browsers'}) fails the attempt at once`, async (t) => {
      const { net, client } = setup({ transports: ['websocket'], reconnect: { initialDelayMs: 50, maxDelayMs: 50 } });
      t.after(() => client.close());
      const errors = [];
      client.on('error', (e) => errors.push(e));
      let n = 0;
      net.acceptWebSocket = () => (++n === 1 ? refusal : true);
      const first = await next(net, 'websocket');
      const start = performance.now();
      const second = await next(net, 'websocket', 1000);
      assert.ok(performance.now() - start < 500, `next attempt after ${performance.now() - start} ms`);
      assert.equal(errors.length, 1);
      assert.equal(errors[0].kind, 'handshake');
      assert.match(errors[0].message, reason);
      // A close that comes late (after the attempt failed) reports nothing more.
      first.client.dispatchEvent(Object.assign(new Event('close'), { code: 1006, reason: '', wasClean: false }));
      await second.welcome();
      await client.ready();
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(errors.length, 1);
      assert.equal(client.state, 'connected');
      assert.equal(net.attempts.length, 2);
    });
  }

  test('a text message is a protocol error', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const conn = await connected(net, client, { transport: 'websocket' });
    const error = once(client, 'error', (e) => e.kind === 'protocol');
    conn.sendText('{"hello":"json"}');
    assert.match((await error)[0].message, /text message/);
    assert.equal(conn.closedByClient.code, 1000);
  });

  test('token refused at the upgrade (Goodbye 3007, close 3007): an auth error, no more attempts', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const errors = [];
    client.on('error', (e) => errors.push(e));
    const goodbye = once(client, 'goodbye');
    const closed = once(client, 'state', (s) => s === 'closed');
    const conn = await next(net, 'websocket');
    await conn.expect('Hello'); // the client may send Hello before it learns; the server reads nothing
    conn.goodbye(3007, 'token_invalid: bad signature', false);
    assert.deepEqual((await goodbye)[0], { code: 3007, reason: 'token_invalid: bad signature', reconnect: false });
    const [, cause] = await closed;
    assert.equal(cause.kind, 'auth');
    assert.equal(cause.code, 3007);
    assert.equal(cause.label, 'token_invalid');
    assert.deepEqual(errors.map((e) => e.kind), ['auth']);
    await assert.rejects(client.ready(), (e) => e.kind === 'auth');
    await noAttempt(net);
  });

  test('close 3007 without its Goodbye frame is the same auth error', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const closed = once(client, 'state', (s) => s === 'closed');
    const conn = await next(net, 'websocket');
    conn.closeWith(3007, 'token_invalid');
    const [, cause] = await closed;
    assert.equal(cause.kind, 'auth');
    assert.equal(cause.code, 3007);
    await noAttempt(net);
  });

  // PROTOCOL.md section 7: only the goodbye frame says every answer before it arrived.
  test('close 3000 without its Goodbye frame: an unanswered acknowledged publish rejects, never sent again', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    let conn = await connected(net, client, { transport: 'websocket' });
    const lost = client.publish('r', 'once', { ack: true });
    await conn.expect('Publish');
    conn.closeWith(3000, 'server shutting down');
    await assert.rejects(lost, (e) => e.kind === 'closed');
    conn = await connected(net, client, { transport: 'websocket' });
    const ping = client.ping();
    const asked = await conn.expect('Ping');
    assert.equal(conn.received.filter((f) => f.command.type === 'Publish').length, 0);
    conn.send(asked.id, { type: 'Pong' });
    await ping;
  });

  test('expired token at the upgrade (Goodbye 3002): a fresh token and a reconnect', async (t) => {
    const { net, client, tokens } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    const conn = await next(net, 'websocket');
    assert.equal(conn.token, 'tok-1');
    conn.goodbye(3002, 'token_expired', true);
    const conn2 = await next(net, 'websocket');
    assert.equal(conn2.token, `tok-${tokens()}`);
    assert.ok(tokens() >= 2);
    await conn2.welcome();
    await client.ready();
  });

  test('a session closed with a Goodbye then its close code: reconnect as the Goodbye says', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    let conn = await connected(net, client, { transport: 'websocket' });
    const bye = once(client, 'goodbye');
    conn.goodbye(3000, 'shutdown', true);
    assert.equal((await bye)[0].code, 3000);
    conn = await connected(net, client, { transport: 'websocket' });
    const closed = once(client, 'state', (s) => s === 'closed');
    conn.goodbye(3001, 'protocol_error: text message', false);
    assert.equal((await closed)[1].kind, 'goodbye');
    await noAttempt(net);
  });

  test('a failed upgrade (no Goodbye) is a network problem: retried with backoff', async (t) => {
    const { net, client } = setup({ transports: ['websocket'] });
    t.after(() => client.close());
    net.acceptWebSocket = (url, token) => token === 'tok-3';
    const errors = [];
    client.on('error', (e) => errors.push(e));
    await next(net, 'websocket');
    await next(net, 'websocket');
    const conn = await connected(net, client, { transport: 'websocket' });
    assert.deepEqual(errors.map((e) => e.kind), ['handshake', 'handshake']);
  });
});

describe('fallback from WebTransport to WebSocket', () => {
  test('transports default to webtransport, then websocket; WebTransport works: no WebSocket attempt', async (t) => {
    const { net, client } = setup();
    t.after(() => client.close());
    const changes = [];
    client.on('transport', (kind, skipped) => changes.push([kind, skipped]));
    const conn = await connected(net, client, { transport: 'webtransport' });
    assert.equal(client.transport, 'webtransport');
    assert.deepEqual(changes, [['webtransport', null]]);
    assert.equal(net.attempts.length, 1);
  });

  test('no WebTransport in this browser: straight to WebSocket', async (t) => {
    const { net, client } = setup({ WebTransport: undefined });
    t.after(() => client.close());
    assert.equal(globalThis.WebTransport, undefined, 'Node has no WebTransport');
    const changes = [];
    client.on('transport', (kind) => changes.push(kind));
    const conn = await connected(net, client, { transport: 'websocket' });
    assert.equal(client.transport, 'websocket');
    assert.deepEqual(changes, ['websocket']);
  });

  test('handshake failure: WebSocket with the same token; later reconnects skip WebTransport', async (t) => {
    const { net, client, tokens } = setup();
    t.after(() => client.close());
    net.accept = () => false;
    const changes = [];
    client.on('transport', (kind, skipped) => changes.push([kind, skipped?.kind]));
    const errors = [];
    client.on('error', (e) => errors.push(e));
    const wt = await next(net, 'webtransport');
    const ws = await next(net, 'websocket');
    assert.equal(ws.token, wt.token);
    assert.equal(tokens(), 1);
    await ws.welcome();
    await client.ready();
    assert.equal(client.transport, 'websocket');
    assert.deepEqual(changes, [['websocket', 'handshake']]);
    assert.deepEqual(errors, [], 'falling back is not an error');

    ws.kill();
    const again = await connected(net, client, { transport: 'websocket' });
    assert.equal(net.attempts.length, 3);
    assert.deepEqual(changes.length, 1, 'the transport did not change');
  });

  test('silent UDP: WebSocket once webTransportTimeoutMs has passed', async (t) => {
    const { net, client } = setup({ webTransportTimeoutMs: 300 });
    t.after(() => client.close());
    net.accept = () => 'silent';
    const started = performance.now();
    const wt = await next(net, 'webtransport');
    const ws = await next(net, 'websocket', 2000);
    const waited = performance.now() - started;
    assert.ok(waited >= 290, `waited ${waited} ms`);
    assert.equal(wt.closedByClient?.closeCode, 0, 'the pending WebTransport is closed');
    await ws.welcome();
    await client.ready();
    assert.equal(client.transport, 'websocket');
  });

  test('the default WebTransport deadline is 2.5 s', async (t) => {
    const { net, client } = setup({ webTransportTimeoutMs: undefined });
    t.after(() => client.close());
    net.accept = () => 'silent';
    const started = performance.now();
    await next(net, 'webtransport');
    await next(net, 'websocket', 5000);
    const waited = performance.now() - started;
    assert.ok(waited >= 2490 && waited < 4500, `waited ${waited} ms`);
  });

  test('WebTransport ready but no Welcome on it: WebSocket in the same attempt; a Goodbye is an answer', async (t) => {
    const { net, client } = setup({ connectTimeoutMs: 300 });
    t.after(() => client.close());
    const wt = await next(net, 'webtransport');
    await wt.expect('Hello'); // and never answered
    const ws = await next(net, 'websocket', 2000);
    await ws.welcome();
    await client.ready();
    assert.equal(client.transport, 'websocket');

    // Over a WebTransport that does answer, a Goodbye ends the attempt: no WebSocket behind it.
    const { net: net2, client: client2 } = setup();
    t.after(() => client2.close());
    const wt2 = await next(net2, 'webtransport');
    await wt2.expect('Hello');
    wt2.send(0, { type: 'Goodbye', code: 3008, reason: 'over_quota', reconnect: true });
    await next(net2, 'webtransport'); // the retry, after backoff: WebTransport again
  });

  test('a refused token: WebTransport fails, WebSocket tells (3007): auth error, WebTransport not blamed', async (t) => {
    const { net, client, url } = setup();
    t.after(() => client.close());
    net.accept = () => false;
    const closed = once(client, 'state', (s) => s === 'closed');
    await next(net, 'webtransport');
    const ws = await next(net, 'websocket');
    ws.goodbye(3007, 'token_invalid', false);
    const [, cause] = await closed;
    assert.equal(cause.kind, 'auth');
    // A new client on the same page tries WebTransport first again: it was the token, not UDP.
    const net2 = new FakeNetwork();
    const again = new QuiverClient({ url, token: () => 'good', heartbeat: false, pingIntervalMs: 0, WebTransport: net2.WebTransport, WebSocket: net2.WebSocket });
    t.after(() => again.close());
    await next(net2, 'webtransport');
  });

  test('both transports fail: one error naming both, then both are tried again', async (t) => {
    const { net, client } = setup();
    t.after(() => client.close());
    net.accept = () => false;
    net.acceptWebSocket = () => false;
    const error = once(client, 'error');
    await next(net, 'webtransport');
    await next(net, 'websocket');
    const [e] = await error;
    assert.equal(e.kind, 'handshake');
    assert.match(e.message, /WebSocket .* failed.*before that, WebTransport .* failed/);
    await next(net, 'webtransport');
    await next(net, 'websocket');
  });

  test('the transport event fires on each change: WebTransport, then WebSocket after UDP breaks', async (t) => {
    const { net, client } = setup();
    t.after(() => client.close());
    const changes = [];
    client.on('transport', (kind) => changes.push(kind));
    const wt = await connected(net, client, { transport: 'webtransport' });
    net.accept = () => false;
    wt.kill();
    await next(net, 'webtransport');
    const ws = await next(net, 'websocket');
    await ws.welcome();
    await waitUntil(() => client.state === 'connected');
    assert.deepEqual(changes, ['webtransport', 'websocket']);
    assert.equal(client.transport, 'websocket');
  });

  test('a remembered WebTransport failure expires after webTransportRetryMs: WebTransport is tried again', async (t) => {
    const { net, client } = setup({ webTransportRetryMs: 200 });
    t.after(() => client.close());
    net.accept = () => false;
    await next(net, 'webtransport');
    const ws = await connected(net, client, { transport: 'websocket' });
    // Within the retry time: straight to WebSocket.
    ws.kill();
    const ws2 = await next(net, 'websocket');
    await ws2.welcome();
    await waitUntil(() => client.state === 'connected');
    await new Promise((r) => setTimeout(r, 250));
    // After it: WebTransport first again (outside audit 61, M1: never again before).
    ws2.kill();
    await next(net, 'webtransport');
  });

  test('rememberWebTransportFailure: false tries WebTransport on every attempt', async (t) => {
    const { net, client } = setup({ rememberWebTransportFailure: false });
    t.after(() => client.close());
    net.accept = () => false;
    await next(net, 'webtransport');
    const ws = await connected(net, client, { transport: 'websocket' });
    ws.kill();
    await next(net, 'webtransport');
    await next(net, 'websocket');
  });

  test("rememberWebTransportFailure: 'sessionStorage' survives a reload; forgetWebTransportFailures clears it", async (t) => {
    const store = new Map();
    globalThis.sessionStorage = {
      getItem: (k) => store.get(k) ?? null,
      setItem: (k, v) => store.set(k, String(v)),
      removeItem: (k) => store.delete(k),
      key: (i) => [...store.keys()][i] ?? null,
      get length() {
        return store.size;
      },
    };
    t.after(() => delete globalThis.sessionStorage);
    const { net, client, url } = setup({ rememberWebTransportFailure: 'sessionStorage' });
    net.accept = () => false;
    await next(net, 'webtransport');
    const ws = await connected(net, client, { transport: 'websocket' });
    await client.close();
    const stored = [...store.entries()];
    assert.equal(stored.length, 1);
    assert.equal(stored[0][0], `quiver.webtransport-failed:${url}`);
    assert.ok(Math.abs(Date.now() - Number(stored[0][1])) < 5_000, stored[0][1]);

    // A reload: the page's memory is gone, sessionStorage is not.
    forgetPageMemoryOnly(store);
    const net2 = new FakeNetwork();
    const options = { url, token: () => 't', heartbeat: false, pingIntervalMs: 0, WebTransport: net2.WebTransport, WebSocket: net2.WebSocket };
    const reloaded = new QuiverClient({ ...options, rememberWebTransportFailure: 'sessionStorage' });
    await next(net2, 'websocket');
    await reloaded.close();

    // A failure time in the future (a clock set back, an edited store) is not believed.
    forgetPageMemoryOnly(store);
    store.set(`quiver.webtransport-failed:${url}`, String(Date.now() + 3_600_000));
    const future = new QuiverClient({ ...options, rememberWebTransportFailure: 'sessionStorage' });
    await next(net2, 'webtransport');
    await future.close();

    forgetWebTransportFailures();
    assert.equal(store.size, 0);
    const fresh = new QuiverClient({ ...options, rememberWebTransportFailure: 'sessionStorage' });
    t.after(() => fresh.close());
    await next(net2, 'webtransport');
  });
});

describe('a subscription stream that never arrives (browser stream limit)', () => {
  test('with WebSocket available: reported, then the client moves to WebSocket and re-subscribes there', async (t) => {
    const { net, client } = setup({ streamTimeoutMs: 200 });
    t.after(() => client.close());
    const wt = await connected(net, client, { transport: 'webtransport' });
    const got = [];
    const subscribed = client.subscribe('dash.r1', (m) => got.push(m.text()));
    const cmd = await wt.expect('Subscribe');
    // Subscribed, but the stream never comes (the browser refused more streams).
    wt.send(cmd.id, { type: 'Subscribed', room: 'dash.r1', position: null, recovery: NOT_REQUESTED });
    await subscribed;
    const [e] = await once(client, 'error', (e) => e.kind === 'subscription');
    assert.equal(e.room, 'dash.r1');
    assert.match(e.message, /no stream for dash.r1 within 200 ms/);
    const ws = await next(net, 'websocket');
    await ws.welcome();
    const again = await ws.expect('Subscribe');
    ws.send(again.id, { type: 'SubscriptionStream', room: 'dash.r1' });
    ws.send(again.id, { type: 'Subscribed', room: 'dash.r1', position: null, recovery: NOT_REQUESTED });
    ws.send(0, { type: 'Publication', room: 'dash.r1', position: null, payload: text('over ws') });
    await waitUntil(() => got.length === 1);
    assert.equal(client.transport, 'websocket');
    // And it stays there.
    ws.kill();
    await next(net, 'websocket');
  });

  test('the server ends a subscription with 114 stream_limit: the client moves to WebSocket and keeps the room', async (t) => {
    const { net, client } = setup();
    t.after(() => client.close());
    const wt = await connected(net, client, { transport: 'webtransport' });
    const got = [];
    const subscribed = client.subscribe('dash.r2', (m) => got.push(m.text()));
    const cmd = await wt.expect('Subscribe');
    wt.send(cmd.id, { type: 'Subscribed', room: 'dash.r2', position: null, recovery: NOT_REQUESTED });
    const sub = await subscribed;
    const error = once(client, 'error', (e) => e.kind === 'subscription');
    wt.send(0, { type: 'Unsubscribed', room: 'dash.r2', code: 114, reason: 'stream not opened within 5 s' });
    const [e] = await error;
    assert.equal(e.label, 'stream_limit');
    const ws = await connected(net, client, { transport: 'websocket' });
    const again = await ws.expect('Subscribe');
    assert.equal(again.command.room, 'dash.r2');
    ws.send(again.id, { type: 'SubscriptionStream', room: 'dash.r2' });
    ws.send(again.id, { type: 'Subscribed', room: 'dash.r2', position: null, recovery: NOT_REQUESTED });
    ws.send(0, { type: 'Publication', room: 'dash.r2', position: null, payload: text('kept') });
    await waitUntil(() => got.length === 1);
    assert.equal(sub.active, true);
  });

  test('114 stream_limit with WebTransport only: that subscription ends, visibly', async (t) => {
    const { net, client } = setup({ transports: ['webtransport'] });
    t.after(() => client.close());
    const wt = await connected(net, client, { transport: 'webtransport' });
    const subscribed = client.subscribe('dash.r3', () => {});
    const cmd = await wt.expect('Subscribe');
    wt.send(cmd.id, { type: 'Subscribed', room: 'dash.r3', position: null, recovery: NOT_REQUESTED });
    const sub = await subscribed;
    const error = once(client, 'error', (e) => e.kind === 'subscription');
    wt.send(0, { type: 'Unsubscribed', room: 'dash.r3', code: 114, reason: 'stream not opened within 5 s' });
    assert.equal((await error)[0].label, 'stream_limit');
    assert.equal(sub.active, false);
    assert.equal(client.state, 'connected');
    await noAttempt(net);
  });

  test('a stream that arrives in time, before or after Subscribed, is not reported', async (t) => {
    const { net, client } = setup({ streamTimeoutMs: 150 });
    t.after(() => client.close());
    const wt = await connected(net, client, { transport: 'webtransport' });
    const errors = [];
    client.on('error', (e) => errors.push(e));
    const a = client.subscribe('a', () => {});
    const ca = await wt.expect('Subscribe');
    wt.openStream().send(ca.id, { type: 'SubscriptionStream', room: 'a' });
    wt.send(ca.id, { type: 'Subscribed', room: 'a', position: null, recovery: NOT_REQUESTED });
    const b = client.subscribe('b', () => {});
    const cb = await wt.expect('Subscribe');
    wt.send(cb.id, { type: 'Subscribed', room: 'b', position: null, recovery: NOT_REQUESTED });
    await Promise.all([a, b]);
    setTimeout(() => wt.openStream().send(cb.id, { type: 'SubscriptionStream', room: 'b' }), 50);
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual(errors, []);
    assert.equal(net.attempts.length, 1);
  });

  // Nowhere to move: a server that confirmed the room and sent neither its stream nor 114 left
  // the room silent for the session's life (outside audit 115, F11). The session is replaced
  // and the next one subscribes again.
  for (const transport of ['webtransport', 'websocket']) {
    test(`${transport} only: reported, and the next session subscribes again`, async (t) => {
      const { net, client } = setup({ streamTimeoutMs: 150, transports: [transport] });
      t.after(() => client.close());
      const conn = await connected(net, client, { transport });
      const sub = client.subscribe('c', () => {});
      const cmd = await conn.expect('Subscribe');
      conn.send(cmd.id, { type: 'Subscribed', room: 'c', position: { epoch: 1n, offset: 4n }, recovery: NOT_REQUESTED });
      await sub;
      const [e] = await once(client, 'error', (e) => e.kind === 'subscription');
      assert.equal(e.room, 'c');
      assert.doesNotMatch(e.message, /moving/);
      const again = await next(net, transport);
      await again.welcome();
      const resub = await again.expect('Subscribe');
      assert.deepEqual(resub.command, { type: 'Subscribe', room: 'c', resume: { epoch: 1n, offset: 4n } });
      again.openStream().send(resub.id, { type: 'SubscriptionStream', room: 'c' });
      again.send(resub.id, { type: 'Subscribed', room: 'c', position: { epoch: 1n, offset: 4n }, recovery: { type: 'Recovered', replayed: 0 } });
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(client.state, 'connected');
      assert.equal(net.attempts.length, 2, 'the stream came: the second session stays');
    });
  }
});

/** Clears the module's page-lifetime memory while keeping `store` (what a reload does). */
function forgetPageMemoryOnly(store) {
  const saved = [...store.entries()];
  forgetWebTransportFailures();
  for (const [k, v] of saved) store.set(k, v);
}
