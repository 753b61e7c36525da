//! The server's CPU time and resident memory, from /proc.

use std::time::Instant;

/// One reading of one or more processes (summed).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    pub at: Instant,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // the command name (field 2) may hold spaces and parentheses: split after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in bytes from the text of /proc/PID/status.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let v: u64 = it.next()?.parse().ok()?;
    let unit = it.next().unwrap_or("kB");
    Some(match unit {
        "kB" => v * 1024,
        "mB" | "MB" => v * 1024 * 1024,
        _ => v,
    })
}

/// Open files of a process (entries of /proc/PID/fd); None when they cannot be listed.
pub fn open_files(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

/// Reads one process; `Err` names what could not be read.
pub fn read_pid(pid: u32) -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let ticks =
        parse_stat_ticks(&stat).ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss = parse_status_rss(&status).ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))?;
    Ok((ticks, rss))
}

/// Sums over `pids`; `None` when there are none or one cannot be read (with a warning).
pub fn sample(pids: &[u32]) -> Option<Sample> {
    if pids.is_empty() {
        return None;
    }
    let mut ticks = 0;
    let mut rss = 0;
    for &p in pids {
        match read_pid(p) {
            Ok((t, r)) => {
                ticks += t;
                rss += r;
            }
            Err(e) => {
                eprintln!("loadtest: warning: cannot read server stats: {e}");
                return None;
            }
        }
    }
    Some(Sample {
        cpu_seconds: ticks as f64 / clock_ticks(),
        rss_bytes: rss,
        at: Instant::now(),
    })
}

/// CPU seconds this process and its waited-for children used (for the report footer).
pub fn self_cpu_seconds() -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage writes into a valid, zeroed struct.
        unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            if libc::getrusage(who, &mut ru) == 0 {
                total += tv(ru.ru_utime) + tv(ru.ru_stime);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_name() {
        let s = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 4 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(s), Some(175));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_rss() {
        let s = "Name:\tshardcast\nVmPeak:\t  2000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss(s), Some(1234 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn reads_self() {
        let (ticks, rss) = read_pid(std::process::id()).unwrap();
        let _ = ticks;
        assert!(rss > 0);
        assert!(sample(&[std::process::id()]).is_some());
        assert!(sample(&[]).is_none());
    }
}
