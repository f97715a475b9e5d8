#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets, fuzz/seeds/<target>/<name>: valid
inputs each run starts from (scripts/fuzz passes the directory to libFuzzer beside the
uncommitted corpus it grows), so a short run does not spend its time finding the format.
Run again when proto/vectors/*.json change: `python3 fuzz/seeds/generate.py`."""

import base64
import hashlib
import hmac
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame_decoder():
    # Input: one byte that picks the chunk size (byte % 64 + 1), then the stream.
    frames = json.load(open(os.path.join(ROOT, "proto/vectors/frames.json")))
    datagrams = json.load(open(os.path.join(ROOT, "proto/vectors/datagrams.json")))
    streams = {"command": b"", "event": b""}
    for v in frames:
        wire = bytes.fromhex(v["hex"])
        write("frame_decoder", v["name"], b"\x3f" + wire)
        streams[v["direction"]] += wire
    for direction, wire in streams.items():
        # Every vector of a direction on one stream, read a byte and 7 bytes at a time.
        write("frame_decoder", "all_%ss_bytewise" % direction, b"\x00" + wire)
        write("frame_decoder", "all_%ss_by7" % direction, b"\x06" + wire)
    for v in datagrams:
        # A datagram's bytes as a frame's body: not a message, near one.
        body = bytes.fromhex(v["hex"])
        write("frame_decoder", "datagram_" + v["name"], b"\x3f" + struct.pack(">I", len(body)) + body)


def names():
    for i, s in enumerate(["chat.lobby", "dash.cpu", "chat.*", "chat.>", ">", "acme",
                           "a.b.c.d.e.f.g.h", "a_b-c.D9", "chat..x", "*.lobby"]):
        write("names", "n%02d" % i, s.encode())


def token():
    # Byte 0 even: the rest is a token as received; odd: claims, signed by the target.
    secret = b"fuzzing-secret-0123456789abcdef-0123"
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    claims = [
        {"sub": "alice", "exp": 1800000100},
        {"sub": "alice", "exp": 1800000100, "iat": 1799990000, "nbf": 1799990000,
         "tenant": "acme", "sub_allow": ["chat.>"], "pub_allow": ["chat.*"]},
        {"sub": "", "exp": 1},
    ]
    for i, c in enumerate(claims):
        body = json.dumps(c, separators=(",", ":")).encode()
        write("token", "claims%d" % i, b"\x01" + body)
        signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(body)
        sig = b64(hmac.new(secret, signing, hashlib.sha256).digest())
        write("token", "signed%d" % i, b"\x00" + signing + b"." + sig)


# tests/src/nats.rs MALFORMED_HEADERS, then blocks nats-server and backends send.
HEADER_BLOCKS = [
    b"GARBAGE\r\n\r\n",
    b"NATS/1.0 abc\r\nQuiver-Status: 200\r\n\r\n",
    b"NATS/1.0\r\nno colon here\r\n\r\n",
    b"NATS/1.0\r\nBad Name: x\r\n\r\n",
    b"NATS/1.0\r\nX: a\rb\r\n\r\n",
    b"GARBAGE\r\nX: a\rb\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 408 Request Timeout\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 3\r\nNats-Last-Stream: 7\r\n\r\n",
    b"NATS/1.0\r\nQuiver-Status: 200\r\n\r\n",
    b"NATS/1.0\r\nQuiver-Status: 403\r\nQuiver-Status: 200\r\n\r\n",
    b"NATS/1.0\r\nNats-Msg-Id: abc\r\nNats-Expected-Last-Subject-Sequence: 41\r\n\r\n",
    b"NATS/1.0\r\nNats-Stream: QUIVER_acme\r\nNats-Subject: quiver.acme.room.chat\r\n"
    b"Nats-Sequence: 42\r\nNats-Time-Stamp: 2026-12-07T04:00:00.123456789Z\r\n\r\n",
    b"NATS/1.0\r\nX-Folded: first\r\n  second\r\n\tthird\r\n\r\n",
    b"NATS/1.0\r\nQuiver-Caller: {\"user\":\"alice\",\"tenant\":\"acme\"}\r\n\r\n",
]


def nats_headers():
    for i, b in enumerate(HEADER_BLOCKS):
        write("nats_headers", "h%02d" % i, b)


def scrub():
    # The input format of fuzz_targets/scrub.rs, read by arbitrary's Unstructured: a byte
    # for the secret's length (1 + b % 64), that many CHARSET indices (b % 20), then pieces,
    # each a tag byte (b % 10) and its fields.
    secret = bytes([0, 1, 2, 3, 1, 4, 9, 10, 11, 19])  # Secret/"\x
    head = bytes([len(secret) - 1]) + secret
    plain, slash, quote, backslash, lone = b"\x09", b"\x04", b"\x05", b"\x06", b"\x07"
    escaped = lambda mask, twice: b"\x01" + mask + (b"\x01" if twice else b"\x00")
    unicode = lambda unit: b"\x03" + struct.pack("<H", unit) + b"\x00"
    pad = lambda n: b"\x08" + struct.pack("<H", n)
    part = lambda f, n: b"\x02" + bytes([f, n])
    seeds = {
        "plain": plain,
        "escaped_alternate": escaped(b"\x55" * 8, False),
        "escaped_all_twice": escaped(b"\xff" * 8, True),
        "at_the_cut": pad(505) + plain + pad(3) + escaped(b"\x0f" * 8, False),
        "pieces": unicode(0xD83D) + unicode(0xDE00) + unicode(0xD800) + slash + quote
        + backslash + lone + part(2, 3) + plain,
        "parts": part(0, 4) + unicode(0x0072) + part(5, 20),
    }
    for name, pieces in seeds.items():
        write("scrub", name, head + pieces)
    # A secret outside ASCII: S😀é\" escaped as UTF-16.
    write("scrub", "astral", bytes([4, 0, 17, 16, 11, 10]) + escaped(b"\xff" * 8, False) + plain)


for target in ["frame_decoder", "names", "token", "nats_headers", "scrub"]:
    shutil.rmtree(os.path.join(HERE, target), ignore_errors=True)
frame_decoder()
names()
token()
nats_headers()
scrub()
