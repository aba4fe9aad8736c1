// The ddc-edge page: the nodes of the network, storing and fetching files over WebRTC.
import { Mqtt } from "./mqtt.js";
import { NodeConn, identity, fetchFile, storeFile, hex, sha256 } from "./protocol.js";
import { emptySeries, fromHistory, mergeHistory, addHealth, nodeCharts } from "./charts.js";

const $ = (s) => document.querySelector(s);
const nodes = new Map(); // id -> { status, health, series }
const inbox = new Map(); // session -> handler
let mqtt, me, cfg, replyTopic;
const conns = new Map();

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("#log").prepend(li);
}

// Everything here comes from the network (topics and health published by anyone who
// may publish on the broker): it is only ever set as text, never parsed as markup.
const LEVELS = new Set(["full", "reduced", "paused"]);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const str = (v, max = 64) => (typeof v === "string" ? v.slice(0, max) : null);

function cell(tr, text, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (title) td.title = title;
  tr.append(td);
}

function render() {
  const rows = [...nodes.entries()].filter(([, n]) => n.health || n.status).sort(([a], [b]) => a.localeCompare(b));
  const body = $("#nodes tbody");
  body.replaceChildren(...rows.map(([id, n]) => {
    const h = n.health && typeof n.health === "object" ? n.health : {};
    const disk = h.disk && typeof h.disk === "object" ? h.disk : {};
    const gb = (b) => (num(b) == null ? "-" : (b / 1e9).toFixed(2) + " GB");
    const online = n.status === "online";
    const level = LEVELS.has(h.level) ? h.level : null;
    const tr = document.createElement("tr");
    tr.className = online ? level || "full" : "offline";
    tr.dataset.node = id;
    cell(tr, str(h.name) || id.slice(0, 8), id);
    cell(tr, str(n.status, 16) || "?");
    cell(tr, online ? level || str(h.level, 16) || "?" : "-");
    const t = num(h.cpu_temp_c), b = num(h.battery_percent);
    cell(tr, t == null ? "-" : t.toFixed(1) + " °C");
    cell(tr, b == null ? (h.on_battery === false ? "mains" : "-") : b.toFixed(0) + " %");
    cell(tr, `${gb(disk.used_bytes)} / ${gb(disk.offered_bytes)}`);
    cell(tr, gb(disk.free_bytes));
    return tr;
  }));
  $("#count").textContent = `${rows.filter(([, n]) => n.status === "online").length} online`;
}

// Charts are redrawn at most twice a second, however many messages arrive.
let chartsDue = null;
const MAX_CHARTS = 50;
function renderCharts() {
  chartsDue = null;
  const rows = [...nodes.entries()]
    .filter(([, n]) => n.series && n.series.t.length)
    .sort(([a, x], [b, y]) => (y.status === "online") - (x.status === "online") || a.localeCompare(b))
    .slice(0, MAX_CHARTS);
  $("#history").replaceChildren(...rows.map(([id, n]) => {
    const card = nodeCharts(`${str(n.health?.name) || "?"} · ${id.slice(0, 8)}`, n.series);
    card.dataset.node = id;
    card.dataset.points = String(n.series.t.length);
    return card;
  }));
}
const chartsLater = () => { chartsDue ??= setTimeout(renderCharts, 500); };

