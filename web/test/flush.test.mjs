// flush() (as NATS's flush: what was published before it went to the server) and close() with
// unreliable publishes still waiting for the pacer. A burst of `unreliable` publishes faster than
// the server's rate leaves each room's newest value waiting for a pacer token; close() dropped it
// (the session's end cleared them), so a subscriber's last value was an older one, and there was
// no call that waited for them (ping() is urgent: it goes ahead of what waits).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodePublishDatagram } from '../dist/quiver.js';
import { connected, fakeClient } from './fake-transport.mjs';

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const publishDatagram = (room, payload) => hex(encodePublishDatagram(room, new TextEncoder().encode(payload)));
const sentDatagrams = (conn) => conn.datagramsReceived.map(hex);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A client over WebTransport paced at 9 a second after a burst of 5 (a server allowing 10). */
async function setup(t, options = {}) {
  const { net, client } = fakeClient({ transports: ['webtransport'], ...options });
  t.after(() => client.close());
  const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 10 } } });
  return { net, client, conn };
}

/** 20 values to each of game.a and game.b, at once: most wait for the pacer. */
async function burst(client, from = 0, to = 20) {
  for (let n = from; n < to; n++) {
    await client.publish('game.a', `a${n}`, { unreliable: true });
    await client.publish('game.b', `b${n}`, { unreliable: true });
  }
}

/** Records, for each command the fake server reads, how many datagrams it had received then. */
function datagramsAtCommands(conn) {
  const seen = [];
  const onCommand = conn.onCommand.bind(conn);
  conn.onCommand = (frame) => {
    seen.push([frame.command.type, conn.datagramsReceived.length]);
    onCommand(frame);
  };
  return seen;
}

test('close() sends each room\'s newest unreliable value still waiting for the pacer, before the FIN', async (t) => {
  const { client, conn } = await setup(t);
  let datagramsAtFin = null;
  let finished = false;
  Object.defineProperty(conn, 'finishedByClient', {
    get: () => finished,
    set: (v) => {
      if (v && datagramsAtFin === null) datagramsAtFin = conn.datagramsReceived.length;
      finished = v;
    },
  });
  await burst(client);
  await sleep(0);
  const newest = [publishDatagram('game.a', 'a19'), publishDatagram('game.b', 'b19')];
  assert.ok(!newest.some((d) => sentDatagrams(conn).includes(d)), 'the newest values wait for the pacer');
  const start = Date.now();
  await client.close();
  assert.ok(Date.now() - start < 1_500, `close() took ${Date.now() - start} ms`);
  assert.equal(finished, true, 'the control stream was finished');
  const sent = sentDatagrams(conn);
  assert.deepEqual(sent.slice(-2).sort(), [...newest].sort(), 'the last datagrams sent are the rooms\' newest');
  assert.equal(datagramsAtFin, sent.length, 'every datagram went before the FIN');
});

test('close() sends the held values within half of requestTimeoutMs, then drops the rest and still finishes the control stream', async (t) => {
  // 2 a second: paced at 1 a second after a burst of 1, so 10 rooms' values would take 9 s.
  const { net, client } = fakeClient({ transports: ['webtransport'], requestTimeoutMs: 300 });
  t.after(() => client.close());
  const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 2 } } });
  for (let n = 0; n < 10; n++) await client.publish(`game.r${n}`, 'v', { unreliable: true });
  const start = Date.now();
  await client.close();
  const took = Date.now() - start;
  // Half of the 300 ms for the held values, then the FIN, which the fake server answers.
  assert.ok(took >= 140 && took < 1_500, `close() took ${took} ms`);
  assert.ok(conn.datagramsReceived.length < 10, `${conn.datagramsReceived.length} sent`);
  assert.equal(conn.finishedByClient, true, 'the control stream was finished');
});

test('held unreliable values never keep close() from finishing the control stream behind its publishes', async (t) => {
  // Review 131, R1: commands take the pacer's tokens first, so values held behind two publishes
  // at 1 a second never got one, and the control stream was never finished: the close at the
  // deadline then discarded what the server had not read of the publishes.
  const { net, client } = fakeClient({ transports: ['webtransport'], requestTimeoutMs: 1200 });
  t.after(() => client.close());
  const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 2 } } });
  const results = [];
  for (let n = 0; n < 2; n++) results.push(client.publish('chat.x', `m${n}`).then(() => 'ok', (e) => e.kind));
  for (let n = 0; n < 3; n++) await client.publish(`game.r${n}`, 'v', { unreliable: true });
  await client.close();
  assert.deepEqual(await Promise.all(results), ['ok', 'ok']);
  assert.equal(conn.finishedByClient, true, 'the control stream was finished behind the publishes');
});

