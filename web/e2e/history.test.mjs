// The TypeScript client's history() in headless Chromium against the real server, over each
// transport: pages through a history room without subscribing, positions as BigInt, the
// server's refusals as QuiverErrors with their codes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode } from '../dist/quiver.js';
import {
  SECRET,
  launchBrowser,
  newPage,
  removeDir,
  startPageServer,
  startClientPage,
  startServer,
  tempDir,
  token,
} from './harness.mjs';

let server, pages, browser, certDir;

before(async () => {
  certDir = await tempDir('quiver-e2e-history-');
  const config = path.join(certDir, 'quiver.toml');
  await writeFile(config, '[[namespaces]]\nname = "h"\nhistory_size = 4\nhistory_ttl = "1h"\n');
  server = await startServer({ name: 'server-history', certDir, jwtSecret: SECRET, config });
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
  test(`history() pages through a room without subscribing (${transport})`, async () => {
    const claims = { tenant: 'acme', user: `reader-${transport}`, subscribe: ['h.>'], publish: ['h.>'] };
    const page = await newPage(browser, `history-${transport}`);
    const { started } = await startClientPage(page, pages, server, () => token(claims), { transports: [transport] });
    await started;
    const room = `h.${transport}`;
    const published = [];
    for (let i = 0; i < 6; i++) published.push(await page.evaluate(([r, t]) => window.publish(r, t), [room, `m${i}`]));

    // In the page: three calls, their results as plain JSON (BigInt positions as strings).
    const result = await page.evaluate(async (r) => {
      const show = (p) => p && { epoch: String(p.epoch), offset: String(p.offset) };
      const page1 = await window.client.history(r, { limit: 3 });
      const last = page1.publications[page1.publications.length - 1];
      const page2 = await window.client.history(r, { since: last.position });
      const bigEpoch = typeof last.position.epoch === 'bigint';
      let refused = null;
      try {
        await window.client.history(r, { since: { epoch: last.position.epoch, offset: 1n } });
      } catch (e) {
        refused = { code: e.code, label: e.label };
      }
      let denied = null;
      try {
        await window.client.history('secret.room');
      } catch (e) {
        denied = { code: e.code, label: e.label };
      }
      return {
        bigEpoch,
        page1: { texts: page1.publications.map((m) => m.text()), truncated: page1.truncated, position: show(page1.position) },
        page2: { texts: page2.publications.map((m) => m.text()), truncated: page2.truncated, positions: page2.publications.map((m) => show(m.position)) },
        refused,
        denied,
      };
    }, room);

    // 4 kept of 6: m2..m5.
    assert.deepEqual(result.page1.texts, ['m2', 'm3', 'm4']);
    assert.equal(result.page1.truncated, true);
    assert.deepEqual(result.page1.position, published[5], 'the room position, exactly as the publish ack had it');
    assert.deepEqual(result.page2.texts, ['m5']);
    assert.equal(result.page2.truncated, false);
    assert.deepEqual(result.page2.positions, [published[5]]);
    assert.equal(result.bigEpoch, true);
    assert.deepEqual(result.refused, { code: ErrorCode.unrecoverable_position, label: 'unrecoverable_position' });
    assert.deepEqual(result.denied, { code: ErrorCode.permission_denied, label: 'permission_denied' });
    await page.close();
  });
}
