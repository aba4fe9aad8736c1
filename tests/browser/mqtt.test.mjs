// web/mqtt.js without a browser: a scripted WebSocket and simulated timers.
//   node --test tests/browser/mqtt.test.mjs      (run by tests/browser.rs)
import { test } from "node:test";
import assert from "node:assert/strict";
import { Mqtt, backoffMs, MAX_PACKET, SILENCE_MS, PING_EVERY_MS } from "../../web/mqtt.js";

// Simulated time: timers fire only when the test advances the clock.
function clock() {
  let now = 0, seq = 0;
  const timers = new Map();
  const add = (f, ms, every) => {
    const id = ++seq;
    timers.set(id, { at: now + ms, f, every });
    return id;
  };
  return {
    env: {
      setTimeout: (f, ms) => add(f, ms, 0),
      clearTimeout: (id) => timers.delete(id),
      setInterval: (f, ms) => add(f, ms, ms),
      clearInterval: (id) => timers.delete(id),
      now: () => now,
      random: () => 0.5,
    },
    advance(ms) {
      const end = now + ms;
      for (;;) {
        const due = [...timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        const [id, t] = due;
        now = t.at;
        if (t.every) t.at += t.every;
        else timers.delete(id);
        t.f();
      }
      now = end;
    },
  };
}

// A WebSocket the test scripts: records what the client sends, answers CONNECT with
// CONNACK when `accept` says so.
function fakeSockets(accept = () => true) {
  const opened = [];
  class FakeWs {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      opened.push(this);
      queueMicrotask(() => this.onopen && this.onopen());
    }
    send(bytes) {
      this.sent.push(Uint8Array.from(bytes));
      if (bytes[0] >> 4 === 1) {
        if (accept(opened.length)) this.deliver(Uint8Array.from([0x20, 2, 0, 0]));
        else this.close();
      }
    }
    deliver(bytes) {
      this.onmessage({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
    }
    close() {
      if (this.closed) return;
      this.closed = true;
      queueMicrotask(() => this.onclose && this.onclose());
    }
  }
  return { FakeWs, opened };
}

const settle = () => new Promise((r) => setTimeout(r, 0));
const publishPacket = (topic, payload, qos = 0) => {
  const t = new TextEncoder().encode(topic);
  const body = [t.length >> 8, t.length & 0xff, ...t, ...(qos ? [0, 7] : []), ...payload];
  const len = [];
  let n = body.length;
  do { let b = n % 128; n = Math.floor(n / 128); if (n) b |= 0x80; len.push(b); } while (n);
  return Uint8Array.from([0x30 | (qos << 1), ...len, ...body]);
};

test("packet identifiers wrap from 65535 to 1 and are never 0", async () => {
  const { FakeWs, opened } = fakeSockets();
  globalThis.WebSocket = FakeWs;
  const c = clock();
  const m = new Mqtt("ws://broker/mqtt", "page", { ...c.env, WebSocket: FakeWs });
  await m.connect();
  const ws = opened[0];
  ws.sent.length = 0;
  for (let i = 0; i < 70000; i++) m.publish("t", "x", 1);
  const ids = ws.sent.map((p) => {
    // fixed header (2 bytes for these small packets), topic "t" (3 bytes), then the id
    return (p[5] << 8) | p[6];
  });
  assert.equal(ids.length, 70000);
  for (const [i, id] of ids.entries()) {
    assert.ok(id >= 1 && id <= 65535, `publish ${i} carried packet id ${id}`);
  }
  assert.equal(ids[65534], 65535);
  assert.equal(ids[65535], 1, "after 65535 comes 1");
  m.close();
});

test("a lost connection is retried with backoff, subscriptions come back", async () => {
  // The first two attempts after the loss fail (the agent is restarting), the third works.
  let refuse = 0;
  const { FakeWs, opened } = fakeSockets(() => refuse-- <= 0);
  const c = clock();
  const m = new Mqtt("ws://broker/mqtt", "page", { ...c.env, WebSocket: FakeWs });
  const states = [];
  m.onState((s) => states.push(s));
  await m.connect();
  m.subscribe("ddc/nodes/+/status");
  assert.equal(opened.length, 1);
  refuse = 2;
  opened[0].close();
  await settle();
  assert.equal(m.connected, false);
  assert.throws(() => m.publish("t", "x"), /not connected/);
  // 0.5 s base, equal jitter at random() = 0.5: 375 ms, then 750, then 1500.
  c.advance(374);
  await settle();
  assert.equal(opened.length, 1, "too early");
  c.advance(1);
  await settle();
  await settle();
  assert.equal(opened.length, 2);
  c.advance(750);
  await settle();
  await settle();
  assert.equal(opened.length, 3);
  c.advance(1500);
  await settle();
  await settle();
  assert.equal(opened.length, 4);
  assert.equal(m.connected, true);
  assert.equal(m.reconnects, 1);
  const subscribes = opened[3].sent.filter((p) => p[0] >> 4 === 8);
  assert.equal(subscribes.length, 1, "the subscription is made again");
  assert.ok(new TextDecoder().decode(subscribes[0]).includes("ddc/nodes/+/status"));
  assert.deepEqual(states.slice(0, 2), ["connected", "disconnected"]);
  assert.equal(states.at(-1), "connected");
  m.close();
});

test("a silent connection is dropped and replaced", async () => {
  const { FakeWs, opened } = fakeSockets();
  const c = clock();
  const m = new Mqtt("ws://broker/mqtt", "page", { ...c.env, WebSocket: FakeWs });
  await m.connect();
  c.advance(PING_EVERY_MS);
  assert.equal(opened[0].sent.at(-1)[0], 0xc0, "a PINGREQ");
  c.advance(SILENCE_MS);
  await settle();
  assert.ok(opened[0].closed, "the silent socket was closed");
  c.advance(1000);
  await settle();
  await settle();
  assert.equal(opened.length, 2);
  assert.equal(m.connected, true);
  m.close();
});

test("an oversized message is skipped, later ones arrive, the connection stays", async () => {
  const { FakeWs, opened } = fakeSockets();
  const c = clock();
  const m = new Mqtt("ws://broker/mqtt", "page", { ...c.env, WebSocket: FakeWs });
  const got = [];
  m.onMessage((topic, payload) => got.push([topic, payload.length]));
  await m.connect();
  const big = publishPacket("ddc/nodes/x/health", new Uint8Array(MAX_PACKET + 10));
  const small = publishPacket("ddc/nodes/y/status", new TextEncoder().encode("online"), 1);
  // Streamed in pieces, the small one right behind the big one in the same frame.
  const all = new Uint8Array(big.length + small.length);
  all.set(big);
  all.set(small, big.length);
  for (let off = 0; off < all.length; off += 40000) opened[0].deliver(all.subarray(off, off + 40000));
  assert.deepEqual(got, [["ddc/nodes/y/status", 6]]);
  assert.equal(m.connected, true);
  assert.equal(opened.length, 1);
  const puback = opened[0].sent.at(-1);
  assert.deepEqual([...puback], [0x40, 2, 0, 7]);
  m.close();
});

test("backoff doubles to 30 s with jitter", () => {
  assert.equal(backoffMs(0, () => 0), 250);
  assert.equal(backoffMs(0, () => 1), 500);
  assert.equal(backoffMs(3, () => 1), 4000);
  assert.equal(backoffMs(10, () => 1), 30000);
  assert.equal(backoffMs(1000, () => 0), 15000);
});
