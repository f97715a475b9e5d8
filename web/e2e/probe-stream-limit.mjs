// Measurement, not a test: how many subscriptions a browser can receive on over one WebTransport
// session (each is a server-opened unidirectional stream, and browsers cap how many may be open
// at once). Subscribes ROOMS rooms, publishes one message to each, counts the rooms heard from.
// Usage: node e2e/probe-stream-limit.mjs [rooms]   (needs target/debug/quiver, chromium, firefox-esr)
import {
  SECRET,
  launchBrowser,
  launchFirefox,
  newFirefoxPage,
  newPage,
  removeDir,
  startClientPage,
  startPageServer,
  startServer,
  tempDir,
  token,
} from './harness.mjs';

const ROOMS = Number(process.argv[2] ?? 256);
const certDir = await tempDir('quiver-probe-');
const server = await startServer({ name: 'server-probe', certDir, jwtSecret: SECRET });
const pages = await startPageServer();

async function probe(name, page, transport) {
  const claims = { tenant: 'acme', user: 'probe', subscribe: ['>'], publish: ['>'] };
  await (await startClientPage(page, pages, server, () => token(claims), { transports: [transport] })).started;
  const rooms = Array.from({ length: ROOMS }, (_, i) => `probe.${name}.${transport}.r${i}`);
  const refused = await page.evaluate((r) => window.subscribeMany(r), rooms);
  await page.evaluate((r) => window.queuePublishes(r, r.length), rooms);
  const outcomes = await page.evaluate(() => window.publishOutcomes());
  await new Promise((r) => setTimeout(r, 5000));
  const heard = await page.evaluate(() => window.burst.rooms.size);
  const errors = {};
  for (const e of await page.evaluate(() => window.log.errors.map((e) => e.label ?? e.kind))) errors[e] = (errors[e] ?? 0) + 1;
  console.log(
    `${name} over ${transport}: ${ROOMS} subscribed (${refused.length} refused), ${outcomes.filter((o) => o === 'ok').length} publishes acked, ` +
      `${heard} rooms delivered; client errors: ${JSON.stringify(errors)}`,
  );
}

try {
  const chromium = await launchBrowser();
  try {
    await probe('chromium', await newPage(chromium, 'probe-chromium'), 'webtransport');
    await probe('chromium', await newPage(chromium, 'probe-chromium-ws'), 'websocket');
  } finally {
    await chromium.close();
  }
  const firefox = await launchFirefox();
  try {
    await probe('firefox', await newFirefoxPage(firefox, 'probe-firefox'), 'webtransport');
  } finally {
    await firefox.close();
  }
} finally {
  await pages.close();
  await server.stop();
  await removeDir(certDir);
}
