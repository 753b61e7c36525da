//! Addresses: `ws://` and `http://` URLs, source-address ranges, and non-blocking client
//! sockets bound to a chosen source address with `IP_BIND_ADDRESS_NO_PORT`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::FromRawFd;

/// A parsed `ws://host:port/path?query` or `http://host:port/prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// What goes in the `Host:` header (`host:port` as written).
    pub host_header: String,
    pub addr: SocketAddr,
    /// Path (and query, for ws URLs) starting with `/`. For http URLs: a prefix without a
    /// trailing `/` (empty for the root).
    pub path: String,
}

/// Parses a URL with the given scheme (`ws` or `http`). Errors are plain messages.
pub fn parse_url(s: &str, scheme: &str) -> Result<Endpoint, String> {
    let prefix = format!("{scheme}://");
    let rest = match s.strip_prefix(&prefix) {
        Some(r) => r,
        None => {
            if s.starts_with("wss://") || s.starts_with("https://") {
                return Err(format!("{s}: TLS is not supported, use {scheme}://"));
            }
            return Err(format!("{s}: expected a {scheme}:// URL"));
        }
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{s}: missing host"));
    }
    if authority.contains('@') {
        return Err(format!("{s}: user info is not supported"));
    }
    let default_port = match scheme {
        "nats" => 4222,
        "http" | "ws" => 80,
        _ => 443,
    };
    let (host, port) = split_host_port(authority, default_port).map_err(|e| format!("{s}: {e}"))?;
    let addr = resolve(&host, port).map_err(|e| format!("{s}: {e}"))?;
    let path = if scheme == "http" || scheme == "nats" {
        if path.contains('?') {
            return Err(format!("{s}: a query is not allowed here"));
        }
        path.trim_end_matches('/').to_string()
    } else if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(Endpoint {
        host_header: authority.to_string(),
        addr,
        path,
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let end = rest.find(']').ok_or("unterminated [ in host")?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None if after.is_empty() => default_port,
            None => return Err("bad characters after ]".into()),
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => {
            if h.is_empty() {
                return Err("missing host".into());
            }
            Ok((h.to_string(), parse_port(p)?))
        }
        None => Ok((authority.to_string(), default_port)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("bad port {p:?}")),
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {host}"))
}

/// Most addresses a `--source-ips` value may expand to.
pub const MAX_SOURCE_IPS: usize = 65_536;

/// Parses `127.0.0.1-127.0.0.40`, `127.0.0.7`, or a comma-separated list of those.
pub fn parse_ip_ranges(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("{s:?}: empty item"));
        }
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (item, item),
        };
        let start: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let end: Ipv4Addr = b
            .parse()
            .map_err(|_| format!("{b:?} is not an IPv4 address"))?;
        let (s32, e32) = (u32::from(start), u32::from(end));
        if e32 < s32 {
            return Err(format!("range {item:?} ends before it starts"));
        }
        if (e32 - s32) as usize + out.len() >= MAX_SOURCE_IPS {
            return Err(format!("more than {MAX_SOURCE_IPS} addresses"));
        }
        if start.is_unspecified() {
            return Err(format!("{start} cannot be a source address"));
        }
        out.extend((s32..=e32).map(Ipv4Addr::from));
    }
    Ok(out)
}

/// Starts a non-blocking TCP connect to `dst`, bound to `src` (port chosen at connect time
/// thanks to `IP_BIND_ADDRESS_NO_PORT`, so one source address is not limited to the
/// ephemeral range once for all destinations).
pub fn connect_nonblocking(
    dst: SocketAddr,
    src: Option<Ipv4Addr>,
) -> io::Result<mio::net::TcpStream> {
    connect_nonblocking_opts(dst, src, None, None)
}

