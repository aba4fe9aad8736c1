#!/usr/bin/env python3
"""A rogue fleet member, on another WebRTC stack (aiortc): it joins an open fleet like a
node (retained "online", health signed by its own key), answers the honest nodes' signed
offers, and then breaks the chunk protocol the way MODE says:

  hello0  its HELLO response agrees a max message of 0 bytes
  huge    GET answers announce a 4 GiB chunk and send nothing
  slow    GET answers announce 1 MiB and then send one byte per second

In every mode it tells each node that connects to it (a signed `repl` notice, the way
nodes announce chunks to the nodes they are placed on) and LISTs twenty chunks it does
not have (so honest nodes try to fetch them), says HAS "yes" to everything and answers
PROVE with random bytes.

Usage: rogue_node.py MQTT_PORT MODE     (prints "ready <node id>" once it is a member)
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]

PREFIX = "ddc"
HELLO, GET, HAS, LIST, STAT, FACTORS, PROVE, DATA, RESPONSE = 0x01, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x10, 0x80
FAKE_CHUNKS = [os.urandom(32) for _ in range(20)]


def signed_bytes(e):
    return "\n".join(["ddc-signal/1", e["kind"], e["from"], e["to"], e["session"], e["reply_to"], e["nonce"], str(e["exp"]), e["body"]]).encode()


def canonical(obj):
    # What serde_json writes for the same object (keys sorted, no spaces).
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class Rogue:
    def __init__(self, port, mode):
        self.mode = mode
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.pub = raw.hex()
        self.id = hashlib.sha256(raw).hexdigest()[:24]
        self.topic = f"{PREFIX}/nodes/{self.id}"
        self.loop = asyncio.get_running_loop()
        self.offers = asyncio.Queue()
        self.pcs = []
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rogue-{self.id[:8]}")
        self.ready = asyncio.Event()
        self.mqtt.will_set(f"{self.topic}/status", "offline", qos=1, retain=True)
        self.mqtt.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{self.topic}/signal", qos=1)
        self.mqtt.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.ready.set)
        self.mqtt.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(self.offers.put_nowait, m.payload)
        self.mqtt.connect("127.0.0.1", port)
        self.mqtt.loop_start()

    def publish_membership(self):
        health = {"node_id": self.id, "ts": int(time.time()), "draining": False,
                  "disk": {"free_bytes": 1 << 40, "used_bytes": 0, "offered_bytes": 1 << 40}}
        msg = f"ddc-health/1\n{self.id}\n{canonical(health)}".encode()
        health["auth"] = {"key": self.pub, "sig": self.key.sign(msg).hex()}
        self.mqtt.publish(f"{self.topic}/health", json.dumps(health), qos=1, retain=True)
        self.mqtt.publish(f"{self.topic}/member", json.dumps(health), qos=1, retain=True)
        self.mqtt.publish(f"{self.topic}/status", "online", qos=1, retain=True)

    def envelope(self, kind, to, session, body):
        e = {"v": 1, "kind": kind, "from": self.id, "public_key": self.pub, "to": to,
             "session": session, "reply_to": f"{self.topic}/signal", "nonce": secrets.token_hex(16),
             "exp": int(time.time()) + 60, "body": body}
        e["sig"] = self.key.sign(signed_bytes(e)).hex()
        return json.dumps(e)

    async def serve(self):
        told = set()
        while True:
            e = json.loads(await self.offers.get())
            if e.get("kind") != "offer":
                continue
            if e["from"] not in told:
                told.add(e["from"])
                body = "ddc-repl/1 notice" + "".join(f"\n{c.hex()} 2" for c in FAKE_CHUNKS)
                self.mqtt.publish(e["reply_to"], self.envelope("repl", e["from"], "repl", body), qos=1)
            asyncio.ensure_future(self.answer(e))

    async def answer(self, offer):
        pc = RTCPeerConnection()
        self.pcs.append(pc)

        @pc.on("datachannel")
        def on_dc(dc):
            dc.on("message", lambda m: self.on_frame(dc, m))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["body"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.mqtt.publish(offer["reply_to"], self.envelope("answer", offer["from"], offer["session"], pc.localDescription.sdp), qos=1)

    def on_frame(self, dc, m):
        if len(m) < 5:
            return
        t, req = struct.unpack(">BI", m[:5])
        ok = lambda body=b"": dc.send(struct.pack(">BIB", RESPONSE | t, req, 0) + body)
        if t == HELLO:
            max_message = 0 if self.mode == "hello0" else 16384
            dc.send(struct.pack(">BIBHIHI", RESPONSE | HELLO, 0, 0, 2, max_message, 8, 1 << 20))
        elif t == LIST:
            body = struct.pack(">H", len(FAKE_CHUNKS))
            for c in FAKE_CHUNKS:
                body += c + struct.pack(">I", 1 << 20)
            ok(body + b"\x00")
        elif t == FACTORS:
            ok(struct.pack(">HB", 0, 0))
        elif t == HAS:
            (n,) = struct.unpack(">H", m[5:7])
            ok(struct.pack(">H", n) + b"\xff" * ((n + 7) // 8))
        elif t == PROVE:
            ok(os.urandom(32))
        elif t == STAT:
            ok(b"{}")
        elif t == GET:
            if self.mode == "huge":
                ok(struct.pack(">I", 0xFFFFFFFF))
            else:
                ok(struct.pack(">I", 1 << 20))
                asyncio.ensure_future(self.trickle(dc, req))

    async def trickle(self, dc, req):
        while dc.readyState == "open":
            dc.send(struct.pack(">BI", DATA, req) + b"x")
            await asyncio.sleep(1)


async def main(port, mode):
    r = Rogue(port, mode)
    await asyncio.wait_for(r.ready.wait(), 10)
    r.publish_membership()
    print(f"ready {r.id}", flush=True)
    await r.serve()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
