//! Machine-wide memory readings for runs of many connections: what the kernel holds for
//! sockets (`/proc/net/sockstat`, `/proc/slabinfo` when readable, `/proc/meminfo`),
//! sampled before connecting and once connected, so that a run can say what one socket
//! costs the kernel. On loopback both ends of every connection are on this machine, so a
//! connection is two sockets.

use serde_json::{json, Value};

/// Slab caches a TCP socket allocates from (the socket, its inode and file, the dentry
/// behind the file, the epoll entry, and the small heads of queued buffers).
pub const SOCKET_CACHES: &[&str] = &[
    "TCP",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "eventpoll_pwq",
    "skbuff_head_cache",
    "skbuff_small_head",
    "tcp_bind_bucket",
    "tcp_bind2_bucket",
];

/// One reading of the machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelSample {
    /// `TCP: inuse` of /proc/net/sockstat.
    pub tcp_inuse: u64,
    /// `TCP: mem`: pages held by TCP socket buffers.
    pub tcp_mem_pages: u64,
    /// /proc/meminfo, bytes.
    pub mem_available: u64,
    pub slab: u64,
    pub slab_unreclaimable: u64,
    /// Bytes of each of [`SOCKET_CACHES`] (`num_objs × objsize`); empty when
    /// /proc/slabinfo cannot be read (it needs root).
    pub caches: Vec<(String, u64)>,
}

/// `(inuse, mem pages)` of the `TCP:` line of /proc/net/sockstat.
pub fn parse_sockstat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    Some((field("inuse")?, field("mem")?))
}

/// A /proc/meminfo field in bytes.
pub fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let mut it = line.split(':').nth(1)?.split_whitespace();
    let v: u64 = it.next()?.parse().ok()?;
    Some(match it.next() {
        Some("kB") => v * 1024,
        _ => v,
    })
}

/// Bytes (`num_objs × objsize`) of the named caches in the text of /proc/slabinfo, in
/// the order of `names`; caches this kernel does not have are left out.
pub fn parse_slabinfo(text: &str, names: &[&str]) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = Vec::new();
    for name in names {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(*name));
        let Some(line) = line else { continue };
        let f: Vec<&str> = line.split_whitespace().collect();
        // name active_objs num_objs objsize ...
        let (Some(num), Some(size)) = (
            f.get(2).and_then(|v| v.parse::<u64>().ok()),
            f.get(3).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        found.push((name.to_string(), num * size));
    }
    found
}

/// Reads the machine now; `None` when /proc/net/sockstat or /proc/meminfo cannot be read.
pub fn sample() -> Option<KernelSample> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let (tcp_inuse, tcp_mem_pages) = parse_sockstat(&sockstat)?;
    let caches = std::fs::read_to_string("/proc/slabinfo")
        .map(|t| parse_slabinfo(&t, SOCKET_CACHES))
        .unwrap_or_default();
    Some(KernelSample {
        tcp_inuse,
        tcp_mem_pages,
        mem_available: parse_meminfo(&meminfo, "MemAvailable")?,
        slab: parse_meminfo(&meminfo, "Slab")?,
        slab_unreclaimable: parse_meminfo(&meminfo, "SUnreclaim").unwrap_or(0),
        caches,
    })
}

/// MemAvailable of /proc/meminfo in bytes.
pub fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&meminfo, "MemAvailable")
}

impl KernelSample {
    pub fn to_json(&self) -> Value {
        let caches: serde_json::Map<String, Value> = self
            .caches
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "tcp_inuse": self.tcp_inuse,
            "tcp_mem_pages": self.tcp_mem_pages,
            "mem_available_bytes": self.mem_available,
            "slab_bytes": self.slab,
            "slab_unreclaimable_bytes": self.slab_unreclaimable,
            "slab_caches_bytes": caches,
        })
    }
}

/// What the sockets added between two readings cost, per socket added.
#[derive(Debug, Clone, PartialEq)]
pub struct PerSocket {
    pub sockets_added: u64,
    /// Growth of the socket caches of [`SOCKET_CACHES`] (`None` without slabinfo).
    pub socket_caches: Option<f64>,
    /// Growth of all slab memory (other activity of the machine included).
    pub slab: f64,
    /// Growth of the pages held by TCP socket buffers.
    pub tcp_buffers: f64,
}

