// The heartbeat's timers (outside audit 121, F1): one per session at any time, however many
// Pings the server answers, and none once the client is closed. Each answered Ping used to leave
// its deadline timer running beside the next one: one more live timer per idle period, and
// callbacks growing with the square of the session's age.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { connected, fakeClient } from './fake-transport.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Watches the timers the bundle (dist/quiver.js) starts, by wrapping the global setTimeout and
 * clearTimeout (which it calls by name): a timer is live from its start until it fires or is
 * cleared. `heartbeat()` counts those started by the heartbeat's `schedule`, `all()` every one.
 */
function watchTimers() {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const live = new Map();
  globalThis.setTimeout = function (fn, ms, ...args) {
    // [0] Error, [1] this wrapper, [2] whoever called setTimeout.
    const caller = (new Error().stack ?? '').split('\n')[2] ?? '';
    const handle = realSet(
      function (...a) {
        live.delete(handle);
        return fn.apply(this, a);
      },
      ms,
      ...args,
    );
    if (caller.includes('dist/quiver.js')) live.set(handle, caller.trim());
    return handle;
  };
  globalThis.clearTimeout = function (handle) {
    live.delete(handle);
    return realClear(handle);
  };
  return {
    heartbeat: () => [...live.values()].filter((c) => c.startsWith('at schedule (')).length,
    all: () => [...live.values()],
    restore: () => {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    },
  };
}

for (const transport of ['webtransport', 'websocket']) {
  describe(`heartbeat timers over ${transport}`, () => {
    test('an idle session whose server answers every Ping keeps one heartbeat timer; none is left after close()', { timeout: 10_000 }, async (t) => {
      const timers = watchTimers();
      t.after(() => timers.restore());
      const { net, client } = fakeClient({ transports: [transport], heartbeat: { idleMs: 20, timeoutMs: 200 } });
      t.after(() => client.close());
      const conn = await connected(net, client);
      conn.autoAnswer = true;
      // 50 idle periods of 20 ms, each with its Ping and Pong (more, with the timers' slack).
      const counts = [];
      for (let i = 0; i < 10; i++) {
        await sleep(100);
        counts.push(timers.heartbeat());
      }
      const pings = conn.received.filter((f) => f.command.type === 'Ping').length;
      assert.ok(pings >= 10, `${pings} Pings answered`);
      assert.equal(client.state, 'connected');
      assert.deepEqual(counts, counts.map(() => 1), `live heartbeat timers, every 100 ms: ${counts.join(', ')}`);
      await client.close();
      assert.equal(timers.heartbeat(), 0);
      assert.deepEqual(timers.all(), [], 'no timer of the client outlives close()');
    });
  });
}
