// Several servers (`urls`, docs/deployment.md): the first connection goes to the first URL, every
// later attempt to the next one, round robin, as the Rust client's `--url a,b` does; each entry
// gets its WebSocket URL and the WebTransport fallback as a lone `url` would.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { QuiverClient } from '../dist/quiver.js';
import { FakeNetwork, fakeClient, once, waitUntil } from './fake-transport.mjs';

const text = (s) => new TextEncoder().encode(s);
const HASH = 'cd'.repeat(32);

// Failed WebTransports are remembered per URL for the whole process: fresh ports per test.
let port = 6000;
const ports = () => [++port, ++port, ++port];

/** A fake client on `urls` (no `url`). */
function setup(urls, options = {}) {
  return fakeClient({ url: undefined, urls, ...options });
}

/** The next connection attempt, checked to be over `transport` to `host:port`. */
async function next(net, transport, host, ms) {
  const conn = await net.nextConnection(ms);
  assert.equal(`${conn.transport} ${conn.url.host}`, `${transport} ${host}`, `attempt to ${conn.url}`);
  return conn;
}

describe('urls', () => {
  test('bad urls options are clear errors at construction', () => {
    const net = new FakeNetwork();
    const base = { token: () => 'x', WebTransport: net.WebTransport, WebSocket: net.WebSocket };
    const urls = ['https://a:1/v1', 'https://b:2/v1'];
    assert.throws(() => new QuiverClient({ ...base, url: urls[0], urls }), /give url or urls, not both/);
    assert.throws(() => new QuiverClient({ ...base, urls: [] }), /urls must be a non-empty array/);
    assert.throws(() => new QuiverClient({ ...base, urls: 'https://a:1/v1' }), /urls must be a non-empty array/);
    assert.throws(() => new QuiverClient({ ...base, urls: [urls[0], 'http://b/v1'] }), /urls\[1\] must be https: \(WebTransport\) or ws:\/wss: \(WebSocket\)/);
    assert.throws(() => new QuiverClient({ ...base, urls: [urls[0], 'not a url'] }), /urls\[1\] is not a URL/);
    assert.throws(() => new QuiverClient({ ...base, urls, webSocketUrl: 'ws://a:3/v1/ws' }), /webSocketUrl .* cannot be combined with urls/);
    // Every entry must be reachable over some transport of `transports`.
    assert.throws(
      () => new QuiverClient({ ...base, urls: [urls[0], 'wss://c:3/v1/ws'], transports: ['webtransport'] }),
      /no usable transport for urls\[1\]: webtransport: no https: url/,
    );
    // Valid: https: and ws: entries mixed, and a single entry.
    for (const ok of [[urls[0], 'ws://c:3/v1/ws'], [urls[1]]]) {
      const client = new QuiverClient({ ...base, urls: ok, reconnect: false, pingIntervalMs: 0, heartbeat: false });
      client.close();
    }
  });

  test('the first connection goes to the first URL; a failed attempt moves to the next, round robin', async (t) => {
    const [a, b, c] = ports().map((p) => `h${p}:${p}`);
    const { net, client } = setup([`https://${a}/v1`, `https://${b}/v1`, `https://${c}/v1`], { transports: ['webtransport'] });
    t.after(() => client.close());
    net.accept = (url) => url.host === c;
    await next(net, 'webtransport', a);
    await next(net, 'webtransport', b);
    const conn = await next(net, 'webtransport', c);
    await conn.welcome();
    await client.ready();
    // Refused everywhere now: the rotation wraps around to the first.
    net.accept = () => false;
    conn.kill();
    await next(net, 'webtransport', a);
    await next(net, 'webtransport', b);
    await next(net, 'webtransport', c);
    await next(net, 'webtransport', a);
    assert.ok(net.attempts.every((x) => /^tok-\d+$/.test(x.token)));
  });

  for (const transport of ['webtransport', 'websocket']) {
    test(`over ${transport}: a killed connection reconnects at the next URL and resumes the subscriptions there`, async (t) => {
      const [pa, pb] = ports();
      const urls = transport === 'webtransport' ? [`https://a:${pa}/v1`, `https://b:${pb}/v1`] : [`wss://a:${pa}/v1/ws`, `ws://b:${pb}/v1/ws`];
      const { net, client } = setup(urls, { transports: [transport] });
      t.after(() => client.close());
      const got = [];
      const subscribed = client.subscribe('dash.cpu', (m) => got.push(m.text()));
      let conn = await next(net, transport, `a:${pa}`);
      await conn.welcome();
      const cmd = await conn.expect('Subscribe');
      conn.send(cmd.id, { type: 'Subscribed', room: 'dash.cpu', position: { epoch: 7n, offset: 10n }, recovery: { type: 'NotRequested' } });
      await subscribed;
      const stream = conn.openStream();
      stream.send(cmd.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
      stream.send(0, { type: 'Publication', room: 'dash.cpu', position: { epoch: 7n, offset: 11n }, payload: text('from a') });
      await waitUntil(() => got.length === 1);

      const disconnected = once(client, 'state', (s) => s === 'disconnected');
      conn.kill();
      await disconnected;
      conn = await next(net, transport, `b:${pb}`);
      if (transport === 'websocket') assert.equal(conn.url.protocol, 'ws:');
      await conn.welcome();
      const resub = await conn.expect('Subscribe');
      assert.deepEqual(resub.command, { type: 'Subscribe', room: 'dash.cpu', resume: { epoch: 7n, offset: 11n } });
      conn.send(resub.id, { type: 'Subscribed', room: 'dash.cpu', position: { epoch: 7n, offset: 12n }, recovery: { type: 'Recovered', replayed: 1 } });
      const s2 = conn.openStream();
      s2.send(resub.id, { type: 'SubscriptionStream', room: 'dash.cpu' });
      s2.send(0, { type: 'Publication', room: 'dash.cpu', position: { epoch: 7n, offset: 12n }, payload: text('from b') });
      await waitUntil(() => got.length === 2);
      assert.deepEqual(got, ['from a', 'from b']);

      // And back to the first.
      conn.kill();
      conn = await next(net, transport, `a:${pa}`);
      await conn.welcome();
      const again = await conn.expect('Subscribe');
      assert.deepEqual(again.command.resume, { epoch: 7n, offset: 12n });
    });
  }

  test('WebTransport falls back to WebSocket per URL: derived wss: URL, pinned hashes, failure remembered per URL', async (t) => {
    const [pa, pb, pc] = ports();
    const { net, client } = setup([`https://a:${pa}/v1`, `https://b:${pb}/v1`, `ws://c:${pc}/v1/ws`], {
      webTransportTimeoutMs: 200,
      serverCertificateHashes: [HASH],
    });
    t.after(() => client.close());
    const skipped = [];
    client.on('transport', (kind, why) => skipped.push([kind, why?.kind ?? null]));
    net.accept = () => false; // UDP blocked everywhere
    // a: WebTransport, then WebSocket on a's host and port.
    const wtA = await next(net, 'webtransport', `a:${pa}`);
    assert.equal(wtA.options.serverCertificateHashes[0].value[0], 0xcd);
    let conn = await next(net, 'websocket', `a:${pa}`);
    assert.equal(conn.url.href.replace(/\?.*/, ''), `wss://a:${pa}/v1/ws`);
    await conn.welcome();
    await client.ready();
    // b: its WebTransport never failed, so it is tried first there too.
    conn.kill();
    const wtB = await next(net, 'webtransport', `b:${pb}`);
    assert.equal(wtB.options.serverCertificateHashes.length, 1);
    conn = await next(net, 'websocket', `b:${pb}`);
    assert.equal(conn.url.href.replace(/\?.*/, ''), `wss://b:${pb}/v1/ws`);
    await conn.welcome();
    // c: a ws: entry, WebSocket only.
    conn.kill();
    conn = await next(net, 'websocket', `c:${pc}`);
    await conn.welcome();
    // a again: its WebTransport failure is remembered, straight to WebSocket.
    conn.kill();
    conn = await next(net, 'websocket', `a:${pa}`);
    await conn.welcome();
    await client.ready();
    assert.deepEqual(skipped, [['websocket', 'handshake']]);
  });
});
