import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  COMMAND_TYPES,
  EVENT_TYPES,
  DecodeError,
  FrameDecoder,
  LENGTH_PREFIX,
  decodeCommand,
  decodeEvent,
  encodeCommand,
  encodeEvent,
  codeLabel,
} from '../dist/quiver.js';
import { loadVectors } from './vectors.mjs';

const vectors = loadVectors();
const commands = vectors.filter((v) => v.direction === 'command');
const events = vectors.filter((v) => v.direction === 'event');
const body = (bytes) => bytes.subarray(LENGTH_PREFIX);
const hex = (bytes) => Buffer.from(bytes).toString('hex');

test('vectors cover every command and event type', () => {
  assert.deepEqual(new Set(commands.map((v) => v.frame.command.type)), new Set(COMMAND_TYPES));
  assert.deepEqual(new Set(events.map((v) => v.frame.event.type)), new Set(EVENT_TYPES));
});

for (const v of commands) {
  test(`command vector ${v.name}: encodes to the reference bytes and decodes back`, () => {
    assert.equal(hex(encodeCommand(v.frame)), hex(v.bytes));
    assert.deepEqual(decodeCommand(body(v.bytes)), v.frame);
  });
}

for (const v of events) {
  test(`event vector ${v.name}: decodes from the reference bytes and encodes back`, () => {
    assert.deepEqual(decodeEvent(body(v.bytes)), v.frame);
    assert.equal(hex(encodeEvent(v.frame)), hex(v.bytes));
  });
}

test('u64 values above 2^53 survive exactly', () => {
  const v = events.find((e) => e.name === 'publication_position');
  assert.equal(decodeEvent(body(v.bytes)).event.position.epoch, 18446744073709551615n);
});

test('bytes after a complete message are ignored', () => {
  for (const v of vectors) {
    // A Subscribed without its appended `subscription` ends before that field: what follows
    // would be read as it, so the test says "absent" (option tag 0) first.
    const absent = v.direction === 'event' && v.frame.event.type === 'Subscribed' && !('subscription' in v.frame.event);
    const longer = Uint8Array.from([...body(v.bytes), ...(absent ? [0] : []), 1, 2, 3, 0xff]);
    const decoded = v.direction === 'event' ? decodeEvent(longer) : decodeCommand(longer);
    assert.deepEqual(decoded, v.frame, v.name);
  }
});

test('every strict prefix of a message is malformed, short of its appended fields', () => {
  // Fields appended by a later revision (PROTOCOL.md §8) may be absent: Presence.truncated, and
  // Subscribed.subscription (an option tag and, in the vector, a 2-byte varint).
  const appended = (v) => {
    if (v.direction !== 'event') return 0;
    if (v.frame.event.type === 'Presence') return 1;
    if (v.frame.event.type === 'Subscribed' && 'subscription' in v.frame.event) return 3;
    return 0;
  };
  for (const v of vectors) {
    const b = body(v.bytes);
    for (let n = 0; n < b.length - appended(v); n++) {
      const decode = v.direction === 'event' ? decodeEvent : decodeCommand;
      assert.throws(() => decode(b.subarray(0, n)), DecodeError, `${v.name} cut at ${n}`);
    }
  }
});

test('unknown event and command types are skipped, not errors', () => {
  assert.equal(decodeEvent(Uint8Array.from([0, EVENT_TYPES.length])), null);
  assert.equal(decodeEvent(Uint8Array.from([5, 0xc8, 0x01, 9, 9])), null);
  assert.equal(decodeCommand(Uint8Array.from([7, 99])), null);
});

