#!/usr/bin/env python3
"""Outside-view conformance checks of the real `quiver` server over WebSocket.

Every check asserts a rule PROTOCOL.md states (its section is in the check's name) and talks to
the server only through qclient.py (written from PROTOCOL.md alone) and plain HTTP. The runner
starts two servers of its own on free loopback ports, mints tokens with `quiver token`, runs the
checks one after another, stops the servers, and exits non-zero with one line per failed check.

    test_conformance.py --quiver target/debug/quiver [--only NAME ...] [--mutate N] [--list]

--mutate N is the suite's self-test: the N-th assertion of every check has its expectation
flipped (a number +1, a string extended, a boolean negated, a list's last element changed), so
every check must fail; one that still passes asserts nothing and is reported VACUOUS (exit 1).
Uses only the Python standard library and the `websockets` package.
"""
import base64
import http.client
import json
import os
import socket
import struct
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import qclient as q  # noqa: E402
from harness import ROOT, jwt_claims  # noqa: E402
from qclient import Conn  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

CHECK_TIMEOUT = 25.0  # seconds; a check still running then fails as timed out
SUITE_TIMEOUT = 150.0

# Server A: default limits, plus what the checks need named (namespaces, an Origin list, quotas
# of four tenants that only the quota checks use). Server B: low limits, to reach them quickly.
CONFIG_A = """
demo = false
allowed_origins = ["http://allowed.example"]
[tls]
self_signed = true
[timeouts]
drain = "1s"
[[namespaces]]
name = "chat"
history_size = 100
history_ttl = "5m"
presence = true
[[namespaces]]
name = "hist"
history_size = 1100
history_ttl = "5m"
[[quotas.tenants]]
tenant = "quota-s"
max_sessions = 2
[[quotas.tenants]]
tenant = "quota-r"
sessions_per_second = 1
[[quotas.tenants]]
tenant = "quota-p"
publications_per_second = 2
[[quotas.tenants]]
tenant = "quota-x"
publications_per_second = 1
max_subscriptions = 2
"""
CONFIG_B = """
demo = false
[tls]
self_signed = true
[limits]
max_frame = 8192
max_payload = 8000
subscriber_queue = 8
session_queue_bytes = 8192
commands_per_second = 400
[timeouts]
hello = "1s"
drain = "1s"
[[namespaces]]
name = "crowd"
presence = true
"""

# ---------------------------------------------------------------- checks and their assertions

CHECKS = harness.Checks(CHECK_TIMEOUT)
check = CHECKS


class Ctx(harness.Assertions):
    """What a check sees: the server, tokens, and soft assertions (a failed one is recorded and
    the check goes on, so its flow never depends on an expectation); its WebSockets are closed
    when it ends."""

    def __init__(self, suite, server, mutate):
        super().__init__(suite, server, mutate)
        self.http = server.http if server else None
        self.conns = []

    def conn(self, token, server=None, **kw):
        c = Conn((server or self.server).http, token, **kw)
        self.conns.append(c)
        return c

    def session(self, token_name="alice", hid=1, server=None, **kw):
        c = self.conn(self.tok(token_name), server=server, **kw)
        w = c.start(hid)
        if not w or w["t"] != "Welcome":
            raise RuntimeError(f"no Welcome for {token_name}: {w}")
        return c, w

    def close_all(self):
        for c in self.conns:
            c.close()


def codes(events):
    return [(e["t"], e.get("code")) for e in events]


def http_req(addr, method, path, headers=()):
    """A plain HTTP request (headers may repeat); (status, {lower name: value}, body)."""
    c = http.client.HTTPConnection(addr, timeout=5)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


WS_UPGRADE = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", base64.b64encode(b"k" * 16).decode())]


def ws_mask(payload, op=2, fin=True):
    m = os.urandom(4)
    n = len(payload)
    h = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        h += bytes([0x80 | n])
    elif n < 65536:
        h += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        h += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return h + m + bytes(b ^ m[i % 4] for i, b in enumerate(payload))