/// Per-socket cost from `before` to `after`; `None` when no socket was added.
pub fn per_socket(before: &KernelSample, after: &KernelSample) -> Option<PerSocket> {
    let added = after.tcp_inuse.saturating_sub(before.tcp_inuse);
    if added == 0 {
        return None;
    }
    let n = added as f64;
    let grew = |a: u64, b: u64| b as f64 - a as f64;
    let caches_sum = |s: &KernelSample| s.caches.iter().map(|(_, v)| *v).sum::<u64>();
    Some(PerSocket {
        sockets_added: added,
        socket_caches: (!before.caches.is_empty() && !after.caches.is_empty())
            .then(|| grew(caches_sum(before), caches_sum(after)) / n),
        slab: grew(before.slab, after.slab) / n,
        tcp_buffers: grew(before.tcp_mem_pages, after.tcp_mem_pages) * 4096.0 / n,
    })
}

impl PerSocket {
    pub fn to_json(&self) -> Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        json!({
            "sockets_added": self.sockets_added,
            "socket_caches_bytes_per_socket": self.socket_caches.map(r),
            "slab_bytes_per_socket": r(self.slab),
            "tcp_buffer_bytes_per_socket": r(self.tcp_buffers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKSTAT: &str =
        "sockets: used 14\nTCP: inuse 12 orphan 0 tw 3 alloc 15 mem 52\nUDP: inuse 0 mem 0\n";
    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\nSlab:             657916 kB\nSUnreclaim:        72852 kB\n";
    const SLABINFO: &str = "slabinfo - version: 2.1\n\
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n\
tw_sock_TCP          128    208    256   16    1 : tunables    0    0    0 : slabdata     13     13      0\n\
TCP                  124    182   2368   13    8 : tunables    0    0    0 : slabdata     14     14      0\n\
filp                 647    672    192   21    1 : tunables    0    0    0 : slabdata     32     32      0\n\
broken x\n";

    #[test]
    fn sockstat() {
        assert_eq!(parse_sockstat(SOCKSTAT), Some((12, 52)));
        assert_eq!(parse_sockstat("UDP: inuse 0 mem 0\n"), None);
        assert_eq!(parse_sockstat("TCP: inuse x mem 1\n"), None);
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            parse_meminfo(MEMINFO, "MemAvailable"),
            Some(20_000_000 * 1024)
        );
        assert_eq!(parse_meminfo(MEMINFO, "Slab"), Some(657_916 * 1024));
        assert_eq!(parse_meminfo(MEMINFO, "Mem"), None);
        assert_eq!(parse_meminfo("", "Slab"), None);
    }

    #[test]
    fn slabinfo() {
        let c = parse_slabinfo(SLABINFO, &["TCP", "filp", "dentry", "broken"]);
        assert_eq!(
            c,
            vec![
                ("TCP".to_string(), 182 * 2368),
                ("filp".to_string(), 672 * 192)
            ]
        );
        assert!(parse_slabinfo("", SOCKET_CACHES).is_empty());
    }

    #[test]
    fn per_socket_cost() {
        let before = KernelSample {
            tcp_inuse: 10,
            tcp_mem_pages: 1,
            slab: 1000,
            caches: vec![("TCP".into(), 100)],
            ..KernelSample::default()
        };
        let after = KernelSample {
            tcp_inuse: 20,
            tcp_mem_pages: 2,
            slab: 41_000,
            caches: vec![("TCP".into(), 30_100)],
            ..KernelSample::default()
        };
        let p = per_socket(&before, &after).expect("sockets added");
        assert_eq!(p.sockets_added, 10);
        assert_eq!(p.socket_caches, Some(3000.0));
        assert_eq!(p.slab, 4000.0);
        assert!((p.tcp_buffers - 409.6).abs() < 1e-9);
        assert_eq!(per_socket(&after, &before), None);
        let no_slabinfo = KernelSample {
            caches: vec![],
            ..after.clone()
        };
        assert_eq!(
            per_socket(&before, &no_slabinfo).unwrap().socket_caches,
            None
        );
    }
}
