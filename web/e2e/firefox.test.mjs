// The demo in Firefox ESR (puppeteer-core over WebDriver BiDi): over WebTransport with default
// prefs, and over WebSocket with WebTransport switched off.
import { test, before, after } from 'node:test';
import { launchFirefox, newFirefoxPage, removeDir, startServer, tempDir } from './harness.mjs';
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
