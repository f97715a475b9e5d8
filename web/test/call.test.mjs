// QuiverClient.call (PROTOCOL.md §11) against the in-memory fake server: the Call command on the
// wire, Reply and Error, AbortSignal, and no queueing while disconnected.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { QuiverError } from '../dist/quiver.js';
import { connected, fakeClient, once } from './fake-transport.mjs';

const HASH = 'ab'.repeat(32);
const text = (s) => new TextEncoder().encode(s);

for (const transport of ['webtransport', 'websocket']) {
  describe(`call over ${transport}`, () => {
    const setup = () => fakeClient({ serverCertificateHashes: [HASH], transports: [transport] });

    test('sends Call with method, payload, deadline and key; resolves with the Reply; an Error rejects with its code', async (t) => {
      const { net, client } = setup();
      t.after(() => client.close());
      // Before any session: refused at once, never queued.
      await assert.rejects(client.call('order.place', 'x'), (e) => e instanceof QuiverError && e.kind === 'closed');
      const conn = await connected(net, client);

      const answer = client.call('order.place', '{"qty":2}', { timeoutMs: 1500, idempotencyKey: 'k-1' });
      const cmd = await conn.expect('Call');
      assert.deepEqual(cmd.command, {
        type: 'Call',
        method: 'order.place',
        payload: text('{"qty":2}'),
        timeoutMs: 1500,
        idempotencyKey: 'k-1',
      });
      conn.send(cmd.id, { type: 'Reply', payload: text('o-42') });
      assert.deepEqual(await answer, text('o-42'));

      const defaults = client.call('order.place', new Uint8Array([1, 2]));
      const cmd2 = await conn.expect('Call');
      assert.equal(cmd2.command.timeoutMs, 0);
      assert.equal(cmd2.command.idempotencyKey, '');
      conn.send(cmd2.id, { type: 'Error', code: 118, message: 'no answer from the backend within 5s' });
      await assert.rejects(defaults, (e) => e.kind === 'command' && e.label === 'deadline_exceeded');

      const refused = client.call('billing.pay', 'x');
      conn.send((await conn.expect('Call')).id, { type: 'Error', code: 119, message: 'boom' });
      await assert.rejects(refused, (e) => e.label === 'backend_error' && /boom/.test(e.message));
    });

    test('an AbortSignal rejects the call at once, before or after sending', async (t) => {
      const { net, client } = setup();
      t.after(() => client.close());
      const conn = await connected(net, client);
      const aborted = AbortSignal.abort(new Error('user left'));
      await assert.rejects(client.call('order.place', 'x', { signal: aborted }), /user left/);

      const controller = new AbortController();
      const pending = client.call('order.place', 'x', { signal: controller.signal });
      const cmd = await conn.expect('Call');
      controller.abort();
      await assert.rejects(pending, (e) => e.name === 'AbortError');
      // A late reply for it is ignored; the session goes on.
      conn.send(cmd.id, { type: 'Reply', payload: text('late') });
      const next = client.call('order.place', 'y');
      conn.send((await conn.expect('Call')).id, { type: 'Reply', payload: text('ok') });
      assert.deepEqual(await next, text('ok'));
    });

    test('a call in flight when the connection drops rejects; while reconnecting calls fail fast', async (t) => {
      const { net, client } = setup();
      t.after(() => client.close());
      const conn = await connected(net, client);
      const inFlight = client.call('order.place', 'x');
      await conn.expect('Call');
      const down = once(client, 'state', (s) => s !== 'connected');
      conn.kill();
      await assert.rejects(inFlight, (e) => e instanceof QuiverError && e.kind === 'closed');
      await down;
      await assert.rejects(client.call('order.place', 'y'), (e) => e.kind === 'closed' && /not queued/.test(e.message));
      // Nothing was queued for the next session.
      const next = await connected(net, client);
      const ping = client.ping();
      const first = await next.expect('Ping');
      next.send(first.id, { type: 'Pong' });
      await ping;
    });

    // PROTOCOL.md section 7, code 3000: a draining server answers every command it carries out
    // before its goodbye.
    test('a call a drain left unanswered says it was not carried out; after another end it may have been', async (t) => {
      const { net, client } = setup();
      t.after(() => client.close());
      let conn = await connected(net, client);
      const drained = client.call('order.place', 'x');
      await conn.expect('Call');
      conn.send(0, { type: 'Goodbye', code: 3000, reason: 'server shutting down', reconnect: true });
      await assert.rejects(drained, (e) => e instanceof QuiverError && e.kind === 'closed' && e.notCarriedOut === true);

      conn = await connected(net, client);
      const expired = client.call('order.place', 'y');
      await conn.expect('Call');
      conn.send(0, { type: 'Goodbye', code: 3002, reason: 'token expired', reconnect: true });
      await assert.rejects(expired, (e) => e.kind === 'closed' && e.notCarriedOut === false);

      conn = await connected(net, client);
      const dropped = client.call('order.place', 'z');
      await conn.expect('Call');
      conn.kill();
      await assert.rejects(dropped, (e) => e.kind === 'closed' && e.notCarriedOut === false);
    });
  });
}
