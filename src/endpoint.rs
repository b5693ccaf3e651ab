//! Which URLs events and tokens may be sent to: `https://`, or plain `http://` to this machine
//! only (a loopback IP or `localhost`), where nothing crosses a network to be sniffed.
//!
//! One rule for every such URL — the upstream's `sync.base_url`, and every endpoint of the login
//! (`auth.issuer`, `auth_url`, `token_url`, `userinfo_url`, `revocation_url`, and whatever the
//! issuer's discovery document names) — checked before any request is made: the authorization
//! code, the PKCE verifier and the tokens are as secret as the events (issue 11).

use std::net::IpAddr;

use url::Url;

/// Why a URL may not be used. `key` names where it came from (a config key, or a discovery
/// field); the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct EndpointError {
    pub key: String,
    pub message: String,
}

/// Parses `text` and checks it against the rule: https, or http to this machine; no user name
/// or password in it (credentials come from the login). `key` is used in the error.
pub fn secure_url(key: &str, text: &str) -> Result<Url, EndpointError> {
    let err = |message: String| EndpointError {
        key: key.to_owned(),
        message,
    };
    let url = Url::parse(text).map_err(|e| {
        err(format!(
            "{text:?} is not a URL ({e}); expected an https:// URL, e.g. \"https://id.example.org\""
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            "must not contain a user name or password; credentials come from the login".into(),
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(err(format!(
            "{text:?} uses plain http to another machine, which would send events, codes and tokens unencrypted; use https://"
        ))),
        other => Err(err(format!("{text:?} has scheme {other:?}; use https://"))),
    }
}

/// A loopback IP literal, or `localhost` (which resolves to loopback by RFC 6761).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_http_only_to_this_machine() {
        for ok in [
            "https://id.example.org",
            "https://id.example.org/realms/x/protocol/openid-connect/token",
            "http://localhost:8080/token",
            "http://LOCALHOST",
            "http://127.0.0.1:9000",
            "http://127.1.2.3",
            "http://[::1]:8080/auth?x=y",
        ] {
            secure_url("k", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "id.example.org",
            "http://id.example.org/token",
            "http://192.168.1.2",
            "http://[::2]",
            "http://localhost.example.com",
            "ftp://x",
            "file:///etc/passwd",
            "",
        ] {
            let err = secure_url("auth.token_url", bad).expect_err(bad);
            assert_eq!(err.key, "auth.token_url");
            assert!(err.to_string().contains("https"), "{bad}: {err}");
        }
        let err = secure_url("k", "https://user:pw@example.com").expect_err("credentials");
        assert!(err.to_string().contains("user name or password"), "{err}");
    }
}
