// The demo in Firefox ESR (puppeteer-core over WebDriver BiDi): over WebTransport with default
// prefs, and over WebSocket with WebTransport switched off.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { datagramLimits, launchFirefox, newFirefoxPage, removeDir, startServer, tempDir } from './harness.mjs';
import { demoWorks } from './demo-checks.mjs';

let server, certDir;

before(async () => {
  certDir = await tempDir('quiver-e2e-firefox-');
  server = await startServer({ name: 'server-firefox', certDir });
});

after(async () => {
  await server?.stop();
  if (certDir) await removeDir(certDir);
});

for (const [transport, prefs] of [
  ['webtransport', {}],
  ['websocket', { 'network.webtransport.enabled': false }],
]) {
  test(`Firefox ESR: the demo over ${transport}${Object.keys(prefs).length ? ` (${JSON.stringify(prefs)})` : ''}`, async () => {
    const browser = await launchFirefox(prefs);
    try {
      const page = await newFirefoxPage(browser, `firefox-${transport}`);
      await demoWorks(page, `http://${server.httpAddr}`, transport, 20_000);
      await page.close();
    } finally {
      await browser.close();
    }
  });
}

test('Firefox ESR: the arena receives latest values by datagram; datagram limits recorded', async () => {
  const browser = await launchFirefox();
  try {
    const page = await newFirefoxPage(browser, 'firefox-arena');
    await page.goto(`http://${server.httpAddr}/arena?transport=webtransport`);
    const deadline = Date.now() + 20_000;
    let stats = null;
    while (Date.now() < deadline) {
      stats = await page.evaluate(() => window.arena?.stats() ?? null);
      if (stats && stats.received >= 60) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    console.log(`# Firefox arena: ${JSON.stringify(stats)}`);
    assert.equal(stats?.mode, 'latest');
    assert.ok(stats.byDatagram >= 50, JSON.stringify(stats));
    const boot = await page.evaluate(async () => (await fetch('/dev/bootstrap')).json());
    const limits = await datagramLimits(page, { url: boot.url, certSha256: boot.cert_sha256, token: boot.token });
    console.log(`# Firefox WebTransport.datagrams: ${JSON.stringify(limits)}`);
    assert.ok(limits.maxDatagramSize > 1000, JSON.stringify(limits));
    await page.close();
  } finally {
    await browser.close();
  }
});
