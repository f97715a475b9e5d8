// The TypeScript client in headless Chromium against the real server (production mode, with a
// JWT secret), with the Rust CLI client on the other end; every test over each transport.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  SECRET,
  expiredToken,
  launchBrowser,
  newPage,
  quiver,
  removeDir,
  startPageServer,
  startClientPage,
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

/**
 * A page running the client over `transport` (or the default transports when null) with tokens
 * from `tokens(n)` for the n-th call (default: minted for `claims`, fresh on every call).
 */
async function openClient(label, claims, transport, { tokens = () => token(claims), wait = true, options = {} } = {}) {
  const page = await newPage(browser, `${label}-${transport ?? 'auto'}`);
  const { started, tokensIssued } = await startClientPage(page, pages, server, tokens, { ...(transport ? { transports: [transport] } : {}), ...options });
  const info = wait ? await started : (started.catch(() => undefined), null);
  if (wait && transport) assert.equal(await page.evaluate(() => window.client.transport), transport);
  return { page, info, tokensIssued };
}

const messages = (page, room) => page.evaluate((r) => window.log.messages[r] ?? [], room);

async function publish(claims, room, text) {
  const jwt = await token(claims);
  await quiver(['pub', '--url', server.url, '--cert-hash', server.certSha256, '--token', jwt, room, text]);
}

const rust = { tenant: 'acme', user: 'rust-cli', subscribe: ['>'], publish: ['>'] };

/** After a reconnect the page re-subscribes by itself: publish `text` until it arrives (bounded). */
async function receivesAgain(page, room, text) {
  await waitFor(
    `a publication ${text}`,
    async () => {
      await publish(rust, room, text);
      return (await messages(page, room)).includes(text);
    },
    15_000,
    500,
  );
}

