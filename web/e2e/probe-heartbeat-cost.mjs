// Measurement, not a test: what an idle session costs on the wire with the client's default
// timing (heartbeat Ping after 1 s of silence, RTT ping every 5 s) and the server's (keep-alive
// every 10 s). Captures loopback traffic of one idle browser session for 30 s with tcpdump.
// Usage: node e2e/probe-heartbeat-cost.mjs   (as root; needs tcpdump, chromium, target/debug/quiver)
import { spawn } from 'node:child_process';
import { SECRET, launchBrowser, newPage, removeDir, startClientPage, startPageServer, startServer, tempDir, token } from './harness.mjs';

const SECONDS = 30;
const certDir = await tempDir('quiver-probe-hb-');
const server = await startServer({ name: 'server-probe-hb', certDir, jwtSecret: SECRET });
const pages = await startPageServer();
const browser = await launchBrowser();
const httpPort = Number(server.httpAddr.split(':').pop());

async function measure(transport, heartbeat) {
  const page = await newPage(browser, `idle-${transport}`);
  const claims = { tenant: 'acme', user: 'idle', subscribe: ['>'] };
  await (await startClientPage(page, pages, server, () => token(claims), { transports: [transport], defaults: true, heartbeat })).started;
  await new Promise((r) => setTimeout(r, 2000)); // past the connection's own start-up packets
  const filter = transport === 'webtransport' ? `udp port ${server.wtPort}` : `tcp port ${httpPort}`;
  const dump = spawn('tcpdump', ['-i', 'lo', '-nn', '-q', '-l', filter], { stdio: ['ignore', 'pipe', 'ignore'] });
  let lines = '';
  dump.stdout.on('data', (c) => (lines += c));
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  dump.kill('SIGINT');
  await new Promise((r) => dump.once('exit', r));
  const port = transport === 'webtransport' ? server.wtPort : httpPort;
  const packets = lines.split('\n').filter(Boolean);
  // tcpdump -q prints "IP A.p > B.q: UDP, length N" or "IP A.p > B.q: tcp N" (N = payload bytes).
  const bytes = packets.reduce((n, l) => n + Number(/(?:length|tcp) (\d+)/.exec(l)?.[1] ?? 0), 0);
  const toServer = packets.filter((l) => / > \S+\.(\d+):/.exec(l)?.[1] === String(port)).length;
  console.log(
    `${transport}${heartbeat === false ? ' (heartbeat off)' : ''}: ${packets.length} packets in ${SECONDS} s (${(packets.length / SECONDS).toFixed(2)}/s: ` +
      `${toServer} to the server, ${packets.length - toServer} from it), ${(bytes / SECONDS).toFixed(0)} payload bytes/s`,
  );
  await page.close();
}

try {
  for (const transport of ['webtransport', 'websocket']) {
    await measure(transport);
    await measure(transport, false);
  }
} finally {
  await browser.close();
  await pages.close();
  await server.stop();
  await removeDir(certDir);
}