test('malformed values are rejected', () => {
  // id as a u32 varint with bits beyond 32
  assert.throws(() => decodeEvent(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x1f, 4])), DecodeError);
  // varint longer than a u32 may be
  assert.throws(() => decodeEvent(Uint8Array.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 4])), DecodeError);
  // Goodbye with bool byte 2
  assert.throws(() => decodeEvent(Uint8Array.from([0, 9, 0xb8, 0x17, 0, 2])), DecodeError);
  // Published with option tag 2
  assert.throws(() => decodeEvent(Uint8Array.from([0, 3, 2])), DecodeError);
  // Error whose message is invalid UTF-8
  assert.throws(() => decodeEvent(Uint8Array.from([0, 6, 100, 1, 0xff])), DecodeError);
  // Publication whose payload claims 4 GiB: refused without allocating
  assert.throws(() => decodeEvent(Uint8Array.from([0, 7, 1, 97, 0, 0xff, 0xff, 0xff, 0xff, 0x0f])), DecodeError);
  // Subscribed with an unknown recovery variant
  assert.throws(() => decodeEvent(Uint8Array.from([0, 1, 1, 97, 0, 3])), DecodeError);
  // Presence claiming 2^32-1 members in a few bytes: refused before reading any
  assert.throws(() => decodeEvent(Uint8Array.from([0, 10, 1, 97, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0])), DecodeError);
});

test('a Presence list decodes at most 10,000 members; the rest are skipped and it reads as truncated', () => {
  // Outside audit 104, F5.
  // id 1, Presence (10), room "r", 500,000 empty members (2 bytes each), truncated false: 1 MB
  // that decoded into 500,000 objects, asked for or not.
  const count = 500_000;
  const varint = (n) => {
    const out = [];
    for (; n >= 0x80; n >>>= 7) out.push((n & 0x7f) | 0x80);
    out.push(n);
    return out;
  };
  const head = [1, 10, 1, 0x72, ...varint(count)];
  const body = new Uint8Array(head.length + 2 * count + 1);
  body.set(head);
  const frame = decodeEvent(body);
  assert.equal(frame.event.members.length, 10_000);
  assert.deepEqual(frame.event.members[0], { user: '', session: '' });
  assert.equal(frame.event.truncated, true);
  // What is skipped is still read for its shape.
  assert.throws(() => decodeEvent(body.subarray(0, body.length - 2)), DecodeError);
  // Within the cap nothing changes.
  const small = new Uint8Array([1, 10, 1, 0x72, 2, 1, 0x61, 1, 0x62, 1, 0x63, 1, 0x64, 0]);
  assert.deepEqual(decodeEvent(small).event, {
    type: 'Presence',
    room: 'r',
    members: [
      { user: 'a', session: 'b' },
      { user: 'c', session: 'd' },
    ],
    truncated: false,
  });
});

test('a History page of more publications than the server may send is refused', () => {
  // id 0, History (13), room "r", no position, N items of (epoch 0, offset 0, empty payload),
  // not truncated. The server caps `limit` at 1,000 (PROTOCOL.md section 5): a page of a
  // million 3-byte items would cost ~90 times its frame in objects.
  const page = (n) => {
    const count = [];
    for (let v = n; ; v >>>= 7) {
      if (v < 0x80) { count.push(v); break; }
      count.push((v & 0x7f) | 0x80);
    }
    return Uint8Array.from([0, 13, 1, 114, 0, ...count, ...Array(n * 3).fill(0), 0]);
  };
  assert.equal(decodeEvent(page(1000)).event.publications.length, 1000);
  assert.throws(() => decodeEvent(page(1001)), DecodeError);
});

test('Presence from a server that predates `truncated` reads as not truncated', () => {
  // id 8, Presence, room "r", no members, and nothing after: what servers sent before the field.
  const old = decodeEvent(Uint8Array.from([8, 10, 1, 114, 0]));
  assert.deepEqual(old, { id: 8, event: { type: 'Presence', room: 'r', members: [], truncated: false } });
  const cut = decodeEvent(Uint8Array.from([8, 10, 1, 114, 0, 1]));
  assert.equal(cut.event.truncated, true);
  // Later revisions may append more: ignored.
  assert.equal(decodeEvent(Uint8Array.from([8, 10, 1, 114, 0, 1, 42])).event.truncated, true);
});

test('encoding refuses values that do not fit their wire type', () => {
  assert.throws(() => encodeCommand({ id: -1, command: { type: 'Ping' } }), RangeError);
  assert.throws(() => encodeCommand({ id: 2 ** 32, command: { type: 'Ping' } }), RangeError);
  assert.throws(() => encodeCommand({ id: 1, command: { type: 'Hello', version: 70000, client: 'x' } }), RangeError);
  assert.throws(
    () => encodeCommand({ id: 1, command: { type: 'Subscribe', room: 'a', resume: { epoch: 1, offset: 2n } } }),
    RangeError,
  );
  assert.throws(
    () => encodeCommand({ id: 1, command: { type: 'Subscribe', room: 'a', resume: { epoch: 1n << 64n, offset: 0n } } }),
    RangeError,
  );
});

