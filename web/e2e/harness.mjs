// Shared fixtures for the browser tests: the real `quiver` binary (server and CLI clients), a
// static HTTP server for test pages, headless Chromium (playwright-core) and Firefox
// (puppeteer-core over WebDriver BiDi). Every wait has a deadline.
import { spawn, execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:http';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createWriteStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const WEB = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const REPO = path.dirname(WEB);
export const ARTIFACTS = path.join(REPO, 'test-artifacts');
export const QUIVER = process.env.QUIVER_BIN ?? path.join(REPO, 'target', 'debug', 'quiver');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FIREFOX = process.env.FIREFOX ?? '/usr/bin/firefox-esr';

export const SECRET = 'e2e-secret-0123456789abcdef0123456789';

/** Polls `check` until it returns a truthy value; throws with `what` after `ms`. */
export async function waitFor(what, check, ms = 10_000, every = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Fails fast with a useful message when the binary was not built. */
export function requireQuiver() {
  if (!existsSync(QUIVER)) {
    throw new Error(`${QUIVER} not found: run \`cargo build --bin quiver\` first`);
  }
}

/**
 * Runs `quiver serve` and resolves once it printed QUIVER_READY. Without `jwtSecret` the server
 * runs in development mode; `config` is a TOML file for `--config`. Logs go to
 * test-artifacts/<name>.log.
 */
export async function startServer({ name, certDir, jwtSecret = null, listen = '[::]:0', http = '127.0.0.1:0', config = null, configFile = null }) {
  requireQuiver();
  await mkdir(ARTIFACTS, { recursive: true });
  const args = ['serve', '--listen', listen, '--http', http, '--cert-dir', certDir];
  // A TOML config file (namespaces with history or `latest` delivery, for example).
  const file = config ?? configFile;
  if (file) args.push('--config', file);
  // Production auth with the generated certificate (the tests pin its hash) must say so.
  if (jwtSecret) args.push('--jwt-secret', jwtSecret, '--self-signed');
  const log = createWriteStream(path.join(ARTIFACTS, `${name}.log`), { flags: 'a' });
  const proc = spawn(QUIVER, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } });
  proc.stderr.pipe(log, { end: false });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const ready = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`quiver serve printed no QUIVER_READY within 20 s (see test-artifacts/${name}.log)`));
    }, 20_000);
    proc.stdout.on('data', (chunk) => {
      log.write(chunk);
      out += chunk;
      const line = out.split('\n').find((l) => l.startsWith('QUIVER_READY '));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice('QUIVER_READY '.length)));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`quiver serve exited early (code ${code}, signal ${signal}); see test-artifacts/${name}.log`));
    });
  });
  const wtPort = Number(ready.webtransport.split(':').pop());
  return {
    proc,
    ready,
    wtPort,
    httpAddr: ready.http,
    url: `https://127.0.0.1:${wtPort}/v1`,
    wsUrl: `ws://${ready.http}/v1/ws`,
    certSha256: ready.cert_sha256,
    /** Stops the server: SIGTERM, then SIGKILL if it lingers. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill(signal);
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      log.end();
    },
  };
}

export function tempDir(prefix) {
  return mkdtemp(path.join(tmpdir(), prefix));
}

export function removeDir(dir) {
  return rm(dir, { recursive: true, force: true });
}

/** Runs a `quiver` subcommand and returns its stdout (trimmed). */
export async function quiver(args, timeout = 15_000) {
  requireQuiver();
  try {
    const { stdout } = await promisify(execFile)(QUIVER, args, { timeout });
    return stdout.trim();
  } catch (e) {
    throw new Error(`quiver ${args[0]} failed: ${e.message}\n${e.stderr ?? ''}`);
  }
}

/** An HS256 JWT signed with SECRET that expired `agoSecs` ago (past the server's leeway). */
export function expiredToken({ tenant, user, subscribe = [], publish = [], agoSecs = 600 }) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, tenant, exp: Math.floor(Date.now() / 1000) - agoSecs, subscribe, publish })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

export function token({ tenant, user, subscribe = [], publish = [], call = [], ttl = '1h', secret = SECRET }) {
  const args = ['token', '--jwt-secret', secret, '--tenant', tenant, '--user', user, '--ttl', ttl];
  for (const p of subscribe) args.push('--subscribe', p);
  for (const p of publish) args.push('--publish', p);
  for (const p of call) args.push('--call', p);
  return quiver(args);
}

