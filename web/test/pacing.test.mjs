// The reconnect burst paced to Welcome.limits.commands_per_second, and dead-server detection by
// heartbeat pings, over both fake transports. The fake server meters commands like the real one.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { fakeClient, once, waitUntil } from './fake-transport.mjs';

const ROOMS = 256;
const PUBLISHES = 1000;

const setup = (transport, options = {}) => fakeClient({ transports: [transport], ...options });

/**
 * Subscribes ROOMS rooms, loses the connection, queues PUBLISHES acknowledged publishes, and
 * reconnects to a server that meters commands at `rate` per second. Returns that server once
 * every re-subscribe and publish was answered (or refused).
 */
async function reconnectBurst(transport, rate, options = {}) {
  const { net, client } = setup(transport, { maxQueuedPublishes: PUBLISHES, ...options });
  const limits = { maxSubscriptions: ROOMS, commandsPerSecond: rate };
  try {
    const first = await net.nextConnection();
    first.autoAnswer = true;
    await first.welcome({ limits });
    await client.ready();
    const rooms = Array.from({ length: ROOMS }, (_, i) => `dash.room-${i}`);
    await Promise.all(rooms.map((r) => client.subscribe(r, () => {})));

    const disconnected = once(client, 'state', (s) => s === 'disconnected');
    first.kill();
    await disconnected;
    // Queued while disconnected; settled (acked or refused) by the next session.
    const publishes = Array.from({ length: PUBLISHES }, (_, i) => client.publish(rooms[i % ROOMS], `m${i}`, { ack: true }).then(
      () => 'ok',
      (e) => e.label ?? e.kind,
    ));
    let resubscribed = 0;
    client.on('subscribed', () => resubscribed++);
    const errors = [];
    client.on('error', (e) => errors.push(e.label ?? e.kind));

    const second = await net.nextConnection();
    second.autoAnswer = true;
    await second.welcome({ limits, meter: true });
    const outcomes = await Promise.all(publishes);
    await waitUntil(() => second.received.length >= 1 + ROOMS + PUBLISHES, 30_000);
    await waitUntil(() => resubscribed + errors.filter((e) => e === 'rate_limited').length >= ROOMS, 10_000).catch(() => undefined);
    return { second, outcomes, resubscribed, errors };
  } finally {
    await client.close();
  }
}

