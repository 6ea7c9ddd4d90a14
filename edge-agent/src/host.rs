//! Facts about the host the agent runs on (cores, memory, architecture) and process memory.

use hone_common::wire::DeviceStatus;

/// Static facts about this host.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// CPU architecture (`std::env::consts::ARCH`).
    pub arch: String,
    /// Operating system.
    pub os: String,
    /// Logical cores.
    pub cores: u32,
    /// Total physical memory, bytes.
    pub memory_bytes: u64,
    /// The runtimes the agent can measure in (tract only until the agent probes for others).
    pub runtimes: Vec<hone_common::bench::RuntimeAvailability>,
}

impl HostFacts {
    /// Reads the host's facts through sysinfo.
    pub fn read() -> HostFacts {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        HostFacts {
            arch: std::env::consts::ARCH.to_string(),
            os: std::env::consts::OS.to_string(),
            cores,
            memory_bytes: sys.total_memory(),
            runtimes: Vec::new(),
        }
    }

    /// A status message for this host.
    pub fn status(
        &self,
        device_id: &str,
        online: bool,
        session: u64,
        profile: Option<&str>,
        fault: Option<&str>,
    ) -> DeviceStatus {
        DeviceStatus {
            device_id: device_id.to_string(),
            online,
            session,
            agent_version: hone_common::HONE_VERSION.to_string(),
            arch: self.arch.clone(),
            os: self.os.clone(),
            cores: self.cores,
            memory_bytes: self.memory_bytes,
            profile: profile.map(str::to_string),
            sent_at_ms: now_ms(),
            fault: fault.map(str::to_string),
            runtimes: self.runtimes.clone(),
        }
    }
}

pub use hone_common::clock::now_ms;

/// Peak resident set size of this process (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size of this process (`VmRSS`), where the OS reports it.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rss_is_at_least_current_rss() {
        let current = super::current_rss_bytes().unwrap();
        let peak = super::peak_rss_bytes().unwrap();
        assert!(current > 0 && peak >= current);
    }
}
