// What "the demo works" means, checked through page.evaluate only, so the same checks drive a
// playwright (Chromium) page and a puppeteer (Firefox) page.
import assert from 'node:assert/strict';
import { waitFor } from './harness.mjs';

const text = (page, selector) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, selector);

export const tileCounts = (page) =>
  page.evaluate(() => [...document.querySelectorAll('[data-room^="dash.tile."]')].map((t) => Number(t.dataset.count)));

/** The demo's transport as the page shows it: `webtransport`, `websocket` or null. */
export const shownTransport = (page) => page.evaluate(() => document.getElementById('transport')?.dataset.transport ?? null);

/**
 * The demo at `origin` connects over `transport` within `withinMs`, says so, its tiles keep
 * updating and a chat message makes the round trip.
 */
export async function demoWorks(page, origin, transport, withinMs = 15_000) {
  const started = Date.now();
  await page.goto(`${origin}/`);
  await waitFor('#state to say connected', async () => (await text(page, '#state')) === 'connected', withinMs);
  await waitFor(`the page to say ${transport}`, async () => (await shownTransport(page)) === transport, withinMs - (Date.now() - started));
  const elapsed = Date.now() - started;
  const label = transport === 'webtransport' ? 'WebTransport' : 'WebSocket';
  assert.equal(await text(page, '#transport'), label);
  assert.equal(await page.evaluate(() => window.quiverDemo?.client.transport), transport, 'client.transport agrees with the page');

  await waitFor('every tile to receive samples', async () => (await tileCounts(page)).every((n) => n >= 5), 10_000);
  const before = await tileCounts(page);
  await waitFor('tiles to keep updating', async () => (await tileCounts(page)).every((n, i) => n >= before[i] + 10), 10_000);

  const message = `hello over ${transport} ${Date.now()}`;
  await page.evaluate((m) => {
    document.getElementById('chat-input').value = m;
    document.getElementById('chat-send').click();
  }, message);
  await waitFor('the chat message to come back', async () => (await text(page, '#chat-log')).includes(message), 10_000);

  // Presence (the demo tracks it in the chat namespace): the page lists its own user.
  const me = await text(page, '#user');
  await waitFor('the presence list to show this user', () =>
    page.evaluate((u) => !document.getElementById('presence').hidden && document.querySelector(`#presence-list li[data-user="${u}"]`) !== null, me), 10_000);
  return { connectedAfterMs: elapsed };
}
