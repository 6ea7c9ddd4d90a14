//! Linux control groups (v1), the enforcement side of device-profile emulation.
//!
//! For each benchmark the agent creates a child group under its own group in the `cpu`,
//! `cpuset` and `memory` hierarchies, writes the limits, and moves the benchmark process in
//! before it starts work (the child waits for a go line on stdin). Groups are removed after the
//! process ends. `HONE_CGROUP_ROOT` overrides the mount root (tests use it to simulate a host
//! without cgroup rights).

use std::fs;
use std::path::PathBuf;

/// A controller hierarchy we can create groups in.
#[derive(Debug, Clone)]
pub struct Controller {
    /// Directory of the agent's own group in this hierarchy.
    pub base: PathBuf,
}

/// The hierarchies available to the agent.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// `cpu` (CFS quota).
    pub cpu: Option<Controller>,
    /// `cpuset` (which cores).
    pub cpuset: Option<Controller>,
    /// `memory` (hard limit).
    pub memory: Option<Controller>,
    /// Why a controller is missing, for the warning and the record.
    pub problems: Vec<String>,
}

/// Groups created for one benchmark process.
#[derive(Debug, Clone)]
pub struct Group {
    /// Directories created, per controller.
    pub dirs: Vec<PathBuf>,
    /// The memory group, if any (for OOM detection).
    pub memory_dir: Option<PathBuf>,
    /// The cpu group, if any (the thermal controller rewrites its quota).
    pub cpu_dir: Option<PathBuf>,
}

fn own_paths() -> Vec<(Vec<String>, String)> {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.split(',').map(str::to_string).collect();
            let path = parts.next()?.to_string();
            Some((controllers, path))
        })
        .collect()
}

fn mount_points() -> Vec<(Vec<String>, PathBuf)> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "cgroup")
                .then(|| (f[3].split(',').map(str::to_string).collect(), PathBuf::from(f[1])))
        })
        .collect()
}

impl Cgroups {
    /// Finds the v1 hierarchies and checks that the agent may create groups in them.
    pub fn detect() -> Cgroups {
        let mut out = Cgroups::default();
        let override_root = std::env::var_os("HONE_CGROUP_ROOT").map(PathBuf::from);
        let mounts = mount_points();
        let own = own_paths();
        for name in ["cpu", "cpuset", "memory"] {
            let mount = match &override_root {
                Some(root) => Some(root.join(name)),
                None => mounts
                    .iter()
                    .find(|(opts, _)| opts.iter().any(|o| o == name))
                    .map(|(_, p)| p.clone()),
            };
            let Some(mount) = mount else {
                out.problems.push(format!("no cgroup v1 `{name}` hierarchy is mounted"));
                continue;
            };
            let rel = own
                .iter()
                .find(|(c, _)| c.iter().any(|x| x == name))
                .map(|(_, p)| p.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let base = if override_root.is_some() { mount.clone() } else { mount.join(rel) };
            let probe = base.join(format!("hone-probe-{}", std::process::id()));
            match fs::create_dir(&probe) {
                Ok(()) => {
                    let _ = fs::remove_dir(&probe);
                    let controller = Controller { base };
                    match name {
                        "cpu" => out.cpu = Some(controller),
                        "cpuset" => out.cpuset = Some(controller),
                        _ => out.memory = Some(controller),
                    }
                }
                Err(e) => out
                    .problems
                    .push(format!("cannot create a `{name}` cgroup under {}: {e}", base.display())),
            }
        }
        out
    }

    /// Creates groups for one process with the given limits. `quota_us` of `None` leaves the
    /// CPU unlimited; `cpus` restricts to the first N cores.
    pub fn create(
        &self,
        name: &str,
        quota: Option<(u64, u64)>,
        cpus: Option<u32>,
        memory_limit: Option<u64>,
    ) -> std::io::Result<Group> {
        let mut group = Group { dirs: vec![], memory_dir: None, cpu_dir: None };
        let result = (|| {
            if let (Some(c), Some((quota_us, period_us))) = (&self.cpu, quota) {
                let dir = c.base.join(name);
                fs::create_dir_all(&dir)?;
                group.dirs.push(dir.clone());
                fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string())?;
                fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string())?;
                group.cpu_dir = Some(dir);
            }
            if let (Some(c), Some(n)) = (&self.cpuset, cpus) {
                let dir = c.base.join(name);
                fs::create_dir_all(&dir)?;
                group.dirs.push(dir.clone());
                let mems = fs::read_to_string(c.base.join("cpuset.mems"))
                    .or_else(|_| fs::read_to_string(c.base.join("cpuset.effective_mems")))
                    .unwrap_or_else(|_| "0".into());
                fs::write(dir.join("cpuset.mems"), mems.trim())?;
                let spec = if n <= 1 { "0".to_string() } else { format!("0-{}", n - 1) };
                fs::write(dir.join("cpuset.cpus"), spec)?;
            }
            if let (Some(c), Some(limit)) = (&self.memory, memory_limit) {
                let dir = c.base.join(name);
                fs::create_dir_all(&dir)?;
                group.dirs.push(dir.clone());
                fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())?;
                let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
                group.memory_dir = Some(dir);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(group),
            Err(e) => {
                group.remove();
                Err(e)
            }
        }
    }
}

impl Group {
    /// Moves a process into every group.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Rewrites the CPU quota (the thermal model's clock changes).
    pub fn set_quota(&self, quota_us: u64) -> std::io::Result<()> {
        match &self.cpu_dir {
            Some(dir) => fs::write(
                dir.join("cpu.cfs_quota_us"),
                quota_us.max(super::MIN_QUOTA_US).to_string(),
            ),
            None => Ok(()),
        }
    }

    /// Whether the kernel killed a process of the memory group for exceeding its limit.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory_dir else { return false };
        let control = fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
        let kills = control
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let failcnt = fs::read_to_string(dir.join("memory.failcnt"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        kills > 0 || failcnt > 0
    }

    /// Removes the groups (after the process ended).
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..20 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
    }
}
