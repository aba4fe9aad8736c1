//! The web page: a small static site compiled into the binary (`web/`), served over plain
//! HTTP on `web.listen` (loopback by default). The page itself talks MQTT over WebSockets
//! for signaling and WebRTC for data, like any other peer (docs/browser.md).
//!
//! Static GETs of a few files need no framework: a bounded request read, a fixed route
//! table, one response, close.

use crate::config::{Broker, Config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/protocol.js"),
    ),
    (
        "/charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/charts.js"),
    ),
    (
        "/mqtt.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/mqtt.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_str!("../web/favicon.svg"),
    ),
];

/// The page's settings, served as /config.json.
pub fn page_config(cfg: &Config, node_id: &str) -> String {
    let ws = ws_url(cfg);
    serde_json::json!({
        "mqtt_ws_url": ws,
        "prefix": cfg.mqtt.topic_prefix,
        "node_id": node_id,
        "chunk_size": cfg.storage.chunk_size.0,
    })
    .to_string()
}

/// The Content-Security-Policy every response carries: scripts, styles and images only
/// from the agent itself (no inline script, no `eval`), connections only to it and to
/// the broker's WebSocket. The page renders health from the network (names, levels):
/// even if a rendering bug let markup through, nothing in it could run or phone home.
pub fn content_security_policy(cfg: &Config) -> String {
    let ws = ws_url(cfg);
    // The origin of the broker URL: scheme://host[:port].
    let origin = ws
        .split_once("://")
        .map(|(scheme, rest)| format!("{scheme}://{}", rest.split('/').next().unwrap_or("")))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {origin}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn ws_url(cfg: &Config) -> String {
    if !cfg.web.mqtt_ws_url.is_empty() {
        cfg.web.mqtt_ws_url.clone()
    } else {
        match cfg.mqtt.broker {
            Broker::Embedded => format!("ws://{}/mqtt", cfg.mqtt.embedded_ws_listen),
            // A broker's WebSocket listener is on a port of its own: web.mqtt_ws_url.
            Broker::Url(ref u) => format!("ws://{}:9001/mqtt", u.host),
        }
    }
}

pub async fn serve(listen: SocketAddr, config_json: String, csp: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("web page: cannot listen on {listen}: {e} (web.listen)"))?;
    info!(url = %format!("http://{listen}/"), "web page");
    let config_json: Arc<str> = config_json.into();
    let csp: Arc<str> = csp.into();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (cfg, csp) = (Arc::clone(&config_json), Arc::clone(&csp));
            tokio::spawn(async move {
                if let Err(e) =
                    tokio::time::timeout(Duration::from_secs(10), handle(sock, &cfg, &csp)).await
                {
                    debug!(error = %e, "web request timed out");
                }
            });
        }
    });
    Ok(())
}

async fn handle(mut sock: TcpStream, config_json: &str, csp: &str) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            let _ = respond(
                &mut sock,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
                csp,
            )
            .await;
            return;
        }
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let _ = respond(
            &mut sock,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            csp,
        )
        .await;
        return;
    }
    let (status, ctype, body): (&str, &str, &[u8]) = if path == "/config.json" {
        ("200 OK", "application/json", config_json.as_bytes())
    } else if path == "/favicon.ico" {
        ("204 No Content", "text/plain", b"")
    } else if let Some((_, t, b)) = FILES.iter().find(|(p, _, _)| *p == path) {
        ("200 OK", t, b.as_bytes())
    } else {
        ("404 Not Found", "text/plain", b"not found\n")
    };
    let body = if method == "HEAD" { &[][..] } else { body };
    let _ = respond(&mut sock, status, ctype, body, csp).await;
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    csp: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: {csp}\r\n\
         Referrer-Policy: no-referrer\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}
