// The ddc-edge chunk protocol (docs/protocol.md) and signed signaling, for the browser.
// Keys: Ed25519 through WebCrypto, kept in IndexedDB (the private key is not extractable).
const enc = new TextEncoder();
export const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
export const unhex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));
export const sha256 = async (data) => new Uint8Array(await crypto.subtle.digest("SHA-256", data));

const T = { HELLO: 1, GET: 2, PUT: 3, HAS: 4, DELETE: 5, LIST: 6, STAT: 7, PROVE: 9, DATA: 0x10, RESPONSE: 0x80 };
const STATUS = ["ok", "not_found", "bad_request", "unauthorized", "full", "corrupt", "hash_mismatch", "busy", "internal", "draining", "version", "too_large"];

function idb() {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open("ddc-edge", 1);
    r.onupgradeneeded = () => r.result.createObjectStore("keys");
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** This browser's identity: created once, kept in IndexedDB. */
export async function identity() {
  const db = await idb();
  const get = () => new Promise((res) => {
    const q = db.transaction("keys").objectStore("keys").get("ed25519");
    q.onsuccess = () => res(q.result);
    q.onerror = () => res(undefined);
  });
  let pair = await get();
  if (!pair) {
    pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    await new Promise((res, rej) => {
      const t = db.transaction("keys", "readwrite");
      t.objectStore("keys").put(pair, "ed25519");
      t.oncomplete = res;
      t.onerror = () => rej(t.error);
    });
  }
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const id = hex(await sha256(pub)).slice(0, 24);
  return { pair, publicKey: hex(pub), id };
}

const signedBytes = (e) => enc.encode(["ddc-signal/1", e.kind, e.from, e.to, e.session, e.reply_to, e.nonce, String(e.exp), e.body].join("\n"));

export async function envelope(me, kind, to, session, replyTo, body) {
  const e = {
    v: 1, kind, from: me.id, public_key: me.publicKey, to, session, reply_to: replyTo,
    nonce: hex(crypto.getRandomValues(new Uint8Array(16))), exp: Math.floor(Date.now() / 1000) + 60, body,
  };
  e.sig = hex(await crypto.subtle.sign("Ed25519", me.pair.privateKey, signedBytes(e)));
  return JSON.stringify(e);
}

export async function verifyEnvelope(e) {
  const pub = unhex(e.public_key);
  if (hex(await sha256(pub)).slice(0, 24) !== e.from) return false;
  const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify("Ed25519", key, unhex(e.sig), signedBytes(e));
}

/** One WebRTC connection to one node, with the chunk protocol's requests. */
export class NodeConn {
  static async open(mqtt, me, prefix, nodeId, replyTopic, inbox) {
    const pc = new RTCPeerConnection();
    const dc = pc.createDataChannel("ddc-chunks/1", { ordered: true });
    dc.binaryType = "arraybuffer";
    const session = hex(crypto.getRandomValues(new Uint8Array(16)));
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((res) => {
      if (pc.iceGatheringState === "complete") return res();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && res();
      setTimeout(res, 3000);
    });
    const answer = new Promise((resolve, reject) => {
      inbox.set(session, async (e) => {
        if (e.from !== nodeId || !(await verifyEnvelope(e))) return;
        if (e.kind === "answer") resolve(e.body);
        else if (e.kind === "bye") reject(new Error(`node refused: ${e.body}`));
        else if (e.kind === "candidate") pc.addIceCandidate(JSON.parse(e.body)).catch(() => {});
      });
      setTimeout(() => reject(new Error(`node ${nodeId} did not answer`)), 20000);
    });
    mqtt.publish(`${prefix}/nodes/${nodeId}/signal`, await envelope(me, "offer", nodeId, session, replyTopic, pc.localDescription.sdp));
    await pc.setRemoteDescription({ type: "answer", sdp: await answer });
    await new Promise((res, rej) => {
      dc.onopen = res;
      setTimeout(() => rej(new Error("data channel did not open")), 20000);
    });
    const c = new NodeConn(pc, dc);
    await c.hello();
    return c;
  }

  constructor(pc, dc) {
    this.pc = pc;
    this.dc = dc;
    this.next = 1;
    this.waiting = new Map();
    dc.bufferedAmountLowThreshold = 1 << 20;
    dc.onmessage = (ev) => this.onFrame(new Uint8Array(ev.data));
  }

  onFrame(f) {
    const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
    const type = f[0];
    const req = v.getUint32(1);
    const w = this.waiting.get(req);
    if (!w) return;
    if (type === T.DATA) {
      w.buf.set(f.subarray(5), w.got);
      w.got += f.length - 5;
      if (w.onProgress) w.onProgress(f.length - 5);
      if (w.got === w.len) {
        this.waiting.delete(req);
        w.resolve(w.buf);
      }
      return;
    }
    const status = f[5];
    const body = f.subarray(6);
    if (status !== 0) {
      this.waiting.delete(req);
      w.reject(new Error(`${STATUS[status] || status}: ${new TextDecoder().decode(body)}`));
    } else if (w.get) {
      w.len = new DataView(body.buffer, body.byteOffset, 4).getUint32(0);
      w.buf = new Uint8Array(w.len);
      w.got = 0;
      if (w.len === 0) {
        this.waiting.delete(req);
        w.resolve(w.buf);
      }
    } else {
      this.waiting.delete(req);
      w.resolve(body);
    }
  }

  hello() {
    return new Promise((resolve, reject) => {
      this.waiting.set(0, { resolve, reject });
      const f = new Uint8Array(11);
      const v = new DataView(f.buffer);
      f[0] = T.HELLO;
      v.setUint16(5, 2);
      v.setUint32(7, this.pc.sctp?.maxMessageSize ? Math.min(this.pc.sctp.maxMessageSize, 65536) : 65536);
      this.dc.send(f);
    }).then((b) => {
      // HELLO response body after status: version u16, max_message u32, max_inflight u16, max_chunk u32
      const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
      this.version = v.getUint16(0);
      this.maxPayload = v.getUint32(2) - 5;
      this.maxInflight = v.getUint16(6);
      this.maxChunk = v.getUint32(8) & 0x7fffffff;
      this.canWrite = (v.getUint32(8) & 0x80000000) !== 0;
    });
  }

  async sendPaced(frame) {
    if (this.dc.bufferedAmount > 4 << 20) {
      await new Promise((res) => { this.dc.onbufferedamountlow = res; });
    }
    this.dc.send(frame);
  }

  request(type, payload, get = false, onProgress = null) {
    const req = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(req, { resolve, reject, get, onProgress });
      const f = new Uint8Array(5 + payload.length);
      f[0] = type;
      new DataView(f.buffer).setUint32(1, req);
      f.set(payload, 5);
      this.dc.send(f);
    });
  }

  async has(ids) {
    const p = new Uint8Array(2 + 32 * ids.length);
    new DataView(p.buffer).setUint16(0, ids.length);
    ids.forEach((id, i) => p.set(id, 2 + 32 * i));
    const b = await this.request(T.HAS, p);
    return ids.map((_, i) => (b[2 + (i >> 3)] & (0x80 >> (i & 7))) !== 0);
  }

  get(id, onProgress) {
    return this.request(T.GET, id, true, onProgress);
  }

  /** Whether the node proves it holds chunk `id`, whose bytes we have in `data`: it must
   *  return SHA-256(nonce || a random range of the chunk) for a fresh nonce. HAS is only
   *  a claim; a chunk is skipped on upload only after this (docs/protocol.md, PROVE). */
  async proves(id, data) {
    if (this.version < 2 || data.length === 0) return false;
    const r = crypto.getRandomValues(new Uint32Array(2));
    const nonce = crypto.getRandomValues(new Uint8Array(16));
    const offset = r[0] % data.length;
    const len = 1 + (r[1] % Math.min(data.length - offset, 65536));
    const p = new Uint8Array(56);
    p.set(id, 0);
    p.set(nonce, 32);
    const v = new DataView(p.buffer);
    v.setUint32(48, offset);
    v.setUint32(52, len);
    const want = new Uint8Array(16 + len);
    want.set(nonce, 0);
    want.set(data.subarray(offset, offset + len), 16);
    const expected = hex(await sha256(want));
    try {
      const ok = hex(await this.request(T.PROVE, p)) === expected;
      if (ok) this.proved = (this.proved || 0) + 1;
      return ok;
    } catch (e) {
      return false;
    }
  }

  async put(id, data, onProgress) {
    this.puts = (this.puts || 0) + 1;
    const req = this.next++;
    const done = new Promise((resolve, reject) => this.waiting.set(req, { resolve, reject }));
    const head = new Uint8Array(41);
    const v = new DataView(head.buffer);
    head[0] = T.PUT;
    v.setUint32(1, req);
    head.set(id, 5);
    v.setUint32(37, data.length);
    this.dc.send(head);
    for (let off = 0; off < data.length; off += this.maxPayload) {
      const piece = data.subarray(off, off + this.maxPayload);
      const f = new Uint8Array(5 + piece.length);
      f[0] = T.DATA;
      new DataView(f.buffer).setUint32(1, req);
      f.set(piece, 5);
      await this.sendPaced(f);
      if (onProgress) onProgress(piece.length);
    }
    return done;
  }

  close() {
    this.dc.close();
    this.pc.close();
  }
}

