import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Message, Subscription } from '../dist/quiver.js';

const owner = { unsubscribe: async () => {} };
const message = (i, size) => {
  const payload = new Uint8Array(size);
  payload[0] = i;
  return new Message('chat.a', null, payload);
};

async function drain(sub, n) {
  const it = sub[Symbol.asyncIterator]();
  const got = [];
  for (let i = 0; i < n; i++) got.push((await it.next()).value.payload[0]);
  return got;
}

// A hostile server sending 1 MB publications to an app that does not read the iterator held
// 1,000 of them (1 GB) when only the count was bounded (outside audit).
test('the async iterator keeps at most bufferBytes of payload, dropping the oldest', async () => {
  const sub = new Subscription('chat.a', undefined, 1000, owner, undefined);
  for (let i = 0; i < 20; i++) sub.deliver(message(i, 1024 * 1024));
  assert.equal(sub.dropped, 12, 'the default 8 MiB holds the newest 8');
  assert.deepEqual(await drain(sub, 8), [12, 13, 14, 15, 16, 17, 18, 19]);
  // Read out, the budget is free again.
  for (let i = 0; i < 8; i++) sub.deliver(message(i, 1024 * 1024));
  assert.equal(sub.dropped, 12);
});

test('the count bound still holds, and one message over bufferBytes is kept alone', async () => {
  const counted = new Subscription('chat.a', undefined, 3, owner, undefined, 1 << 20);
  for (let i = 0; i < 5; i++) counted.deliver(message(i, 10));
  assert.equal(counted.dropped, 2);
  assert.deepEqual(await drain(counted, 3), [2, 3, 4]);
  const small = new Subscription('chat.a', undefined, 1000, owner, undefined, 100);
  small.deliver(message(1, 60));
  small.deliver(message(2, 500));
  assert.equal(small.dropped, 1);
  assert.deepEqual(await drain(small, 1), [2]);
});
