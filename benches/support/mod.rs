//! Pieces of the catch-up benchmark: the acknowledging upstream and the faithfulness check, the
//! process runner, the aw-server-rust stand-in and the upstream servers as processes, and the
//! old read pattern.

pub mod faithful;
pub mod legacy;
pub mod run;
pub mod servers;
pub mod source;
pub mod upstream;

/// The CPU's model name, for the report.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The kernel, for the report.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!("Linux {}", k.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.into())
}
