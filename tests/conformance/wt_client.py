"""A Quiver WebTransport client on aioquic, written from PROTOCOL.md alone (sections 1-3, 7, 10)
by an outside auditor (audit 128); tests/conformance/test_wt_conformance.py drives it. Do not fix
it by reading the server: a disagreement is a server bug or a gap in PROTOCOL.md.

Raw enough for hostile probes: every frame can be sent as bytes, and every event the peer
produces (control frames, subscription streams, resets, STOP_SENDING, datagrams, the QUIC close)
is recorded on the Session for a probe to inspect.
"""
import asyncio
import ssl
import struct
import time

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import (DatagramReceived, HeadersReceived,
                               WebTransportStreamDataReceived)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (ConnectionTerminated, StopSendingReceived,
                                 StreamReset)

import postcard
from postcard import (cmd, frame, history, opt, ping, pos, presence,  # noqa: F401
                      publish, refresh, subscribe, unsubscribe)
from postcard import pstats as presence_stats  # noqa: F401
from postcard import s as pstr
from postcard import uv as varint  # noqa: F401

# ---------------------------------------------------------------- postcard (section 3)
# The command encoders are postcard.py's, shared with qclient.py (under this client's names:
# varint, pstr, presence_stats); the decoder below is this client's own.


def hello(id_=1, version=1, client="audit128/0.1"):
    return postcard.hello(id_, version, client)


class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def varint(self):
        n = shift = 0
        while True:
            c = self.b[self.i]
            self.i += 1
            n |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                return n

    def bytes(self):
        n = self.varint()
        v = self.b[self.i:self.i + n]
        if len(v) != n:
            raise ValueError("short")
        self.i += n
        return bytes(v)

    def str(self):
        return self.bytes().decode()

    def u8(self):
        c = self.b[self.i]
        self.i += 1
        return c

    def opt(self, f):
        t = self.u8()
        if t == 0:
            return None
        if t != 1:
            raise ValueError("bad option tag")
        return f()

    def pos(self):
        return (self.varint(), self.varint())

    def more(self):
        return self.i < len(self.b)


EVENTS = ["Welcome", "Subscribed", "Unsubscribed", "Published", "Pong", "Refreshed", "Error",
          "Publication", "SubscriptionStream", "Goodbye", "Presence", "Joined", "Left",
          "History", "Latest", "Reply", "PresenceStats"]


def decode_event(body):
    r = Reader(body)
    id_ = r.varint()
    t = r.varint()
    name = EVENTS[t] if t < len(EVENTS) else f"Unknown{t}"
    e = {"id": id_, "type": name}
    member = lambda: {"user": r.str(), "session": r.str()}
    if name == "Welcome":
        e.update(version=r.varint(), session=r.str(), user=r.str(), tenant=r.str(),
                 expires_at=r.opt(r.varint),
                 limits=dict(max_frame=r.varint(), max_payload=r.varint(),
                             max_subscriptions=r.varint(), commands_per_second=r.varint()))
    elif name == "Subscribed":
        e.update(room=r.str(), position=r.opt(r.pos))
        rv = r.varint()
        e["recovery"] = ("Recovered", r.varint()) if rv == 1 else {0: "NotRequested", 2: "Failed"}.get(rv, rv)
        e["subscription"] = r.opt(r.varint) if r.more() else None
    elif name == "Unsubscribed":
        e.update(room=r.str(), code=r.varint(), reason=r.str())
    elif name == "Published":
        e.update(position=r.opt(r.pos))
    elif name == "Refreshed":
        e.update(expires_at=r.opt(r.varint))
    elif name == "Error":
        e.update(code=r.varint(), message=r.str())
    elif name == "Publication":
        e.update(room=r.str(), position=r.opt(r.pos), payload=r.bytes())
    elif name == "SubscriptionStream":
        e.update(room=r.str())
    elif name == "Goodbye":
        e.update(code=r.varint(), reason=r.str(), reconnect=bool(r.u8()))
    elif name == "Presence":
        e["room"] = r.str()
        e["members"] = [member() for _ in range(r.varint())]
        e["truncated"] = bool(r.u8()) if r.more() else False
    elif name in ("Joined", "Left"):
        e.update(room=r.str(), member=member())
    elif name == "History":
        e.update(room=r.str(), position=r.opt(r.pos))
        e["publications"] = [(r.pos(), r.bytes()) for _ in range(r.varint())]
        e["truncated"] = bool(r.u8())
    elif name == "Latest":
        e.update(room=r.str(), sequence=r.varint(), payload=r.bytes())
    elif name == "Reply":
        e.update(payload=r.bytes())
    elif name == "PresenceStats":
        e.update(room=r.str(), sessions=r.varint(), users=r.varint())
    return e


