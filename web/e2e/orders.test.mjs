// The orders demo page (issue 13) in headless Chromium, end to end: a real nats-server, `quiver
// serve` in development mode on it with the subscribe hook of examples/order-backend, and that
// example backend as a process. The page calls `order.place`, gets the order id, subscribes to
// `order.<id>` and shows the statuses the backend publishes; the backend's validation and its
// subscribe hook reach the page as errors.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { ARTIFACTS, REPO, launchBrowser, newPage, quiver, removeDir, startServer, tempDir, waitFor } from './harness.mjs';

const NATS = process.env.QUIVER_NATS_SERVER ?? path.join(REPO, '.venv', 'bin', 'nats-server');
const BACKEND = path.join(REPO, 'target', 'debug', 'quiver-order-backend');

let nats, server, backend, browser, dir;

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Spawns a helper process with its output in test-artifacts/<name>.log. */
async function run(name, command, args, env = {}) {
  await mkdir(ARTIFACTS, { recursive: true });
  const log = createWriteStream(path.join(ARTIFACTS, `${name}.log`), { flags: 'a' });
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  return {
    proc,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      log.end();
    },
  };
}

before(async () => {
  assert.ok(existsSync(NATS), `no nats-server at ${NATS}: run scripts/install-nats (or set QUIVER_NATS_SERVER)`);
  assert.ok(existsSync(BACKEND), `no ${BACKEND}: cargo build -p quiver-order-backend`);
  dir = await tempDir('quiver-e2e-orders-');
  const natsPort = await freePort();
  nats = await run('nats-orders', NATS, ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', path.join(dir, 'js')]);
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  const config = path.join(dir, 'quiver.toml');
  // As in examples/order-backend/README.md: only an order's owner may follow its room.
  await writeFile(config, `[nats]\nurl = "${natsUrl}"\n\n[[rpc.hooks]]\nnamespace = "order"\nsubscribe = true\n`);
  // Development mode (no secret): the page gets its token from /dev/bootstrap. NATS may still be
  // starting: the server waits for it.
  server = await startServer({ name: 'server-orders', certDir: dir, config });
  // The backend publishes statuses through the HTTP API with a token of the demo tenant.
  const backendToken = await quiver(['token', '--cert-dir', dir, '--tenant', 'demo', '--user', 'order-backend', '--publish', 'order.>']);
  backend = await run('order-backend', BACKEND, ['--nats', natsUrl, '--tenant', 'demo', '--api', `http://${server.httpAddr}`, '--step', '1'], {
    ORDER_BACKEND_TOKEN: backendToken,
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await backend?.stop();
  await server?.stop();
  await nats?.stop();
  if (dir) await removeDir(dir);
});

/** Places an order from the page's form and resolves with the error shown ('' if none). */
async function place(page, qty) {
  await page.fill('#qty', String(qty));
  const before = await page.evaluate(() => window.orders.orders.size);
  await page.click('#submit');
  return waitFor(
    'the order placed or refused',
    async () => {
      if (!(await page.isEnabled('#submit'))) return false;
      const error = (await page.isVisible('#error')) ? await page.textContent('#error') : '';
      const after = await page.evaluate(() => window.orders.orders.size);
      return after > before || error ? { error } : false;
    },
    10_000,
  );
}

for (const transport of ['webtransport', 'websocket']) {
  test(`the orders page places an order and follows its statuses [${transport}]`, async () => {
    const page = await newPage(browser, `orders-${transport}`);
    await page.goto(`http://${server.httpAddr}/orders?transport=${transport}`);
    await waitFor('#state to say connected', async () => (await page.textContent('#state')) === 'connected', 15_000);

    // The backend subscribes to NATS as it starts: until then a call finds no responder.
    let placed;
    await waitFor(
      'the backend to answer',
      async () => {
        placed = await place(page, 2);
        return !placed.error.includes('no order backend');
      },
      20_000,
      500,
    );
    assert.equal(placed.error, '', 'the order was placed');
    const id = await page.evaluate(() => [...window.orders.orders.keys()].at(-1));
    assert.match(id, /^o-[0-9a-f]+$/);
    const statuses = await waitFor(
      'placed, packed and shipped',
      async () => {
        const s = await page.evaluate((id) => window.orders.orders.get(id), id);
        return s.length >= 3 && s;
      },
      15_000,
    );
    assert.deepEqual(statuses, ['placed', 'packed', 'shipped']);
    assert.match(await page.textContent(`[data-order="${id}"]`), /shipped/);

    // The backend's validation reaches the page as a refusal.
    const refused = await place(page, 0);
    assert.match(refused.error, /backend refused the order/);

    // The subscribe hook: another user (another page, another token) may not follow the order.
    const other = await newPage(browser, `orders-other-${transport}`);
    await other.goto(`http://${server.httpAddr}/orders?transport=${transport}`);
    await waitFor('the other page connected', async () => (await other.textContent('#state')) === 'connected', 15_000);
    const denied = await other.evaluate(async (id) => {
      try {
        await window.orders.client.subscribe(`order.${id}`, () => {});
        return 'subscribed';
      } catch (e) {
        return e.label ?? e.message;
      }
    }, id);
    assert.equal(denied, 'permission_denied');
    await other.close();
    await page.close();
  });
}
