// The demo in Chromium when WebTransport is not there or not reachable: it falls back to the
// WebSocket on the server's HTTP port, says so, and works the same.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, newPage, removeDir, silentUdpPort, startServer, tempDir } from './harness.mjs';
import { demoWorks } from './demo-checks.mjs';

let server, browser, certDir;

before(async () => {
  certDir = await tempDir('quiver-e2e-fallback-');
  server = await startServer({ name: 'server-fallback', certDir });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (certDir) await removeDir(certDir);
});

test('Chromium with WebTransport: the demo says WebTransport', async () => {
  const page = await newPage(browser, 'wt');
  await demoWorks(page, `http://${server.httpAddr}`, 'webtransport');
  await page.close();
});

test('Chromium without WebTransport (deleted by an init script): the demo connects over WebSocket and updates', async () => {
  const context = await browser.newContext();
  try {
    await context.addInitScript(() => {
      delete window.WebTransport;
    });
    const page = await newPage(context, 'no-wt');
    assert.equal(await page.evaluate(() => typeof window.WebTransport), 'undefined');
    await demoWorks(page, `http://${server.httpAddr}`, 'websocket');
  } finally {
    await context.close();
  }
});

test('UDP blocked (the WebTransport URL is a silent UDP port): on WebSocket within 5 s, and the page says so', async () => {
  const silent = await silentUdpPort();
  const context = await browser.newContext();
  try {
    // The page learns the WebTransport URL from /dev/bootstrap: point it at a port that drops
    // every datagram, as a firewall does.
    await context.route('**/dev/bootstrap*', async (route) => {
      const response = await route.fetch();
      const boot = await response.json();
      boot.url = `https://127.0.0.1:${silent.port}/v1`;
      await route.fulfill({ response, json: boot });
    });
    const page = await newPage(context, 'udp-blocked');
    const { connectedAfterMs } = await demoWorks(page, `http://${server.httpAddr}`, 'websocket', 5_000);
    console.log(`# on WebSocket ${connectedAfterMs} ms after loading the page; ${silent.dropped()} datagrams dropped`);
    assert.ok(silent.dropped() > 0, 'the browser did try WebTransport first');
  } finally {
    await context.close();
    await silent.close();
  }
});