test('random bytes never make the decoders throw anything but DecodeError', () => {
  let seed = 42;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let i = 0; i < 20000; i++) {
    const b = Uint8Array.from({ length: Math.floor(rand() * 40) }, () => Math.floor(rand() * 256));
    // Bias towards known types so the field decoders get exercised, not just the header.
    if (b.length > 1) b[1] %= EVENT_TYPES.length + 1;
    for (const decode of [decodeEvent, decodeCommand]) {
      try {
        decode(b);
      } catch (e) {
        assert.ok(e instanceof DecodeError, `${hex(b)}: ${e}`);
      }
    }
  }
});

test('frame decoder splits frames fed byte by byte and in random chunks', () => {
  const wire = Buffer.concat(vectors.map((v) => v.bytes));
  const expected = vectors.map((v) => hex(body(v.bytes)));
  const byByte = new FrameDecoder();
  const got = [];
  for (const b of wire) got.push(...byByte.push(Uint8Array.of(b)));
  assert.deepEqual(got.map(hex), expected);
  assert.equal(byByte.buffered, 0);

  for (let round = 0; round < 50; round++) {
    const dec = new FrameDecoder();
    const frames = [];
    for (let off = 0; off < wire.length; ) {
      const n = 1 + Math.floor(Math.random() * 40);
      frames.push(...dec.push(wire.subarray(off, off + n)));
      off += n;
    }
    assert.deepEqual(frames.map(hex), expected);
  }
});

test('frame decoder refuses an oversized frame before buffering its body', () => {
  const dec = new FrameDecoder(10);
  assert.throws(() => dec.push(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])), /exceeds the maximum of 10/);
  assert.equal(dec.buffered, 0);
  // The stream is out of sync for good.
  assert.throws(() => dec.push(Uint8Array.from([0, 0, 0, 1, 0])), DecodeError);

  const exact = new FrameDecoder(3);
  assert.deepEqual(exact.push(Uint8Array.from([0, 0, 0, 3, 7, 8, 9])), [Uint8Array.from([7, 8, 9])]);
  assert.throws(() => exact.push(Uint8Array.from([0, 0, 0, 4])), DecodeError);
});

test('frame decoder refuses empty frames and reports a partial frame', () => {
  assert.throws(() => new FrameDecoder().push(Uint8Array.from([0, 0, 0, 0])), /empty frame/);
  const dec = new FrameDecoder();
  assert.deepEqual(dec.push(Uint8Array.from([0, 0, 0, 5, 1])), []);
  assert.equal(dec.buffered, 5);
  assert.throws(() => new FrameDecoder(0), RangeError);
});

test('frame decoder on random bytes: only DecodeError, never holds more than one frame', () => {
  for (let i = 0; i < 2000; i++) {
    const max = 1 + Math.floor(Math.random() * 64);
    const dec = new FrameDecoder(max);
    const data = Uint8Array.from({ length: Math.floor(Math.random() * 300) }, () =>
      Math.random() < 0.5 ? 0 : Math.floor(Math.random() * 256),
    );
    try {
      for (let off = 0; off < data.length; off += 7) {
        for (const f of dec.push(data.subarray(off, off + 7))) assert.ok(f.length >= 1 && f.length <= max);
        assert.ok(dec.buffered <= LENGTH_PREFIX + max);
      }
    } catch (e) {
      assert.ok(e instanceof DecodeError, String(e));
    }
  }
});

test('code labels', () => {
  assert.equal(codeLabel(103), 'permission_denied');
  assert.equal(codeLabel(3002), 'token_expired');
  assert.equal(codeLabel(114), 'stream_limit');
  assert.equal(codeLabel(115), 'quota_exceeded');
  assert.equal(codeLabel(3008), 'over_quota');
  assert.equal(codeLabel(3010), 'not_reading');
  assert.equal(codeLabel(3009), 'disconnected');
  assert.equal(codeLabel(3011), 'reconnect');
  assert.equal(codeLabel(4242), 'code_4242');
});
