//! What the bench reads from /proc: CPU time and RSS of the server processes and of itself, and
//! how busy the whole machine was (other work on a shared box shows up there).

use std::{fs, io};

/// /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 for user space.
const TICK_US: u64 = 10_000;

/// User + system CPU time of a process (all its threads, the exited ones included), in
/// microseconds: from the process's CPU-time clock, which counts nanoseconds, or where that cannot
/// be read, from /proc in 10 ms ticks (a light load's window can fall inside one tick).
pub fn cpu_us(pid: i32) -> io::Result<u64> {
    use nix::{time::clock_getcpuclockid, unistd::Pid};
    match clock_getcpuclockid(Pid::from_raw(pid)).and_then(nix::time::clock_gettime) {
        Ok(t) => {
            Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000)
        }
        Err(_) => cpu_us_ticks(pid),
    }
}

fn cpu_us_ticks(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or(io::ErrorKind::InvalidData);
    Ok((tick(11)? + tick(12)?) * TICK_US)
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::ErrorKind::InvalidData.into())
}

/// Machine-wide CPU ticks: (busy, total) over all cores since boot.
pub fn machine_ticks() -> io::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum(); // user..steal; guest time is already in user
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0); // idle + iowait
    Ok((total - idle, total))
}

/// CPU time of several processes and of the bench at one instant.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    pub servers_us: u64,
    pub bench_us: u64,
    pub machine_busy: u64,
    pub machine_total: u64,
}

impl CpuSample {
    pub fn take(server_pids: &[i32]) -> Self {
        let servers_us = server_pids.iter().filter_map(|&p| cpu_us(p).ok()).sum();
        let bench_us = cpu_us(nix::unistd::getpid().as_raw()).unwrap_or(0);
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        Self { servers_us, bench_us, machine_busy, machine_total }
    }

    /// The difference `later - self`.
    pub fn until(&self, later: &Self) -> CpuDelta {
        let total = later.machine_total.saturating_sub(self.machine_total);
        let busy = later.machine_busy.saturating_sub(self.machine_busy);
        CpuDelta {
            servers_us: later.servers_us.saturating_sub(self.servers_us),
            bench_us: later.bench_us.saturating_sub(self.bench_us),
            machine_busy_pct: if total == 0 { 0.0 } else { 100.0 * busy as f64 / total as f64 },
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CpuDelta {
    pub servers_us: u64,
    pub bench_us: u64,
    /// Share of all cores busy (anyone's work), in percent.
    pub machine_busy_pct: f64,
}

/// Sum of the servers' RSS, in KiB (0 if no pid is known).
pub fn servers_rss_kib(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(&p.to_string()).ok()).sum()
}

/// How many local ports connections may take (`net.ipv4.ip_local_port_range`), if known.
pub fn local_ports() -> Option<u64> {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ends = range.split_whitespace().map(str::parse::<u64>);
    match (ends.next(), ends.next()) {
        (Some(Ok(low)), Some(Ok(high))) if high >= low => Some(high - low + 1),
        _ => None,
    }
}

/// Raises the open-files soft limit to the hard limit (children inherit it). Returns the new soft
/// limit.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_rss_are_readable() {
        let me = nix::unistd::getpid().as_raw();
        let (exact, ticks) = (cpu_us(me).unwrap(), cpu_us_ticks(me).unwrap());
        // The clock counts what the ticks do, to the microsecond rather than to 10 ms.
        assert!(exact + 2 * TICK_US >= ticks && ticks + 2 * TICK_US >= exact, "{exact} µs vs {ticks} µs in ticks");
        assert!(rss_kib("self").unwrap() > 0);
        let (busy, total) = machine_ticks().unwrap();
        assert!(total >= busy && total > 0);
        assert!(local_ports().is_some_and(|n| n > 0));
    }
}
