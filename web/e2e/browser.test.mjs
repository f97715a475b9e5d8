// The TypeScript client in headless Chromium against the real server (production mode, with a
// JWT secret), with the Rust CLI client on the other end.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  SECRET,
  launchBrowser,
  newPage,
  quiver,
  removeDir,
  startPageServer,
  startServer,
  subscriber,
  tempDir,
  token,
  waitFor,
} from './harness.mjs';

let server, pages, browser, certDir;

before(async () => {
  certDir = await tempDir('quiver-e2e-');
  server = await startServer({ name: 'server-browser', certDir, jwtSecret: SECRET });
  assert.equal(server.ready.dev, false, 'with --jwt-secret the server is not in development mode');
  pages = await startPageServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.stop();
  if (certDir) await removeDir(certDir);
});

/** A page running the client with tokens minted for `claims` (fresh on every call). */
async function openClient(label, claims) {
  const page = await newPage(browser, label);
  let issued = 0;
  await page.exposeFunction('issueToken', () => {
    issued++;
    return token(claims);
  });
  await page.goto(`${pages.origin}/client.html`);
  await waitFor('the test page to load', async () => (await page.title()) === 'ready');
  const info = await page.evaluate((o) => window.startClient(o), { url: server.url, hash: server.certSha256 });
  return { page, info, tokensIssued: () => issued };
}

const messages = (page, room) => page.evaluate((r) => window.log.messages[r] ?? [], room);

async function publish(claims, room, text) {
  const jwt = await token(claims);
  await quiver(['pub', '--url', server.url, '--cert-hash', server.certSha256, '--token', jwt, room, text]);
}

const rust = { tenant: 'acme', user: 'rust-cli', subscribe: ['>'], publish: ['>'] };

test('the page receives what the Rust client publishes', async () => {
  const { page, info } = await openClient('receive', { tenant: 'acme', user: 'alice', subscribe: ['chat.>'] });
  assert.equal(info.tenant, 'acme');
  assert.equal(info.user, 'alice');
  assert.deepEqual(await page.evaluate(() => window.subscribe('chat.lobby')), { ok: true });
  await publish(rust, 'chat.lobby', 'hello browser');
  await waitFor('the publication in the page', async () => (await messages(page, 'chat.lobby')).includes('hello browser'));
  await page.close();
});

test('the Rust client receives what the page publishes', async () => {
  const { page } = await openClient('publish', { tenant: 'acme', user: 'bob', publish: ['chat.*'] });
  const sub = subscriber(server, await token(rust), ['chat.general']);
  try {
    // The subscriber is ready once it sees a probe; publish probes until then (bounded).
    await waitFor(
      'quiver sub to receive from the page',
      async () => {
        await page.evaluate(() => window.publish('chat.general', 'hello rust'));
        return sub.lines.includes('hello rust');
      },
      15_000,
      300,
    );
  } finally {
    sub.stop();
  }
  await page.close();
});

test('a forbidden subscribe is refused with 103 permission_denied and shown', async () => {
  const { page } = await openClient('forbidden', { tenant: 'acme', user: 'carol', subscribe: ['chat.*'] });
  const result = await page.evaluate(() => window.subscribe('secret.plans'));
  assert.equal(result.ok, false);
  assert.equal(result.code, 103);
  assert.equal(result.label, 'permission_denied');
  assert.match(await page.textContent('#errors'), /permission_denied/);
  // The session is unaffected: an allowed room still works.
  assert.deepEqual(await page.evaluate(() => window.subscribe('chat.ok')), { ok: true });
  await page.close();
});

test('a tenant never sees another tenant\'s room of the same name', async () => {
  const { page } = await openClient('tenant-a', { tenant: 'tenant-a', user: 'dave', subscribe: ['>'], publish: ['>'] });
  assert.deepEqual(await page.evaluate(() => window.subscribe('news.today')), { ok: true });
  const subB = subscriber(server, await token({ tenant: 'tenant-b', user: 'erin', subscribe: ['>'] }), ['news.today']);
  try {
    await publish({ tenant: 'tenant-b', user: 'frank', publish: ['>'] }, 'news.today', 'for tenant b');
    await publish({ tenant: 'tenant-a', user: 'grace', publish: ['>'] }, 'news.today', 'for tenant a');
    await waitFor('tenant a\'s publication in the page', async () => (await messages(page, 'news.today')).includes('for tenant a'));
    // One room stream delivers in order: had tenant b's message leaked, it would be here already.
    assert.deepEqual(await messages(page, 'news.today'), ['for tenant a']);

    await page.evaluate(() => window.publish('news.today', 'page of tenant a'));
    await publish({ tenant: 'tenant-b', user: 'frank', publish: ['>'] }, 'news.today', 'for tenant b again');
    await waitFor('tenant b\'s subscriber to get its own tenant\'s message', async () => subB.lines.includes('for tenant b again'));
    assert.ok(!subB.lines.some((l) => l.includes('tenant a')), `tenant b saw: ${subB.lines.join(' | ')}`);
  } finally {
    subB.stop();
  }
  await page.close();
});

// SIGTERM: the server says Goodbye (shutdown, reconnect). SIGKILL: it vanishes without a word and
// the client has to notice by itself (failed pings).
for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`after a server restart (${signal}) the page reconnects, re-subscribes and receives again`, async () => {
    const { page, tokensIssued } = await openClient(`restart-${signal}`, { tenant: 'acme', user: 'heidi', subscribe: ['>'] });
    assert.deepEqual(await page.evaluate(() => window.subscribe('dash.restart')), { ok: true });
    await publish(rust, 'dash.restart', 'before restart');
    await waitFor('the first publication', async () => (await messages(page, 'dash.restart')).includes('before restart'));
    const tokensBefore = tokensIssued();

    const { wtPort, httpAddr } = server;
    await server.stop(signal);
    await waitFor('the page to notice the server is gone', () => page.evaluate(() => window.client.state !== 'connected'), 15_000);
    server = await startServer({
      name: 'server-browser',
      certDir,
      jwtSecret: SECRET,
      listen: `[::]:${wtPort}`,
      http: httpAddr,
    });
    await waitFor('the page to reconnect', async () => page.evaluate(() => window.client.state === 'connected'), 20_000);
    assert.ok(tokensIssued() > tokensBefore, 'a fresh token was fetched for the reconnect');

    // Re-subscription happens right after the reconnect; publish until one arrives (bounded).
    await waitFor(
      'a publication after the restart',
      async () => {
        await publish(rust, 'dash.restart', 'after restart');
        return (await messages(page, 'dash.restart')).includes('after restart');
      },
      15_000,
      500,
    );
    const states = await page.evaluate(() => window.log.states);
    assert.deepEqual(states.slice(0, 2), ['connected', 'disconnected'], `states: ${states.join(' → ')}`);
    assert.equal(states.at(-1), 'connected');
    await page.close();
  });
}