for (const transport of ['webtransport', 'websocket']) {
  test(`the page receives what the Rust client publishes [${transport}]`, async () => {
    const { page, info } = await openClient('receive', { tenant: 'acme', user: 'alice', subscribe: ['chat.>'] }, transport);
    assert.equal(info.tenant, 'acme');
    assert.equal(info.user, 'alice');
    assert.deepEqual(await page.evaluate(() => window.subscribe('chat.lobby')), { ok: true });
    await publish(rust, 'chat.lobby', 'hello browser');
    await waitFor('the publication in the page', async () => (await messages(page, 'chat.lobby')).includes('hello browser'));
    await page.close();
  });

  test(`the Rust client receives what the page publishes [${transport}]`, async () => {
    const { page } = await openClient('publish', { tenant: 'acme', user: 'bob', publish: ['chat.*'] }, transport);
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

  // close() right behind 300 publishes: every one is carried out (outside audit 115, F2: a
  // close at once dropped those waiting for the pacer, and a WebTransport close discards what
  // the server has not read yet).
  test(`close() right after 300 publishes: the Rust client receives all 300 [${transport}]`, async () => {
    const { page } = await openClient('close-flush', { tenant: 'acme', user: 'bob', publish: ['chat.*'] }, transport);
    const sub = subscriber(server, await token(rust), ['chat.flush']);
    try {
      await waitFor(
        'quiver sub to receive from the page',
        async () => {
          await page.evaluate(() => window.publish('chat.flush', 'probe'));
          return sub.lines.includes('probe');
        },
        15_000,
        300,
      );
      const outcome = await page.evaluate(async () => {
        const sent = [];
        for (let i = 0; i < 300; i++) sent.push(window.client.publish('chat.flush', `m${i}`).then(() => 'ok', (e) => e.message));
        await window.client.close();
        return Promise.all(sent);
      });
      assert.deepEqual(outcome.filter((o) => o !== 'ok'), []);
      const got = () => sub.lines.filter((l) => /^m\d+$/.test(l));
      await waitFor('all 300 at the subscriber', async () => got().length >= 300, 10_000).catch(() => undefined);
      assert.deepEqual(got(), Array.from({ length: 300 }, (_, i) => `m${i}`));
    } finally {
      sub.stop();
    }
    await page.close();
  });

  test(`a forbidden subscribe is refused with 103 permission_denied and shown [${transport}]`, async () => {
    const { page } = await openClient('forbidden', { tenant: 'acme', user: 'carol', subscribe: ['chat.*'] }, transport);
    const result = await page.evaluate(() => window.subscribe('secret.plans'));
    assert.equal(result.ok, false);
    assert.equal(result.code, 103);
    assert.equal(result.label, 'permission_denied');
    assert.match(await page.textContent('#errors'), /permission_denied/);
    // The session is unaffected: an allowed room still works.
    assert.deepEqual(await page.evaluate(() => window.subscribe('chat.ok')), { ok: true });
    await page.close();
  });

  test(`a tenant never sees another tenant's room of the same name [${transport}]`, async () => {
    const { page } = await openClient('tenant-a', { tenant: 'tenant-a', user: 'dave', subscribe: ['>'], publish: ['>'] }, transport);
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

  test(`a frozen server (SIGSTOP: no answers, no resets) is noticed within 3 s, and the page is back once it resumes [${transport}]`, async () => {
    // The client's default timing: only the heartbeat (1 s idle, then 2 s for an answer) can
    // notice this in time; a killed server on loopback is noticed at once (ICMP or a TCP reset).
    const { page } = await openClient('frozen', { tenant: 'acme', user: 'judy', subscribe: ['>'] }, transport, { options: { defaults: true } });
    const room = `dash.frozen.${transport}`;
    assert.deepEqual(await page.evaluate((r) => window.subscribe(r), room), { ok: true });
    await publish(rust, room, 'before');
    await waitFor('the first publication', async () => (await messages(page, room)).includes('before'));
    server.proc.kill('SIGSTOP');
    const frozenAt = Date.now();
    try {
      await waitFor('the page to notice the frozen server', () => page.evaluate(() => window.client.state !== 'connected'), 10_000, 20);
      const noticedMs = Date.now() - frozenAt;
      console.log(`# frozen server noticed after ${noticedMs} ms`);
      assert.ok(noticedMs < 4500, `noticed after ${noticedMs} ms`);
      const errors = await page.evaluate(() => window.log.errors.map((e) => `${e.kind}: ${e.message}`));
      assert.ok(errors.some((e) => /^timeout: .*presumed dead/.test(e)), errors.join('\n'));
    } finally {
      server.proc.kill('SIGCONT');
    }
    await waitFor('the page to reconnect', () => page.evaluate(() => window.client.state === 'connected'), 30_000);
    await receivesAgain(page, room, 'after the thaw');
    await page.close();
  });

  // SIGTERM: the server says Goodbye (shutdown, reconnect). SIGKILL: it vanishes without a word and
  // the client has to notice by itself (failed pings).
  for (const signal of ['SIGTERM', 'SIGKILL']) {
    test(`after a server restart (${signal}) the page reconnects, re-subscribes and receives again [${transport}]`, async () => {
      const { page, tokensIssued } = await openClient(`restart-${signal}`, { tenant: 'acme', user: 'heidi', subscribe: ['>'] }, transport);
      const room = `dash.restart.${transport}`;
      assert.deepEqual(await page.evaluate((r) => window.subscribe(r), room), { ok: true });
      await publish(rust, room, 'before restart');
      await waitFor('the first publication', async () => (await messages(page, room)).includes('before restart'));
      const tokensBefore = tokensIssued();

      const { wtPort, httpAddr } = server;
      await server.stop(signal);
      const stoppedAt = Date.now();
      await waitFor('the page to notice the server is gone', () => page.evaluate(() => window.client.state !== 'connected'), 15_000);
      // On loopback the kernel answers for a killed server (ICMP port unreachable, a TCP reset),
      // so even SIGKILL is noticed at once; the frozen-server test above needs the heartbeat.
      const noticedMs = Date.now() - stoppedAt;
      console.log(`# ${signal} noticed ${noticedMs} ms after the server exited`);
      if (signal === 'SIGKILL') assert.ok(noticedMs < 4500, `noticed after ${noticedMs} ms`);
      server = await startServer({
        name: 'server-browser',
        certDir,
        jwtSecret: SECRET,
        listen: `[::]:${wtPort}`,
        http: httpAddr,
      });
      await waitFor('the page to reconnect', async () => page.evaluate(() => window.client.state === 'connected'), 20_000);
      assert.ok(tokensIssued() > tokensBefore, 'a fresh token was fetched for the reconnect');

      await receivesAgain(page, room, 'after restart');
      const states = await page.evaluate(() => window.log.states);
      assert.deepEqual(states.slice(0, 2), ['connected', 'disconnected'], `states: ${states.join(' → ')}`);
      assert.equal(states.at(-1), 'connected');
      await page.close();
    });
  }
}

// Token refusals with the default transports: WebTransport's refusal is opaque in the browser, so
// the client goes on to WebSocket, where the server says what is wrong (PROTOCOL.md 9.1).
test('a token signed with another secret: an auth error, and no more attempts', async () => {
  const claims = { tenant: 'acme', user: 'mallory', subscribe: ['>'] };
  const { page, tokensIssued } = await openClient('bad-token', claims, null, {
    tokens: () => token({ ...claims, secret: 'not-the-server-secret-0123456789abcdef' }),
    wait: false,
  });
  await waitFor('the client to close', () => page.evaluate(() => window.client?.state === 'closed'), 20_000);
  const { errors, goodbyes } = await page.evaluate(() => window.log);
  assert.deepEqual(goodbyes.map((g) => [g.code, g.reconnect]), [[3007, false]]);
  const auth = errors.filter((e) => e.kind === 'auth');
  assert.equal(auth.length, 1, JSON.stringify(errors));
  assert.equal(auth[0].label, 'token_invalid');
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(tokensIssued(), 1, 'no retry after the refusal');
  assert.match(await page.textContent('#errors'), /token_invalid/);
  await page.close();
});

test('an expired token: WebSocket says token_expired, the next token connects over WebTransport', async () => {
  const claims = { tenant: 'acme', user: 'ivan', subscribe: ['>'] };
  const { page, tokensIssued } = await openClient('expired-token', claims, null, {
    tokens: (n) => (n === 1 ? expiredToken(claims) : token(claims)),
    wait: false,
  });
  await waitFor('the client to connect', () => page.evaluate(() => window.client?.state === 'connected'), 20_000);
  const { goodbyes, transports } = await page.evaluate(() => window.log);
  assert.deepEqual(goodbyes.map((g) => [g.code, g.reconnect]), [[3002, true]]);
  assert.equal(tokensIssued(), 2);
  // The refusal was the token's, not WebTransport's: it is not remembered as broken.
  assert.deepEqual(transports, ['webtransport']);
  assert.deepEqual(await page.evaluate((r) => window.subscribe(r), 'dash.after-expiry'), { ok: true });
  await page.close();
});