/** `quiver sub`: resolves once started; `lines` fills with each payload printed. */
export function subscriber(server, jwt, rooms) {
  requireQuiver();
  const proc = spawn(QUIVER, ['sub', '--url', server.url, '--cert-hash', server.certSha256, '--token', jwt, ...rooms], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  let stderr = '';
  let partial = '';
  proc.stdout.on('data', (chunk) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop();
    lines.push(...parts);
  });
  proc.stderr.on('data', (chunk) => (stderr += chunk));
  return {
    lines,
    stderr: () => stderr,
    stop() {
      proc.kill('SIGKILL');
    },
  };
}

/** Serves web/e2e/pages/ and the built client at /quiver.js from 127.0.0.1 (a real origin:
 *  WebTransport is missing on about:blank and data: pages). */
export async function startPageServer() {
  const server = createServer(async (req, res) => {
    const pathname = new URL(req.url, 'http://x').pathname;
    const file =
      pathname === '/quiver.js'
        ? path.join(WEB, 'dist', 'quiver.js')
        : path.join(WEB, 'e2e', 'pages', path.posix.normalize(pathname)); // absolute: cannot climb out
    try {
      const body = await readFile(file);
      const type = file.endsWith('.js') ? 'text/javascript' : 'text/html';
      res.writeHead(200, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install -y chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A new page whose console and errors go to the test log (the browser hides WebTransport's
 *  real failure reasons from scripts and prints them only on the console). */
export async function newPage(browser, label) {
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  page.on('console', (m) => console.log(`[${label} console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[${label} pageerror] ${e.message}`));
  return page;
}

/**
 * Loads pages/client.html in `page` (served by `pages`), hands it tokens from `issue(n)` for its
 * n-th request, and starts its client against `server` with `options` (transports, timing...).
 * `started` settles with the client's first Welcome (or its failure).
 */
export async function startClientPage(page, pages, server, issue, options = {}) {
  let issued = 0;
  await page.exposeFunction('issueToken', () => issue(++issued));
  await page.goto(`${pages.origin}/client.html`);
  await waitFor('the test page to load', async () => (await page.title()) === 'ready');
  const started = page.evaluate((o) => window.startClient(o), { url: server.url, wsUrl: server.wsUrl, hash: server.certSha256, ...options });
  return { started, tokensIssued: () => issued };
}

/**
 * What the browser in `page` says about WebTransport datagrams on a session of its own to `url`
 * (`maxDatagramSize`, high-water marks, max ages): facts for the README. Works on playwright and
 * puppeteer pages.
 */
export function datagramLimits(page, { url, certSha256, token }) {
  return page.evaluate(async ({ url, hash, jwt }) => {
    const value = new Uint8Array(hash.match(/../g).map((h) => parseInt(h, 16)));
    const wt = new WebTransport(`${url}?token=${jwt}`, { serverCertificateHashes: [{ algorithm: 'sha-256', value }] });
    await wt.ready;
    const d = wt.datagrams;
    const seen = {
      maxDatagramSize: d.maxDatagramSize,
      incomingHighWaterMark: d.incomingHighWaterMark,
      outgoingHighWaterMark: d.outgoingHighWaterMark,
      incomingMaxAge: d.incomingMaxAge,
      outgoingMaxAge: d.outgoingMaxAge,
    };
    wt.close();
    return seen;
  }, { url, hash: certSha256, jwt: token });
}

/** Headless Firefox ESR through puppeteer-core (WebDriver BiDi); `prefs` are about:config prefs,
 *  e.g. `{ 'network.webtransport.enabled': false }`. */
export async function launchFirefox(prefs = {}) {
  if (!existsSync(FIREFOX)) throw new Error(`${FIREFOX} not found: apt-get install -y firefox-esr`);
  return puppeteer.launch({ browser: 'firefox', executablePath: FIREFOX, headless: true, extraPrefsFirefox: prefs });
}

/** A new Firefox page whose console and errors go to the test log. */
export async function newFirefoxPage(browser, label) {
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  page.on('console', (m) => console.log(`[${label} console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[${label} pageerror] ${e.message}`));
  return page;
}

/**
 * A UDP port on which nothing ever answers: a bound socket that reads and drops everything, as a
 * firewall that silently drops UDP looks to a browser.
 */
export async function silentUdpPort() {
  const socket = createSocket('udp4');
  let dropped = 0;
  socket.on('message', () => dropped++);
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return {
    port: socket.address().port,
    dropped: () => dropped,
    close: () => new Promise((resolve) => socket.close(resolve)),
  };
}