test('flush() resolves once the values waiting for the pacer have gone and a Ping is answered', async (t) => {
  const { client, conn } = await setup(t);
  conn.autoAnswer = true;
  const seen = datagramsAtCommands(conn);
  await burst(client);
  await sleep(0);
  const newest = [publishDatagram('game.a', 'a19'), publishDatagram('game.b', 'b19')];
  assert.ok(!newest.some((d) => sentDatagrams(conn).includes(d)), 'the newest values wait for the pacer');
  const flushed = client.flush();
  // Published while it waits: a newer value of a room it waits for takes that room's turn; a
  // room that begins to wait after it does not hold it back.
  await client.publish('game.a', 'a20', { unreliable: true });
  await client.publish('game.c', 'c0', { unreliable: true });
  await flushed;
  const sent = sentDatagrams(conn);
  const expected = [publishDatagram('game.a', 'a20'), newest[1]];
  for (const d of expected) assert.ok(sent.includes(d), 'the rooms\' newest values were sent');
  const pings = seen.filter(([type]) => type === 'Ping');
  assert.equal(pings.length, 1, 'one Ping');
  const before = pings[0][1];
  assert.ok(sent.slice(0, before).includes(expected[0]) && sent.slice(0, before).includes(expected[1]), 'the Ping went after them');
  assert.ok(!sent.slice(0, before).includes(publishDatagram('game.c', 'c0')), 'not after the room that began to wait later');
});

test('flush() with nothing waiting is a Ping round trip, behind the publishes waiting to be written', async (t) => {
  const { client, conn } = await setup(t);
  conn.autoAnswer = true;
  const published = [];
  for (let n = 0; n < 8; n++) published.push(client.publish('chat.room', `m${n}`));
  await client.flush();
  const types = conn.received.map((f) => f.command.type).filter((type) => type !== 'Hello');
  assert.deepEqual(types, [...Array(8).fill('Publish'), 'Ping']);
  await Promise.all(published);
});

test('flush() is bounded by requestTimeoutMs', async (t) => {
  const { client } = await setup(t, { requestTimeoutMs: 300 });
  // Nothing answers the Ping.
  const start = Date.now();
  await assert.rejects(client.flush(), (e) => e.kind === 'timeout');
  const took = Date.now() - start;
  assert.ok(took >= 250 && took < 1_000, `flush() took ${took} ms`);
});

test('flush() waiting for the pacer is bounded by requestTimeoutMs too', async (t) => {
  const { net, client } = fakeClient({ transports: ['webtransport'], requestTimeoutMs: 300 });
  t.after(() => client.close());
  const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 2 } } });
  conn.autoAnswer = true;
  for (let n = 0; n < 10; n++) await client.publish(`game.r${n}`, 'v', { unreliable: true });
  const start = Date.now();
  await assert.rejects(client.flush(), (e) => e.kind === 'timeout');
  const took = Date.now() - start;
  assert.ok(took >= 250 && took < 1_000, `flush() took ${took} ms`);
  await sleep(100);
  assert.equal(conn.received.filter((f) => f.command.type === 'Ping').length, 0, 'no Ping went after the timeout');
});

test('flush() whose Ping still waits for the pacer at requestTimeoutMs withdraws it: never sent', async (t) => {
  const { client, conn } = await setup(t, { requestTimeoutMs: 300 });
  conn.autoAnswer = true;
  // A burst of 5 goes at once; the other 5 go about 110 ms apart, the Ping after them (~550 ms).
  const published = [];
  for (let n = 0; n < 10; n++) published.push(client.publish('chat.room', `m${n}`));
  const start = Date.now();
  await assert.rejects(client.flush(), (e) => e.kind === 'timeout');
  const took = Date.now() - start;
  assert.ok(took >= 250 && took < 1_000, `flush() took ${took} ms`);
  await Promise.allSettled(published);
  await sleep(400);
  assert.equal(conn.received.filter((f) => f.command.type === 'Ping').length, 0, 'no Ping went after the timeout');
});

test('flush() rejects, kind closed, when disconnected, after close(), and when the session ends meanwhile', async (t) => {
  const { net, client } = fakeClient({ transports: ['webtransport'] });
  t.after(() => client.close());
  await assert.rejects(client.flush(), (e) => e.kind === 'closed' && /not connected/.test(e.message));
  const conn = await connected(net, client, { welcome: { limits: { commandsPerSecond: 2 } } });
  for (let n = 0; n < 3; n++) await client.publish(`game.r${n}`, 'v', { unreliable: true });
  const flushed = client.flush();
  conn.kill();
  await assert.rejects(flushed, (e) => e.kind === 'closed');
  await client.close();
  await assert.rejects(client.flush(), (e) => e.kind === 'closed' && /client is closed/.test(e.message));
});
