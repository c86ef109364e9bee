//! Which URLs Gatehouse may fetch (JWKS, OIDC discovery): `https`, and never an address on
//! loopback, a private network or link-local, unless the operator allows it
//! (`allow_private_urls`, for tests and internal IdPs).

use std::net::{IpAddr, ToSocketAddrs};
use url::{Host, Url};

/// Checks `text` as a URL to fetch keys or metadata from.
///
/// A host name is resolved now and refused if any address is private; a name that cannot
/// be resolved now is accepted, because the fetcher checks every address it connects to.
pub fn check_fetch_url(text: &str, allow_private: bool) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if allow_private {
        return match url.scheme() {
            "https" | "http" => Ok(url),
            other => Err(format!("{text} uses {other}: use https")),
        };
    }
    if url.scheme() != "https" {
        return Err(format!("{text} must use https"));
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let private = match url.host() {
        None => return Err(format!("{text} has no host")),
        Some(Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost"
                || name.ends_with(".localhost")
                || (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|mut addrs| addrs.any(|a| is_private(a.ip())))
                    .unwrap_or(false)
        }
    };
    if private {
        return Err(format!(
            "{text} points to a loopback, private or link-local address; the operator must allow private URLs for that"
        ));
    }
    Ok(url)
}

/// Loopback, private, link-local, unspecified, shared (CGNAT), broadcast or unique-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_urls_pass_by_default() {
        assert!(check_fetch_url("https://203.0.113.7/jwks", false).is_ok());
        for bad in [
            "http://203.0.113.7/jwks",
            "https://127.0.0.1/jwks",
            "https://10.1.2.3/jwks",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/jwks",
            "https://[fd00::1]/jwks",
            "https://[::ffff:127.0.0.1]/jwks",
            "https://localhost/jwks",
            "https://idp.localhost/jwks",
            "ftp://203.0.113.7/x",
            "not a url",
        ] {
            assert!(check_fetch_url(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_operator_can_allow_private_addresses() {
        assert!(check_fetch_url("http://127.0.0.1:8080/jwks", true).is_ok());
        assert!(check_fetch_url("ftp://127.0.0.1/jwks", true).is_err());
    }
}
