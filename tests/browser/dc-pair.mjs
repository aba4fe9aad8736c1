// Chromium <-> Chromium: two RTCPeerConnections in one headless page move SIZE bytes
// over a reliable, ordered data channel in 64 KiB messages with bufferedAmount flow
// control, and print {"ok":true,"ms":...}. A baseline for benches/lossy.rs (Chromium's
// own SCTP stack, dcsctp, on the same lossy link).
// Usage: node dc-pair.mjs SIZE [HOST_IP]
// Chromium names its host candidates with mDNS; with HOST_IP they are rewritten to that
// address, so no multicast is needed (the lab's namespaces have none).
import { chromium } from "playwright-core";

const size = Number(process.argv[2] || 16 * 1024 * 1024);
const hostIp = process.argv[3] || "";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  const ms = await page.evaluate(async ([size, hostIp]) => {
    const a = new RTCPeerConnection(), b = new RTCPeerConnection();
    const relay = (to) => (e) => {
      if (!e.candidate || !e.candidate.candidate) return;
      const c = e.candidate.toJSON();
      if (hostIp) c.candidate = c.candidate.replace(/\S+\.local/, hostIp);
      to.addIceCandidate(c);
    };
    a.onicecandidate = relay(b);
    b.onicecandidate = relay(a);
    const dc = a.createDataChannel("bench", { ordered: true });
    const done = new Promise((resolve) => {
      b.ondatachannel = (e) => {
        let got = 0;
        e.channel.binaryType = "arraybuffer";
        e.channel.onmessage = (m) => {
          got += m.data.byteLength;
          if (got >= size) resolve(performance.now());
        };
      };
    });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    await Promise.race([
      new Promise((r) => (dc.onopen = r)),
      new Promise((_, no) => setTimeout(() => no(new Error("the channel did not open in 20 s")), 20000)),
    ]);
    const msg = new Uint8Array(64 * 1024);
    dc.bufferedAmountLowThreshold = 1 << 20;
    const start = performance.now();
    let sent = 0;
    while (sent < size) {
      if (dc.bufferedAmount > 4 << 20) {
        await new Promise((r) => (dc.onbufferedamountlow = r));
      }
      dc.send(msg);
      sent += msg.length;
    }
    const end = await Promise.race([done, new Promise((r) => setTimeout(() => r(null), 120000))]);
    if (end === null) throw new Error(`timed out after 120 s; ${dc.readyState}`);
    return end - start;
  }, [size, hostIp]);
  console.log(JSON.stringify({ ok: true, ms }));
} finally {
  await browser.close();
}
