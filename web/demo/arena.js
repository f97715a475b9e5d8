// Arena demo: one `latest` room carrying the positions of 48 dots, published by the server at
// 60 Hz in development mode (server/src/demo.rs). Shows the transport, the share of updates that
// arrived as datagrams, and the age of the newest value.
import { $, devClient, failed, showError } from './boot.js';

const ROOM = 'arena.dots';

/** Decodes a frame: publish time (f64 ms), then u16 x, y per dot. */
function decode(payload) {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const sentAt = view.getFloat64(0);
  const dots = [];
  for (let at = 8; at + 4 <= payload.byteLength; at += 4) dots.push([view.getUint16(at) / 65535, view.getUint16(at + 2) / 65535]);
  return { sentAt, dots };
}

async function main() {
  const { client } = await devClient();
  client.on('state', (state) => {
    if (state === 'connected') showError('');
  });

  let newest = null;
  let received = 0;
  const ages = []; // [at, age] over the last 5 s
  const sub = await client.subscribe(ROOM, (m) => {
    newest = decode(m.payload);
    received++;
    const now = Date.now();
    ages.push([now, Math.max(0, now - newest.sentAt)]);
  });
  $('mode').textContent = sub.mode;
  // For devtools and the browser tests.
  window.arena = { client, sub, stats: () => ({ received, ...sub.latestStats, mode: sub.mode }) };

  const canvas = $('field');
  const ctx = canvas.getContext('2d');
  const draw = () => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (newest) {
      ctx.fillStyle = '#4fc3f7';
      for (const [x, y] of newest.dots) {
        ctx.beginPath();
        ctx.arc(8 + x * (canvas.width - 16), 8 + y * (canvas.height - 16), 7, 0, Math.PI * 2);
        ctx.fill();
      }
      $('age').textContent = `${Math.max(0, Date.now() - newest.sentAt).toFixed(0)} ms`;
    }
    requestAnimationFrame(draw);
  };
  requestAnimationFrame(draw);

  let lastCount = 0;
  setInterval(() => {
    $('rate').textContent = String(received - lastCount);
    lastCount = received;
    const { byDatagram, byStream, droppedOlder } = sub.latestStats;
    const total = byDatagram + byStream;
    $('datagram-share').textContent = total ? `${((100 * byDatagram) / total).toFixed(1)} %` : '–';
    $('stream-count').textContent = String(byStream);
    $('dropped').textContent = String(droppedOlder);
    const cutoff = Date.now() - 5000;
    while (ages.length && ages[0][0] < cutoff) ages.shift();
    if (ages.length) {
      const sorted = ages.map(([, a]) => a).sort((a, b) => a - b);
      $('age-p99').textContent = `${sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))].toFixed(0)} ms`;
    }
  }, 1000);
}

main().catch(failed);