// Files stored from this browser, newest first, kept in this browser only.
const STORED_KEY = "ddc-stored-files";
const MAX_STORED = 100;
function storedFiles() {
  try {
    const v = JSON.parse(localStorage.getItem(STORED_KEY) || "[]");
    return Array.isArray(v) ? v.filter((f) => f && typeof f.id === "string").slice(0, MAX_STORED) : [];
  } catch (_) {
    return [];
  }
}
function rememberStored(id, name, size) {
  const list = [{ id, name: String(name).slice(0, 200), size, at: Date.now() }, ...storedFiles().filter((f) => f.id !== id)].slice(0, MAX_STORED);
  try {
    localStorage.setItem(STORED_KEY, JSON.stringify(list));
  } catch (_) { /* storage full or disabled: the list is a convenience */ }
  renderStored();
}
function renderStored() {
  const list = storedFiles();
  $("#stored tbody").replaceChildren(...list.map((f) => {
    const tr = document.createElement("tr");
    cell(tr, typeof f.name === "string" ? f.name : "?");
    cell(tr, num(f.size) == null ? "-" : `${f.size} B`);
    cell(tr, num(f.at) == null ? "-" : new Date(f.at).toLocaleString());
    const td = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = f.id;
    const b = document.createElement("button");
    b.textContent = "fetch";
    b.onclick = () => { $("#fetch-id").value = f.id; $("#fetch").click(); };
    td.append(code, " ", b);
    tr.append(td);
    return tr;
  }));
  $("#stored-count").textContent = list.length ? `${list.length}` : "";
}

function onlineNodes() {
  const ids = [...nodes.entries()].filter(([, n]) => n.status === "online").map(([id]) => id);
  // The node serving this page first, then the one with the most room.
  return ids.sort((a, b) => (a === cfg.node_id ? -1 : b === cfg.node_id ? 1 : (nodes.get(b).health?.disk?.free_bytes || 0) - (nodes.get(a).health?.disk?.free_bytes || 0)));
}

async function conn(nodeId) {
  if (!conns.has(nodeId)) conns.set(nodeId, NodeConn.open(mqtt, me, cfg.prefix, nodeId, replyTopic, inbox));
  try {
    return await conns.get(nodeId);
  } catch (e) {
    conns.delete(nodeId);
    throw e;
  }
}

function progress(total, label) {
  let done = 0;
  const bar = $("#progress");
  bar.max = total;
  bar.value = 0;
  $("#progress-label").textContent = label;
  const step = (n) => {
    done += n;
    bar.value = done;
  };
  step.setTotal = (t) => { bar.max = t; };
  return step;
}

async function storeBytes(bytes, name = "file") {
  const target = onlineNodes()[0];
  if (!target) throw new Error("no node is online");
  const c = await conn(target);
  if (!c.canWrite) throw new Error(`node ${target} does not accept writes from this browser's key (${me.publicKey}); an operator adds it to security.allowed_writers`);
  const t = performance.now();
  const [puts, proved] = [c.puts || 0, c.proved || 0];
  const id = await storeFile(c, bytes, cfg.chunk_size, progress(bytes.length, `storing ${name}`));
  const s = (performance.now() - t) / 1000;
  const uploaded = (c.puts || 0) - puts;
  log(`stored ${name} (${bytes.length} bytes) on ${target.slice(0, 8)} as ${id} in ${s.toFixed(2)} s (${uploaded} chunks sent)`);
  $("#stored-id").value = id;
  rememberStored(id, name, bytes.length);
  return { id, seconds: s, uploaded, proved: (c.proved || 0) - proved };
}

async function fetchBytes(id) {
  const ids = onlineNodes();
  if (!ids.length) throw new Error("no node is online");
  // Nodes are opened only when an earlier one lacks a chunk; one that cannot be
  // reached counts as not having it.
  const source = (i) => (i < ids.length ? conn(ids[i]) : null);
  const t = performance.now();
  const step = progress(1, `fetching ${id.slice(0, 12)}…`);
  const bytes = await fetchFile(source, id, step, step.setTotal);
  const s = (performance.now() - t) / 1000;
  const from = ids.filter((n) => conns.has(n));
  log(`fetched ${id.slice(0, 12)}… (${bytes.length} bytes, every chunk verified) from ${from.map((n) => n.slice(0, 8)).join(", ")} in ${s.toFixed(2)} s`);
  return { bytes, seconds: s, from };
}

