//! systemd readiness and watchdog (`Type=notify`, `WatchdogSec=`): a datagram to
//! `$NOTIFY_SOCKET`. Ten lines of protocol, not worth a dependency. Outside systemd
//! (no socket) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        send_to(&path, state);
    }
}

fn send_to(path: &std::ffi::OsStr, state: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let _ = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        // Abstract socket: a leading NUL instead of '@'.
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            Ok(addr) => sock.send_to_addr(state.as_bytes(), &addr),
            Err(e) => Err(e),
        }
    } else {
        sock.send_to(state.as_bytes(), path)
    };
}

/// The agent is up: systemd considers the service started.
pub fn ready() {
    send("READY=1");
}

pub fn stopping() {
    send("STOPPING=1");
}

/// A one-line status for `systemctl status`.
pub fn status(text: &str) {
    send(&format!("STATUS={text}"));
}

pub fn watchdog() {
    send("WATCHDOG=1");
}

/// Half the watchdog period systemd asked for, if it asked (`WATCHDOG_USEC` for our pid).
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::process::id(),
    )
}

/// The rule behind [`watchdog_interval`], told the variables (tests never touch the
/// process environment, which other threads read).
fn interval_from(pid: Option<&str>, usec: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
        && pid != me
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok()?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1");
        send_to(path.as_os_str(), "WATCHDOG=1");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_period_is_for_our_pid_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(interval_from(None, Some("30000000"), 7), half);
        assert_eq!(interval_from(Some("7"), Some("30000000"), 7), half);
        assert_eq!(interval_from(Some("8"), Some("30000000"), 7), None);
        assert_eq!(interval_from(None, None, 7), None);
        assert_eq!(interval_from(None, Some("soon"), 7), None);
    }
}