/** Runs `work(i)` for i in 0..n with at most `limit` in flight; results in order. */
async function pipelined(n, limit, work) {
  const results = new Array(n);
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const i = next++;
      results[i] = await work(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, lane));
  return results;
}

/** Splits, hashes and uploads a file; returns its ID (the manifest's). Two uploads in
 *  flight: the node buffers at most two per channel. */
export async function storeFile(conn, bytes, chunkSize, onProgress) {
  const chunks = [];
  for (let off = 0; off < bytes.length; off += chunkSize) chunks.push(bytes.subarray(off, off + chunkSize));
  const ids = await Promise.all(chunks.map((c) => sha256(c)));
  const have = [];
  for (let i = 0; i < ids.length; i += 1024) have.push(...(await conn.has(ids.slice(i, i + 1024))));
  await pipelined(chunks.length, 2, async (i) => {
    if (!have[i] || !(await conn.proves(ids[i], chunks[i]))) await conn.put(ids[i], chunks[i], onProgress);
    else if (onProgress) onProgress(chunks[i].length);
  });
  const manifest = enc.encode(JSON.stringify({ ddc_manifest: 1, size: bytes.length, chunk_size: chunkSize, chunks: ids.map(hex) }));
  const fileId = await sha256(manifest);
  await conn.put(fileId, manifest);
  return hex(fileId);
}