class FrameBuf:
    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            n = struct.unpack(">I", self.buf[:4])[0]
            if len(self.buf) < 4 + n:
                break
            out.append(decode_event(bytes(self.buf[4:4 + n])))
            del self.buf[:4 + n]
        return out


def dgram_latest(data):
    r = Reader(data)
    return {"subscription": r.varint(), "sequence": r.varint(), "payload": bytes(data[r.i:])}


def dgram_publish(room, payload):
    return pstr(room) + payload

# ---------------------------------------------------------------- transport (sections 1, 2)


class Proto(QuicConnectionProtocol):
    def __init__(self, *a, session=None, **kw):
        super().__init__(*a, **kw)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.s = session

    def quic_event_received(self, ev):
        s = self.s
        if isinstance(ev, ConnectionTerminated):
            s.closed = (ev.error_code, ev.reason_phrase, time.monotonic())
            s.changed()
            return
        if isinstance(ev, StreamReset):
            s.resets[ev.stream_id] = ev.error_code
            s.changed()
        if isinstance(ev, StopSendingReceived):
            s.stops[ev.stream_id] = ev.error_code
            s.changed()
        for e in self.h3.handle_event(ev):
            s.h3_event(e)
        s.changed()


class Session:
    def __init__(self):
        self.proto = None
        self.status = None
        self.headers = None
        self.sid = None
        self.ctrl = None
        self.ctrl_buf = FrameBuf()
        self.ctrl_events = []
        self.ctrl_fin = False
        self.subs = {}  # stream id -> {"buf","events","fin"}
        self.datagrams = []
        self.resets = {}
        self.stops = {}
        self.closed = None
        self._cond = asyncio.Event()
        self._cm = None

    def changed(self):
        self._cond.set()

    def h3_event(self, e):
        if isinstance(e, HeadersReceived) and e.stream_id == self.sid:
            self.headers = dict(e.headers)
            self.status = int(self.headers.get(b":status", b"0"))
        elif isinstance(e, WebTransportStreamDataReceived):
            if e.stream_id == self.ctrl:
                self.ctrl_events += self.ctrl_buf.feed(e.data)
                self.ctrl_fin |= e.stream_ended
            else:
                st = self.subs.setdefault(e.stream_id, {"buf": FrameBuf(), "events": [], "fin": False})
                st["events"] += st["buf"].feed(e.data)
                st["fin"] |= e.stream_ended
        elif isinstance(e, DatagramReceived):
            self.datagrams.append(bytes(e.data))

    async def wait(self, pred, timeout=5.0):
        end = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            left = end - time.monotonic()
            if left <= 0:
                return None
            self._cond.clear()
            try:
                await asyncio.wait_for(self._cond.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass

    # --- connecting
    async def open(self, host, port, path, headers=(), max_datagram=65536, open_ctrl=True,
                   timeout=5.0, max_stream_data=None, before_connect=None):
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                max_datagram_frame_size=max_datagram, verify_mode=ssl.CERT_NONE,
                                server_name="localhost")
        if max_stream_data:
            cfg.max_stream_data = max_stream_data
        self._cm = connect(host, port, configuration=cfg, create_protocol=lambda *a, **kw: Proto(*a, session=self, **kw),
                           wait_connected=True)
        self.proto = await asyncio.wait_for(self._cm.__aenter__(), timeout)
        if before_connect:
            await before_connect()
        quic = self.proto._quic
        self.sid = quic.get_next_available_stream_id()
        hdrs = [(b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", f"{host}:{port}".encode()),
                (b":path", path.encode()), (b":protocol", b"webtransport")] + [
                    (k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v) for k, v in headers]
        self.proto.h3.send_headers(self.sid, hdrs, end_stream=False)
        self.proto.transmit()
        await self.wait(lambda: self.status is not None or self.closed, timeout)
        if self.status == 200 and open_ctrl:
            self.open_ctrl()
        return self.status

    def open_bidi(self, session_id=None):
        """A client bidi WebTransport stream (40 41 + session id). aioquic does not mark its own
        bidi WT streams as such (PROTOCOL.md section 12 warns of it): do it, so the replies are
        delivered raw instead of parsed as HTTP/3 frames."""
        h3 = self.proto.h3
        sid = h3.create_webtransport_stream(self.sid if session_id is None else session_id, False)
        with h3._get_or_create_stream(sid) as st:
            st.frame_type = FrameType.WEBTRANSPORT_STREAM
            st.session_id = self.sid if session_id is None else session_id
        self.proto.transmit()
        return sid

    def open_ctrl(self):
        self.ctrl = self.open_bidi()
        self.proto.transmit()
        return self.ctrl

    def send(self, data, end=False, stream=None):
        self.proto._quic.send_stream_data(self.ctrl if stream is None else stream, data, end)
        self.proto.transmit()

    def send_dgram(self, payload):
        self.proto.h3.send_datagram(self.sid, payload)
        self.proto.transmit()

    def reset(self, stream, code=0):
        self.proto._quic.reset_stream(stream, code)
        self.proto.transmit()

    def stop(self, stream, code=0):
        self.proto._quic.stop_stream(stream, code)
        self.proto.transmit()

    async def reply(self, id_, timeout=5.0, types=None):
        def f():
            for e in self.ctrl_events:
                if e["id"] == id_ and (types is None or e["type"] in types):
                    return e
        return await self.wait(f, timeout)

    async def hello(self, timeout=5.0):
        self.send(hello())
        return await self.reply(1, timeout, ("Welcome", "Goodbye"))

    async def goodbye(self, timeout=5.0):
        return await self.wait(lambda: next((e for e in self.ctrl_events if e["type"] == "Goodbye"), None), timeout)

    async def until_closed(self, timeout=5.0):
        return await self.wait(lambda: self.closed, timeout)

    def sub_events(self):
        return {sid: st["events"] for sid, st in self.subs.items()}

    async def close(self):
        if self._cm:
            try:
                self.proto._quic.close(error_code=0)
                self.proto.transmit()
                await asyncio.wait_for(self._cm.__aexit__(None, None, None), 2)
            except Exception:
                pass
            self._cm = None


def qvarint(n):
    """A QUIC variable-length integer (RFC 9000 section 16), for capsules and datagram prefixes."""
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return struct.pack(">H", 0x4000 | n)
    if n < 0x40000000:
        return struct.pack(">I", 0x80000000 | n)
    return struct.pack(">Q", 0xC000000000000000 | n)


def capsule(t, payload):
    return qvarint(t) + qvarint(len(payload)) + payload


async def session(host, port, token, ready=True, **kw):
    """A session on host:port with the token in the query; with ready, its Hello answered
    (s.welcome is the reply: Welcome, or whatever came instead)."""
    s = Session()
    st = await s.open(host, port, f"/v1?token={token}", **kw)
    s.welcome = None
    if ready and st == 200:
        s.welcome = await s.hello()
    return s
