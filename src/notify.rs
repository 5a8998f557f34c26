//! `notify`: the systemd readiness protocol (`sd_notify(3)`) in plain std, for
//! `Type=notify` units. `ready()` once the listeners are bound, `stopping()` when the
//! graceful drain begins. Each sends one datagram to `$NOTIFY_SOCKET` (a filesystem
//! path, or `@name` for an abstract socket) and is a no-op when the variable is unset,
//! so the same binary runs unchanged under systemd, in a container or in a test.
//! Failures are logged, never fatal: a service must not die because its supervisor's
//! socket is gone. Imports nothing from the crate.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Tell the service manager the server is up and accepting connections.
pub(crate) fn ready() {
    send_logged("READY=1\n");
}

/// Tell the service manager the server is shutting down (draining connections).
pub(crate) fn stopping() {
    send_logged("STOPPING=1\n");
}

/// Send `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
/// `Ok(false)`: the variable is unset or empty, nothing was sent.
pub(crate) fn notify(state: &str) -> io::Result<bool> {
    notify_to(std::env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

fn send_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state = state.trim_end(), "cannot notify the service manager");
    }
}

/// `notify` with the socket given explicitly (tests use this: no environment races).
pub(crate) fn notify_to(socket: Option<&OsStr>, state: &str) -> io::Result<bool> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    let sent = match bytes.first() {
        Some(b'@') => send_abstract(&sock, &bytes[1..], state.as_bytes())?,
        Some(b'/') => sock.send_to(state.as_bytes(), Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={} is neither an absolute path nor @abstract", socket.display()),
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram to NOTIFY_SOCKET"));
    }
    Ok(true)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        assert!(notify_to(Some(path.as_os_str()), "READY=1\n").unwrap());
        assert_eq!(recv(&server), "READY=1\n");
        assert!(notify_to(Some(path.as_os_str()), "STOPPING=1\n").unwrap());
        assert_eq!(recv(&server), "STOPPING=1\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let name = format!("wharfie-notify-test-{}-{nanos}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let env = OsString::from(format!("@{name}"));
        assert!(notify_to(Some(&env), "READY=1\n").unwrap());
        assert_eq!(recv(&server), "READY=1\n");
    }

    #[test]
    fn unset_or_empty_is_a_no_op() {
        assert!(!notify_to(None, "READY=1\n").unwrap());
        assert!(!notify_to(Some(OsStr::new("")), "READY=1\n").unwrap());
    }

    #[test]
    fn bad_or_missing_sockets_are_errors_not_panics() {
        assert!(notify_to(Some(OsStr::new("relative/path")), "READY=1\n").is_err());
        assert!(notify_to(Some(OsStr::new("vsock:2:1234")), "READY=1\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nobody-listens.sock");
        assert!(notify_to(Some(gone.as_os_str()), "READY=1\n").is_err());
    }
}
