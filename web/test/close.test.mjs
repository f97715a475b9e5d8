// close(): what publish() accepted is carried out before the client leaves, within
// requestTimeoutMs (outside audit 115, F2, found in the Rust client: a close right behind the
// publishes dropped those still waiting for the pacer, and a WebTransport close discards what the
// server has not read).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { connected, fakeClient } from './fake-transport.mjs';

/** Each promise's outcome, once all have settled. */
async function outcomes(promises) {
  return Promise.allSettled(promises);
}

for (const transport of ['webtransport', 'websocket']) {
  describe(`close() over ${transport}`, () => {
    test('writes the publishes still waiting for the pacer, answers the acknowledged ones, then leaves', async (t) => {
      const { net, client } = fakeClient({ transports: [transport] });
      t.after(() => client.close());
      // Paced at 19 a second after a burst of 10: most of these wait for the pacer.
      const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 20 } } });
      conn.autoAnswer = true;
      const sub = await client.subscribe('chat.room', () => {});
      const published = [];
      for (let n = 0; n < 30; n++) published.push(client.publish('chat.room', `m${n}`));
      const acked = client.publish('chat.room', 'last', { ack: true });
      const closing = client.close();
      // Nothing new is taken, and the subscription ends at once.
      assert.equal(sub.active, false);
      await assert.rejects(client.publish('chat.room', 'late'), (e) => e.kind === 'closed');
      await closing;
      const settled = await outcomes([...published, acked]);
      assert.deepEqual(
        settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message),
        [],
      );
      assert.deepEqual((await acked), null);
      const texts = conn.received.filter((f) => f.command.type === 'Publish').map((f) => new TextDecoder().decode(f.command.payload));
      assert.deepEqual(texts, [...Array.from({ length: 30 }, (_, n) => `m${n}`), 'last']);
      // Left after them: the control stream finished (WebTransport), the close frame sent (WebSocket).
      if (transport === 'webtransport') assert.equal(conn.finishedByClient, true);
      else assert.equal(conn.closedByClient?.code, 1000);
      assert.equal(client.state, 'closed');
    });

    test('is bounded by requestTimeoutMs: what is still unwritten then rejects, not carried out', async (t) => {
      const { net, client } = fakeClient({ transports: [transport], requestTimeoutMs: 300 });
      t.after(() => client.close());
      // 9 a second after a burst of 5: 40 would take 4 s.
      const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 10 } } });
      const published = [];
      for (let n = 0; n < 40; n++) published.push(client.publish('chat.room', `m${n}`));
      // A subscribe still waiting is withdrawn, never sent: its reply would have nowhere to go.
      const subscribing = client.subscribe('chat.other', () => {}).then(() => null, (e) => e);
      const start = Date.now();
      await client.close();
      const took = Date.now() - start;
      assert.ok(took < 1_500, `close() took ${took} ms`);
      const settled = await outcomes(published);
      const written = settled.filter((s) => s.status === 'fulfilled').length;
      const sent = conn.received.filter((f) => f.command.type === 'Publish').length;
      assert.equal(sent, written, 'every publish that resolved was written, and no other');
      // The burst went at once; the pacer let more through while close() waited.
      assert.ok(written > 5 && written < 40, `${written} written`);
      for (const s of settled.slice(written)) {
        assert.equal(s.status, 'rejected');
        assert.equal(s.reason.kind, 'closed');
        assert.equal(s.reason.notCarriedOut, true);
      }
      assert.equal((await subscribing)?.kind, 'closed');
      assert.equal(conn.received.filter((f) => f.command.type === 'Subscribe').length, 0);
    });
  });
}