async function main() {
  cfg = await (await fetch("config.json")).json();
  me = await identity();
  replyTopic = `${cfg.prefix}/clients/${me.id}/signal`;
  $("#me").textContent = me.id;
  $("#pubkey").textContent = me.publicKey;
  mqtt = new Mqtt(cfg.mqtt_ws_url, `ddc-web-${me.id.slice(0, 8)}-${hex(crypto.getRandomValues(new Uint8Array(3)))}`);
  mqtt.onMessage((topic, payload) => {
    const text = new TextDecoder().decode(payload);
    if (topic === replyTopic) {
      try {
        const e = JSON.parse(text);
        const h = inbox.get(e.session);
        if (h) h(e);
      } catch (_) { /* not ours */ }
      return;
    }
    const m = topic.match(/\/nodes\/([^/]+)\/(status|health|history)$/);
    if (!m) return;
    if (!nodes.has(m[1]) && nodes.size >= 1000) return; // a flood of made-up nodes
    const n = nodes.get(m[1]) || {};
    if (m[2] === "status") n.status = text;
    else {
      let v;
      try { v = JSON.parse(text); } catch (_) { return; }
      if (m[2] === "health") {
        n.health = v;
        if (v && typeof v === "object") addHealth((n.series ??= emptySeries()), v);
      } else {
        const fresh = fromHistory(v);
        if (!fresh) return;
        n.series = mergeHistory(n.series, fresh);
      }
      chartsLater();
    }
    nodes.set(m[1], n);
    render();
  });
  // Subscriptions are made again on every connection: the broker is often the agent
  // itself, and it goes away whenever the agent restarts.
  mqtt.subscribe(replyTopic);
  mqtt.subscribe(`${cfg.prefix}/nodes/+/status`);
  mqtt.subscribe(`${cfg.prefix}/nodes/+/health`, 0);
  mqtt.subscribe(`${cfg.prefix}/nodes/+/history`, 0);
  renderStored();
  mqtt.onState((state, detail) => {
    $("#broker").textContent = state === "connected" ? `broker ${cfg.mqtt_ws_url}` : `broker: ${detail}`;
    $("#broker").className = state;
    if (state === "connected" && mqtt.reconnects > 0) log(`reconnected to ${cfg.mqtt_ws_url}`);
    else if (state === "disconnected") log(`lost the broker: ${detail}`);
  });
  await mqtt.connect();
  log(`connected to ${cfg.mqtt_ws_url} as ${me.id}`);

  const drop = $("#drop");
  const storeFiles = async (files) => {
    for (const f of files) {
      try {
        await storeBytes(new Uint8Array(await f.arrayBuffer()), f.name);
      } catch (e) {
        log(`error: ${e.message}`);
      }
    }
  };
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); storeFiles(e.dataTransfer.files); };
  $("#file").onchange = (e) => storeFiles(e.target.files);
  $("#fetch").onclick = async () => {
    const id = $("#fetch-id").value.trim();
    try {
      const { bytes } = await fetchBytes(id);
      const a = $("#download");
      a.href = URL.createObjectURL(new Blob([bytes]));
      a.download = id.slice(0, 16) + ".bin";
      a.textContent = `download ${bytes.length} bytes`;
    } catch (e) {
      log(`error: ${e.message}`);
    }
  };
  document.body.dataset.ready = "1";
}

// For tests and the console.
window.ddc = {
  storeBytes,
  fetchBytes,
  sha256hex: async (b) => hex(await sha256(b)),
  nodes: () => [...nodes.entries()].map(([id, n]) => ({ id, status: n.status, level: n.health?.level, ts: n.health?.ts })),
  mqtt: () => ({ connected: mqtt.connected, reconnects: mqtt.reconnects }),
  charts: () => [...document.querySelectorAll("#history .history")].map((c) => ({
    node: c.dataset.node, points: Number(c.dataset.points), lines: c.querySelectorAll("polyline").length,
    captions: [...c.querySelectorAll("figcaption")].map((f) => f.textContent),
  })),
  stored: () => storedFiles(),
  me: () => me,
};

main().catch((e) => {
  log(`error: ${e.message}`);
  document.body.dataset.error = e.message;
});