for (const transport of ['webtransport', 'websocket']) {
  describe(`over ${transport}`, () => {
    test(`reconnect with ${ROOMS} rooms and ${PUBLISHES} queued publishes: zero rate_limited`, async () => {
      const { second, outcomes, resubscribed, errors } = await reconnectBurst(transport, 1000);
      assert.equal(second.rateLimited, 0);
      assert.equal(resubscribed, ROOMS);
      assert.deepEqual(errors, []);
      assert.ok(outcomes.every((o) => o === 'ok'), `outcomes: ${[...new Set(outcomes)].join(', ')}`);
      const types = second.received.map((f) => f.command.type);
      assert.equal(types.filter((t) => t === 'Subscribe').length, ROOMS);
      assert.equal(types.filter((t) => t === 'Publish').length, PUBLISHES);
      // Subscriptions first, then the publishes in the order they were made.
      assert.equal(types.indexOf('Publish'), 1 + ROOMS);
      const payloads = second.received.filter((f) => f.command.type === 'Publish').map((f) => new TextDecoder().decode(f.command.payload));
      assert.deepEqual(payloads, Array.from({ length: PUBLISHES }, (_, i) => `m${i}`));
      if (second.violations) assert.deepEqual(second.violations, []);
    });

    test('without pacing the same burst is refused (the fake server meters like the real one)', async () => {
      // At 200/s the 1,256 commands would need over 5 s to stay within the limit; unpaced they
      // arrive within a fraction of that however slow the machine.
      const { second, outcomes } = await reconnectBurst(transport, 200, { paceCommands: false });
      assert.ok(second.rateLimited > 0, 'unpaced, the burst exceeds the rate limit');
      assert.ok(outcomes.includes('rate_limited'));
    });

    test('a ping goes ahead of commands waiting for the pacer', async (t) => {
      const { net, client } = setup(transport);
      t.after(() => client.close());
      const conn = await net.nextConnection();
      conn.autoAnswer = true;
      await conn.welcome({ limits: { commandsPerSecond: 100 }, meter: true });
      await client.ready();
      // 300 commands at 95/s after a burst of 50 take about 2.6 s to write.
      const publishes = Array.from({ length: 300 }, (_, i) => client.publish('r', `p${i}`));
      const rtt = await client.ping();
      const pingAt = conn.received.findIndex((f) => f.command.type === 'Ping');
      assert.ok(pingAt > 0 && pingAt < 200, `the ping was command ${pingAt} of ${conn.received.length}`);
      assert.ok(rtt < 2000, `rtt ${rtt}`);
      await Promise.all(publishes);
      assert.equal(conn.rateLimited, 0);
    });

    test('publishes still waiting for the pacer when the connection drops are sent once, on the next session', async (t) => {
      const { net, client } = setup(transport);
      t.after(() => client.close());
      const conn = await net.nextConnection();
      conn.autoAnswer = true;
      await conn.welcome({ limits: { commandsPerSecond: 200 } });
      await client.ready();
      const sent = Array.from({ length: 300 }, (_, i) => client.publish('r', `p${i}`));
      await waitUntil(() => conn.received.length > 120);
      conn.kill();
      const next = await net.nextConnection();
      next.autoAnswer = true;
      await next.welcome({ limits: { commandsPerSecond: 200 } });
      await Promise.all(sent);
      const payloads = [...conn.received, ...next.received]
        .filter((f) => f.command.type === 'Publish')
        .map((f) => new TextDecoder().decode(f.command.payload));
      assert.deepEqual(payloads, Array.from({ length: 300 }, (_, i) => `p${i}`), 'each exactly once, in order');
      assert.ok(next.received.some((f) => f.command.type === 'Publish'), 'some went out on the second session');
    });

    test('acknowledged publishes still waiting for the pacer when the connection drops are sent once, on the next session, and acknowledged', async (t) => {
      const { net, client } = setup(transport);
      t.after(() => client.close());
      const conn = await net.nextConnection();
      conn.autoAnswer = true;
      await conn.welcome({ limits: { commandsPerSecond: 200 } });
      await client.ready();
      const outcomes = await (async () => {
        const sent = Array.from({ length: 300 }, (_, i) => client.publish('r', `p${i}`, { ack: true }).then(() => 'ok', (e) => e.kind));
        await waitUntil(() => conn.received.length > 120);
        conn.kill();
        const next = await net.nextConnection();
        next.autoAnswer = true;
        await next.welcome({ limits: { commandsPerSecond: 200 } });
        const settled = await Promise.all(sent);
        const payloads = (c) => c.received.filter((f) => f.command.type === 'Publish').map((f) => new TextDecoder().decode(f.command.payload));
        const [first, second] = [payloads(conn), payloads(next)];
        assert.deepEqual([...first, ...second], Array.from({ length: 300 }, (_, i) => `p${i}`), 'each exactly once, in order');
        assert.ok(second.length > 0, 'some went out on the second session');
        // Never written before the drop: sent on the next session and acknowledged there.
        for (const p of second) assert.equal(settled[Number(p.slice(1))], 'ok', p);
        // Written before the drop: answered, or lost with the connection (at most once).
        for (const p of first) assert.ok(['ok', 'closed'].includes(settled[Number(p.slice(1))]), p);
        return settled;
      })();
      assert.equal(outcomes.length, 300);
    });

    test('heartbeat: a server that stops answering is replaced within idle + timeout', async (t) => {
      const { net, client } = setup(transport, { heartbeat: { idleMs: 100, timeoutMs: 200 } });
      t.after(() => client.close());
      const conn = await net.nextConnection();
      await conn.welcome();
      await client.ready();
      const dead = once(client, 'error', (e) => e.kind === 'timeout', 2000);
      const started = performance.now();
      await conn.expect('Ping', 1000); // never answered
      const [e] = await dead;
      const after = performance.now() - started;
      assert.match(e.message, /presumed dead/);
      assert.ok(after < 1000, `noticed after ${after} ms`);
      const next = await net.nextConnection();
      await next.welcome();
      await waitUntil(() => client.state === 'connected');
    });

    test('heartbeat: an answering server keeps the session; traffic makes pings unnecessary', async (t) => {
      const { net, client } = setup(transport, { heartbeat: { idleMs: 100, timeoutMs: 200 } });
      t.after(() => client.close());
      const conn = await net.nextConnection();
      conn.autoAnswer = true;
      await conn.welcome();
      await client.ready();
      await new Promise((r) => setTimeout(r, 700));
      const pings = conn.received.filter((f) => f.command.type === 'Ping').length;
      assert.ok(pings >= 3, `${pings} pings in 700 ms of silence`);
      assert.equal(client.state, 'connected');
      assert.ok(client.rtt !== null, 'heartbeat pings report the RTT');

      // Frames arriving more often than idleMs: no ping at all.
      const subscribed = client.subscribe('busy', () => {});
      await subscribed;
      const before = conn.received.length;
      const stream = conn.openStream();
      const id = conn.received.find((f) => f.command.type === 'Subscribe').id;
      stream.send(id, { type: 'SubscriptionStream', room: 'busy' });
      for (let i = 0; i < 12; i++) {
        stream.send(0, { type: 'Publication', room: 'busy', position: null, payload: new Uint8Array([i]) });
        await new Promise((r) => setTimeout(r, 50));
      }
      const during = conn.received.slice(before).filter((f) => f.command.type === 'Ping').length;
      assert.ok(during <= 1, `${during} pings while traffic flowed`);
      assert.equal(net.attempts.length, 1);
    });

    test('heartbeat: a server that dies after answering is noticed idle + timeout after its last answer', async (t) => {
      const { net, client } = setup(transport, { heartbeat: { idleMs: 100, timeoutMs: 400 } });
      t.after(() => client.close());
      const conn = await net.nextConnection();
      conn.autoAnswer = true;
      await conn.welcome();
      await client.ready();
      await waitUntil(() => conn.received.filter((f) => f.command.type === 'Ping').length >= 2);
      const dead = once(client, 'error', (e) => e.kind === 'timeout', 3000);
      conn.autoAnswer = false; // the server dies: nothing more is answered
      const diedAt = performance.now();
      await dead;
      const after = performance.now() - diedAt;
      // At most idle (100) + timeout (400) after the last answer, which came before diedAt.
      assert.ok(after < 650, `noticed ${after} ms after the server died`);
    });

    test('heartbeat defaults: a silent server is noticed within 3 s', async (t) => {
      const { net, client } = setup(transport, { heartbeat: undefined });
      t.after(() => client.close());
      const conn = await net.nextConnection();
      await conn.welcome();
      await client.ready();
      const welcomedAt = performance.now();
      const dead = once(client, 'error', (e) => e.kind === 'timeout', 5000);
      const ping = await conn.expect('Ping', 2000);
      assert.equal(ping.command.type, 'Ping');
      await dead;
      const after = performance.now() - welcomedAt;
      assert.ok(after >= 2900 && after < 3600, `noticed ${after} ms after the last frame`);
    });
  });
}