/// [`connect_nonblocking`] with receive and send buffer sizes set before the connect (so
/// that the advertised window stays small: slow readers of scenario overflow; small
/// sockets on both sides: scenario scale).
pub fn connect_nonblocking_opts(
    dst: SocketAddr,
    src: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
    sndbuf: Option<usize>,
) -> io::Result<mio::net::TcpStream> {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // From here the fd is owned by `stream`, closed on every error path by its Drop.
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    for (option, size) in [(libc::SO_RCVBUF, rcvbuf), (libc::SO_SNDBUF, sndbuf)] {
        let Some(size) = size else { continue };
        let v = size.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: valid fd, option value points to a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(src) = src {
        if !dst.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IPv4 source address with an IPv6 destination",
            ));
        }
        let one: libc::c_int = 1;
        // SAFETY: valid fd, option value points to a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let sin = sockaddr_in(src, 0);
        // SAFETY: sin is a valid sockaddr_in of the given length.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let rc = match dst {
        SocketAddr::V4(a) => {
            let sin = sockaddr_in(*a.ip(), a.port());
            // SAFETY: valid sockaddr_in and length.
            unsafe {
                libc::connect(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: valid sockaddr_in6 and length.
            unsafe {
                libc::connect(
                    fd,
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(mio::net::TcpStream::from_std(stream))
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = port.to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    sin
}

/// Raises the soft open-file limit to the hard one; returns the (new soft) limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_single_and_range() {
        assert_eq!(
            parse_ip_ranges("127.0.0.5").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 5)]
        );
        let v = parse_ip_ranges("127.0.0.1-127.0.0.40").unwrap();
        assert_eq!(v.len(), 40);
        assert_eq!(v[0], Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(v[39], Ipv4Addr::new(127, 0, 0, 40));
    }

    #[test]
    fn ip_range_crosses_octet() {
        let v = parse_ip_ranges("127.0.0.254-127.0.1.1").unwrap();
        assert_eq!(
            v,
            vec![
                Ipv4Addr::new(127, 0, 0, 254),
                Ipv4Addr::new(127, 0, 0, 255),
                Ipv4Addr::new(127, 0, 1, 0),
                Ipv4Addr::new(127, 0, 1, 1)
            ]
        );
    }

    #[test]
    fn ip_list() {
        let v = parse_ip_ranges("127.0.0.1, 127.0.0.3-127.0.0.4").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1], Ipv4Addr::new(127, 0, 0, 3));
    }

    #[test]
    fn ip_errors() {
        assert!(parse_ip_ranges("").is_err());
        assert!(parse_ip_ranges("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_ip_ranges("127.0.0").is_err());
        assert!(parse_ip_ranges("127.0.0.1-").is_err());
        assert!(parse_ip_ranges("::1").is_err());
        assert!(parse_ip_ranges("0.0.0.0").is_err());
        assert!(parse_ip_ranges("127.0.0.1,,127.0.0.2").is_err());
        assert!(parse_ip_ranges("10.0.0.0-10.255.255.255").is_err());
    }

    #[test]
    fn urls() {
        let e = parse_url("ws://127.0.0.1:8080/ws", "ws").unwrap();
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.path, "/ws");
        assert_eq!(e.host_header, "127.0.0.1:8080");
        let e = parse_url("ws://127.0.0.1:9000", "ws").unwrap();
        assert_eq!(e.path, "/");
        let e = parse_url("ws://127.0.0.1:9000/ws?x=1", "ws").unwrap();
        assert_eq!(e.path, "/ws?x=1");
        let e = parse_url("http://127.0.0.1:8080/", "http").unwrap();
        assert_eq!(e.path, "");
        let e = parse_url("nats://127.0.0.1", "nats").unwrap();
        assert_eq!(e.addr, "127.0.0.1:4222".parse().unwrap());
        let e = parse_url("http://[::1]:8080/base", "http").unwrap();
        assert_eq!(e.addr, "[::1]:8080".parse().unwrap());
        assert_eq!(e.path, "/base");
        assert!(parse_url("wss://127.0.0.1/ws", "ws").is_err());
        assert!(parse_url("http://127.0.0.1:8080", "ws").is_err());
        assert!(parse_url("ws://127.0.0.1:0/ws", "ws").is_err());
        assert!(parse_url("ws://127.0.0.1:http/ws", "ws").is_err());
        assert!(parse_url("ws:///ws", "ws").is_err());
        assert!(parse_url("http://127.0.0.1:8080/?a=b", "http").is_err());
    }

    #[test]
    fn bound_connect_to_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let s = connect_nonblocking(dst, Some(Ipv4Addr::new(127, 0, 0, 3))).unwrap();
        let (_peer, from) = l.accept().unwrap();
        assert_eq!(from.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        drop(s);
        let s = connect_nonblocking_opts(dst, None, Some(4096), None).unwrap();
        let _ = l.accept().unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd and out-pointers of the given size.
        let rc = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert!(v <= 16 * 1024, "SO_RCVBUF {v}");
    }
}
