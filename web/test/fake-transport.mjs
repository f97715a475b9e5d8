// An in-memory stand-in for the browser's WebTransport and for a Quiver server, so the client's
// session logic (handshake, streams, reconnects) is tested in Node without a network.
import { FrameDecoder, decodeCommand, encodeEvent } from '../dist/quiver.js';

const TIMEOUT_MS = 3000;

/** Values pushed by one side, awaited by the other, with a deadline. */
class Channel {
  items = [];
  waiters = [];

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  next(what, ms = TIMEOUT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      const waiter = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.push(waiter);
    });
  }
}

export class FakeNetwork {
  connections = new Channel();
  /** Decides per CONNECT whether the handshake succeeds (like a server checking the token). */
  accept = () => true;

  get WebTransport() {
    const net = this;
    return class {
      constructor(url, options) {
        const conn = new FakeConnection(url, options, net.accept(new URL(url)));
        net.connections.push(conn);
        // A constructor may return another object: the client gets the connection's browser side.
        return conn.client;
      }
    };
  }

  nextConnection() {
    return this.connections.next('a connection attempt');
  }
}

export class FakeConnection {
  commands = new Channel();
  closedByClient = null;

  constructor(url, options, accepted) {
    this.url = new URL(url);
    this.options = options;
    let resolveClosed, rejectClosed;
    const closed = new Promise((res, rej) => ((resolveClosed = res), (rejectClosed = rej)));
    this.resolveClosed = resolveClosed;
    this.rejectClosed = rejectClosed;
    const incoming = new ReadableStream({ start: (c) => (this.uniController = c) });
    const decoder = new FrameDecoder();
    this.client = {
      ready: accepted ? Promise.resolve() : Promise.reject(new Error('WebTransportError: Opening handshake failed.')),
      closed,
      incomingUnidirectionalStreams: incoming,
      createBidirectionalStream: async () => ({
        readable: new ReadableStream({ start: (c) => (this.controlController = c) }),
        writable: new WritableStream({
          write: (chunk) => {
            for (const body of decoder.push(chunk)) this.commands.push(decodeCommand(body));
          },
        }),
      }),
      close: (info) => {
        this.closedByClient = info ?? {};
        this.resolveClosed({ closeCode: info?.closeCode ?? 0, reason: info?.reason ?? '' });
      },
    };
    this.client.ready.catch(() => undefined);
    if (!accepted) this.rejectClosed(new Error('WebTransportError: Opening handshake failed.'));
    closed.catch(() => undefined);
  }

  /** Next command from the client, checked to be of `type`. */
  async expect(type) {
    const frame = await this.commands.next(`a ${type} command`);
    if (frame?.command.type !== type) {
      throw new Error(`expected ${type}, got ${JSON.stringify(frame, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))}`);
    }
    return frame;
  }

  send(id, event) {
    this.controlController.enqueue(encodeEvent({ id, event }));
  }

  sendRaw(bytes) {
    this.controlController.enqueue(bytes);
  }

  /** Completes the handshake: reads Hello, answers Welcome. */
  async welcome({ expiresAt = null, tenant = 't', user = 'u' } = {}) {
    const hello = await this.expect('Hello');
    this.send(hello.id, {
      type: 'Welcome',
      version: 1,
      session: 's',
      user,
      tenant,
      expiresAt,
      limits: { maxFrame: 65536, maxPayload: 65000, maxSubscriptions: 16, commandsPerSecond: 100 },
    });
    return hello;
  }

  /** Opens a server-to-client stream; returns a writer of events on it. */
  openStream() {
    let controller;
    this.uniController.enqueue(new ReadableStream({ start: (c) => (controller = c) }));
    return {
      send: (id, event) => controller.enqueue(encodeEvent({ id, event })),
      close: () => controller.close(),
    };
  }

  /** The connection dies without a close handshake (server killed). */
  kill() {
    this.rejectClosed(new Error('WebTransportError: Connection lost.'));
    const err = new Error('Connection lost.');
    this.controlController?.error(err);
    this.uniController.error(err);
  }
}

/** Resolves when `emitter.on(event)` fires with arguments matching `predicate`. */
export function once(client, event, predicate = () => true, ms = TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${ms} ms waiting for '${event}'`));
    }, ms);
    const off = client.on(event, (...args) => {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}
