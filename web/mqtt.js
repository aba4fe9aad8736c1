// A small MQTT 3.1.1 client over WebSocket for the page: CONNECT, SUBSCRIBE, PUBLISH (QoS 0
// and 1), PUBACK, PINGREQ, and reconnection. Enough for signaling and watching the fleet,
// with no dependency to vendor. The broker is often the agent itself (the embedded
// broker), so it goes away whenever the agent restarts: the client reconnects with
// backoff and subscribes again, and the page carries on. Tested without a browser by
// tests/browser/mqtt.test.mjs (node --test) and in Chromium by tests/browser.rs.
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Keep-alive announced in CONNECT, and how often a PINGREQ goes out (well inside it). */
export const KEEP_ALIVE_S = 30;
export const PING_EVERY_MS = 20000;
/** No packet at all for this long means the connection is dead (a half-open socket after
 * a network change never reports a close): drop it and reconnect. */
export const SILENCE_MS = 2 * PING_EVERY_MS + 5000;
/** The largest packet buffered. The agent's topics are bounded far below this (docs/mqtt.md,
 * "Size limits"); anything larger is skipped as it streams in, never buffered, and the
 * connection stays up, so one oversized retained message cannot knock the page off. */
export const MAX_PACKET = 256 << 10;

/** Reconnect delay after `attempt` failures in a row: doubling from 0.5 s up to 30 s, with
 * "equal jitter" (half fixed, half random) so a fleet of pages does not return in step. */
export function backoffMs(attempt, random = Math.random) {
  const base = Math.min(30000, 500 * 2 ** Math.min(attempt, 16));
  return Math.round(base / 2 + (random() * base) / 2);
}