test('close() over WebTransport: a server that does not close after the FIN holds it at most requestTimeoutMs', async (t) => {
  const { net, client } = fakeClient({ transports: ['webtransport'], requestTimeoutMs: 300 });
  t.after(() => client.close());
  const conn = await connected(net, client);
  conn.ignoreFin = true;
  await client.publish('chat.room', 'one');
  const start = Date.now();
  await client.close();
  const took = Date.now() - start;
  assert.ok(took >= 250 && took < 1_500, `close() took ${took} ms`);
  assert.equal(conn.finishedByClient, true);
  assert.notEqual(conn.closedByClient, null, 'closed by the client at the deadline');
  assert.equal(client.state, 'closed');
});

// close() during a connection attempt ends it at once, in every phase, and nothing reconnects
// after (outside audit 121, F2: a silent WebTransport handshake, a WebSocket upgrade that never
// completed and a token callback that hung each held close() for up to connectTimeoutMs).
describe('close() during a connection attempt', () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // Long deadlines: close() must not wait for them.
  const slow = { connectTimeoutMs: 4_000, webTransportTimeoutMs: 4_000 };

  /** Times `client.close()`, then checks that no connection attempt (`attempts()` counts them)
   *  and no token call (`tokens()`) follows it. */
  async function closesAtOnce(client, attempts, tokens) {
    const before = { attempts: attempts(), tokens: tokens() };
    const started = Date.now();
    await client.close();
    const took = Date.now() - started;
    assert.ok(took < 500, `close() took ${took} ms`);
    assert.equal(client.state, 'closed');
    // Past the backoff's first delay (at least 100 ms): a reconnect would have started by now.
    await sleep(400);
    assert.equal(attempts(), before.attempts, 'no connection attempt after close()');
    assert.equal(tokens(), before.tokens, 'no token asked for after close()');
  }

  test('a WebTransport handshake that never completes (blocked UDP)', { timeout: 10_000 }, async () => {
    const { net, client, tokens } = fakeClient({ transports: ['webtransport'], ...slow });
    net.accept = () => 'silent';
    const conn = await net.nextConnection();
    await sleep(50);
    await closesAtOnce(client, () => net.attempts.length, tokens);
    assert.ok(conn.closedByClient, 'the WebTransport session given up was closed');
  });

  test('a WebSocket upgrade that never completes', { timeout: 10_000 }, async () => {
    const made = [];
    // A socket that stays CONNECTING until closed (a proxy holding the upgrade request).
    class HangingWebSocket extends EventTarget {
      constructor(url) {
        super();
        this.url = url;
        this.readyState = 0;
        this.bufferedAmount = 0;
        this.closedWith = null;
        made.push(this);
      }
      send() {
        throw new Error('InvalidStateError: still CONNECTING');
      }
      close(code, reason) {
        if (this.readyState >= 2) return;
        this.closedWith = { code, reason };
        this.readyState = 3;
        setImmediate(() => this.dispatchEvent(Object.assign(new Event('close'), { code: 1006, reason: '' })));
      }
    }
    const { client, tokens } = fakeClient({ transports: ['websocket'], WebSocket: HangingWebSocket, ...slow });
    while (made.length === 0) await sleep(10);
    await sleep(50);
    await closesAtOnce(client, () => made.length, tokens);
    assert.notEqual(made[0].closedWith, null, 'the socket given up was closed');
  });

  test('a token callback that never returns', { timeout: 10_000 }, async () => {
    let calls = 0;
    const { net, client } = fakeClient({ token: () => (calls++, new Promise(() => {})), ...slow });
    await sleep(50);
    assert.equal(calls, 1);
    await closesAtOnce(client, () => net.attempts.length, () => calls);
    assert.equal(net.attempts.length, 0);
  });

  test('a token that comes after close() is not used', { timeout: 10_000 }, async () => {
    let give = null;
    let calls = 0;
    const { net, client } = fakeClient({ token: () => (calls++, new Promise((r) => (give = r))), ...slow });
    await sleep(50);
    await closesAtOnce(client, () => net.attempts.length, () => calls);
    give('late-token');
    await sleep(200);
    assert.equal(net.attempts.length, 0, 'no connection opened with the late token');
  });
});
