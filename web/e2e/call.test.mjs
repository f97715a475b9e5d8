// QuiverClient.call in headless Chromium against a real `quiver serve` whose backend is a real
// HTTP service (rpc.url), over each transport: the answer, a refused method, the backend's
// error code, and an AbortSignal.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { SECRET, launchBrowser, newPage, removeDir, startPageServer, startClientPage, startServer, tempDir, token } from './harness.mjs';

let server, pages, browser, certDir, backend;
const seen = [];

before(async () => {
  // The application's backend: answers calls by the envelope of PROTOCOL.md §11.2.
  backend = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const envelope = JSON.parse(body);
      seen.push(envelope);
      const payload = Buffer.from(envelope.payload, 'base64').toString();
      const reply = (status, json) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(typeof json === 'string' ? json : JSON.stringify(json));
      };
      if (envelope.method === 'order.fail') return reply(500, 'out of widgets');
      if (envelope.method === 'order.slow') return setTimeout(() => reply(200, { payload: '' }), 3_000);
      reply(200, { payload: Buffer.from(`placed for ${envelope.user}: ${payload}`).toString('base64') });
    });
  });
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  certDir = await tempDir('quiver-e2e-call-');
  const config = path.join(certDir, 'quiver.toml');
  await writeFile(config, `[rpc]\nurl = "http://127.0.0.1:${backend.address().port}/rpc"\n`);
  server = await startServer({ name: 'server-call', certDir, jwtSecret: SECRET, config });
  pages = await startPageServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.stop();
  await new Promise((resolve) => (backend ? backend.close(resolve) : resolve()));
  if (certDir) await removeDir(certDir);
});

for (const transport of ['webtransport', 'websocket']) {
  test(`a page calls the backend: answer, refusal, backend error, abort [${transport}]`, async () => {
    const page = await newPage(browser, `call-${transport}`);
    const claims = { tenant: 'acme', user: 'erin', call: ['order.*'] };
    const { started } = await startClientPage(page, pages, server, () => token(claims), { transports: [transport] });
    await started;

    const ok = await page.evaluate(() => window.call('order.place', '2 widgets', { timeoutMs: 2000 }));
    assert.deepEqual(ok, { ok: true, text: 'placed for erin: 2 widgets' });
    const envelope = seen.at(-1);
    assert.equal(envelope.type, 'call');
    assert.equal(envelope.tenant, 'acme');

    const refused = await page.evaluate(() => window.call('billing.pay', 'x'));
    assert.equal(refused.ok, false);
    assert.equal(refused.label, 'permission_denied');

    const failed = await page.evaluate(() => window.call('order.fail', 'x'));
    assert.equal(failed.code, 119);
    assert.match(failed.message, /out of widgets/);

    const aborted = await page.evaluate(() => window.call('order.slow', 'x', { abortAfterMs: 200 }));
    assert.equal(aborted.ok, false);
    assert.equal(aborted.name, 'TimeoutError');
    // The session is fine afterwards.
    assert.equal((await page.evaluate(() => window.call('order.place', 'more'))).ok, true);
    await page.close();
  });
}
