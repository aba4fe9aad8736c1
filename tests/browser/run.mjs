// Drives the agent's web page in headless Chromium (/usr/bin/chromium; playwright-core
// never downloads a browser). Prints one JSON line of results.
//
//   node run.mjs URL roundtrip OUT_DIR [MiB]   store random bytes from the page, fetch them back
//   node run.mjs URL fetch FILE_ID SHA256       fetch a file stored by someone else
//   node run.mjs URL c2c [MiB]                  Chromium-to-Chromium data-channel throughput
//   node run.mjs URL charts NODE MIN            the history charts, once NODE's has MIN
//                                               points (or after 30 s)
//   node run.mjs URL reconnect                  print a line once a node is online, then wait
//                                               for the page to lose the broker, reconnect
//                                               and see the node online with fresh health
//   node run.mjs URL hostile NEEDLE             wait for NEEDLE as text in the node table;
//                                               report whether any markup from it ran
import { chromium } from "playwright-core";

const [url, mode, ...rest] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => {
  console.log(JSON.stringify({ ok: false, error: msg }));
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  const response = await page.goto(url);
  const csp = response.headers()["content-security-policy"] || null;
  await page.waitForFunction(() => document.body.dataset.ready === "1" || document.body.dataset.error, null, { timeout: 30000 });
  const err = await page.evaluate(() => document.body.dataset.error);
  if (err) await fail(`page error: ${err}`);
  const want = Number(process.env.NODES || 1);
  await page.waitForFunction((n) => window.ddc.nodes().filter((x) => x.status === "online" && x.level).length >= n, want, { timeout: 30000 });

  if (mode === "roundtrip") {
    const [out, mib = "10"] = rest;
    const r = await page.evaluate(async (mib) => {
      const bytes = new Uint8Array(mib * 1024 * 1024);
      for (let off = 0; off < bytes.length; off += 65536) crypto.getRandomValues(bytes.subarray(off, off + 65536));
      const sha = await window.ddc.sha256hex(bytes);
      const put = await window.ddc.storeBytes(bytes, `${mib} MiB of random bytes`);
      const got = await window.ddc.fetchBytes(put.id);
      // Storing it again: chunks the node proves it holds are not sent again.
      const again = await window.ddc.storeBytes(bytes, "the same bytes again");
      return {
        stored: window.ddc.stored(),
        id: put.id, sha, same: (await window.ddc.sha256hex(got.bytes)) === sha, size: got.bytes.length,
        again_id: again.id, again_uploaded: again.uploaded, again_proved: again.proved,
        upload_mb_s: bytes.length / put.seconds / 1e6, download_mb_s: bytes.length / got.seconds / 1e6,
      };
    }, Number(mib));
    await page.evaluate(() => new Promise((r) => setTimeout(r, 1500))); // a health round for the table
    await page.screenshot({ path: `${out}/page.png`, fullPage: true });
    console.log(JSON.stringify({ ok: r.same, ...r, nodes: await page.evaluate(() => window.ddc.nodes()) }));
  } else if (mode === "fetch") {
    const [id, sha] = rest;
    const r = await page.evaluate(async ([id]) => {
      const got = await window.ddc.fetchBytes(id);
      return { sha: await window.ddc.sha256hex(got.bytes), size: got.bytes.length, from: got.from };
    }, [id]);
    console.log(JSON.stringify({ ok: r.sha === sha, ...r }));
  } else if (mode === "hostile") {
    const [needle] = rest;
    await page.waitForFunction((n) => document.querySelector("#nodes tbody").textContent.includes(n), needle, { timeout: 20000 });
    await page.evaluate(() => new Promise((r) => setTimeout(r, 1000))); // give an injected handler time to fire
    const r = await page.evaluate(() => ({
      pwned: window.__pwned ?? null,
      elements: document.querySelectorAll("#nodes tbody img, #nodes tbody b, #nodes tbody script, #history img, #history b, #history script").length,
      charts: window.ddc.charts(),
      text: document.querySelector("#nodes tbody").textContent,
    }));
    console.log(JSON.stringify({ ok: r.pwned === null && r.elements === 0, csp, ...r }));
  } else if (mode === "charts") {
    // The charts, once NODE's has at least MIN points (or after 30 s).
    const [node, min] = rest;
    await page.waitForFunction(([id, m]) => {
      const c = window.ddc.charts().find((x) => x.node === id);
      return c && c.points >= m && c.lines >= 1;
    }, [node, Number(min)], { timeout: 30000 }).catch(() => {});
    const r = await page.evaluate(() => ({ charts: window.ddc.charts() }));
    console.log(JSON.stringify({ ok: true, ...r }));
  } else if (mode === "reconnect") {
    // The test restarts the agent (and its embedded broker) after the first line.
    const before = await page.evaluate(() => window.ddc.nodes().find((n) => n.status === "online"));
    console.log(JSON.stringify({ phase: "online", ...before }));
    await page.waitForFunction(() => !window.ddc.mqtt().connected, null, { timeout: 60000 });
    await page.waitForFunction((b) => {
      const m = window.ddc.mqtt(), n = window.ddc.nodes().find((x) => x.id === b.id);
      return m.connected && m.reconnects >= 1 && n && n.status === "online" && n.ts > b.ts;
    }, before, { timeout: 90000 });
    const r = await page.evaluate(() => ({
      mqtt: window.ddc.mqtt(), nodes: window.ddc.nodes(), broker: document.querySelector("#broker").textContent,
      log: document.querySelector("#log").textContent,
    }));
    console.log(JSON.stringify({ ok: true, before, ...r }));
  } else if (mode === "c2c") {
    const [mib = "32"] = rest;
    const r = await page.evaluate(async (mib) => {
      const a = new RTCPeerConnection(), b = new RTCPeerConnection();
      a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
      b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
      const dc = a.createDataChannel("bench", { ordered: true });
      dc.binaryType = "arraybuffer";
      const total = mib * 1024 * 1024, msg = new Uint8Array(65536);
      const received = new Promise((resolve) => {
        b.ondatachannel = (e) => {
          let got = 0, t0;
          e.channel.onmessage = (m) => {
            t0 ??= performance.now();
            got += m.data.byteLength;
            if (got >= total) resolve((performance.now() - t0) / 1000);
          };
        };
      });
      await a.setLocalDescription(await a.createOffer());
      await b.setRemoteDescription(a.localDescription);
      await b.setLocalDescription(await b.createAnswer());
      await a.setRemoteDescription(b.localDescription);
      await new Promise((r) => (dc.onopen = r));
      dc.bufferedAmountLowThreshold = 1 << 20;
      for (let sent = 0; sent < total; sent += msg.length) {
        if (dc.bufferedAmount > 4 << 20) await new Promise((r) => (dc.onbufferedamountlow = r));
        dc.send(msg);
      }
      const s = await received;
      return { mb_s: total / s / 1e6 };
    }, Number(mib));
    console.log(JSON.stringify({ ok: true, ...r }));
  } else {
    await fail(`unknown mode ${mode}`);
  }
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
