//! The one check a local server with unauthenticated pages makes on every request (the dev
//! server's inspection, fault and sign-in pages): the `Host` header must name this machine.

/// Whether an HTTP `Host` header names this machine: `127.0.0.1`, `[::1]` or `localhost` (any
/// case), with or without a port. A local server with unauthenticated pages answers nothing
/// else: a web page can make the browser resolve its own domain to 127.0.0.1 (DNS rebinding)
/// and read the answers, but the `Host` header still names that domain.
///
/// The port is not compared with the one the server bound: a browser always sends the port it
/// connected to, so a rebinding page cannot change it, while a TCP port forward on this machine
/// (`ssh -L`, `socat`, the tests' relays) names its own port.
pub fn is_local_host_header(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, "")) => (name, None),
            Some((name, after)) => match after.strip_prefix(':') {
                Some(p) => (name, Some(p)),
                None => return false,
            },
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, p)) => (name, Some(p)),
            None => (host, None),
        },
    };
    let port_ok = port.map_or(true, |p| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    });
    let local_name = name == "127.0.0.1"
        || name.eq_ignore_ascii_case("localhost")
        || (host.starts_with('[') && name == "::1");
    local_name && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_headers_are_local() {
        for ok in [
            "127.0.0.1:5680",
            "localhost:5680",
            "LocalHost:5680",
            "[::1]:5680",
            "127.0.0.1:9000",
            "localhost",
            "[::1]",
        ] {
            assert!(is_local_host_header(ok), "{ok}");
        }
        for bad in [
            "rebind.example:5680",
            "rebind.example",
            "127.0.0.1.nip.io:5680",
            "localhost.example.com:5680",
            "localhost:",
            "localhost:+5680",
            "localhost:99999",
            "::1:5680",
            "[::1]5680",
            "[::2]:5680",
            "[::1:5680",
            "0.0.0.0:5680",
            "",
        ] {
            assert!(!is_local_host_header(bad), "{bad}");
        }
    }
}
