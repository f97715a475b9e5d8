#!/usr/bin/env python3
"""Outside-view conformance checks of the real `quiver` server over WebTransport (aioquic).

Every check asserts a rule PROTOCOL.md states (its section is in the check's name) and talks to
the server only through wt_client.py (written from PROTOCOL.md alone, audit 128). The runner
starts three servers of its own on free loopback ports (A: default limits but 50 commands/s;
B: short timeouts, so the deadline rules take a second or two instead of 10-40 s; H: a 1 s Hello
deadline; the drain check starts and stops one more)
with a JWT secret of its own, mints tokens with `quiver token` (the hostile ones, unsigned or
oversized, are forged here with that secret), runs the fast checks one after another while the
slow ones (waiting for a deadline) run beside them, stops the servers, and exits non-zero with
one line per failed check.

    test_wt_conformance.py --quiver target/debug/quiver [--only NAME ...] [--mutate N] [--list]

--mutate N is the suite's self-test: the N-th assertion of every check has its expectation
flipped, so every check must fail; one that still passes asserts nothing and is reported
VACUOUS (exit 1). Uses only the Python standard library and `aioquic`.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import wt_client as q  # noqa: E402
from harness import Server, jwt_claims  # noqa: E402

CHECK_TIMEOUT = 30.0  # seconds; a check still running then fails as timed out
SUITE_TIMEOUT = 150.0

# Server A: default limits but 50 commands a second (so rate abuse is reached with 260 Pings);
# history, presence and latest namespaces. Server B: short timeouts and low limits.
CONFIG_A = """
demo = false
[tls]
self_signed = true
[limits]
commands_per_second = 50
[timeouts]
drain = "1s"
[[namespaces]]
name = "chat"
history_size = 100
history_ttl = "10m"
presence = true
[[namespaces]]
name = "game"
mode = "latest"
"""
CONFIG_B = """
demo = false
[tls]
self_signed = true
[limits]
commands_per_second = 400
max_frame = 16384
max_payload = 16000
[timeouts]
reply = "1s"
idle = "3s"
keep_alive = "1s"
stream_open = "1s"
drain = "1s"
[[namespaces]]
name = "hist"
history_size = 10
history_ttl = "10m"
"""
# Server H: a Hello deadline of 1 s (apart from B, so that a loaded machine's slow Hello
# cannot fail B's checks).
CONFIG_H = """
demo = false
[tls]
self_signed = true
[timeouts]
hello = "1s"
"""
# Server D (the drain check's own, stopped by it): A's, with a drain of 3 s.
CONFIG_D = CONFIG_A.replace('drain = "1s"', 'drain = "3s"')

# ---------------------------------------------------------------- checks and their assertions

CHECKS = harness.Checks(CHECK_TIMEOUT)
check = CHECKS  # slow=True: the check mostly waits for a deadline; it runs beside the others


class Ctx(harness.Assertions):
    """What a check sees: its server, tokens, and soft assertions (a failed one is recorded and
    the check goes on, so its flow never depends on an expectation); its sessions are closed
    when it ends."""

    def __init__(self, suite, server, mutate):
        super().__init__(suite, server, mutate)
        self.sessions = []

    @property
    def addr(self):
        return self.server.wt

    async def open(self, path, headers=(), server=None, **kw):
        """A CONNECT to `path`; (Session, status)."""
        host, port = (server or self.server).wt
        s = q.Session()
        self.sessions.append(s)
        st = await s.open(host, port, path, headers, **kw)
        return s, st

    async def session(self, token="alice", ready=True, server=None, **kw):
        """A session with a token (a name from the suite's, or the token itself); with ready,
        Welcomed (an exception otherwise)."""
        tok = self.suite.tokens.get(token, token)
        host, port = (server or self.server).wt
        s = q.Session()
        self.sessions.append(s)
        st = await s.open(host, port, f"/v1?token={tok}", **kw)
        s.welcome = None
        if ready:
            if st != 200:
                raise RuntimeError(f"CONNECT answered {st}, close {s.closed and s.closed[:2]}")
            s.welcome = await s.hello()
            if not s.welcome or s.welcome["type"] != "Welcome":
                raise RuntimeError(f"no Welcome: {s.welcome}")
        return s

    async def close_all(self):
        for s in self.sessions:
            await s.close()


def gb(s):
    return next((e for e in s.ctrl_events if e["type"] == "Goodbye"), None)


def close_of(s):
    return s.closed and (s.closed[0], s.closed[1])


def sub_events(s, types=None):
    return [e for st in s.subs.values() for e in st["events"] if types is None or e["type"] in types]


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# ================================================================ section 1: CONNECT

@check("§1 §6 CONNECT refusals: no token, alg none, another secret, expired, no exp, garbage, 4,097 bytes -> 403, no session, QUIC close code 0; 4,096 bytes -> 200")
async def c_connect_refusals(x):
    F = x.suite.forge
    cases = [("no token", "/v1"), ("alg none", "/v1?token=" + F(alg="none")),
             ("signed with another secret", "/v1?token=" + x.tok("wrong-secret")),
             ("expired", "/v1?token=" + F(exp=int(time.time()) - 120)),
             ("no exp", "/v1?token=" + F(exp=None)), ("garbage", "/v1?token=abc.def.ghi"),
             ("4,097 bytes", "/v1?token=" + F(size=4097))]
    for what, path in cases:
        s, st = await x.open(path)
        if st and st != 200 and not s.closed:  # no session: a control stream and Hello get nothing
            try:
                s.open_ctrl()
                s.send(q.hello())
            except Exception:
                pass
        await s.until_closed(3)
        x.eq(f"{what}: status", st, 403)
        x.eq(f"{what}: frames on a control stream", [e["type"] for e in s.ctrl_events], [])
        x.eq(f"{what}: QUIC close code", s.closed and s.closed[0], 0)
        await s.close()
    tok = F(size=4096)
    x.eq("forged token length", len(tok), 4096)
    s, st = await x.open("/v1?token=" + tok)
    x.eq("token of 4,096 bytes: status", st, 200)
    s, st = await x.open("/v1", [("authorization", "Bearer " + tok)])
    x.eq("token of 4,096 bytes in the header: status", st, 200)


@check("§1 a CONNECT's HEADERS over 4,096 bytes (a 5,600-byte token) -> close 0x107 H3_EXCESSIVE_LOAD, no answer")
async def c_excessive_load(x):
    s, st = await x.open("/v1?token=" + x.suite.forge(size=5600))
    await s.until_closed(3)
    x.eq("status", st, None)
    x.eq("close code", s.closed and s.closed[0], 0x107)
    x.eq("frames", s.ctrl_events, [])


@check("§1 paths and where the token comes from: other paths -> 404; Authorization wins over the query both ways; %2E decoded; `bearer` in any case; first `token` parameter used")
async def c_paths_and_token_places(x):
    A, bad = x.tok("alice"), x.tok("wrong-secret")
    for path in ["/v2", "/", "/v1/", "/V1"]:
        s, st = await x.open(path + "?token=" + A)
        x.eq(f"path {path}", st, 404)
        await s.close()
    cases = [("good header, bad query", "/v1?token=" + bad, [("authorization", "Bearer " + A)], 200),
             ("bad header, good query", "/v1?token=" + A, [("authorization", "Bearer " + bad)], 403),
             ("percent-encoded dots", "/v1?token=" + A.replace(".", "%2E"), (), 200),
             ("lower-case bearer", "/v1", [("authorization", "bearer " + A)], 200),
             ("token twice: good then bad", f"/v1?token={A}&token={bad}", (), 200),
             ("token twice: bad then good", f"/v1?token={bad}&token={A}", (), 403)]
    for what, path, hdr, want in cases:
        s, st = await x.open(path, hdr)
        x.eq(what, st, want)
        await s.close()


# ================================================================ sections 2, 3: control stream

@check("§2 §3 §8 Hello: Welcome carries id, version 1, the token's claims, the limits; a command before Hello -> 3001; version 2 -> 3004; a second Hello -> Error 101, session goes on")
async def c_hello(x):
    tok = x.tok("alice")
    s = await x.session(ready=False)
    s.send(q.hello(id_=1))
    w = await s.reply(1) or {}
    cl = jwt_claims(tok)
    x.eq("event", w.get("type"), "Welcome")
    x.eq("version", w.get("version"), 1)
    x.true("session: 16 lower-case hex digits", len(w.get("session", "")) == 16
           and all(c in "0123456789abcdef" for c in w.get("session", "")), w.get("session"))
    x.eq("user, tenant, expires_at", (w.get("user"), w.get("tenant"), w.get("expires_at")),
         (cl["sub"], cl["tenant"], cl["exp"]))
    x.eq("limits", w.get("limits"), dict(max_frame=65536, max_payload=61440, max_subscriptions=256,
                                         commands_per_second=50))
    s.send(q.hello(id_=7))
    e = await s.reply(7) or {}
    x.eq("second Hello", (e.get("type"), e.get("code")), ("Error", 101))
    s.send(q.ping(8))
    x.eq("then Ping", (await s.reply(8) or {}).get("type"), "Pong")
    s = await x.session(ready=False)
    s.send(q.ping(5))
    await s.until_closed(5)
    g = gb(s)
    x.eq("Ping before Hello: goodbye", g and (g["code"], g["reconnect"]), (3001, False))
    x.eq("Ping before Hello: close code", s.closed and s.closed[0], 3001)
    x.eq("Ping before Hello: frames", [e["type"] for e in s.ctrl_events], ["Goodbye"])
    s = await x.session(ready=False)
    s.send(q.hello(version=2))
    await s.until_closed(5)
    g = gb(s)
    x.eq("version 2: goodbye", g and (g["code"], g["reconnect"]), (3004, False))
    x.eq("version 2: close", close_of(s), (3004, g and g["reason"]))


@check("§3 malformed frames (length 0, over max_frame, 0xffffffff, bool 02, Option tag 02/ff, missing Option, bad UTF-8, type or id over u32, string past the frame, cut varint, u16 in 4 bytes) -> Goodbye 3001 and close 3001")
async def c_malformed(x):
    cases = [
        ("length 0", b"\x00\x00\x00\x00", True),
        ("length 0 before Hello", b"\x00\x00\x00\x00", False),
        ("length max_frame+1 (header only)", struct.pack(">I", 65537), True),
        ("length 0xffffffff (header only)", b"\xff\xff\xff\xff", True),
        ("Publish.ack byte 02", q.cmd(3, 3, q.pstr("chat.x") + q.pstr(b"p") + b"\x02"), True),
        ("Subscribe.resume Option tag 02", q.cmd(3, 1, q.pstr("chat.x") + b"\x02"), True),
        ("History.since Option tag ff", q.cmd(3, 7, q.pstr("chat.x") + b"\xff" + q.varint(5)), True),
        ("Subscribe without its resume byte", q.cmd(3, 1, q.pstr("chat.x")), True),
        ("room not UTF-8", q.cmd(3, 1, q.pstr(b"chat.\xff") + b"\x00"), True),
        ("Hello.client not UTF-8", q.frame(b"\x01\x00\x01\x02\xff\xfe"), False),
        ("message type above u32", q.frame(q.varint(3) + q.varint(1 << 33)), True),
        ("id above u32", q.frame(q.varint(1 << 33) + q.varint(4)), True),
        ("string length past the frame", q.cmd(3, 1, q.varint(200) + b"chat"), True),
        ("cut varint at the end", q.frame(b"\x03\x01\x80"), True),
        ("u16 varint in 4 bytes (Hello.version)", q.frame(b"\x01\x00\x81\x80\x80\x00" + q.pstr("x")), False),
    ]
    for what, raw, ready in cases:
        s = await x.session(ready=ready)
        s.send(raw)
        await s.until_closed(5)
        g = gb(s)
        x.eq(f"{what}: goodbye", g and (g["code"], g["reconnect"]), (3001, False))
        x.eq(f"{what}: close code", s.closed and s.closed[0], 3001)
        x.eq(f"{what}: other frames", [e["type"] for e in s.ctrl_events if e["type"] != "Welcome"], ["Goodbye"])
        await s.close()


@check("§3 frame edges: a frame of exactly max_frame is read; unknown types -> Error 110; trailing bytes ignored; id 0 answered; a frame in 1-byte pieces; over-long varint id accepted")
async def c_frame_edges(x):
    s = await x.session()
    fixed = q.varint(3) + q.varint(3) + q.pstr("chat.x")
    pay = 65536 - len(fixed) - 1 - 3
    raw = q.cmd(3, 3, q.pstr("chat.x") + q.pstr(b"x" * pay) + b"\x01")
    x.eq("frame length", len(raw) - 4, 65536)
    s.send(raw)
    r = await s.reply(3) or {}
    x.eq("max_frame Publish (payload over max_payload)", (r.get("type"), r.get("code")), ("Error", 109))
    for i, t in enumerate((77, 10)):
        s.send(q.cmd(4 + i, t, b"whatever"))
        r = await s.reply(4 + i) or {}
        x.eq(f"unknown type {t}", (r.get("type"), r.get("code")), ("Error", 110))
    s.send(q.frame(q.varint(6) + q.varint(4) + b"\x01\x02junk"))
    x.eq("Ping with trailing bytes", (await s.reply(6) or {}).get("type"), "Pong")
    s.send(q.ping(0))
    x.eq("Ping id 0", (await s.reply(0) or {}).get("type"), "Pong")
    for b in q.ping(9):
        s.send(bytes([b]))
        await asyncio.sleep(0.01)
    x.eq("Ping in 1-byte pieces", (await s.reply(9) or {}).get("type"), "Pong")
    s2 = await x.session(ready=False)
    s2.send(q.frame(b"\x81\x80\x80\x80\x00" + b"\x00" + b"\x01" + q.pstr("x")))
    x.eq("Hello id 1 in 5 bytes", (await s2.reply(1) or {}).get("type"), "Welcome")
    x.eq("no goodbye", gb(s) or gb(s2), None)


@check("§2 leaving: FIN, STOP_SENDING or RESET of the control stream, or an incomplete frame then FIN -> QUIC close code 0, no Goodbye, nothing answered")
async def c_ctrl_end(x):
    async def leave(what, act):
        s = await x.session()
        act(s)
        await s.until_closed(5)
        x.eq(f"{what}: close code", s.closed and s.closed[0], 0)
        x.eq(f"{what}: frames after Welcome", [e["type"] for e in s.ctrl_events[1:]], [])
        await s.close()
    await leave("FIN", lambda s: s.send(b"", end=True))
    await leave("STOP_SENDING", lambda s: s.stop(s.ctrl, 77))
    await leave("RESET_STREAM", lambda s: s.reset(s.ctrl, 5))
    await leave("half a Ping then FIN", lambda s: s.send(q.ping(2)[:5], end=True))


# ================================================================ subscriptions, publish

@check("§2 §4 §5 Subscribe -> Subscribed and one uni stream headed SubscriptionStream(id); again -> 104; invalid rooms -> 102; 128 bytes and 16 tokens accepted; Unsubscribe -> code 0 and the stream ends; again -> 105")
async def c_subscriptions(x):
    s = await x.session()
    s.send(q.subscribe(2, "chat.s1"))
    r = await s.reply(2) or {}
    await s.wait(lambda: s.subs and list(s.subs.values())[0]["events"], 3)
    x.eq("Subscribed", (r.get("type"), r.get("room")), ("Subscribed", "chat.s1"))
    x.eq("stream header", [st["events"][:1] for st in s.subs.values()],
         [[{"id": 2, "type": "SubscriptionStream", "room": "chat.s1"}]])
    s.send(q.subscribe(3, "chat.s1"))
    r = await s.reply(3) or {}
    await asyncio.sleep(0.3)
    x.eq("second Subscribe of the room", (r.get("code"), len(s.subs)), (104, 1))
    bad = ["", "chat..x", "chat.*", "chat.>", "a" * 129, ".".join("a" * 17), "chat x", "chät", ".chat", "chat."]
    for i, room in enumerate(bad):
        s.send(q.subscribe(10 + i, room))
        r = await s.reply(10 + i) or {}
        x.eq(f"room {room[:20]!r}", (r.get("type"), r.get("code")), ("Error", 102))
    for i, room in enumerate(["a" * 128, ".".join("a" * 16)]):
        s.send(q.subscribe(30 + i, room))
        x.eq(f"room of {len(room)} bytes", (await s.reply(30 + i) or {}).get("type"), "Subscribed")
    sid = next(iter(s.subs))
    s.send(q.unsubscribe(40, "chat.s1"))
    r = await s.reply(40) or {}
    await s.wait(lambda: s.subs[sid]["fin"] or sid in s.resets, 3)
    x.eq("Unsubscribe", (r.get("type"), r.get("code")), ("Unsubscribed", 0))
    x.true("its stream ended (FIN or reset 0)", s.subs[sid]["fin"] or s.resets.get(sid) == 0,
           (s.subs[sid]["fin"], s.resets.get(sid)))
    s.send(q.unsubscribe(41, "chat.s1"))
    x.eq("Unsubscribe again", (await s.reply(41) or {}).get("code"), 105)
    s.send(q.unsubscribe(42, "chat..bad"))
    x.eq("Unsubscribe of an invalid name", (await s.reply(42) or {}).get("code"), 102)


@check("§2 STOP_SENDING on a subscription stream -> Unsubscribed 120 (id 0), the stream reset with the client's code, the session goes on and may subscribe again")
async def c_stop_sending_sub(x):
    s = await x.session()
    s.send(q.subscribe(2, "chat.s2") + q.subscribe(3, "chat.s3"))
    await s.reply(2)
    await s.reply(3)
    sid = await s.wait(lambda: next((k for k, v in s.subs.items() if v["events"] and v["events"][0].get("room") == "chat.s2"), None), 3)
    s.stop(sid, 9)
    u = await s.wait(lambda: next((e for e in s.ctrl_events if e["type"] == "Unsubscribed"), None), 3) or {}
    await s.wait(lambda: sid in s.resets, 3)
    x.eq("Unsubscribed", (u.get("id"), u.get("room"), u.get("code")), (0, "chat.s2", 120))
    x.eq("reset code", s.resets.get(sid), 9)
    s.send(q.publish(4, "chat.s3", b"still"))
    await s.reply(4)
    await s.wait(lambda: any(e.get("payload") == b"still" for e in sub_events(s)), 2)
    x.eq("the other subscription still delivers", [e["payload"] for e in sub_events(s, ("Publication",))], [b"still"])
    s.send(q.subscribe(5, "chat.s2"))
    x.eq("subscribe again", (await s.reply(5) or {}).get("type"), "Subscribed")


@check("§4 §5 permissions (subscribe chat.*, publish chat.x): chat, chat.a.b, game.x, other -> 103; chat.x allowed; Publish outside -> 103; Presence/PresenceStats without permission -> 103")
async def c_permissions(x):
    s = await x.session("carol")
    for i, room in enumerate(["chat", "chat.a.b", "game.x", "other"]):
        s.send(q.subscribe(2 + i, room))
        x.eq(f"Subscribe {room}", (await s.reply(2 + i) or {}).get("code"), 103)
    s.send(q.publish(10, "chat.y", b"x"))
    x.eq("Publish chat.y", (await s.reply(10) or {}).get("code"), 103)
    s.send(q.subscribe(11, "chat.x"))
    x.eq("Subscribe chat.x", (await s.reply(11) or {}).get("type"), "Subscribed")
    s.send(q.presence(12, "other.room"))
    x.eq("Presence other.room", (await s.reply(12) or {}).get("code"), 103)
    s.send(q.presence_stats(13, "other.room"))
    x.eq("PresenceStats other.room", (await s.reply(13) or {}).get("code"), 103)


@check("§3 §5 Publish: ack=false -> no reply; over max_payload with ack=false -> 109 anyway; exactly max_payload -> Published; a subscribed publisher gets its own, in order")
async def c_publish(x):
    s = await x.session()
    s.send(q.subscribe(2, "chat.p"))
    await s.reply(2)
    s.send(q.publish(3, "chat.p", b"noack", ack=False))
    s.send(q.ping(4))
    await s.reply(4)
    await asyncio.sleep(0.3)
    x.eq("replies to id 3", [e for e in s.ctrl_events if e["id"] == 3], [])
    s.send(q.publish(5, "chat.p", b"x" * 61441, ack=False))
    x.eq("61,441 bytes", (await s.reply(5) or {}).get("code"), 109)
    s.send(q.publish(6, "chat.p", b"y" * 61440))
    x.eq("61,440 bytes", (await s.reply(6) or {}).get("type"), "Published")
    await s.wait(lambda: len(sub_events(s, ("Publication",))) >= 2, 3)
    x.eq("own publications", [(e["room"], e["payload"][:5]) for e in sub_events(s, ("Publication",))],
         [("chat.p", b"noack"), ("chat.p", b"yyyyy")])


@check("§5 History: oldest first, since/limit/truncated, limit 0, since beyond or of another epoch -> 117, no history -> 101, a large limit capped")
async def c_history(x):
    s = await x.session()
    room = f"chat.h{os.getpid()}"
    pos = []
    for i in range(5):
        s.send(q.publish(10 + i, room, b"m%d" % i))
        pos.append((await s.reply(10 + i) or {}).get("position"))
    x.true("positions ascend in one epoch", all(p for p in pos) and len({p[0] for p in pos}) == 1
           and [p[1] for p in pos] == sorted({p[1] for p in pos}), pos)
    s.send(q.history(20, room, None, 100))
    h = await s.reply(20) or {}
    x.eq("no since", ([p for p, _ in h.get("publications", [])], [b for _, b in h.get("publications", [])],
                      h.get("position"), h.get("truncated")), (pos, [b"m%d" % i for i in range(5)], pos[-1], False))
    s.send(q.history(21, room, pos[1], 2))
    h = await s.reply(21) or {}
    x.eq("since pos[1], limit 2", ([p for p, _ in h.get("publications", [])], h.get("truncated")), (pos[2:4], True))
    s.send(q.history(22, room, None, 0))
    h = await s.reply(22) or {}
    x.eq("limit 0", (h.get("publications"), h.get("truncated"), h.get("position")), ([], True, pos[-1]))
    s.send(q.history(23, room, (pos[0][0], pos[-1][1] + 5), 10))
    x.eq("since beyond", (await s.reply(23) or {}).get("code"), 117)
    s.send(q.history(24, room, (pos[0][0] ^ 1, 1), 10))
    x.eq("since of another epoch", (await s.reply(24) or {}).get("code"), 117)
    s.send(q.history(25, "game.x", None, 10))
    x.eq("namespace without history", (await s.reply(25) or {}).get("code"), 101)
    s.send(q.history(26, room, None, 5000))
    x.eq("limit 5000", len((await s.reply(26) or {}).get("publications", [])), 5)


@check("§5 §10 resume: from pos[1] -> Recovered{3} and pos[2..4] replayed in order; from now -> Recovered{0}; future or other epoch -> Failed; live or latest room -> Failed")
async def c_resume(x):
    p = await x.session()
    room = f"chat.r{os.getpid()}"
    pos = []
    for i in range(5):
        p.send(q.publish(10 + i, room, b"r%d" % i))
        pos.append((await p.reply(10 + i) or {}).get("position"))
    s = await x.session()
    s.send(q.subscribe(2, room, resume=pos[1]))
    r = await s.reply(2) or {}
    await s.wait(lambda: len(sub_events(s, ("Publication",))) >= 3, 3)
    x.eq("Subscribed", (r.get("recovery"), r.get("position")), (("Recovered", 3), pos[-1]))
    x.eq("replayed", [(e["position"], e["payload"]) for e in sub_events(s, ("Publication",))],
         [(pos[i], b"r%d" % i) for i in (2, 3, 4)])
    cases = [("future position", room, (pos[0][0], pos[-1][1] + 1), "Failed"),
             ("current position", room, pos[-1], ("Recovered", 0)),
             ("another epoch", room, (pos[0][0] + 1, 0), "Failed"),
             ("live room", "live.x", (1, 1), "Failed"),
             ("latest room", "game.r", (1, 1), "Failed")]
    for i, (what, rm, at, want) in enumerate(cases):
        s.send(q.unsubscribe(30 + 2 * i, room))
        await s.reply(30 + 2 * i)
        s.send(q.subscribe(31 + 2 * i, rm, resume=at))
        x.eq(what, (await s.reply(31 + 2 * i) or {}).get("recovery"), want)


@check("§5 presence: Presence sorted by user, PresenceStats counts, Joined for self and the other on the stream, Left when the other leaves; no presence -> 101; invalid room -> 102")
async def c_presence(x):
    s1 = await x.session("alice")
    s2 = await x.session("carol")
    room = f"chat.pr{os.getpid()}"
    s1.send(q.subscribe(2, room))
    await s1.reply(2)
    s2.send(q.subscribe(2, room))
    await s2.reply(2)
    await s1.wait(lambda: len(sub_events(s1, ("Joined",))) >= 2, 3)
    s1.send(q.presence(3, room))
    p = await s1.reply(3) or {}
    x.eq("members", [m["user"] for m in p.get("members", [])], ["alice", "carol"])
    x.eq("sessions", sorted(m["session"] for m in p.get("members", [])),
         sorted([s1.welcome["session"], s2.welcome["session"]]))
    s1.send(q.presence_stats(4, room))
    p = await s1.reply(4) or {}
    x.eq("PresenceStats", (p.get("sessions"), p.get("users")), (2, 2))
    x.eq("Joined", [e["member"]["user"] for e in sub_events(s1, ("Joined",))], ["alice", "carol"])
    await s2.close()
    await s1.wait(lambda: sub_events(s1, ("Left",)), 3)
    x.eq("Left", [e["member"] for e in sub_events(s1, ("Left",))], [{"user": "carol", "session": s2.welcome["session"]}])
    s1.send(q.presence(5, "live.nopresence"))
    x.eq("namespace without presence", (await s1.reply(5) or {}).get("code"), 101)
    s1.send(q.presence(6, "chat..x"))
    x.eq("invalid room", (await s1.reply(6) or {}).get("code"), 102)


# ================================================================ section 10: latest lane

@check("§10 latest: Subscribed carries a subscription id; datagram publishes arrive as datagrams (id, seq 1..); bad ones dropped; a too-large value -> Latest on the stream; before Hello dropped; no datagram support -> Latest frames")
async def c_latest(x):
    s = await x.session()
    p = await x.session()
    s.send(q.subscribe(2, "chat.zz") + q.subscribe(3, "game.l"))
    await s.reply(2)
    r = await s.reply(3) or {}
    subid = r.get("subscription")
    x.eq("subscription id (second subscription)", subid, 2)
    for i in range(3):
        p.send_dgram(q.dgram_publish("game.l", b"v%d" % i))
        await asyncio.sleep(0.1)
    await s.wait(lambda: len(s.datagrams) >= 3, 3)
    got = [q.dgram_latest(d) for d in s.datagrams]
    x.eq("datagrams", [(g["subscription"], g["sequence"], g["payload"]) for g in got],
         [(subid, i + 1, b"v%d" % i) for i in range(3)])
    for room in ["chat.x", "game..", "game.zz"]:
        p.send_dgram(q.dgram_publish(room, b"bad"))
    p.send_dgram(b"\x05ab")  # room cut short
    p.send_dgram(q.varint(2) + b"\xff\xfe" + b"x")  # room not UTF-8
    p.proto._quic.send_datagram_frame(b"\x05" + q.dgram_publish("game.l", b"qsid5"))  # another quarter id
    p.proto.transmit()
    p.send(q.ping(9))
    r = await p.reply(9) or {}
    x.eq("bad datagrams: session goes on", (r.get("type"), p.closed), ("Pong", None))
    p.send(q.publish(10, "game.l", b"B" * 3000))
    await p.reply(10)
    await s.wait(lambda: sub_events(s, ("Latest",)), 3)
    x.eq("3,000-byte value on the stream", [(e["sequence"], len(e["payload"])) for e in sub_events(s, ("Latest",))], [(4, 3000)])
    x.eq("no datagram of the bad ones", len(s.datagrams), 3)
    e = await x.session(ready=False)
    e.send_dgram(q.dgram_publish("game.l", b"early"))
    await asyncio.sleep(0.3)
    await e.hello()
    nd = await x.session(max_datagram=None)
    nd.send(q.subscribe(2, "game.l"))
    await nd.reply(2)
    p.send_dgram(q.dgram_publish("game.l", b"small"))
    await nd.wait(lambda: sub_events(nd, ("Latest",)), 3)
    await s.wait(lambda: len(s.datagrams) >= 4, 2)
    x.eq("no datagram support: Latest frames", ([e["payload"] for e in sub_events(nd, ("Latest",))], nd.datagrams),
         ([b"small"], []))
    x.eq("datagrams after (the one before Hello dropped)", [q.dgram_latest(d)["payload"] for d in s.datagrams[3:]], [b"small"])


@check("§10 §7 malformed QUIC datagrams: empty, cut quarter-id varint, quarter id 2^60 -> close 0x33, no Goodbye; a datagram publish without permission is dropped")
async def c_datagram_malformed(x):
    for what, raw in [("empty", b""), ("cut quarter-id varint", b"\x40"), ("quarter id 2^60", q.qvarint(1 << 60) + b"\x01a")]:
        s = await x.session()
        s.proto._quic.send_datagram_frame(raw)
        s.proto.transmit()
        await s.until_closed(4)
        x.eq(f"{what}: close code", s.closed and s.closed[0], 0x33)
        x.eq(f"{what}: goodbye", gb(s), None)
        await s.close()
    sub = await x.session()
    sub.send(q.subscribe(2, "game.perm"))
    await sub.reply(2)
    c = await x.session("carol")
    c.send_dgram(q.dgram_publish("game.perm", b"nope"))
    a = await x.session()
    await asyncio.sleep(0.2)
    a.send_dgram(q.dgram_publish("game.perm", b"yes"))
    await sub.wait(lambda: sub.datagrams, 3)
    await asyncio.sleep(0.3)
    x.eq("what arrived", [q.dgram_latest(d)["payload"] for d in sub.datagrams], [b"yes"])


# ================================================================ section 2: stream limits

@check("§2 stream limits: a client uni stream -> STOP_SENDING 0x010b (30 more too, the session goes on); a third bidi stream -> close 0x04; a second CONNECT -> 0x04; a stream naming no session -> STOP_SENDING 0x3994bd84")
async def c_stream_limits(x):
    s = await x.session()
    ids = []
    for i in range(31):
        u = s.proto.h3.create_webtransport_stream(s.sid, is_unidirectional=True)
        s.send(b"x" * 100, stream=u)
        ids.append(u)
        await asyncio.sleep(0.005)
    await s.wait(lambda: all(u in s.stops for u in ids), 5)
    s.send(q.ping(5))
    x.eq("STOP_SENDING codes", sorted({s.stops.get(u) for u in ids}, key=str), [0x10b])
    x.eq("then Ping", (await s.reply(5) or {}).get("type"), "Pong")
    s2 = await x.session()
    s2.proto._quic._remote_max_streams_bidi = 100  # past the server's limit, deliberately
    extra = s2.open_bidi()
    s2.send(b"zz", stream=extra)
    await s2.until_closed(4)
    x.eq("third bidi stream: close", (s2.closed and s2.closed[0], gb(s2)), (0x4, None))
    s3 = await x.session()
    quic = s3.proto._quic
    quic._remote_max_streams_bidi = 100
    sid2 = quic.get_next_available_stream_id()
    host, port = x.addr
    s3.proto.h3.send_headers(sid2, [(b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", f"{host}:{port}".encode()),
                                    (b":path", ("/v1?token=" + x.tok("alice")).encode()), (b":protocol", b"webtransport")])
    s3.proto.transmit()
    await s3.until_closed(4)
    x.eq("second CONNECT: close", s3.closed and s3.closed[0], 0x4)
    s4, st = await x.open("/v1?token=" + x.tok("alice"), open_ctrl=False)
    bad = s4.open_bidi(session_id=8)
    s4.send(b"x", stream=bad)
    await s4.wait(lambda: bad in s4.stops or s4.closed, 3)
    x.eq("stream naming session 8", (s4.stops.get(bad), s4.closed), (0x3994bd84, None))


@check("§5 code 114: more subscriptions than the client allows incoming uni streams -> Unsubscribed 114 within timeouts.stream_open (1 s on B)", server="b", slow=True)
async def c_stream_limit_114(x):
    s = await x.session()
    n = 140  # aioquic allows 128 incoming uni streams
    t0 = time.monotonic()
    s.send(b"".join(q.subscribe(10 + i, f"live.m{i}") for i in range(n)))
    await s.wait(lambda: [e for e in s.ctrl_events if e["type"] == "Unsubscribed"], 12)
    dt = time.monotonic() - t0
    await s.wait(lambda: all(any(e["id"] == 10 + i for e in s.ctrl_events) for i in range(n)), 5)
    await asyncio.sleep(1.0)
    u = [e for e in s.ctrl_events if e["type"] == "Unsubscribed"]
    x.eq("every Subscribe answered Subscribed", sum(e["type"] == "Subscribed" for e in s.ctrl_events), n)
    x.true("some ended 114", u, len(u))
    x.eq("codes", sorted({(e["id"], e["code"]) for e in u})[:1] and {e["code"] for e in u}, {114})
    x.true("streams opened <= 128 - 1 (server control stream)", len(s.subs) <= 127, len(s.subs))
    x.true("the first 114 within timeouts.stream_open (1 s) + 4 s of margin", dt <= 5.0, round(dt, 2))


# ================================================================ closing: capsules, rate abuse

@check("§1 §7 capsules: CLOSE_WEBTRANSPORT_SESSION -> 0x100; reason over 1,024, not UTF-8 or cut short -> 0x33; unknown and DRAIN skipped; FIN of CONNECT -> 0x100; its reset -> 0x104")
async def c_capsules(x):
    cases = [("well-formed CLOSE", q.capsule(0x2843, struct.pack(">I", 7) + b"bye"), 0x100),
             ("CLOSE reason 1,025 bytes", q.capsule(0x2843, struct.pack(">I", 7) + b"r" * 1025), 0x33),
             ("CLOSE reason not UTF-8", q.capsule(0x2843, struct.pack(">I", 7) + b"\xff"), 0x33),
             ("CLOSE cut short", q.capsule(0x2843, b"\x00\x01"), 0x33),
             ("unknown capsule", q.capsule(0x1234, b"abc"), None),
             ("DRAIN capsule", q.capsule(0x78ae, b""), None)]
    for what, cap, want in cases:
        s = await x.session()
        s.proto.h3.send_data(s.sid, cap, end_stream=False)
        s.proto.transmit()
        await s.until_closed(1.5 if want is None else 4)
        if want is None:
            s.send(q.ping(3))
            x.eq(f"{what}: session goes on", ((await s.reply(3) or {}).get("type"), s.closed), ("Pong", None))
        else:
            x.eq(f"{what}: close", (s.closed and s.closed[0], gb(s)), (want, None))
        await s.close()
    s = await x.session()
    s.proto._quic.send_stream_data(s.sid, b"", True)
    s.proto.transmit()
    await s.until_closed(4)
    x.eq("FIN of the CONNECT stream", s.closed and s.closed[0], 0x100)
    s = await x.session()
    s.reset(s.sid, 5)
    await s.until_closed(4)
    x.eq("reset of the CONNECT stream", s.closed and s.closed[0], 0x104)


@check("§5 §7 command rate (50/s): 260 Pings at once -> 50 Pongs, then 107s; the 150th refusal -> Goodbye 3003 (reconnect) instead, close 3003 with the goodbye's reason; a datagram flood -> 3003 too")
async def c_rate_abuse(x):
    s = await x.session()
    s.send(b"".join(q.ping(100 + i) for i in range(260)))
    await s.until_closed(8)
    g = gb(s)
    evs = [e for e in s.ctrl_events if e["id"] >= 100]
    pongs = sum(e["type"] == "Pong" for e in evs)
    x.true("Pongs: the burst (50) and what refilled meanwhile (50/s; at most 60 more)", 50 <= pongs <= 110, pongs)
    x.eq("refusals", (sum(e["type"] == "Error" and e["code"] == 107 for e in evs)), 149)
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3003, True))
    x.eq("close", close_of(s), (3003, g and g["reason"]))
    f = await x.session()
    for i in range(400):
        f.send_dgram(q.dgram_publish("game.flood", b"%d" % i))
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await f.until_closed(6)
    g = gb(f)
    x.eq("datagram flood: goodbye", g and g["code"], 3003)


# ================================================================ tokens

@check("§6 Refresh: another tenant's, badly signed, expired -> 108; a valid one -> Refreshed (expires_at); a narrowing one -> Refreshed then Unsubscribed 103 for the room it drops, its stream ended, new permissions apply")
async def c_refresh(x):
    s = await x.session()
    for i, (what, tok) in enumerate([("another tenant's", x.tok("bob")), ("another secret's", x.tok("wrong-secret")),
                                     ("expired", x.suite.forge(exp=int(time.time()) - 60))]):
        s.send(q.refresh(2 + i, tok))
        x.eq(what, (await s.reply(2 + i) or {}).get("code"), 108)
    tok = x.tok("alice2")
    s.send(q.refresh(6, tok))
    r = await s.reply(6) or {}
    x.eq("valid", (r.get("type"), r.get("expires_at")), ("Refreshed", jwt_claims(tok)["exp"]))
    s.send(q.subscribe(7, "chat.n") + q.subscribe(8, "game.n"))
    await s.reply(7)
    await s.reply(8)
    await s.wait(lambda: len(s.subs) == 2 and all(v["events"] for v in s.subs.values()), 3)
    gsid = next((k for k, v in s.subs.items() if v["events"] and v["events"][0]["room"] == "game.n"), None)
    s.send(q.refresh(9, x.tok("narrow")))
    r = await s.reply(9) or {}
    await s.wait(lambda: next((e for e in s.ctrl_events if e["type"] == "Unsubscribed"), None), 3)
    await s.wait(lambda: gsid in s.subs and (s.subs[gsid]["fin"] or gsid in s.resets), 3)
    x.eq("order", [(e["type"], e.get("room"), e.get("code")) for e in s.ctrl_events if e["type"] in ("Refreshed", "Unsubscribed") and e["id"] in (0, 9)],
         [("Refreshed", None, None), ("Unsubscribed", "game.n", 103)])
    x.true("game.n's stream ended", gsid in s.subs and (s.subs[gsid]["fin"] or gsid in s.resets), gsid)
    s.send(q.subscribe(10, "game.n"))
    x.eq("Subscribe game.n after", (await s.reply(10) or {}).get("code"), 103)


@check("§6 §7 token expiry: Goodbye 3002 (reconnect) at exp, close 3002; the expired token then -> 403", slow=True)
async def c_token_expiry(x):
    tok = await asyncio.to_thread(x.suite.mint, "alice", "acme", [">"], [">"], "6s")
    exp = jwt_claims(tok)["exp"]
    s = await x.session(tok)
    x.eq("expires_at", s.welcome.get("expires_at"), exp)
    await s.until_closed(12)
    at = time.time()
    g = gb(s)
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3002, True))
    x.eq("close", close_of(s), (3002, g and g["reason"]))
    x.true("at exp (from 1 s before to 3 s after)", -1.0 <= at - exp <= 3.0, round(at - exp, 2))
    await asyncio.sleep(max(0.0, exp + 1.2 - time.time()))
    s2, st = await x.open("/v1?token=" + tok)
    x.eq("the expired token: status", st, 403)


# ================================================================ deadlines (server B)

@check("§2 §7 no Hello within timeouts.hello (1 s on H) -> Goodbye 3006 (reconnect) on the control stream, close 3006; no control stream -> close 3006 alone", server="h", slow=True)
async def c_hello_timeout(x):
    t0 = time.monotonic()
    s = await x.session(ready=False)
    s.send(b"")  # opens the control stream (its 40 41 prefix only)
    n = await x.session(ready=False, open_ctrl=False)
    await s.until_closed(8)
    await n.until_closed(8)
    g = gb(s)
    x.eq("goodbye", g and (g["code"], g["reconnect"]), (3006, True))
    x.eq("close", close_of(s), (3006, g and g["reason"]))
    dt = s.closed and s.closed[2] - t0
    x.true("after about 1 s (0.8 to 6 s)", dt and 0.8 <= dt <= 6.0, dt and round(dt, 2))
    x.eq("no control stream: close code", n.closed and n.closed[0], 3006)


@check("§5 a subscription stream that takes no byte (no stream credit) for timeouts.reply (1 s on B), in a quiet room -> Unsubscribed 112, stream reset 112 within about twice that; the session goes on", server="b", slow=True)
async def c_stream_stall(x):
    s = await x.session(max_stream_data=4096)
    p = await x.session()
    s.send(q.subscribe(2, "live.stall") + q.subscribe(3, "live.other"))
    await s.reply(2)
    await s.reply(3)
    sid = await s.wait(lambda: next((k for k, v in s.subs.items() if v["events"] and v["events"][0]["room"] == "live.stall"), None), 3)
    quic = s.proto._quic
    orig = quic._write_stream_limits

    def frozen(builder, space, stream, _orig=orig):  # never raise this stream's credit again
        if stream.stream_id != sid:
            return _orig(builder, space, stream)
    quic._write_stream_limits = frozen
    for i in range(6):  # ~6 KB: more than the 4 KiB window, far fewer frames than any queue bound
        p.send(q.publish(10 + i, "live.stall", b"z" * 1000))
        await p.reply(10 + i)
    t0 = time.monotonic()
    u = await s.wait(lambda: next((e for e in s.ctrl_events if e["type"] == "Unsubscribed"), None), 10) or {}
    dt = time.monotonic() - t0
    await s.wait(lambda: sid in s.resets, 3)
    x.eq("Unsubscribed", (u.get("id"), u.get("room"), u.get("code")), (0, "live.stall", 112))
    x.eq("reset code", s.resets.get(sid), 112)
    x.true("within 0.5 to 6 s of the stall", 0.5 <= dt <= 6.0, round(dt, 2))
    s.send(q.ping(20))
    x.eq("then Ping", (await s.reply(20) or {}).get("type"), "Pong")
    p.send(q.publish(21, "live.other", b"fine"))
    await s.wait(lambda: any(e.get("payload") == b"fine" for e in sub_events(s)), 3)
    x.true("the other subscription delivers", any(e.get("payload") == b"fine" for e in sub_events(s)))


@check("§5 §7 a client that withholds its control stream's credit while replies pile up (256 frames) -> closed 3010 not_reading after timeouts.reply (1 s on B)", server="b", slow=True)
async def c_not_reading(x):
    s = await x.session(max_stream_data=4096)
    quic = s.proto._quic
    orig = quic._write_stream_limits

    def frozen(builder, space, stream, _orig=orig):  # never raise the control stream's credit
        if stream.stream_id != s.ctrl:
            return _orig(builder, space, stream)
    quic._write_stream_limits = frozen
    s.send(b"".join(q.ping(100 + i) for i in range(1000)))  # 400 Pongs, 600 Errors 107: over 4 KiB and 256 frames
    t0 = time.monotonic()
    await s.until_closed(14)
    dt = s.closed and s.closed[2] - t0
    x.eq("close code", s.closed and s.closed[0], 3010)
    x.true("after timeouts.reply and the close's waits (0.8 to 10 s)", dt and 0.8 <= dt <= 10.0, dt and round(dt, 2))
    x.true("replies read before it: less than 1,000 (the window held the rest)",
           len([e for e in s.ctrl_events if e["id"] >= 100]) < 1000, len(s.ctrl_events))


@check("§10 every latest value arrives exactly once, by datagram or as a Latest frame, whatever its size (max_datagram_frame_size 65536 and 60)")
async def c_latest_sizes(x):
    for md in (65536, 60):
        s = await x.session(max_datagram=md)
        p = await x.session()
        room = f"game.sz{md}"
        s.send(q.subscribe(2, room))
        subid = (await s.reply(2) or {}).get("subscription")
        sizes = list(range(1100, 1260, 16)) + [1, 20, 40, 50]
        for i, n in enumerate(sizes):
            p.send(q.publish(10 + i, room, bytes([65 + i % 26]) * n))
            await p.reply(10 + i)
            await asyncio.sleep(0.03)

        def seen():
            dg = [(g["sequence"], len(g["payload"])) for g in map(q.dgram_latest, s.datagrams) if g["subscription"] == subid]
            st = [(e["sequence"], len(e["payload"])) for e in sub_events(s, ("Latest",))]
            return dg, st
        await s.wait(lambda: sum(map(len, seen())) >= len(sizes), 3)
        dg, st = seen()
        x.eq(f"max_datagram_frame_size {md}: every value once, in order of sequence",
             sorted(dg + st), [(i + 1, n) for i, n in enumerate(sizes)])
        if md == 60:
            x.eq("max_datagram_frame_size 60: values of 60 bytes and more came as Latest frames",
                 sorted(n for _, n in st if n >= 60), sorted(n for n in sizes if n >= 60))
        else:
            x.true("max_datagram_frame_size 65536: datagrams used", dg, (len(dg), len(st)))
        await s.close()
        await p.close()


@check("§1 §7 idle: a client gone silent gets keep-alives (every 1 s on B) and is dropped within idle + keep_alive (4 s on B), no close sent; a short silence is harmless", server="b", slow=True)
async def c_idle(x):
    s = await x.session()
    got = []
    orig = s.proto.datagram_received

    def count(data, addr):
        got.append(time.monotonic())
        return orig(data, addr)
    s.proto.datagram_received = count
    sendto = s.proto._transport.sendto
    s.proto._transport.sendto = lambda *a, **k: None
    await asyncio.sleep(0.8)
    s.proto._transport.sendto = sendto
    s.send(q.ping(2))
    x.eq("after 0.8 s of silence", (await s.reply(2) or {}).get("type"), "Pong")
    await asyncio.sleep(0.3)
    s.proto._transport.sendto = lambda *a, **k: None
    t0 = time.monotonic()
    got.clear()
    await asyncio.sleep(10)
    rel = [round(t - t0, 2) for t in got]
    x.true("packets from the server while silent (keep-alives, probes)", len(rel) >= 1, rel)
    x.true("none after idle + keep_alive + 3 s of margin (7 s)", rel and rel[-1] <= 7.0, rel)
    s.proto._transport.sendto = sendto
    s.send(q.ping(3))
    r = await s.reply(3, 2)
    x.eq("a Ping after 10 s of silence", r, None)
    x.eq("no goodbye", gb(s), None)
    s._cm = None


@check("§1 §7 drain (SIGTERM): a session gets Goodbye 3000 (reconnect), close 3000; a CONNECT during the drain (held by a session not acking) -> 429; the server exits by timeouts.drain", server=None, slow=True)
async def c_drain(x):
    srv = await asyncio.to_thread(Server, "d", x.suite.quiver, x.suite.workdir, CONFIG_D, x.suite.secret)
    x.suite.extra.append(srv)
    try:
        s = await x.session(server=srv)
        s.send(q.subscribe(2, "chat.d"))
        await s.reply(2)
        h = await x.session(server=srv)
        h.proto._transport.sendto = lambda *a, **k: None  # stops acknowledging: the drain lasts
        t0 = time.monotonic()

        async def term():  # the QUIC handshake is done before the drain; the CONNECT goes after
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
        try:
            n, st = await x.open("/v1?token=" + x.tok("alice"), server=srv, timeout=4, before_connect=term)
        except Exception as e:
            st = type(e).__name__
        await s.until_closed(6)
        g = gb(s)
        x.eq("CONNECT during the drain", st, 429)
        x.eq("goodbye", g and (g["code"], g["reconnect"]), (3000, True))
        x.eq("close", close_of(s), (3000, g and g["reason"]))
        rc = await asyncio.to_thread(lambda: srv.proc.wait(12))
        dt = time.monotonic() - t0
        x.true("exited by the drain deadline (3 s, + 3 s margin)", dt <= 6.0, round(dt, 2))
        x.eq("exit status", rc, 0)
    finally:
        srv.stop()


# ================================================================ tenancy

@check("§4 tenancy: another tenant's same-named room shares nothing: publications, presence, history, positions, latest values")
async def c_tenancy(x):
    a = await x.session("alice")
    b = await x.session("bob")
    room = f"chat.t{os.getpid()}"
    a.send(q.subscribe(2, room))
    await a.reply(2)
    b.send(q.subscribe(2, room))
    await b.reply(2)
    a.send(q.publish(3, room, b"acme-secret"))
    pa = await a.reply(3) or {}
    await a.wait(lambda: sub_events(a, ("Publication",)), 2)
    await asyncio.sleep(0.3)
    x.eq("what B's stream got", [(e["type"], e.get("member", {}).get("user")) for e in sub_events(b)][1:],
         [("Joined", "bob")])
    b.send(q.presence(4, room))
    x.eq("B's Presence", [m["user"] for m in (await b.reply(4) or {}).get("members", [])], ["bob"])
    b.send(q.history(5, room, None, 100))
    h = await b.reply(5) or {}
    x.eq("B's History", h.get("publications"), [])
    x.true("B's epoch differs", h.get("position") and pa.get("position") and h["position"][0] != pa["position"][0],
           (h.get("position"), pa.get("position")))
    b.send(q.history(6, room, pa.get("position"), 10))
    x.eq("B's History since A's position", (await b.reply(6) or {}).get("code"), 117)
    b.send(q.unsubscribe(7, room))
    await b.reply(7)
    b.send(q.subscribe(8, room, resume=pa.get("position")))
    x.eq("B resuming from A's position", (await b.reply(8) or {}).get("recovery"), "Failed")
    b.send(q.presence_stats(9, room))
    x.eq("B's PresenceStats", (await b.reply(9) or {}).get("sessions"), 1)
    a.send(q.subscribe(20, "game.tt"))
    await a.reply(20)
    b.send_dgram(q.dgram_publish("game.tt", b"from-beta"))
    b.send(q.publish(21, "game.tt", b"from-beta2"))
    await b.reply(21)
    a.send_dgram(q.dgram_publish("game.tt", b"own"))
    await a.wait(lambda: a.datagrams, 3)
    await asyncio.sleep(0.3)
    x.eq("A's latest values", [q.dgram_latest(d)["payload"] for d in a.datagrams]
         + [e["payload"] for e in sub_events(a, ("Latest",))], [b"own"])
    x.eq("B saw no publication", [e for e in sub_events(b, ("Publication",))], [])


# ================================================================ runner


class Suite(harness.Suite):
    def forge(self, alg="HS256", exp=0, size=None):
        """A hostile token signed (unless alg none) with the suite's secret: exp None leaves it
        out, 0 is an hour ahead; size pads a claim to reach that many bytes."""
        expires = exp or int(time.time()) + 3600

        def build(pad, more=0):
            body = {"sub": "alice", "tenant": "acme", "subscribe": [">"], "publish": [">"]}
            if exp is not None:
                body["exp"] = expires
            if pad:
                body["pad"] = "x" * pad
            head = {"alg": alg, "typ": "JWT"}
            if more:
                head["x"] = "y" * more
            s = b64(json.dumps(head).encode()) + "." + b64(json.dumps(body).encode())
            if alg == "none":
                return s + "."
            return s + "." + b64(hmac.new(self.secret_bytes, s.encode(), hashlib.sha256).digest())
        if size is None:
            return build(0)
        pad = max(0, (size - len(build(0, 0))) * 3 // 4 - 24)
        for pad in range(pad, pad + 64):  # base64 grows in steps: a header field takes up the slack
            for more in range(6):
                if len(build(pad, more)) == size:
                    return build(pad, more)
        raise RuntimeError(f"no token of {size} bytes")


EVERY = [">"]
TOKENS = {"alice": ("alice", "acme", EVERY, EVERY), "alice2": ("alice", "acme", EVERY, EVERY, "2h"),
          "bob": ("bob", "beta", EVERY, EVERY),
          "carol": ("carol", "acme", ["chat.*"], ["chat.x"]),
          "narrow": ("alice", "acme", ["chat.>"], ["chat.>"]),
          "wrong-secret": ("alice", "acme", EVERY, EVERY, "1h", "another secret of at least 32 bytes!!")}


async def run_check(suite, ch, mutate):
    """One check on the event loop, given ch["timeout"] seconds."""
    x = Ctx(suite, suite.servers.get(ch["server"]) if ch["server"] else None, mutate)
    box = {}
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(ch["fn"](x), ch["timeout"])
    except asyncio.TimeoutError:
        box["timeout"] = True
    except Exception as e:
        box["exc"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        box["tb"] = traceback.format_exc()
    finally:
        try:
            await asyncio.wait_for(x.close_all(), 10)
        except Exception:
            pass
    dt = time.monotonic() - t0
    return harness.verdict(x, "timeout" in box, box.get("exc"), ch["timeout"]), dt, x.n, box.get("tb")


async def run_slow_beside(suite, chosen, args, failed, vacuous):
    """The fast checks one after another, the slow ones beside them on the same event loop."""
    async def one(ch):
        harness.report(ch, await run_check(suite, ch, args.mutate), args, failed, vacuous)
    slow = [asyncio.ensure_future(one(ch)) for ch in chosen if ch["slow"]]
    for ch in chosen:
        if not ch["slow"]:
            await one(ch)
    await asyncio.gather(*slow)


def run_all(suite, chosen, args, failed, vacuous):
    asyncio.run(run_slow_beside(suite, chosen, args, failed, vacuous))


if __name__ == "__main__":
    sys.exit(harness.main(__doc__, CHECKS, {"a": CONFIG_A, "b": CONFIG_B, "h": CONFIG_H}, TOKENS,
                          run_all, "wt-conformance", lambda k, s: f"{k}=https://{s.wt[0]}:{s.wt[1]}/v1",
                          26, suite_class=Suite, suite_timeout=SUITE_TIMEOUT))
