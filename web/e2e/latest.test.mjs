// The `latest` lane (PROTOCOL.md section 10) in headless Chromium against the real server: values
// of a `latest` room reach the page as QUIC datagrams (`WebTransport.datagrams`), one too large
// for a datagram comes on the room's stream, and the page publishes unreliably by datagram.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  ARTIFACTS,
  SECRET,
  datagramLimits,
  launchBrowser,
  newPage,
  quiver,
  removeDir,
  startPageServer,
  startClientPage,
  startServer,
  tempDir,
  token,
  waitFor,
} from './harness.mjs';

let server, pages, browser, certDir;
const everything = (user) => ({ tenant: 'acme', user, subscribe: ['>'], publish: ['>'] });

before(async () => {
  certDir = await tempDir('quiver-e2e-latest-');
  const configFile = path.join(certDir, 'quiver.toml');
  await writeFile(configFile, '[[namespaces]]\nname = "game"\nmode = "latest"\n');
  server = await startServer({ name: 'server-latest', certDir, jwtSecret: SECRET, configFile });
  pages = await startPageServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.stop();
  if (certDir) await removeDir(certDir);
});

async function openPage(label, user) {
  const page = await newPage(browser, label);
  const { started } = await startClientPage(page, pages, server, () => token(everything(user)), { transports: ['webtransport'] });
  await started;
  return page;
}

async function publishFromRust(room, text) {
  const jwt = await token(everything('rust-cli'));
  await quiver(['pub', '--url', server.url, '--cert-hash', server.certSha256, '--token', jwt, room, text]);
}

test('latest values reach Chromium as datagrams; an oversized one comes on the stream; the page publishes by datagram', async () => {
  const sub = await openPage('latest-sub', 'alice');
  const pub = await openPage('latest-pub', 'bob');
  assert.equal(await sub.evaluate(() => window.subscribeLatest('game.arena')), 'latest');
  assert.equal(await sub.evaluate(() => window.subscribeLatest('chat.side')), 'reliable');

  // Server → browser: small values go as datagrams (resent until one arrives: datagrams may be lost).
  await waitFor(
    'a value by datagram',
    async () => {
      await publishFromRust('game.arena', 'from-rust');
      const s = await sub.evaluate(() => window.latestStats('game.arena'));
      return s.byDatagram >= 1 && s.value === 'from-rust';
    },
    15_000,
    200,
  );

  // Too large for any datagram (Chromium's limit is about 1.2 kB): on the stream, in sequence.
  const big = 'B'.repeat(3000);
  await publishFromRust('game.arena', big);
  await waitFor('the large value on the stream', async () => {
    const s = await sub.evaluate(() => window.latestStats('game.arena'));
    return s.byStream >= 1 && s.value === big;
  });

  // Browser → server → browser: unreliable publishes at 60 Hz, newest value wins.
  await pub.evaluate(async () => {
    for (let i = 1; i <= 60; i++) {
      await window.publishUnreliable('game.arena', `dot-${i}`);
      await new Promise((r) => setTimeout(r, 16));
    }
  });
  await waitFor('the unreliable publications', async () => {
    const s = await sub.evaluate(() => window.latestStats('game.arena'));
    return /^dot-\d+$/.test(s.value ?? '') && s.byDatagram >= 10;
  });
  const stats = await sub.evaluate(() => window.latestStats('game.arena'));
  console.log(`# latest stats in Chromium: ${JSON.stringify(stats)}`);
  // Applied values only ever move forward.
  const applied = Number(stats.value.slice(4));
  assert.ok(applied >= 1 && applied <= 60, stats.value);

  // The browser's own view of the datagram limit, for the record.
  const max = await datagramLimits(sub, { url: server.url, certSha256: server.certSha256, token: await token(everything('probe')) });
  console.log(`# Chromium WebTransport.datagrams: ${JSON.stringify(max)}`);
  assert.ok(max.maxDatagramSize > 1000 && max.maxDatagramSize < 1500, JSON.stringify(max));

  await sub.close();
  await pub.close();
});

