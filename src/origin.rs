//! Browser origins (PROTOCOL.md §11 "Browsers", `auth.allowed_origins`): which pages may
//! open sockets and call the REST API.
//!
//! Built once from the configuration (`Node::origins`), read by the shard that reads a
//! request. Requests without an `Origin` header (servers, CLIs, Node) are never checked:
//! browsers always send one on cross-origin requests and on WebSocket upgrades, and only
//! browsers carry a user's ambient credentials to a site that did not ask for them.

/// The allow-list (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// `[]`: loopback pages only (`localhost`, `127.0.0.1`, `[::1]`, any port, http or
    /// https), so a first local run works and a deployment has to name its sites.
    Loopback,
    /// `["*"]`: any origin.
    Any,
    /// These exact origins (`scheme://host[:port]`, lower case).
    List(Vec<String>),
}

/// Checks one configured entry: `*` or `scheme://host[:port]` (http or https, no path).
fn check_entry(e: &str) -> Result<String, String> {
    let lower = e.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| format!("'{e}' must start with http:// or https:// (or be \"*\")"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "'{e}' must be scheme://host[:port], with no path (e.g. https://app.example.com)"
        ));
    }
    // A port after the host (an IPv6 host is bracketed: `[::1]:8080`).
    let port = match rest.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => rest.rsplit_once(':').map(|(_, p)| p),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!(
            "'{e}' has a port that is not a number from 0 to 65535"
        ));
    }
    Ok(lower)
}

impl Origins {
    /// From `auth.allowed_origins`; the error names the bad entry.
    pub fn from_config(list: &[String]) -> Result<Origins, String> {
        if list.is_empty() {
            return Ok(Origins::Loopback);
        }
        if list.iter().any(|e| e.trim() == "*") {
            if list.len() > 1 {
                return Err("\"*\" allows every origin: list it alone".into());
            }
            return Ok(Origins::Any);
        }
        list.iter()
            .map(|e| check_entry(e))
            .collect::<Result<Vec<_>, _>>()
            .map(Origins::List)
    }

    /// Whether a page of `origin` (an `Origin` header's value) may use the server.
    pub fn allows(&self, origin: &str) -> bool {
        let o = origin.trim().to_ascii_lowercase();
        match self {
            Origins::Any => true,
            Origins::List(l) => l.contains(&o),
            Origins::Loopback => is_loopback(&o),
        }
    }
}

/// `http(s)://localhost|127.0.0.1|[::1]` with any port.
fn is_loopback(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix("[::1]") {
        return v6.is_empty()
            || v6
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            Some(_) => return false,
            None => rest,
        }
    };
    host == "localhost" || host == "127.0.0.1"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_loopback_pages_only() {
        let o = Origins::from_config(&[]).unwrap();
        for ok in [
            "http://localhost",
            "http://localhost:5173",
            "https://127.0.0.1:8443",
            "http://[::1]:3000",
            "http://[::1]",
            "HTTP://LOCALHOST:80",
        ] {
            assert!(o.allows(ok), "{ok}");
        }
        for no in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "http://localhost:99999",
            "null",
            "file://",
            "http://[::2]:80",
        ] {
            assert!(!o.allows(no), "{no}");
        }
    }

    #[test]
    fn lists_and_star() {
        let o = Origins::from_config(&[
            "https://App.Example.com".into(),
            "http://localhost:8080".into(),
        ])
        .unwrap();
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("http://localhost:8080"));
        assert!(
            !o.allows("http://localhost:8081"),
            "a list replaces the loopback default"
        );
        assert!(!o.allows("https://app.example.com:444"));
        assert!(!o.allows("http://app.example.com"), "the scheme counts");
        assert_eq!(Origins::from_config(&["*".into()]).unwrap(), Origins::Any);
        assert!(Origins::from_config(&["*".into()])
            .unwrap()
            .allows("https://anything"));
        for bad in [
            "app.example.com",
            "https://a.example/path",
            "ftp://x",
            "https://a:port",
            "*,x",
        ] {
            assert!(Origins::from_config(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(Origins::from_config(&["*".into(), "https://a".into()]).is_err());
    }
}
