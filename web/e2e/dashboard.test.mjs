// The demo page as a person sees it: served by `quiver serve` in development mode at /.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { ARTIFACTS, launchBrowser, newPage, removeDir, startServer, tempDir, waitFor } from './harness.mjs';

let server, browser, certDir;

before(async () => {
  certDir = await tempDir('quiver-e2e-dash-');
  server = await startServer({ name: 'server-dashboard', certDir });
  assert.equal(server.ready.dev, true, 'without --jwt-secret the server runs in development mode');
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (certDir) await removeDir(certDir);
});

let page;

const tileCounts = (page) =>
  page.$$eval('[data-room^="dash.tile."]', (tiles) => tiles.map((t) => Number(t.dataset.count)));

test('dashboard at / connects, tiles update live, chat round-trips, screenshot saved', async () => {
  page = await newPage(browser, 'dashboard');
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(`http://${server.httpAddr}/`);
  await waitFor('#state to say connected', async () => (await page.textContent('#state')) === 'connected', 15_000);

  const rooms = await page.$$eval('[data-room]', (tiles) => tiles.map((t) => t.dataset.room));
  for (let i = 0; i < 8; i++) assert.ok(rooms.includes(`dash.tile.${i}`), `tile dash.tile.${i} present`);

  // The demo publisher runs at a high rate: every tile keeps receiving.
  await waitFor('every tile to receive samples', async () => (await tileCounts(page)).every((n) => n >= 5), 10_000);
  const before = await tileCounts(page);
  const valueBefore = await page.textContent('[data-room="dash.tile.0"] .value');
  await waitFor('tiles to keep updating', async () => {
    const now = await tileCounts(page);
    return now.every((n, i) => n >= before[i] + 10);
  }, 10_000);
  assert.match(valueBefore, /^\d+(\.\d)?$/);
  await waitFor('an RTT reading', async () => /^\d+(\.\d+)? ms$/.test(await page.textContent('#rtt')), 10_000);

  const text = `hello from the dashboard test ${Date.now()}`;
  await page.fill('#chat-input', text);
  await page.click('#chat-send');
  await waitFor('the chat message to come back', async () => (await page.textContent('#chat-log')).includes(text), 10_000);

  // The dev server tracks presence in the chat namespace: the page lists itself as here.
  const me = await page.textContent('#user');
  await waitFor('the presence list to show this user', async () =>
    (await page.isVisible('#presence')) && (await page.$(`#presence-list li[data-user="${me}"]`)) !== null, 10_000);

  // Let the sparklines fill a little so the picture shows what a person sees.
  await new Promise((r) => setTimeout(r, 1500));
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });
  assert.equal(await page.isHidden('#error'), true, `no error shown: ${await page.textContent('#error')}`);
});

test('the dashboard recovers by itself when the server restarts', async () => {
  const { wtPort, httpAddr } = server;
  await server.stop();
  await waitFor('#state to leave connected', async () => (await page.textContent('#state')) !== 'connected', 15_000);
  server = await startServer({ name: 'server-dashboard', certDir, listen: `[::]:${wtPort}`, http: httpAddr });
  await waitFor('#state to say connected again', async () => (await page.textContent('#state')) === 'connected', 20_000);
  const before = await tileCounts(page);
  await waitFor('tiles to update again', async () => (await tileCounts(page)).every((n, i) => n >= before[i] + 10), 10_000);
  await waitFor('the error banner to clear', () => page.isHidden('#error'), 5_000);
});