def raw_ws(addr, token):
    """A WebSocket opened by hand (for what a library will not send); (socket, bytes read past
    the 101's head)."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    end = time.monotonic() + 5
    while b"\r\n\r\n" not in buf and time.monotonic() < end:
        d = sock.recv(4096)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no upgrade: {head[:100]!r}")
    return sock, rest


def raw_ws_read(sock, rest, wait=3.0):
    """Every WebSocket frame until the connection ends or `wait` passes: a list of
    ("bin", [decoded frames]) / ("close", code) / (opcode, payload)."""
    sock.settimeout(0.3)
    data = rest
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            d = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not d:
            break
        data += d
    out, i = [], 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = struct.unpack(">H", data[i:i + 2])[0]
            i += 2
        elif n == 127:
            n = struct.unpack(">Q", data[i:i + 8])[0]
            i += 8
        p = data[i:i + n]
        i += n
        if op == 2:
            out.append(("bin", q.split_frames(p)))
        elif op == 8:
            out.append(("close", struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None))
        else:
            out.append((op, p))
    return out


# ================================================================ frames (section 3)

VECTORS = os.path.join(ROOT, "proto", "vectors", "frames.json")


def encode_vector(fr):
    id_, c = fr["id"], fr["command"]
    if c == "Ping":
        return q.ping(id_)
    (k, f), = c.items()
    p = lambda x: None if x is None else (x["epoch"], x["offset"])  # noqa: E731
    if k == "Hello":
        return q.hello(id_, f["version"], f["client"])
    if k == "Subscribe":
        return q.subscribe(id_, f["room"], p(f["resume"]))
    if k == "Unsubscribe":
        return q.unsubscribe(id_, f["room"])
    if k == "Publish":
        return q.publish(id_, f["room"], bytes(f["payload"]), f["ack"])
    if k == "Refresh":
        return q.refresh(id_, f["token"])
    if k == "Presence":
        return q.presence(id_, f["room"])
    if k == "History":
        return q.history(id_, f["room"], p(f["since"]), f["limit"])
    if k == "Call":
        return q.call(id_, f["method"], bytes(f["payload"]), f["timeout_ms"], f["idempotency_key"])
    if k == "PresenceStats":
        return q.pstats(id_, f["room"])
    return b"no encoder for " + k.encode()


def event_as_vector(d):
    pj = lambda p: None if p is None else {"epoch": p[0], "offset": p[1]}  # noqa: E731
    mj = lambda m: {"user": m[0], "session": m[1]}  # noqa: E731
    t = d["t"]
    if t == "Pong":
        return {"event": "Pong", "id": d["id"]}
    f = {k: v for k, v in d.items() if k not in ("id", "t", "_len")}
    for k in ("position",):
        if k in f:
            f[k] = pj(f[k])
    for k in ("payload",):
        if k in f:
            f[k] = list(f[k])
    if t == "Subscribed":
        r = f["recovery"]
        f["recovery"] = {"Recovered": {"replayed": r[1]}} if isinstance(r, tuple) else r
        if f["subscription"] is None:
            del f["subscription"]
    if "member" in f:
        f["member"] = mj(f["member"])
    if "members" in f:
        f["members"] = [mj(m) for m in f["members"]]
    if t == "History":
        f["publications"] = [{"position": pj(p), "payload": list(b)} for p, b in f["publications"]]
    return {"event": {t: f}, "id": d["id"]}


@check("§3 command vectors: every command of frames.json encodes byte for byte", server=None)
def c_vectors_encode(x):
    vs = [v for v in json.load(open(VECTORS)) if v["direction"] == "command"]
    x.true("frames.json has command vectors", len(vs) >= 10, len(vs))
    for v in vs:
        x.eq(f"vector {v['name']}", encode_vector(v["frame"]).hex(), v["hex"])


@check("§3 event vectors: every event of frames.json decodes to its JSON", server=None)
def c_vectors_decode(x):
    vs = [v for v in json.load(open(VECTORS)) if v["direction"] == "event"]
    x.true("frames.json has event vectors", len(vs) >= 20, len(vs))
    for v in vs:
        try:
            got = q.split_frames(bytes.fromhex(v["hex"]))
            got = [event_as_vector(d) for d in got]
        except Exception as e:  # a vector the decoder cannot read
            got = repr(e)
        x.eq(f"vector {v['name']}", got, [v["frame"]])


@check("§3 §12 the vector `hello`, sent as is, gets Welcome with the Hello's id, v1, the token's claims")
def c_hello_vector(x):
    v = {v["name"]: v for v in json.load(open(VECTORS))}["hello"]
    tok = x.tok("alice")
    c = x.conn(tok)
    c.send(bytes.fromhex(v["hex"]))
    w = c.reply(1) or {}
    x.eq("event", w.get("t"), "Welcome")
    x.eq("id", w.get("id"), 1)
    x.eq("version", w.get("version"), 1)
    x.true("session is 16 lower-case hex digits",
           len(w.get("session", "")) == 16 and all(ch in "0123456789abcdef" for ch in w.get("session", "")),
           w.get("session"))
    cl = jwt_claims(tok)
    x.eq("user = sub", w.get("user"), cl["sub"])
    x.eq("tenant", w.get("tenant"), cl["tenant"])
    x.eq("expires_at = exp", w.get("expires_at"), cl["exp"])
    lim = w.get("limits", {})
    x.eq("limits: the defaults PROTOCOL.md names (§3 max_frame, §5 commands_per_second, §9.3 max_subscriptions)",
         {k: lim.get(k) for k in ("max_frame", "max_subscriptions", "commands_per_second")},
         dict(max_frame=65536, max_subscriptions=256, commands_per_second=200))
    x.true("max_payload + 192 <= max_frame <= 16 MiB, >= 8192",
           lim and lim["max_payload"] + 192 <= lim["max_frame"] and 8192 <= lim["max_frame"] <= 1 << 24, lim)


@check("§3 malformed frames (length 0, two frames in a message, text, type past u32, bool 02, Option tag 02, missing Option, room not UTF-8) -> Goodbye 3001 and close 3001")
def c_malformed(x):
    cases = [
        ("length 0", b"\x00\x00\x00\x00"),
        ("two frames in one message (§9.2)", q.ping(2) + q.ping(3)),
        ("length says 5, holds 2 (§9.2)", b"\x00\x00\x00\x05\x02\x04"),
        ("text message (§9.2)", "hello"),
        ("message type above u32", q.frame(q.uv(2) + bytes.fromhex("808080801001"))),
        ("Publish ack byte 02", q.frame(q.uv(2) + q.uv(3) + q.s("live.m") + q.s(b"x") + b"\x02")),
        ("Subscribe Option tag 02", q.frame(q.uv(2) + q.uv(1) + q.s("live.m") + b"\x02")),
        ("Subscribe without its resume byte (§8)", q.frame(q.uv(2) + q.uv(1) + q.s("live.m"))),
        ("room not UTF-8", q.frame(q.uv(2) + q.uv(1) + b"\x03ch\xff" + b"\x00")),
        ("u32 id in 6 bytes", q.frame(bytes.fromhex("818080808000") + q.uv(4))),
    ]
    for what, msg in cases:
        c, _ = x.session()
        c.send(msg)
        g, closed, before, _ = c.goodbye()
        x.eq(f"{what}: goodbye code", g and g["code"], 3001)
        x.eq(f"{what}: reconnect", g and g["reconnect"], False)
        x.eq(f"{what}: close code", closed and closed[0], 3001)
        x.eq(f"{what}: replies before the goodbye", codes(before), [])


@check("§3 unknown command type -> Error 110 with its id, the session goes on; trailing bytes ignored; id 0 and repeated ids answered")
def c_unknown_command(x):
    c, _ = x.session()
    c.send(q.cmd(9, 50, b"junk"))
    e = c.reply(9) or {}
    x.eq("unknown type 50", (e.get("t"), e.get("code"), e.get("id")), ("Error", 110, 9))
    c.send(q.frame(q.uv(10) + q.uv(4) + b"\xde\xad\xbe\xef"))
    e = c.reply(10) or {}
    x.eq("Ping with trailing bytes", e.get("t"), "Pong")
    c.send(q.ping(0))
    e = c.reply(0) or {}
    x.eq("Ping id 0", (e.get("t"), e.get("id")), ("Pong", 0))
    c.send(q.ping(7))
    c.send(q.ping(7))
    ev = c.drain(0.6)
    x.eq("two Pings sharing id 7", [(e["t"], e["id"]) for e in ev], [("Pong", 7), ("Pong", 7)])


@check("§9.2 a close frame with code 999 -> close 1002, no Goodbye; 1000 is answered with a close frame")
def c_close_codes(x):
    sock, rest = raw_ws(x.http, x.tok("alice"))
    sock.sendall(ws_mask(q.hello(1)))
    time.sleep(0.3)
    sock.sendall(ws_mask(struct.pack(">H", 999), op=8))
    got = raw_ws_read(sock, rest, 2.5)
    sock.close()
    bins = [f["t"] for kind, *rest_ in got if kind == "bin" for f in rest_[0]]
    x.eq("frames received", bins, ["Welcome"])
    x.eq("close frames", [g[1] for g in got if g[0] == "close"], [1002])
    sock, rest = raw_ws(x.http, x.tok("alice"))
    sock.sendall(ws_mask(q.hello(1)))
    time.sleep(0.3)
    sock.sendall(ws_mask(struct.pack(">H", 1000), op=8))
    got = raw_ws_read(sock, rest, 2.5)
    sock.close()
    x.eq("close 1000 answered", [g[1] for g in got if g[0] == "close"], [1000])


# ================================================================ handshake (sections 2, 8, 9.1, 9.2)

@check("§8 §7 Hello.version 2 -> Goodbye 3004 unsupported_version, reconnect false, close 3004")
def c_version(x):
    c = x.conn(x.tok("alice"))
    c.send(q.hello(1, version=2))
    g, closed, before, _ = c.goodbye()
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3004, False))
    x.eq("close code", closed and closed[0], 3004)
    x.eq("no Welcome", codes(before), [])


@check("§2 §7 a command before Hello -> Goodbye 3001, close 3001; a second Hello -> Error 101, session goes on")
def c_hello_order(x):
    c = x.conn(x.tok("alice"))
    c.send(q.ping(5))
    g, closed, before, _ = c.goodbye()
    x.eq("Ping first: goodbye", g and g["code"], 3001)
    x.eq("close code", closed and closed[0], 3001)
    x.eq("no Pong", codes(before), [])
    c, _ = x.session()
    c.send(q.hello(2))
    e = c.reply(2) or {}
    x.eq("second Hello", (e.get("t"), e.get("code")), ("Error", 101))
    c.send(q.ping(3))
    x.eq("then Ping", (c.reply(3) or {}).get("t"), "Pong")


@check("§2 §7 no Hello within timeouts.hello (1 s on server B) -> Goodbye 3006, reconnect true, close 3006", server="b")
def c_hello_timeout(x):
    t0 = time.monotonic()
    c = x.conn(x.tok("alice"))
    g, closed, before, _ = c.goodbye(timeout=5)
    dt = time.monotonic() - t0
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3006, True))
    x.eq("close code", closed and closed[0], 3006)
    x.true("after about 1 s (0.9 to 4 s)", 0.9 <= dt <= 4.0, round(dt, 2))


@check("§9.1 a refused token on WebSocket: the upgrade is accepted, one Goodbye 3007 (reconnect false), close 3007")
def c_bad_token(x):
    for what, token in [("garbage", "abc.def.ghi"), ("missing", None),
                        ("signed with another secret", x.tok("wrong-secret")),
                        ("over 4096 bytes", "x" * 4097)]:
        c = x.conn(token)
        g, closed, before, after = c.goodbye()
        x.eq(f"{what}: goodbye", g and (g["code"], g["reconnect"]), (3007, False))
        x.eq(f"{what}: close code", closed and closed[0], 3007)
        x.eq(f"{what}: messages", c.messages, 1)


@check("§6 §9.1 token expiry: Welcome.expires_at = exp; Goodbye 3002 (reconnect true) at exp, close 3002; the expired token then gets Goodbye 3002, no Welcome; Refresh with it -> 108")
def c_expiry(x):
    tok = x.suite.mint("alice", "acme", ["live.>"], ["live.>"], ttl="3s")
    exp = jwt_claims(tok)["exp"]
    c = x.conn(tok)
    w = c.start() or {}
    x.eq("expires_at", w.get("expires_at"), exp)
    g, closed, _, _ = c.goodbye(timeout=6)
    at = time.time()
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3002, True))
    x.eq("close code", closed and closed[0], 3002)
    x.true("at exp (within 1.5 s)", abs(at - exp) < 1.5, round(at - exp, 2))
    c2 = x.conn(tok)
    g, closed, before, _ = c2.goodbye()
    x.eq("reconnect with it: goodbye", g and (g["code"], g["reconnect"]), (3002, True))
    x.eq("close code", closed and closed[0], 3002)
    x.eq("no Welcome", codes(before), [])
    c3, _ = x.session()
    c3.send(q.refresh(2, tok))
    e = c3.reply(2) or {}
    x.eq("Refresh with the expired token", e.get("code"), 108)


@check("§9.1 where the token comes from: Authorization wins over the query; subprotocol quiver.token.JWT beside quiver works, alone it is 400")
def c_token_places(x):
    good = x.tok("alice")
    c = x.conn(good, headers={"Authorization": "Bearer garbage"})
    g, closed, _, _ = c.goodbye()
    x.eq("bad header, good query", g and g["code"], 3007)
    c = x.conn("garbage", headers={"Authorization": "Bearer " + good})
    w = c.start() or {}
    x.eq("good header, bad query", w.get("t"), "Welcome")
    c = x.conn(None, subprotocols=["quiver", "quiver.token." + good], query=False)
    w = c.start() or {}
    x.eq("token as a subprotocol", w.get("t"), "Welcome")
    x.eq("answer names quiver", c.ws.subprotocol, "quiver")
    st, _, _ = http_req(x.http, "GET", "/v1/ws", WS_UPGRADE + [
        ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Protocol", "quiver.token." + good)])
    x.eq("offered token without quiver", st, 400)


@check("§9.1 §9.2 HTTP refusals: 404 (JSON body), 426 + Sec-WebSocket-Version 13, 405 + Allow GET, 400 bad key, 403 Origin not allowed or repeated")
def c_http_refusals(x):
    tok = x.tok("alice")
    st, h, b = http_req(x.http, "GET", "/v2/ws?token=" + tok, WS_UPGRADE + [("Sec-WebSocket-Version", "13")])
    x.eq("other path", st, 404)
    try:
        body = json.loads(b)
    except ValueError:
        body = {}
    x.eq("404 JSON body keys", sorted(body), ["code", "label", "message"])
    st, h, _ = http_req(x.http, "GET", "/v1/ws?token=" + tok, WS_UPGRADE + [("Sec-WebSocket-Version", "12")])
    x.eq("version 12", (st, h.get("sec-websocket-version")), (426, "13"))
    st, h, _ = http_req(x.http, "POST", "/v1/ws?token=" + tok, WS_UPGRADE + [("Sec-WebSocket-Version", "13"), ("Content-Length", "0")])
    x.eq("POST", (st, h.get("allow")), (405, "GET"))
    st, _, _ = http_req(x.http, "GET", "/v1/ws?token=" + tok, [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "short"), ("Sec-WebSocket-Version", "13")])
    x.eq("bad Sec-WebSocket-Key", st, 400)
    st, _, b = http_req(x.http, "GET", "/v1/ws?token=" + tok, WS_UPGRADE + [("Sec-WebSocket-Version", "13"), ("Origin", "http://evil.example")])
    x.eq("Origin not in allowed_origins", st, 403)
    try:
        label = json.loads(b).get("label")
    except ValueError:
        label = None
    x.eq("its label", label, "origin")
    st, _, _ = http_req(x.http, "GET", "/v1/ws?token=" + tok, WS_UPGRADE + [("Sec-WebSocket-Version", "13"), ("Origin", "http://allowed.example"), ("Origin", "http://allowed.example")])
    x.eq("two Origin headers", st, 403)
    c = x.conn(tok, origin="http://ALLOWED.example/")
    w = c.start() or {}
    x.eq("allowed origin (case and trailing / ignored)", w.get("t"), "Welcome")


# ================================================================ commands (sections 3, 5)

@check("§3 §5 refusal codes: 102 invalid_room, 103 permission_denied, 104 already_subscribed, 105 not_subscribed, 109 payload_too_large, 101 for Presence/History where not kept")
def c_refusals(x):
    c, w = x.session("narrow")
    mp = w["limits"]["max_payload"]
    asks = [
        ("Subscribe live..x", q.subscribe, ("live..x",), 102),
        ("Subscribe a.* (wildcard)", q.subscribe, ("a.*",), 102),
        ("Subscribe 129 bytes", q.subscribe, ("a" * 129,), 102),
        ("Subscribe 17 tokens", q.subscribe, (".".join("a" * 17),), 102),
        ("Subscribe chat.x (not permitted)", q.subscribe, ("chat.x",), 103),
        ("Subscribe chat..x (invalid before permission)", q.subscribe, ("chat..x",), 102),
        ("Unsubscribe live.never", q.unsubscribe, ("live.never",), 105),
        ("Unsubscribe chat.x (not permitted: still 105)", q.unsubscribe, ("chat.x",), 105),
        ("Publish chat.x", q.publish, ("chat.x", b"x"), 103),
        ("Publish max_payload + 1", q.publish, ("live.big", b"x" * (mp + 1)), 109),
        ("Publish ack:false refused", q.publish, ("chat.x", b"x", False), 103),
        ("Presence chat.x (permission before namespace)", q.presence, ("chat.x",), 103),
        ("Presence live.a (no presence)", q.presence, ("live.a",), 101),
        ("PresenceStats live.a", q.pstats, ("live.a",), 101),
        ("History live.a (no history)", q.history, ("live.a",), 101),
    ]
    for i, (what, f, args, code) in enumerate(asks):
        c.send(f(100 + i, *args))
        e = c.reply(100 + i) or {}
        x.eq(what, (e.get("t"), e.get("code"), e.get("id")), ("Error", code, 100 + i))
    c.send(q.subscribe(2, "live.a"))
    e = c.reply(2) or {}
    x.eq("Subscribe live.a", e.get("t"), "Subscribed")
    c.send(q.subscribe(3, "live.a"))
    e = c.reply(3) or {}
    x.eq("Subscribe live.a again", (e.get("t"), e.get("code")), ("Error", 104))
    c.send(q.publish(4, "live.a", b"x" * mp))
    e = c.reply(4) or {}
    x.eq("Publish of exactly max_payload", e.get("t"), "Published")


@check("§2 §3 §5 subscribe/publish/ack: SubscriptionStream + Subscribed, Published per ack, every subscriber gets the room in order, ack:false unanswered, Unsubscribe ends deliveries")
def c_pubsub(x):
    a, _ = x.session("alice")
    b, _ = x.session("bob")
    room = "live.sp"
    a.send(q.subscribe(2, room))
    sub, seen = a.until(lambda e: e["t"] == "Subscribed" and e["id"] == 2)
    seen += a.drain(0.3)
    x.eq("Subscribed", sub and (sub["room"], sub["position"], sub["recovery"], sub["subscription"]),
         (room, None, "NotRequested", None))
    x.eq("SubscriptionStream with the Subscribe's id",
         [(e["id"], e["room"]) for e in seen if e["t"] == "SubscriptionStream"], [(2, room)])
    b.send(q.subscribe(5, room))
    b.until(lambda e: e["t"] == "Subscribed")
    b.drain(0.3)
    for i in range(20):
        a.send(q.publish(10 + i, room, b"m%d" % i))
    ev = a.drain(0.8)
    x.eq("Published for each, in order", [(e["id"], e["position"]) for e in ev if e["t"] == "Published"],
         [(10 + i, None) for i in range(20)])
    x.eq("publisher gets its own, in order", [(e["id"], e["room"], e["payload"]) for e in ev if e["t"] == "Publication"],
         [(0, room, b"m%d" % i) for i in range(20)])
    bev = b.drain(0.5)
    x.eq("other subscriber, in order", [e["payload"] for e in bev if e["t"] == "Publication"],
         [b"m%d" % i for i in range(20)])
    a.send(q.publish(40, room, b"quiet", ack=False))
    ev = a.drain(0.5)
    x.eq("ack:false: no reply, delivered", [(e["t"], e.get("payload")) for e in ev], [("Publication", b"quiet")])
    b.send(q.unsubscribe(6, room))
    e = b.reply(6) or {}
    x.eq("Unsubscribe reply", (e.get("t"), e.get("id"), e.get("code")), ("Unsubscribed", 6, 0))
    a.send(q.publish(41, room, b"after"))
    a.reply(41)
    x.eq("nothing after Unsubscribed", [e["t"] for e in b.drain(0.5)], [])
    b.send(q.subscribe(7, room))
    e, _ = b.until(lambda e: e["t"] == "Subscribed" and e["id"] == 7)
    x.true("subscribe again", e is not None)


@check("§5 rate limit: a burst over commands_per_second is refused 107 one reply each, refused publishes have no effect, the bucket refills")
def c_rate_limited(x):
    c, w = x.session("alice")
    cps = w["limits"]["commands_per_second"]
    room = "live.rate"
    c.send(q.subscribe(2, room))
    c.until(lambda e: e["t"] == "Subscribed")
    c.drain(0.2)
    n = cps + 50
    for i in range(n):
        c.send(q.publish(1000 + i, room, b"%d" % i))
    ev, end = [], time.monotonic() + 6
    while time.monotonic() < end:
        e = c.recv(1.0)
        if e is None:
            if sum(1 for e in ev if e["t"] in ("Published", "Error")) >= n or c.closed:
                break
            continue
        ev.append(e)
    replies = [e for e in ev if e["t"] in ("Published", "Error")]
    x.eq("one reply per command", sorted(e["id"] for e in replies), list(range(1000, 1000 + n)))
    refused = {e["id"] - 1000 for e in replies if e["t"] == "Error"}
    x.eq("refusals are 107", {e["code"] for e in replies if e["t"] == "Error"}, {107})
    x.true(f"some refused, at most 50 + refill", 1 <= len(refused) <= 60, len(refused))
    delivered = [int(e["payload"]) for e in ev if e["t"] == "Publication"]
    x.eq("exactly the accepted ones delivered, in order", delivered, [i for i in range(n) if i not in refused])
    time.sleep(1.1)
    c.send(q.ping(5))
    x.eq("refilled after 1 s", (c.reply(5) or {}).get("t"), "Pong")


@check("§5 rate_abuse: the (commands_per_second x 3)-th refusal closes with Goodbye 3003 (reconnect true) instead of its 107; nothing after")
def c_rate_abuse(x):
    c, w = x.session("alice")
    cps = w["limits"]["commands_per_second"]
    limit = cps * 3  # abuse_factor default 3 (server A runs the defaults)
    n = cps + limit + 150
    sent = 0
    try:
        for i in range(n):
            c.send(q.ping(10 + i))
            sent += 1
    except Exception:
        pass
    g, closed, before, after = c.goodbye(timeout=8)
    errs = [e for e in before if e["t"] == "Error"]
    x.eq("107 refusals before the goodbye", len(errs), limit - 1)
    x.eq("all 107", {e["code"] for e in errs}, {107})
    x.true("Pongs at least the burst", sum(1 for e in before if e["t"] == "Pong") >= cps,
           sum(1 for e in before if e["t"] == "Pong"))
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3003, True))
    x.eq("close code", closed and closed[0], 3003)
    x.eq("nothing after the goodbye", codes(after), [])


# ================================================================ history (section 5)

@check("§5 History: limit 0, paging with since, truncated, 117 for a since beyond the position or of another epoch; embedded offsets count 1, 2, 3")
def c_history(x):
    c, _ = x.session("alice")
    room = "chat.hist"
    c.send(q.history(2, room, limit=0))
    e = c.reply(2) or {}
    x.eq("never published: empty page at offset 0", (e.get("t"), e.get("publications"), e.get("position") and e["position"][1], e.get("truncated")),
         ("History", [], 0, False))
    ep = e.get("position", (0, 0))[0]
    ps = []
    for i in range(5):
        c.send(q.publish(10 + i, room, b"h%d" % i))
        ps.append((c.reply(10 + i) or {}).get("position"))
    x.eq("positions 1..5 of one epoch", ps, [(ep, i) for i in range(1, 6)])
    c.send(q.history(3, room, limit=2))
    e = c.reply(3) or {}
    x.eq("limit 2", (e.get("publications"), e.get("truncated"), e.get("position")),
         ([((ep, 1), b"h0"), ((ep, 2), b"h1")], True, (ep, 5)))
    c.send(q.history(4, room, since=(ep, 2), limit=100))
    e = c.reply(4) or {}
    x.eq("since 2", ([p for p, _ in e.get("publications", [])], e.get("truncated")), ([(ep, 3), (ep, 4), (ep, 5)], False))
    c.send(q.history(5, room, limit=0))
    e = c.reply(5) or {}
    x.eq("limit 0, since absent: empty, truncated (some kept)", (e.get("publications"), e.get("truncated")), ([], True))
    c.send(q.history(6, room, since=(ep, 5), limit=0))
    e = c.reply(6) or {}
    x.eq("limit 0 since the last: truncated false", (e.get("publications"), e.get("truncated")), ([], False))
    c.send(q.history(7, room, since=(ep, 9)))
    x.eq("since beyond the position", (c.reply(7) or {}).get("code"), 117)
    c.send(q.history(8, room, since=(ep ^ 1, 1)))
    x.eq("since of another epoch", (c.reply(8) or {}).get("code"), 117)


@check("§5 resume: Recovered{n} replays exactly what followed, then live with no gap or duplicate; a future or foreign position, or a live room, is Failed")
def c_resume(x):
    c, _ = x.session("alice")
    room = "chat.resume"
    ps = []
    for i in range(5):
        c.send(q.publish(10 + i, room, b"r%d" % i))
        ps.append((c.reply(10 + i) or {}).get("position"))
    ep = ps[0][0] if ps[0] else 0
    c.send(q.subscribe(2, room, resume=ps[1]))
    e, seen = c.until(lambda e: e["t"] == "Subscribed" and e["id"] == 2)
    seen += c.drain(0.4)
    x.eq("Subscribed", e and (e["recovery"], e["position"]), (("Recovered", 3), ps[4]))
    x.eq("replay", [(e["position"], e["payload"]) for e in seen if e["t"] == "Publication"],
         [(ps[i], b"r%d" % i) for i in (2, 3, 4)])
    c.send(q.publish(20, room, b"live"))
    ev = c.drain(0.5)
    x.eq("live after the seam", [e["position"] for e in ev if e["t"] == "Publication"], [(ep, 6)])
    for i, (what, p) in enumerate([("future position", (ep, 50)), ("another epoch", (ep ^ 1, 1))]):
        c.send(q.unsubscribe(30 + i, room))
        c.reply(30 + i)
        c.send(q.subscribe(40 + i, room, resume=p))
        e = c.reply(40 + i) or {}
        x.eq(what, e.get("recovery"), "Failed")
    c.send(q.subscribe(50, "live.resume", resume=(1, 1)))
    e = c.reply(50) or {}
    x.eq("live room with resume", (e.get("recovery"), e.get("position")), ("Failed", None))


@check("§5 History caps limit at 1,000: 1,050 kept, limit 5,000 -> the oldest 1,000, truncated; since the 1,000th -> the other 50", timeout=40)
def c_history_cap(x):
    room = "hist.cap"
    total, per = 1050, 175  # six sessions: each stays within its burst of 200 commands
    for k in range(total // per):
        c, _ = x.session("alice")
        for i in range(per):
            c.send(q.publish(10 + i, room, b"%d" % (k * per + i)))
        c.until(lambda e: e["t"] in ("Published", "Error") and e["id"] == 10 + per - 1, 10)
        c.close()
    c, _ = x.session("alice")
    c.send(q.history(2, room, limit=5000))
    e = c.reply(2, timeout=5) or {}
    pubs = e.get("publications", [])
    ep = e.get("position", (0, 0))[0]
    x.eq("page size", len(pubs), 1000)
    x.eq("offsets 1..1000", [p[1] for p, _ in pubs], list(range(1, 1001)))
    x.eq("truncated", e.get("truncated"), True)
    x.eq("position", e.get("position"), (ep, total))
    c.send(q.history(3, room, since=(ep, 1000), limit=5000))
    e = c.reply(3, timeout=5) or {}
    x.eq("the rest", [p[1] for p, _ in e.get("publications", [])], list(range(1001, total + 1)))
    x.eq("rest not truncated", e.get("truncated"), False)


# ================================================================ presence (section 5)

@check("§5 presence: own Joined after SubscriptionStream, others' Joined/Left (unsubscribe, disconnect), Presence sorted, PresenceStats counts sessions and users")
def c_presence(x):
    room = "chat.pres"
    a, wa = x.session("alice")
    b, wb = x.session("bob")
    a2, wa2 = x.session("alice")
    a.send(q.subscribe(2, room))
    e, seen = a.until(lambda e: e["t"] == "Joined")
    ts = [e["t"] for e in seen]
    x.true("own Joined after SubscriptionStream",
           "SubscriptionStream" in ts and "Joined" in ts and ts.index("SubscriptionStream") < ts.index("Joined"), ts)
    x.eq("own Joined", e and e["member"], ("alice", wa["session"]))
    a.drain(0.3)
    b.send(q.subscribe(2, room))
    a2.send(q.subscribe(2, room))
    b.drain(0.3)
    a2.drain(0.3)
    ev = a.drain(0.5)
    x.eq("Joined of the others", sorted(e["member"] for e in ev if e["t"] == "Joined"),
         sorted([("bob", wb["session"]), ("alice", wa2["session"])]))
    a.send(q.presence(3, room))
    e = a.reply(3) or {}
    members = sorted([("alice", wa["session"]), ("alice", wa2["session"]), ("bob", wb["session"])])
    x.eq("Presence: sorted by user then session", (e.get("members"), e.get("truncated")), (members, False))
    a.send(q.pstats(4, room))
    e = a.reply(4) or {}
    x.eq("PresenceStats", (e.get("sessions"), e.get("users")), (3, 2))
    b.send(q.unsubscribe(3, room))
    b.reply(3)
    ev = a.drain(0.5)
    x.eq("Left on Unsubscribe", [e["member"] for e in ev if e["t"] == "Left"], [("bob", wb["session"])])
    a2.close()
    ev = a.drain(0.8)
    x.eq("Left on disconnect", [e["member"] for e in ev if e["t"] == "Left"], [("alice", wa2["session"])])


@check("§5 Presence never exceeds max_frame: on server B (8,192) 32 members of 256-byte ids -> the first that fit, sorted, truncated; PresenceStats counts all 32", server="b")
def c_presence_truncated(x):
    room = "crowd.big"
    users = [x.suite.crowd_user(i) for i in range(32)]
    members = []
    obs = None
    small = None
    for i, u in enumerate(users):
        c, w = x.session(u, max_queue=64)
        c.send(q.subscribe(2, room))
        c.until(lambda e: e["t"] == "Subscribed")
        members.append((w["user"], w["session"]))
        if i == 0:
            obs = c
        if i == 4:
            obs.drain(0.05)
            obs.send(q.presence(900, room))
            small = obs.reply(900) or {}
    x.eq("5 members: all listed, not truncated", (len(small.get("members", [])), small.get("truncated")), (5, False))
    obs.drain(0.1)
    obs.send(q.presence(901, room))
    e, _ = obs.until(lambda e: e["t"] in ("Presence", "Error") and e["id"] == 901, 5)
    e = e or {}
    got = e.get("members", [])
    mf = 8192
    x.eq("truncated", e.get("truncated"), True)
    x.true("frame within max_frame", e.get("_len", mf + 1) <= mf, e.get("_len"))
    x.eq("the first members, sorted", got, sorted(members)[:len(got)])
    nxt = sorted(members)[len(got)] if len(got) < len(members) else ("", "")
    x.true("the next member would not fit", e.get("_len", 0) + len(q.s(nxt[0]) + q.s(nxt[1])) > mf,
           (e.get("_len"), len(got)))
    obs.send(q.pstats(902, room))
    e, _ = obs.until(lambda e: e["t"] in ("PresenceStats", "Error") and e["id"] == 902, 5)
    x.eq("PresenceStats", e and (e.get("sessions"), e.get("users")), (32, 32))


# ================================================================ slow consumer (sections 5, 9.2)

@check("§5 §9.2 slow consumer (server B: subscriber_queue 8): a room the client does not read ends with Unsubscribed 112 (id 0) after a prefix in order, nothing after, out of presence at once; the session and its other rooms go on", server="b")
def c_slow_consumer(x):
    slow, other = "crowd.slow", "live.other"  # crowd tracks presence
    s, _ = x.session("alice", max_queue=1)
    s.send(q.subscribe(2, slow))
    s.send(q.subscribe(3, other))
    got = {}
    for _ in range(2):
        e, _ = s.until(lambda e: e["t"] == "Subscribed")
        if e:
            got[e["id"]] = e
    x.eq("both subscribed", sorted(got), [2, 3])
    p, _ = x.session("bob")
    p.send(q.pstats(4, slow))
    e = p.reply(4) or {}
    x.eq("present before", e.get("sessions"), 1)
    n = 350
    pad = b"x" * 7000
    for i in range(n):
        p.send(q.publish(0, slow, b"%06d" % i + pad, ack=False))
    p.send(q.ping(5))
    x.eq("publisher's commands all taken", (p.reply(5, timeout=10) or {}).get("t"), "Pong")
    p.send(q.publish(6, other, b"other"))
    x.eq("publish to the other room", (p.reply(6) or {}).get("t"), "Published")
    time.sleep(0.5)
    p.send(q.pstats(7, slow))
    e = p.reply(7) or {}
    x.eq("left the room's presence at once, before the client read its Unsubscribed", e.get("sessions"), 0)
    ev = s.drain(1.5, limit=5000)
    idx = [i for i, e in enumerate(ev) if e["t"] == "Unsubscribed" and e["room"] == slow]
    x.eq("one Unsubscribed 112, unsolicited",
         [(ev[i]["id"], ev[i]["code"]) for i in idx], [(0, 112)])
    cut = idx[0] if idx else len(ev)
    seq = [int(e["payload"][:6]) for e in ev[:cut] if e["t"] == "Publication" and e["room"] == slow]
    x.eq("what came first is a prefix, in order", seq, list(range(len(seq))))
    x.true("and fewer than published", len(seq) < n, len(seq))
    x.eq("nothing of the room after it", [e["t"] for e in ev[cut + 1:] if e.get("room") == slow], [])
    x.eq("the other room still delivers", [e["payload"] for e in ev if e["t"] == "Publication" and e["room"] == other], [b"other"])
    s.send(q.ping(7))
    x.eq("the session goes on", (s.reply(7) or {}).get("t"), "Pong")
    s.send(q.subscribe(8, slow))
    e = s.reply(8) or {}
    x.eq("subscribe again", e.get("t"), "Subscribed")


# ================================================================ quotas (section 5)

@check("§5 tenant session quota (max_sessions 2): the third session gets Goodbye 3008 over_quota (reconnect true) before any Hello, close 3008, the connection ended about 1 s later when the client does not answer; a freed place is taken again")
def c_quota_sessions(x):
    a, _ = x.session("quota-s")
    b, _ = x.session("quota-s")
    c = x.conn(x.tok("quota-s"))
    g, closed, before, _ = c.goodbye()
    x.eq("third: goodbye", g and (g["code"], g["reconnect"], g["id"]), (3008, True, 0))
    x.eq("close code", closed and closed[0], 3008)
    x.eq("no Welcome", codes(before), [])
    sock, rest = raw_ws(x.http, x.tok("quota-s"))  # one that never answers the close frame
    t0 = time.monotonic()
    got = raw_ws_read(sock, rest, 4.0)
    dt = time.monotonic() - t0
    sock.close()
    x.eq("silent one: goodbye then close frame",
         [(k, [(f["t"], f.get("code")) for f in v[0]] if k == "bin" else v[0]) for k, *v in got],
         [("bin", [("Goodbye", 3008)]), ("close", 3008)])
    x.true("its connection closed about 1 s later (0.7 to 2.5 s)", 0.7 <= dt <= 2.5, round(dt, 2))
    a.close()
    w = None
    for _ in range(6):  # the place is freed once the close completes
        time.sleep(0.3)
        d = x.conn(x.tok("quota-s"))
        try:
            w = d.start() or {}
        except ConnectionClosed:  # still refused: its goodbye and close came before the Hello
            w = {}
        if w.get("t") == "Welcome":
            break
    x.eq("after one left", w and w.get("t"), "Welcome")


@check("§5 tenant rate of new sessions (1/s): a second session at once gets Goodbye 3008; one a second later a Welcome")
def c_quota_session_rate(x):
    a, _ = x.session("quota-r")
    c = x.conn(x.tok("quota-r"))
    try:  # §5: the goodbye comes instead of the Welcome, before or after a Hello
        c.send(q.hello(1))
    except ConnectionClosed:
        pass  # it came before, and the close with it: the Hello could not go out
    g, closed, before, _ = c.goodbye()
    x.eq("second at once: goodbye", g and (g["code"], g["reconnect"]), (3008, True))
    x.eq("close code", closed and closed[0], 3008)
    x.eq("no Welcome", codes(before), [])
    time.sleep(1.2)
    d = x.conn(x.tok("quota-r"))
    x.eq("a second later", (d.start() or {}).get("t"), "Welcome")


@check("§5 tenant publication quota (2/s): the 3rd publish of a burst -> Error 115, no effect; a presence-room Subscribe draws on it too (115); retries pass after 1/rate s")
def c_quota_publications(x):
    c, _ = x.session("quota-p")
    room = "live.q"
    c.send(q.subscribe(2, room))
    c.until(lambda e: e["t"] == "Subscribed")
    c.drain(0.2)
    for i in range(3):
        c.send(q.publish(10 + i, room, b"%d" % i))
    c.send(q.subscribe(13, "chat.q"))
    ev, end = [], time.monotonic() + 4
    while time.monotonic() < end and sum(1 for e in ev if e["t"] in ("Published", "Error", "Subscribed")) < 4:
        e = c.recv(0.5)
        if e:
            ev.append(e)
    ev += c.drain(0.3)
    x.eq("replies", [(e["t"], e["id"], e.get("code")) for e in ev if e["t"] in ("Published", "Error", "Subscribed")],
         [("Published", 10, None), ("Published", 11, None), ("Error", 12, 115), ("Error", 13, 115)])
    x.eq("delivered", [e["payload"] for e in ev if e["t"] == "Publication"], [b"0", b"1"])
    time.sleep(0.6)
    c.send(q.publish(20, room, b"later"))
    e = c.reply(20) or {}
    x.eq("publish again later", e.get("t"), "Published")
    time.sleep(0.6)
    c.send(q.subscribe(21, "chat.q"))
    e = c.reply(21) or {}
    x.eq("presence-room Subscribe later", e.get("t"), "Subscribed")


@check("§5 quota_exceeded publications count towards rate_abuse with the 107s (the 600th refusal of either kind closes 3003: a 107 unanswered, a 115 answered first); a Subscribe over the subscription quota (115) does not count")
def c_quota_abuse(x):
    c, w = x.session("quota-x")
    limit = w["limits"]["commands_per_second"] * 3
    for i, room in enumerate(["live.a", "live.b", "live.c"]):
        c.send(q.subscribe(2 + i, room))
    got = [c.reply(2 + i) or {} for i in range(3)]
    x.eq("subscriptions 1, 2, then over the quota of 2", [(e.get("t"), e.get("code")) for e in got],
         [("Subscribed", None), ("Subscribed", None), ("Error", 115)])
    c.drain(0.3)
    # A burst past the rate (115s, then 107s), then paced under it so the later refusals, the
    # 600th usually among them, are 115s.
    n, t0 = 0, time.monotonic()
    try:
        while n < limit + 200 and time.monotonic() - t0 < 8:
            for _ in range(300 if n == 0 else 5):
                c.send(q.publish(100 + n, "live.z", b"x"))
                n += 1
            time.sleep(0.03)
    except Exception:
        pass  # the server closed: the goodbye is read below
    g, closed, before, after = c.goodbye(timeout=8)
    replies = [e for e in before if e["t"] in ("Published", "Error")]
    errs = [e["code"] for e in replies if e["t"] == "Error"]
    x.eq("answered: a prefix of the commands", [e["id"] for e in replies], list(range(100, 100 + len(replies))))
    # The 600th refusal closes: a 107 goes unanswered (599 answered), a 115 is answered first (600).
    x.true("refusals answered before the goodbye: 599, or 600 ending with a 115 (the Subscribe's not counted)",
           len(errs) == limit - 1 or (len(errs) == limit and replies[-1].get("code") == 115),
           (len(errs), replies[-1:] and replies[-1].get("code")))
    x.true("both kinds among them", errs.count(115) >= 1 and errs.count(107) >= 1,
           (errs.count(115), errs.count(107)))
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3003, True))
    x.eq("nothing after it", codes(after), [])


# ================================================================ tenancy (section 4)

@check("§4 tenancy: tenant evil (and ACME, another spelling) never sees acme's room: no history, members, counts, events, epoch; errors identical")
def c_tenancy(x):
    room = "chat.tenancy"
    a, wa = x.session("alice")
    a.send(q.subscribe(2, room))
    a.until(lambda e: e["t"] == "Subscribed")
    a.drain(0.3)
    apos = None
    for i in range(3):
        a.send(q.publish(10 + i, room, b"secret%d" % i))
        apos = (a.reply(10 + i) or {}).get("position")
    a.drain(0.3)
    for tname in ("mallory", "ACME"):
        b, wb = x.session(tname)
        b.send(q.history(2, room, limit=10))
        e = b.reply(2) or {}
        x.eq(f"{tname}: History", (e.get("publications"), e.get("position") and e["position"][1], e.get("truncated")), ([], 0, False))
        x.true(f"{tname}: not acme's epoch", e.get("position") and apos and e["position"][0] != apos[0], (e.get("position"), apos))
        b.send(q.presence(3, room))
        x.eq(f"{tname}: Presence", (b.reply(3) or {}).get("members"), [])
        b.send(q.pstats(4, room))
        e = b.reply(4) or {}
        x.eq(f"{tname}: PresenceStats", (e.get("sessions"), e.get("users")), (0, 0))
        b.send(q.history(5, room, since=apos))
        x.eq(f"{tname}: History since acme's position", (b.reply(5) or {}).get("code"), 117)
        b.send(q.subscribe(6, room, resume=apos))
        e, seen = b.until(lambda e: e["t"] == "Subscribed" and e["id"] == 6)
        seen += b.drain(0.4)
        x.eq(f"{tname}: resume from acme's position", e and e["recovery"], "Failed")
        x.eq(f"{tname}: only its own Joined", [e["member"] for e in seen if e["t"] in ("Joined", "Publication")],
             [(wb["user"], wb["session"])])
        b.send(q.publish(7, room, b"evil"))
        b.reply(7)
        x.eq(f"{tname}: acme sees none of it", [e["t"] for e in a.drain(0.4)], [])
        a.send(q.publish(20, room, b"more"))
        a.reply(20)
        x.eq(f"{tname}: sees none of acme's", [e["t"] for e in b.drain(0.4)], [])
        b.send(q.unsubscribe(8, "chat.only"))
        e1 = b.reply(8) or {}
        a.send(q.subscribe(21, "chat.only"))
        a.reply(21)
        a.drain(0.2)
        b.send(q.unsubscribe(9, "chat.only"))
        e2 = b.reply(9) or {}
        x.eq(f"{tname}: Unsubscribe error the same whether acme holds the room",
             (e1.get("code"), e1.get("message")), (e2.get("code"), e2.get("message")))
        a.send(q.unsubscribe(22, "chat.only"))
        a.reply(22)
        a.drain(0.2)


# ================================================================ runner


class Suite(harness.Suite):
    @staticmethod
    def crowd_user(i):
        return "%02d" % i + "u" * 254  # 256 bytes, the longest `sub`


EVERY = [">"]
TOKENS = {"alice": ("alice", "acme", EVERY, EVERY), "bob": ("bob", "acme", EVERY, EVERY),
          "narrow": ("nora", "acme", ["live.>"], ["live.>"]),
          "mallory": ("mallory", "evil", EVERY, EVERY), "ACME": ("alice", "ACME", EVERY, EVERY),
          "quota-s": ("qs", "quota-s", EVERY, EVERY), "quota-p": ("qp", "quota-p", EVERY, EVERY),
          "quota-r": ("qr", "quota-r", EVERY, EVERY), "quota-x": ("qx", "quota-x", EVERY, EVERY),
          "wrong-secret": ("alice", "acme", EVERY, EVERY, "1h", "another secret of at least 32 bytes!!")}
TOKENS.update((Suite.crowd_user(i), (Suite.crowd_user(i), "acme", EVERY, EVERY)) for i in range(32))


def run_check(suite, ch, mutate):
    """One check in a thread of its own, given ch["timeout"] seconds."""
    x = Ctx(suite, suite.servers.get(ch["server"]) if ch["server"] else None, mutate)
    box = {}

    def body():
        try:
            ch["fn"](x)
        except Exception as e:
            box["exc"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            box["tb"] = traceback.format_exc()
        finally:
            x.close_all()

    t0 = time.monotonic()
    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(ch["timeout"])
    dt = time.monotonic() - t0
    return harness.verdict(x, th.is_alive(), box.get("exc"), ch["timeout"]), dt, x.n, box.get("tb")


def run_all(suite, chosen, args, failed, vacuous):
    for ch in chosen:
        harness.report(ch, run_check(suite, ch, args.mutate), args, failed, vacuous)


if __name__ == "__main__":
    sys.exit(harness.main(__doc__, CHECKS, {"a": CONFIG_A, "b": CONFIG_B}, TOKENS, run_all,
                          "conformance", lambda k, s: f"{k}=http://{s.http}", 24,
                          suite_class=Suite, suite_timeout=SUITE_TIMEOUT))
