import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Subscription, decodeLatestDatagram, encodeLatestDatagram, encodePublishDatagram, DecodeError } from '../dist/quiver.js';
import { loadDatagramVectors } from './vectors.mjs';

const hex = (bytes) => Buffer.from(bytes).toString('hex');

test('datagram headers match PROTOCOL.md section 10 (and the Rust codec)', () => {
  // Subscription 300, sequence 1, payload "xy": the bytes proto/src/datagram.rs tests.
  const d = encodeLatestDatagram({ subscription: 300n, sequence: 1n, payload: Uint8Array.from([0x78, 0x79]) });
  assert.equal(hex(d), 'ac020178' + '79');
  const back = decodeLatestDatagram(d);
  assert.equal(back.subscription, 300n);
  assert.equal(back.sequence, 1n);
  assert.equal(hex(back.payload), '7879');
  assert.throws(() => decodeLatestDatagram(Uint8Array.from([0x80])), DecodeError);
  assert.equal(hex(encodePublishDatagram('game.a', Uint8Array.from([0x70]))), '0667616d652e6170');
});

test('a latest subscription applies only values newer than the newest applied', () => {
  const seen = [];
  const sub = new Subscription('game.a', (m) => seen.push(m.text()), 10, { unsubscribe: async () => {} }, undefined);
  sub.confirmed(7n);
  assert.equal(sub.mode, 'latest');
  const v = (s) => new TextEncoder().encode(s);
  assert.equal(sub.offerLatest(2n, v('two'), true), true);
  assert.equal(sub.offerLatest(1n, v('one'), true), false, 'older than the newest applied');
  assert.equal(sub.offerLatest(3n, v('three'), false), true, 'from the stream');
  assert.equal(sub.offerLatest(3n, v('dup'), true), false);
  assert.deepEqual(seen, ['two', 'three']);
  assert.deepEqual(sub.latestStats, { byDatagram: 1, byStream: 1, droppedOlder: 2 });
  // A new server subscription (after a reconnect) restarts the sequence.
  sub.confirmed(9n);
  assert.equal(sub.offerLatest(1n, v('again'), true), true);
  assert.deepEqual(seen, ['two', 'three', 'again']);
});

test('without a handler, the iterator holds only the newest value', async () => {
  const sub = new Subscription('game.b', undefined, 10, { unsubscribe: async () => {} }, undefined);
  sub.confirmed(1n);
  for (let i = 1n; i <= 5n; i++) sub.offerLatest(i, new TextEncoder().encode(`v${i}`), true);
  const it = sub[Symbol.asyncIterator]();
  assert.equal((await it.next()).value.text(), 'v5');
});

test('datagram vectors (proto/vectors/datagrams.json) decode and encode byte for byte', () => {
  const vectors = loadDatagramVectors();
  assert.ok(vectors.some((v) => v.direction === 'server') && vectors.some((v) => v.direction === 'client'));
  for (const v of vectors) {
    // The whole QUIC datagram of the session on stream 0 is the quarter stream id `00`, then these bytes.
    assert.equal(v.on_session_0, `00${v.hex}`, v.name);
    if (v.direction === 'server') {
      const d = decodeLatestDatagram(v.bytes);
      assert.deepEqual(d, { subscription: v.subscription, sequence: v.sequence, payload: v.payload }, v.name);
      assert.deepEqual(encodeLatestDatagram(d), v.bytes, v.name);
    } else {
      assert.deepEqual(encodePublishDatagram(v.room, v.payload), v.bytes, v.name);
    }
  }
});