function varint(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function str(s) {
  const b = enc.encode(s);
  return [b.length >> 8, b.length & 0xff, ...b];
}

function packet(type, flags, body) {
  const head = [(type << 4) | flags, ...varint(body.length)];
  const bytes = new Uint8Array(head.length + body.length);
  bytes.set(head, 0);
  bytes.set(body, head.length);
  return bytes;
}

export class Mqtt {
  /** `env` replaces the browser's WebSocket, timers and clock (tests). */
  constructor(url, clientId, env = {}) {
    this.url = url;
    this.clientId = clientId;
    this.env = {
      WebSocket: env.WebSocket || globalThis.WebSocket,
      setTimeout: env.setTimeout || ((f, ms) => globalThis.setTimeout(f, ms)),
      clearTimeout: env.clearTimeout || ((t) => globalThis.clearTimeout(t)),
      setInterval: env.setInterval || ((f, ms) => globalThis.setInterval(f, ms)),
      clearInterval: env.clearInterval || ((t) => globalThis.clearInterval(t)),
      now: env.now || (() => Date.now()),
      random: env.random || Math.random,
    };
    this.handlers = [];
    this.stateHandlers = [];
    this.subs = new Map(); // filter -> qos, subscribed again on every connection
    this.nextId = 1;
    this.connected = false;
    this.reconnects = 0;
    this.attempt = 0;
    this.closed = false;
  }

  /** fn(topic, payload: Uint8Array, retained) for every message. */
  onMessage(fn) {
    this.handlers.push(fn);
  }

  /** fn(state, detail) with state "connected" | "disconnected" | "retrying". */
  onState(fn) {
    this.stateHandlers.push(fn);
  }

  state(s, detail) {
    for (const h of this.stateHandlers) h(s, detail);
  }

  /** Packet identifiers run 1..65535 and wrap: 0 is not a valid identifier, and a broker
   * disconnects a client that sends it. */
  packetId() {
    const id = this.nextId;
    this.nextId = id >= 65535 ? 1 : id + 1;
    return id;
  }

  /** Resolves at the first CONNACK; until then, and after any later loss of the
   * connection, it keeps trying with backoff (onState says so). */
  connect() {
    return new Promise((resolve) => {
      this.firstConnect = resolve;
      this.open();
    });
  }

  close() {
    this.closed = true;
    if (this.retry) this.env.clearTimeout(this.retry);
    if (this.ws) this.ws.close();
  }

  open() {
    this.retry = null;
    this.buf = new Uint8Array(0);
    this.skip = 0;
    let ws;
    try {
      ws = new this.env.WebSocket(this.url, ["mqtt"]);
    } catch (e) {
      this.lost(`cannot open a WebSocket to ${this.url}: ${e.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      const body = [...str("MQTT"), 4, 0x02, KEEP_ALIVE_S >> 8, KEEP_ALIVE_S & 0xff, ...str(this.clientId)];
      ws.send(packet(1, 0, body));
    };
    // A failed WebSocket fires error, then close: close alone decides what happens next.
    ws.onerror = () => {};
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.lost(`the connection to the MQTT broker at ${this.url} closed`);
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastRx = this.env.now();
      this.feed(new Uint8Array(ev.data));
    };
  }

  lost(why) {
    const was = this.connected;
    this.connected = false;
    this.ws = null;
    if (this.ping) this.env.clearInterval(this.ping);
    this.ping = null;
    if (was) this.state("disconnected", why);
    if (this.closed) return;
    const ms = backoffMs(this.attempt++, this.env.random);
    this.state("retrying", `${why}; trying again in ${(ms / 1000).toFixed(1)} s`);
    this.retry = this.env.setTimeout(() => this.open(), ms);
  }

  feed(chunk) {
    if (this.skip > 0) {
      const n = Math.min(this.skip, chunk.length);
      this.skip -= n;
      chunk = chunk.subarray(n);
    }
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
    for (;;) {
      if (this.buf.length < 2) return;
      let len = 0, mult = 1, i = 1, b;
      do {
        if (i >= this.buf.length) return;
        if (i > 4) return this.drop("a malformed packet length from the broker");
        b = this.buf[i++];
        len += (b & 0x7f) * mult;
        mult *= 128;
      } while (b & 0x80);
      if (len > MAX_PACKET) {
        // Skip it as it streams in; the connection stays up.
        const have = this.buf.length - i;
        this.skip = len - Math.min(len, have);
        this.buf = this.buf.slice(i + Math.min(len, have));
        console.warn(`MQTT: skipped a ${len}-byte packet (over ${MAX_PACKET})`);
        continue;
      }
      if (this.buf.length < i + len) return;
      const type = this.buf[0] >> 4, flags = this.buf[0] & 0x0f;
      const body = this.buf.subarray(i, i + len);
      this.buf = this.buf.slice(i + len);
      this.handle(type, flags, body);
    }
  }

  drop(why) {
    console.warn(`MQTT: ${why}; reconnecting`);
    const ws = this.ws;
    this.lost(why);
    if (ws) ws.close();
  }

  handle(type, flags, body) {
    if (type === 2) {
      if (body[1] !== 0) {
        this.drop(`the broker refused the connection (CONNACK code ${body[1]})`);
        return;
      }
      this.connected = true;
      if (this.everConnected) this.reconnects++;
      this.everConnected = true;
      this.attempt = 0;
      this.lastRx = this.env.now();
      this.ping = this.env.setInterval(() => {
        if (this.env.now() - this.lastRx > SILENCE_MS) this.drop("no answer from the broker");
        else this.send(packet(12, 0, []));
      }, PING_EVERY_MS);
      // A clean session: the broker forgot our subscriptions.
      for (const [filter, qos] of this.subs) this.sendSubscribe(filter, qos);
      this.state("connected", this.url);
      if (this.firstConnect) {
        this.firstConnect();
        this.firstConnect = null;
      }
    } else if (type === 3) {
      if (body.length < 2) return;
      const tlen = (body[0] << 8) | body[1];
      const qos = (flags >> 1) & 3;
      let p = 2 + tlen;
      if (body.length < p + (qos > 0 ? 2 : 0)) return;
      const topic = dec.decode(body.subarray(2, 2 + tlen));
      if (qos > 0) {
        this.send(packet(4, 0, [body[p], body[p + 1]]));
        p += 2;
      }
      const payload = body.slice(p);
      for (const h of this.handlers) h(topic, payload, (flags & 1) === 1);
    }
    // PUBACK, SUBACK and PINGRESP need nothing beyond counting as traffic.
  }

  send(bytes) {
    if (!this.connected || !this.ws) throw new Error(`not connected to the MQTT broker at ${this.url} (reconnecting)`);
    this.ws.send(bytes);
  }

  sendSubscribe(filter, qos) {
    const id = this.packetId();
    this.send(packet(8, 2, [id >> 8, id & 0xff, ...str(filter), qos]));
  }

  /** Subscribes now (if connected) and again after every reconnection. */
  subscribe(filter, qos = 1) {
    this.subs.set(filter, qos);
    if (this.connected) this.sendSubscribe(filter, qos);
  }

  /** Throws while the connection is down: a caller waiting for an answer finds out now,
   * not at its timeout. */
  publish(topic, payload, qos = 1, retain = false) {
    const data = typeof payload === "string" ? enc.encode(payload) : payload;
    const head = str(topic);
    if (qos > 0) {
      const id = this.packetId();
      head.push(id >> 8, id & 0xff);
    }
    const body = new Uint8Array(head.length + data.length);
    body.set(head);
    body.set(data, head.length);
    this.send(packet(3, (qos << 1) | (retain ? 1 : 0), body));
  }
}
