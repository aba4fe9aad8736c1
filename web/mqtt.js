// A minimal MQTT 3.1.1 client over WebSocket: CONNECT, SUBSCRIBE, PUBLISH (QoS 0 and 1),
// PUBACK, PINGREQ. Enough for signaling and watching the fleet; no dependency to vendor.
const enc = new TextEncoder();
const dec = new TextDecoder();

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
  const bytes = new Uint8Array(1 + varint(body.length).length + body.length);
  const head = [(type << 4) | flags, ...varint(body.length)];
  bytes.set(head, 0);
  bytes.set(body, head.length);
  return bytes;
}

export class Mqtt {
  constructor(url, clientId) {
    this.url = url;
    this.clientId = clientId;
    this.handlers = [];
    this.nextId = 1;
    this.buf = new Uint8Array(0);
  }

  onMessage(fn) {
    this.handlers.push(fn);
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, ["mqtt"]);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        const body = [...str("MQTT"), 4, 0x02, 0, 30, ...str(this.clientId)];
        ws.send(packet(1, 0, body));
      };
      ws.onerror = () => reject(new Error(`cannot reach the MQTT broker at ${this.url}`));
      ws.onclose = () => {
        if (this.ping) clearInterval(this.ping);
      };
      ws.onmessage = (ev) => {
        const chunk = new Uint8Array(ev.data);
        const joined = new Uint8Array(this.buf.length + chunk.length);
        joined.set(this.buf);
        joined.set(chunk, this.buf.length);
        this.buf = joined;
        this.drain(resolve, reject);
      };
    });
  }

  drain(resolve, reject) {
    for (;;) {
      if (this.buf.length < 2) return;
      let len = 0, mult = 1, i = 1, b;
      do {
        if (i >= this.buf.length) return;
        b = this.buf[i++];
        len += (b & 0x7f) * mult;
        mult *= 128;
      } while (b & 0x80);
      if (this.buf.length < i + len) return;
      const type = this.buf[0] >> 4, flags = this.buf[0] & 0x0f;
      const body = this.buf.subarray(i, i + len);
      this.buf = this.buf.slice(i + len);
      if (type === 2) {
        if (body[1] !== 0) reject(new Error(`broker refused the connection (code ${body[1]})`));
        else {
          this.ping = setInterval(() => this.ws.send(packet(12, 0, [])), 20000);
          resolve();
        }
      } else if (type === 3) {
        const tlen = (body[0] << 8) | body[1];
        const topic = dec.decode(body.subarray(2, 2 + tlen));
        let p = 2 + tlen;
        const qos = (flags >> 1) & 3;
        if (qos > 0) {
          const id = (body[p] << 8) | body[p + 1];
          p += 2;
          this.ws.send(packet(4, 0, [id >> 8, id & 0xff]));
        }
        const payload = body.slice(p);
        for (const h of this.handlers) h(topic, payload, (flags & 1) === 1);
      }
    }
  }

  subscribe(filter, qos = 1) {
    const id = this.nextId++;
    this.ws.send(packet(8, 2, [id >> 8, id & 0xff, ...str(filter), qos]));
  }

  publish(topic, payload, qos = 1, retain = false) {
    const data = typeof payload === "string" ? enc.encode(payload) : payload;
    const head = str(topic);
    if (qos > 0) {
      const id = this.nextId++;
      head.push(id >> 8, id & 0xff);
    }
    const body = new Uint8Array(head.length + data.length);
    body.set(head);
    body.set(data, head.length);
    this.ws.send(packet(3, (qos << 1) | (retain ? 1 : 0), body));
  }
}
