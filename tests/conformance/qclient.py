"""A minimal Quiver v1 client over WebSocket, written from PROTOCOL.md alone.

It was written by an outside auditor (session 62, audit 125) from PROTOCOL.md sections 3, 9.1,
9.2 and 12, without reading the server, proto/ or the project's clients, and matched every
vector of proto/vectors/frames.json; it is kept here, tidied, as the conformance suite's client.
Do not "fix" it by reading the implementation: a disagreement with the server is either a
server bug or a gap in PROTOCOL.md, and that is what the suite is for.

Wire (section 3): each frame is a 4-byte big-endian length, then a postcard body: the envelope
id (u32 varint), the message enum (varint type) and its fields. Client to server: exactly one
frame per binary WebSocket message. Server to client: one or more whole frames per message.
Only the Python standard library and the `websockets` package are used.
"""
import struct
import time

from postcard import (CALL, HELLO, HISTORY, PING, PRESENCE, PSTATS, PUBLISH,  # noqa: F401
                      REFRESH, SUBSCRIBE, UNSUBSCRIBE, call, cmd, frame, hello, history, opt,
                      ping, pos, presence, pstats, publish, refresh, s, subscribe, unsubscribe,
                      uv)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

# ---------------------------------------------------------------- postcard (section 3)
# The command encoders (uv, s, opt, pos, frame, cmd, hello ... pstats) are postcard.py's, shared
# with wt_client.py; the decoder below is this client's own and strict: every malformation
# PROTOCOL.md section 3 names is an error.


class Malformed(ValueError):
    pass


