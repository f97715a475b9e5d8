// The reconnect burst against the real server (production mode, default limits: 256
// subscriptions, 200 commands/s): a page subscribed to 256 rooms queues 1,000 publishes while the
// server restarts; after the reconnect every re-subscribe and publish goes through, paced, with
// zero rate_limited refusals, and every publication comes back.
// Over WebTransport the page holds 96 rooms: Chromium and Firefox accept only about 100
// server-opened streams per session (measured with e2e/probe-stream-limit.mjs: 102 and 99 of 256
// rooms delivered), one per room, and the rooms beyond that get no stream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SECRET, launchBrowser, newPage, removeDir, startClientPage, startPageServer, startServer, tempDir, token, waitFor } from './harness.mjs';

const ROOMS = { webtransport: 96, websocket: 256 };
const PUBLISHES = 1000;
let server, pages, browser, certDir;

before(async () => {
  certDir = await tempDir('quiver-e2e-burst-');
  server = await startServer({ name: 'server-burst', certDir, jwtSecret: SECRET });
  pages = await startPageServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.stop();
  if (certDir) await removeDir(certDir);
});

for (const transport of ['webtransport', 'websocket']) {
  const rooms = Array.from({ length: ROOMS[transport] }, (_, i) => `burst.${transport}.r${i}`);
  test(`over ${transport}: reconnect with ${rooms.length} rooms and ${PUBLISHES} queued publishes, zero rate_limited`, { timeout: 120_000 }, async () => {
    const page = await newPage(browser, `burst-${transport}`);
    const claims = { tenant: 'acme', user: `burst-${transport}`, subscribe: ['>'], publish: ['>'] };
    // An acknowledged publish must be written within requestTimeoutMs of being made, or it is
    // withdrawn (kind timeout): the restart (about 2 s) and the paced burst (up to 1,256
    // commands at 190 a second, about 7 s) need more than the page's usual 3 s.
    const options = { transports: [transport], maxQueuedPublishes: PUBLISHES, requestTimeoutMs: 60_000 };
    await (await startClientPage(page, pages, server, () => token(claims), options)).started;
    assert.equal(await page.evaluate(() => window.client.transport), transport);
    assert.deepEqual(await page.evaluate((r) => window.subscribeMany(r), rooms), [], 'every subscribe accepted');

    const { wtPort, httpAddr } = server;
    await server.stop();
    await waitFor('the page to notice the restart', () => page.evaluate(() => window.client.state !== 'connected'), 15_000);
    await page.evaluate(([r, n]) => window.queuePublishes(r, n), [rooms, PUBLISHES]);
    server = await startServer({ name: 'server-burst', certDir, jwtSecret: SECRET, listen: `[::]:${wtPort}`, http: httpAddr });

    const outcomes = await page.evaluate(() => window.publishOutcomes());
    const tally = {};
    for (const o of outcomes) tally[o] = (tally[o] ?? 0) + 1;
    assert.deepEqual(tally, { ok: PUBLISHES });
    // Each room was re-subscribed before the publishes went out, so every one comes back.
    await waitFor('all publications to arrive', () => page.evaluate((n) => window.burst.received >= n, PUBLISHES), 20_000).catch(async (e) => {
      const seen = await page.evaluate(() => ({ received: window.burst.received, rooms: window.burst.rooms.size }));
      throw new Error(`${e.message}: ${seen.received} publications from ${seen.rooms} of ${rooms.length} rooms arrived`);
    });
    const { errors, goodbyes } = await page.evaluate(() => window.log);
    const refused = errors.filter((e) => e.label === 'rate_limited' || e.label === 'rate_abuse');
    assert.deepEqual(refused, []);
    // The restart's Goodbye (3000) may be lost with the QUIC connection; no other may come.
    assert.deepEqual(goodbyes.filter((g) => g.code !== 3000), [], 'no goodbye but the restart\'s');
    assert.equal(await page.evaluate(() => window.client.state), 'connected');
    await page.close();
  });
}

test('more rooms than the browser allows WebTransport streams: the client moves to WebSocket and every room delivers', { timeout: 120_000 }, async () => {
  const page = await newPage(browser, 'many-rooms');
  const claims = { tenant: 'acme', user: 'many-rooms', subscribe: ['>'], publish: ['>'] };
  // Default transports: WebTransport first.
  await (await startClientPage(page, pages, server, () => token(claims))).started;
  assert.equal(await page.evaluate(() => window.client.transport), 'webtransport');
  const rooms = Array.from({ length: 160 }, (_, i) => `many.r${i}`);
  assert.deepEqual(await page.evaluate((r) => window.subscribeMany(r), rooms), []);
  await waitFor('the client to move to WebSocket', () => page.evaluate(() => window.client.transport === 'websocket' && window.client.state === 'connected'), 30_000);
  // The server ends what it cannot open (114 stream_limit); the client's own deadline is later.
  const reported = await page.evaluate(() => window.log.errors.filter((e) => e.kind === 'subscription').map((e) => e.label ?? 'no stream'));
  assert.ok(reported.length > 0 && reported.every((l) => l === 'stream_limit' || l === 'no stream'), JSON.stringify(reported));
  await page.evaluate((r) => window.queuePublishes(r, r.length), rooms);
  assert.ok((await page.evaluate(() => window.publishOutcomes())).every((o) => o === 'ok'));
  await waitFor('every room to deliver', () => page.evaluate((n) => window.burst.rooms.size === n, rooms.length), 20_000);
  await page.close();
});
