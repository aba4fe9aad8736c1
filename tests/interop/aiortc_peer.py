#!/usr/bin/env python3
"""aiortc (Python's WebRTC stack) as a ddc-edge peer.

Signs an offer the way docs/protocol.md says, opens the `ddc-chunks/1` data channel to
a node and runs the chunk protocol: HELLO, PUT, HAS, GET (small and 1 MiB), STAT, and a
GET of a missing chunk. Prints one JSON line with the results and timings; exits non-zero
on any failure.

With a third argument `version0`, it only says HELLO with version 0 and checks that the
node answers with status `version` (10) before it closes the channel.

Usage: aiortc_peer.py MQTT_PORT NODE_ID [version0]
"""
import asyncio
import hashlib
import json
import os
import secrets
import struct
import sys
import time

import aioice.ice
import paho.mqtt.client as mqtt
from aiortc import RTCPeerConnection, RTCSessionDescription
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# aioice skips 127.0.0.1 when gathering; this test is loopback only.
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]

PREFIX = "ddc"
HELLO, GET, PUT, HAS, STAT, DATA, RESPONSE = 0x01, 0x02, 0x03, 0x04, 0x07, 0x10, 0x80


def signed_bytes(e):
    return "\n".join(["ddc-signal/1", e["kind"], e["from"], e["to"], e["session"], e["reply_to"], e["nonce"], str(e["exp"]), e["body"]]).encode()


class Peer:
    def __init__(self, port, node_id):
        self.node_id = node_id
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.pub = raw.hex()
        self.my_id = hashlib.sha256(raw).hexdigest()[:24]
        self.reply_topic = f"{PREFIX}/clients/{self.my_id}/signal"
        self.session = secrets.token_hex(16)
        self.loop = asyncio.get_running_loop()
        self.signals = asyncio.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"aiortc-{self.my_id[:8]}")
        subscribed = asyncio.Event()
        self.mqtt.on_connect = lambda c, u, f, rc, p=None: c.subscribe(self.reply_topic, qos=1)
        self.mqtt.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(subscribed.set)
        self.mqtt.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(self.signals.put_nowait, m.payload)
        self.mqtt.connect("127.0.0.1", port)
        self.mqtt.loop_start()
        self.subscribed = subscribed

    def envelope(self, kind, body):
        e = {"v": 1, "kind": kind, "from": self.my_id, "public_key": self.pub, "to": self.node_id,
             "session": self.session, "reply_to": self.reply_topic, "nonce": secrets.token_hex(16),
             "exp": int(time.time()) + 60, "body": body}
        e["sig"] = self.key.sign(signed_bytes(e)).hex()
        return json.dumps(e)

    async def answer(self):
        while True:
            e = json.loads(await asyncio.wait_for(self.signals.get(), 30))
            pub = bytes.fromhex(e["public_key"])
            assert hashlib.sha256(pub).hexdigest()[:24] == e["from"] == self.node_id, "answer from the wrong node"
            Ed25519PublicKey.from_public_bytes(pub).verify(bytes.fromhex(e["sig"]), signed_bytes(e))
            if e["kind"] == "answer":
                return e["body"]
            if e["kind"] == "bye":
                raise RuntimeError("node refused: " + e["body"])


async def main(port, node_id):
    peer = Peer(port, node_id)
    await asyncio.wait_for(peer.subscribed.wait(), 10)
    pc = RTCPeerConnection()
    dc = pc.createDataChannel("ddc-chunks/1", ordered=True)
    inbox = asyncio.Queue()
    opened = asyncio.Event()
    dc.on("open", lambda: opened.set())
    dc.on("message", lambda m: inbox.put_nowait(m))
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers fully here
    t0 = time.monotonic()
    peer.mqtt.publish(f"{PREFIX}/nodes/{node_id}/signal", peer.envelope("offer", pc.localDescription.sdp), qos=1)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await peer.answer(), type="answer"))
    await asyncio.wait_for(opened.wait(), 30)
    connect_ms = (time.monotonic() - t0) * 1000

    if len(sys.argv) > 3 and sys.argv[3] == "version0":
        dc.send(struct.pack(">BIHI", HELLO, 0, 0, 65536))
        h = await asyncio.wait_for(inbox.get(), 10)
        t, _, status, version = struct.unpack(">BIBH", h[:8])
        assert (t, status) == (RESPONSE | HELLO, 10), f"expected a version response, got {h!r}"
        print(json.dumps({"ok": True, "node_version": version}))
        await pc.close()
        peer.mqtt.loop_stop()
        return

    dc.send(struct.pack(">BIHI", HELLO, 0, 1, 65536))
    h = await asyncio.wait_for(inbox.get(), 10)
    t, _, status, version, max_message, max_inflight, max_chunk = struct.unpack(">BIBHIHI", h)
    assert (t, status, version) == (RESPONSE | HELLO, 0, 1), f"bad HELLO response {h!r}"
    payload_max = max_message - 5

    async def result(expect_type, expect_req):
        m = await asyncio.wait_for(inbox.get(), 30)
        t, req, status = struct.unpack(">BIB", m[:6])
        assert (t, req) == (RESPONSE | expect_type, expect_req), f"unexpected frame {m[:6]!r}"
        return status, m[6:]

    async def put(req, data):
        cid = hashlib.sha256(data).digest()
        dc.send(struct.pack(">BI", PUT, req) + cid + struct.pack(">I", len(data)))
        for i in range(0, len(data), payload_max):
            dc.send(struct.pack(">BI", DATA, req) + data[i:i + payload_max])
        return await result(PUT, req), cid

    async def get(req, cid):
        dc.send(struct.pack(">BI", GET, req) + cid)
        status, body = await result(GET, req)
        if status != 0:
            return status, None
        (length,) = struct.unpack(">I", body)
        buf = bytearray()
        while len(buf) < length:
            m = await asyncio.wait_for(inbox.get(), 30)
            t, r = struct.unpack(">BI", m[:5])
            assert (t, r) == (DATA, req), f"unexpected frame in GET {m[:5]!r}"
            buf += m[5:]
        return 0, bytes(buf)

    small = os.urandom(300_000)
    (status, body), small_id = await put(1, small)
    assert status == 0, f"PUT failed: status {status} {body!r}"
    dc.send(struct.pack(">BIH", HAS, 2, 2) + small_id + b"\x00" * 32)
    status, body = await result(HAS, 2)
    assert status == 0 and body == struct.pack(">H", 2) + b"\x80", f"HAS: {status} {body!r}"
    status, got = await get(3, small_id)
    assert status == 0 and got == small, "GET returned different bytes"

    big = os.urandom(1 << 20)
    (status, _), big_id = await put(4, big)
    assert status == 0
    t1 = time.monotonic()
    status, got = await get(5, big_id)
    get_1mib_ms = (time.monotonic() - t1) * 1000
    assert status == 0 and got == big, "1 MiB GET differs"

    status, _ = await get(6, b"\x07" * 32)
    assert status == 1, f"missing chunk: expected not_found, got {status}"
    dc.send(struct.pack(">BI", STAT, 7))
    status, body = await result(STAT, 7)
    stat = json.loads(body)
    assert status == 0 and stat["chunks"] >= 2, stat

    print(json.dumps({"ok": True, "connect_ms": round(connect_ms), "get_1mib_ms": round(get_1mib_ms),
                      "max_message": max_message, "max_inflight": max_inflight, "chunks": stat["chunks"]}))
    await pc.close()
    peer.mqtt.loop_stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
