//! Headless Chromium driving the agent's web page, through tests/browser/run.mjs
//! (playwright-core pointed at /usr/bin/chromium). Missing pieces fail loudly:
//! scripts/prereqs.sh installs Chromium, Node.js and playwright-core.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

pub fn check_prerequisites() {
    for (p, what) in [
        ("/usr/bin/chromium", "Debian's chromium"),
        ("/usr/bin/node", "Node.js"),
    ] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing ({what}): run scripts/prereqs.sh"
        );
    }
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/prereqs.sh (npm ci there)"
    );
}

/// Runs one mode of run.mjs; returns its JSON line. `nodes`: online nodes to wait for.
pub fn drive(url: &str, nodes: usize, args: &[&str]) -> serde_json::Value {
    check_prerequisites();
    let o = Command::new("node")
        .current_dir(browser_dir())
        .arg("run.mjs")
        .arg(url)
        .args(args)
        .env("NODES", nodes.to_string())
        .output()
        .expect("running node");
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no result from the browser ({e}):\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(
        o.status.success() && v["ok"] == true,
        "browser run failed: {v}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    v
}

/// run.mjs running in the background, for modes that print a line, wait for the test to
/// do something, then print their result.
pub struct Driven {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Driven {
    pub fn spawn(url: &str, nodes: usize, args: &[&str]) -> Driven {
        use std::io::BufRead;
        check_prerequisites();
        let mut child = Command::new("node")
            .current_dir(browser_dir())
            .arg("run.mjs")
            .arg(url)
            .args(args)
            .env("NODES", nodes.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("running node");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driven {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next JSON line the page run prints; panics with what it printed on timeout,
    /// on a failure line, or if it exits first.
    pub fn next(&mut self, timeout: std::time::Duration) -> serde_json::Value {
        loop {
            match self.lines.recv_timeout(timeout) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                        assert!(v["ok"] != false, "browser run failed: {v}");
                        return v;
                    }
                }
                Err(e) => panic!(
                    "no result from the browser within {timeout:?} ({e}); it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
