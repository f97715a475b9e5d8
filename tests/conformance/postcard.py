"""The postcard encoding of Quiver v1 commands (PROTOCOL.md section 3), shared by the two
conformance clients (qclient.py over WebSocket, wt_client.py over WebTransport).

Both clients were written from PROTOCOL.md alone and wrote these encoders the same way; they are
kept here once. Each client keeps its own decoder (qclient's is strict, for the frame vectors and
malformed-input checks; wt_client's records what a hostile probe needs). Do not "fix" this by
reading the implementation: a disagreement with the server is a server bug or a gap in PROTOCOL.md.

A frame is a 4-byte big-endian length, then the body: the envelope id (u32 varint), the command
(varint type) and its fields. Only the Python standard library is used.
"""
import struct


def uv(n):
    """Unsigned LEB128 varint, shortest form."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s(x):
    """String or Bytes: varint length, then the bytes."""
    if isinstance(x, str):
        x = x.encode()
    return uv(len(x)) + bytes(x)


def opt(v, enc):
    return b"\x00" if v is None else b"\x01" + enc(v)


def pos(p):
    """A Position (epoch, offset)."""
    return uv(p[0]) + uv(p[1])


# ---------------------------------------------------------------- commands (section 3)

HELLO, SUBSCRIBE, UNSUBSCRIBE, PUBLISH, PING, REFRESH, PRESENCE, HISTORY, CALL, PSTATS = range(10)


def frame(body):
    return struct.pack(">I", len(body)) + body


def cmd(id_, typ, fields=b""):
    return frame(uv(id_) + uv(typ) + fields)


def hello(id_=1, version=1, client="quiver-conformance/1"):
    return cmd(id_, HELLO, uv(version) + s(client))


def subscribe(id_, room, resume=None):
    return cmd(id_, SUBSCRIBE, s(room) + opt(resume, pos))


def unsubscribe(id_, room):
    return cmd(id_, UNSUBSCRIBE, s(room))


def publish(id_, room, payload, ack=True):
    return cmd(id_, PUBLISH, s(room) + s(payload) + (b"\x01" if ack else b"\x00"))


def ping(id_):
    return cmd(id_, PING)


def refresh(id_, token):
    return cmd(id_, REFRESH, s(token))


def presence(id_, room):
    return cmd(id_, PRESENCE, s(room))


def history(id_, room, since=None, limit=100):
    return cmd(id_, HISTORY, s(room) + opt(since, pos) + uv(limit))


def call(id_, method, payload=b"", timeout_ms=0, key=""):
    return cmd(id_, CALL, s(method) + s(payload) + uv(timeout_ms) + s(key))


def pstats(id_, room):
    return cmd(id_, PSTATS, s(room))
