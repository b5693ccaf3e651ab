//! What the kernel says about a running process (`/proc`, Linux), for the benchmark and the
//! tests that report memory and wakeups: measured from outside, never by the process itself.

use anyhow::Context;

/// A value of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let [kb] = status_kbs(pid, [key])?;
    Ok(kb)
}

/// Several values of `/proc/<pid>/status` in kB, from one read of it (so they are of one
/// moment). An error when the process is gone or a key is missing (an exited process that is
/// not yet reaped has no memory lines).
pub fn status_kbs<const N: usize>(pid: u32, keys: [&str; N]) -> anyhow::Result<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut values = [0; N];
    for (value, key) in values.iter_mut().zip(keys) {
        *value = status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{key} not in /proc/{pid}/status"))?;
    }
    Ok(values)
}

/// Context switches of every thread of `pid` so far: each one is a wakeup.
pub fn context_switches(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// CPU time of every live thread of `pid` so far, in ns (`/proc/<pid>/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// User + system CPU time of the whole process so far, threads that exited included
/// (`/proc/<pid>/stat`, in clock ticks: 10 ms resolution).
pub fn process_cpu(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based, counting pid and name).
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(std::time::Duration::from_nanos(
        total.saturating_mul(1_000_000_000) / hz,
    ))
}