class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def byte(self):
        if self.i >= len(self.b):
            raise Malformed("frame ends early")
        c = self.b[self.i]
        self.i += 1
        return c

    def v(self, bits=64):
        n = sh = 0
        for _ in range((bits + 6) // 7):
            c = self.byte()
            n |= (c & 0x7F) << sh
            sh += 7
            if not c & 0x80:
                if n >> bits:
                    raise Malformed("varint past its type's width")
                return n
        raise Malformed("varint too long")

    def raw(self):
        n = self.v(32)
        if self.i + n > len(self.b):
            raise Malformed("length past the frame's end")
        r = self.b[self.i:self.i + n]
        self.i += n
        return bytes(r)

    def str(self):
        return self.raw().decode()

    def bool(self):
        c = self.byte()
        if c > 1:
            raise Malformed("bool neither 00 nor 01")
        return bool(c)

    def opt(self, f, appended=False):
        if appended and self.i >= len(self.b):
            return None  # section 8: an appended Option may be left out entirely
        c = self.byte()
        if c > 1:
            raise Malformed("Option tag neither 00 nor 01")
        return f() if c else None

    def pos(self):
        return (self.v(), self.v())

    def more(self):
        return self.i < len(self.b)


# ---------------------------------------------------------------- events (section 3)

EVENTS = ["Welcome", "Subscribed", "Unsubscribed", "Published", "Pong", "Refreshed", "Error",
          "Publication", "SubscriptionStream", "Goodbye", "Presence", "Joined", "Left", "History",
          "Latest", "Reply", "PresenceStats"]
REPLIES = {"Welcome", "Subscribed", "Unsubscribed", "Published", "Pong", "Refreshed", "Error",
           "Presence", "History", "Reply", "PresenceStats"}


def decode_body(body):
    """One server body as a flat dict: {"id", "t" (event name), fields...}. Positions are
    (epoch, offset) tuples, payloads bytes, members (user, session) tuples."""
    r = Reader(body)
    id_ = r.v(32)
    t = r.v(32)
    name = EVENTS[t] if t < len(EVENTS) else f"Unknown{t}"
    d = {"id": id_, "t": name}

    def member():
        return (r.str(), r.str())

    if name == "Welcome":
        d.update(version=r.v(16), session=r.str(), user=r.str(), tenant=r.str(),
                 expires_at=r.opt(r.v),
                 limits=dict(max_frame=r.v(32), max_payload=r.v(32),
                             max_subscriptions=r.v(32), commands_per_second=r.v(32)))
    elif name == "Subscribed":
        d.update(room=r.str(), position=r.opt(r.pos))
        k = r.v(32)
        if k == 0:
            d["recovery"] = "NotRequested"
        elif k == 1:
            d["recovery"] = ("Recovered", r.v(32))
        elif k == 2:
            d["recovery"] = "Failed"
        else:
            raise Malformed(f"unknown Recovery variant {k}")  # section 8
        d["subscription"] = r.opt(r.v, appended=True)
    elif name == "Unsubscribed":
        d.update(room=r.str(), code=r.v(16), reason=r.str())
    elif name == "Published":
        d.update(position=r.opt(r.pos))
    elif name == "Refreshed":
        d.update(expires_at=r.opt(r.v))
    elif name == "Error":
        d.update(code=r.v(16), message=r.str())
    elif name == "Publication":
        d.update(room=r.str(), position=r.opt(r.pos), payload=r.raw())
    elif name == "SubscriptionStream":
        d.update(room=r.str())
    elif name == "Goodbye":
        d.update(code=r.v(16), reason=r.str(), reconnect=r.bool())
    elif name == "Presence":
        d.update(room=r.str())
        d["members"] = [member() for _ in range(r.v(32))]
        d["truncated"] = r.bool() if r.more() else False  # appended field
    elif name in ("Joined", "Left"):
        d.update(room=r.str(), member=member())
    elif name == "History":
        d.update(room=r.str(), position=r.opt(r.pos))
        d["publications"] = [(r.pos(), r.raw()) for _ in range(r.v(32))]
        d["truncated"] = r.bool()
    elif name == "Latest":
        d.update(room=r.str(), sequence=r.v(), payload=r.raw())
    elif name == "Reply":
        d.update(payload=r.raw())
    elif name == "PresenceStats":
        d.update(room=r.str(), sessions=r.v(32), users=r.v(32))
    return d


def split_frames(msg):
    """A server message: one or more whole length-prefixed frames (section 9.2)."""
    out, i = [], 0
    while i < len(msg):
        if i + 4 > len(msg):
            raise Malformed("a frame's length prefix spans messages")
        (n,) = struct.unpack(">I", msg[i:i + 4])
        i += 4
        if n == 0 or i + n > len(msg):
            raise Malformed("a frame spans messages or is empty")
        d = decode_body(msg[i:i + n])
        d["_len"] = n
        out.append(d)
        i += n
    return out


# ---------------------------------------------------------------- WebSocket session (section 9)


class Conn:
    """One WebSocket session. `recv` yields decoded frames one at a time; `closed` holds
    (close code, reason) once the server's close frame has been read."""

    def __init__(self, http, token=None, headers=None, subprotocols=None, query=True,
                 max_queue=16, origin=None):
        url = f"ws://{http}/v1/ws"
        if token and query:
            url += "?token=" + token
        kw = {}
        if origin:
            kw["origin"] = origin
        self.ws = connect(url, additional_headers=headers or {}, subprotocols=subprotocols,
                          max_size=None, open_timeout=5, ping_interval=None, close_timeout=2,
                          max_queue=max_queue, **kw)
        self.pending = []
        self.closed = None
        self.messages = 0

    def send(self, b):
        self.ws.send(b)

    def recv(self, timeout=2.0):
        if self.pending:
            return self.pending.pop(0)
        try:
            m = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as e:
            self.closed = (e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None)
            return None
        self.messages += 1
        if isinstance(m, str):
            return {"t": "TEXT", "id": None, "data": m}
        fr = split_frames(m)
        self.pending.extend(fr[1:])
        return fr[0]

    def until(self, pred, timeout=3.0):
        """Read until pred(event); returns (the event or None, every event read)."""
        seen = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            e = self.recv(timeout=max(0.05, end - time.monotonic()))
            if e is None:
                if self.closed:
                    break
                continue
            seen.append(e)
            if pred(e):
                return e, seen
        return None, seen

    def reply(self, id_, timeout=3.0):
        """The reply to command `id_` (or a Goodbye, which answers it too: section 3)."""
        e, _ = self.until(lambda e: (e["t"] in REPLIES and e["id"] == id_) or e["t"] == "Goodbye",
                          timeout)
        return e

    def drain(self, timeout=0.5, limit=100000, most=10.0):
        """Every event until `timeout` passes with nothing new (or `limit` events, or `most`
        seconds in all)."""
        out = []
        end = time.monotonic() + most
        while len(out) < limit and time.monotonic() < end:
            e = self.recv(timeout=timeout)
            if e is None:
                return out
            out.append(e)
        return out

    def goodbye(self, timeout=3.0):
        """Read up to the Goodbye, then the close frame: (goodbye or None, (code, reason) or None,
        events read before the goodbye)."""
        g, seen = self.until(lambda e: e["t"] == "Goodbye", timeout)
        self.goodbye_at = time.monotonic()
        after = []
        end = time.monotonic() + 3
        while not self.closed and time.monotonic() < end:
            e = self.recv(timeout=0.5)
            if e is not None:
                after.append(e)
        self.closed_at = time.monotonic()
        return g, self.closed, seen[:-1] if g else seen, after

    def start(self, id_=1):
        self.send(hello(id_))
        return self.reply(id_)

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