/** Fetches a file by ID, verifying every chunk as it arrives; four chunks in flight.
 *  Replication spreads a file's chunks over several nodes, so no one node need hold
 *  them all: `source(i)` gives the i-th node to ask (a promise of a NodeConn, opened
 *  lazily) or null when there are no more, and each chunk is asked of the nodes in
 *  that order until one has it, as the CLI's `get` does.
 *  `onTotal(bytes)` is told the size once the manifest is in. */
export async function fetchFile(source, fileIdHex, onProgress, onTotal) {
  let limit = 4;
  const fromAny = async (id, progress) => {
    let lastError;
    for (let i = 0; ; i++) {
      const pending = source(i);
      if (!pending) throw lastError || new Error("no node to fetch from");
      try {
        const c = await pending;
        limit = Math.min(limit, c.maxInflight || limit);
        return await c.get(id, progress);
      } catch (e) {
        lastError = e;
      }
    }
  };
  const fileId = unhex(fileIdHex);
  const m = await fromAny(fileId);
  if (hex(await sha256(m)) !== fileIdHex) throw new Error("the manifest does not match its ID");
  const manifest = JSON.parse(new TextDecoder().decode(m));
  if (onTotal) onTotal(manifest.size);
  const out = new Uint8Array(manifest.size);
  await pipelined(manifest.chunks.length, limit, async (i) => {
    const idHex = manifest.chunks[i];
    const c = await fromAny(unhex(idHex), onProgress);
    if (hex(await sha256(c)) !== idHex) throw new Error(`chunk ${idHex} failed verification`);
    const want = i + 1 < manifest.chunks.length ? manifest.chunk_size : manifest.size - manifest.chunk_size * i;
    if (c.length !== want) throw new Error(`chunk ${i} has the wrong length`);
    out.set(c, i * manifest.chunk_size);
  });
  return out;
}