test('a burst of unreliable publishes faster than the pacer, then close(): the subscriber gets the newest value', async () => {
  // The burst's newest value waits for a pacer token; close() sends it before the control
  // stream's FIN, and the server reads the datagrams received before the FIN (PROTOCOL.md section
  // 2). Before, close() dropped it: the subscriber's last value was one of the burst's first. A
  // server of 20 commands a second (the client's burst is 10): a burst of 100 datagrams at once
  // lost some on their way to the server, and now and then the last.
  const dir = await tempDir('quiver-e2e-burst-');
  const configFile = path.join(dir, 'quiver.toml');
  await writeFile(configFile, '[limits]\ncommands_per_second = 20\n\n[[namespaces]]\nname = "game"\nmode = "latest"\n');
  const slow = await startServer({ name: 'server-burst', certDir: dir, jwtSecret: SECRET, configFile });
  try {
    const open = async (label, user, transports) => {
      const page = await newPage(browser, label);
      const { started } = await startClientPage(page, pages, slow, () => token(everything(user)), { transports });
      await started;
      return page;
    };
    // The subscriber over WebSocket: the room's values come on its stream, conflated but never
    // lost, so what it ends with is what the server got.
    const sub = await open('burst-sub', 'carol', ['websocket']);
    const pub = await open('burst-pub', 'dave', ['webtransport']);
    assert.equal(await sub.evaluate(() => window.subscribeLatest('game.burst')), 'latest');
    const state = await pub.evaluate(async () => {
      // One synchronous loop: far faster than the pacer.
      for (let i = 1; i <= 200; i++) void window.publishUnreliable('game.burst', `burst-${i}`);
      await window.client.close();
      return window.client.state;
    });
    assert.equal(state, 'closed');
    await waitFor('the burst\'s newest value', async () => (await sub.evaluate(() => window.latestStats('game.burst'))).value === 'burst-200', 5_000).catch(async (e) => {
      console.log(`# the subscriber's last value: ${JSON.stringify(await sub.evaluate(() => window.latestStats('game.burst')))}`);
      throw e;
    });
    await sub.close();
    await pub.close();
  } finally {
    await slow.stop();
    await removeDir(dir);
  }
});

test('the arena demo page shows 60 Hz dots arriving by datagram, and conflated over WebSocket', async () => {
  const devCert = await tempDir('quiver-e2e-arena-');
  const dev = await startServer({ name: 'server-arena', certDir: devCert });
  try {
    assert.equal(dev.ready.dev, true);
    for (const transport of ['webtransport', 'websocket']) {
      const page = await newPage(browser, `arena-${transport}`);
      await page.setViewportSize({ width: 1280, height: 800 });
      await page.goto(`http://${dev.httpAddr}/arena?transport=${transport}`);
      await waitFor('#state to say connected', async () => (await page.textContent('#state')) === 'connected', 15_000);
      // The page shows the mode once its subscription is confirmed, which can come after 'connected'.
      await waitFor('#mode to be shown', async () => (await page.textContent('#mode')) !== '–', 15_000);
      assert.equal(await page.textContent('#mode'), 'latest');
      const stats = await waitFor(
        'a second of updates',
        async () => {
          const s = await page.evaluate(() => window.arena.stats());
          return s.received >= 60 && s;
        },
        15_000,
      );
      console.log(`# arena over ${transport}: ${JSON.stringify(stats)}`);
      if (transport === 'webtransport') {
        assert.ok(stats.byDatagram >= 50, `updates by datagram: ${JSON.stringify(stats)}`);
      } else {
        assert.equal(stats.byDatagram, 0);
        assert.ok(stats.byStream >= 50, JSON.stringify(stats));
      }
      await waitFor('the share shown', async () => (await page.textContent('#datagram-share')) !== '–');
      const share = await page.textContent('#datagram-share');
      assert.equal(share, transport === 'webtransport' ? '100.0 %' : '0.0 %');
      if (transport === 'webtransport') await page.screenshot({ path: path.join(ARTIFACTS, 'arena.png') });
      await page.close();
    }
  } finally {
    await dev.stop();
    await removeDir(devCert);
  }
});
