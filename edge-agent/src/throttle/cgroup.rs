//! Linux control groups, the enforcement side of device-profile emulation: the v1 hierarchies
//! (`cpu`, `cpuset` and `memory` mounted apart) and the v2 unified hierarchy (Debian 12,
//! Raspberry Pi OS, Fedora), behind one API.
//!
//! For each benchmark the agent creates a child group under its own group, writes the limits,
//! and moves the benchmark process in before it starts work (the child waits for a go line on
//! stdin). Groups are removed after the process ends.
//!
//! | limit | v1 | v2 |
//! |---|---|---|
//! | CPU quota | `cpu.cfs_period_us`, `cpu.cfs_quota_us` | `cpu.max` (`QUOTA PERIOD`) |
//! | cores | `cpuset.cpus` (+ `cpuset.mems`) | `cpuset.cpus` |
//! | memory | `memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes`) | `memory.max` (+ `memory.swap.max = 0`) |
//! | OOM kill | `memory.oom_control` `oom_kill`, `memory.failcnt` | `memory.events` `oom_kill` |
//! | evidence | `cpu.stat` `nr_throttled` | `cpu.stat` `nr_throttled` |
//!
//! On v2 the agent's own group must delegate the controllers to its children: the agent
//! enables them in `cgroup.subtree_control`. A group with processes cannot do that (the
//! no-internal-processes rule), so when the write is refused the agent first moves itself into
//! a leaf `hone-agent` below its group and tries again.
//!
//! `HONE_CGROUP_ROOT` overrides the mount root: a folder with a `cgroup.controllers` file is
//! taken as a v2 group, any other as a v1 root with `cpu/`, `cpuset/` and `memory/` below it
//! (tests use it to simulate hosts without cgroup rights, or with v2).

use std::fs;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy the controllers live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// One hierarchy per controller.
    #[default]
    V1,
    /// The unified hierarchy.
    V2,
}

impl Version {
    /// `cgroup-v1` or `cgroup-v2`, as results record the memory method.
    pub fn label(self) -> &'static str {
        match self {
            Version::V1 => "cgroup-v1",
            Version::V2 => "cgroup-v2",
        }
    }
}

/// A controller hierarchy we can create groups in.
#[derive(Debug, Clone)]
pub struct Controller {
    /// Directory of the agent's own group in this hierarchy (on v2 the same for all).
    pub base: PathBuf,
}

/// The hierarchies available to the agent.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// v1 or v2.
    pub version: Version,
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
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Hierarchy of the groups.
    pub version: Version,
    /// Directories created, per controller (one on v2).
    pub dirs: Vec<PathBuf>,
    /// The memory group, if any (for OOM detection).
    pub memory_dir: Option<PathBuf>,
    /// The cpu group, if any (the thermal controller rewrites its quota).
    pub cpu_dir: Option<PathBuf>,
    /// CFS period of the quota, µs.
    pub period_us: u64,
}

const WANTED: [&str; 3] = ["cpu", "cpuset", "memory"];

/// `(controllers, path)` of each line of `/proc/self/cgroup` (`0::/path` on v2).
fn own_paths(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers =
                parts.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            let path = parts.next()?.to_string();
            Some((controllers, path))
        })
        .collect()
}

/// `(fstype, options, mount point)` of the cgroup mounts in `/proc/self/mounts`.
fn mount_points(text: &str) -> Vec<(String, Vec<String>, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| {
                (
                    f[2].to_string(),
                    f[3].split(',').map(str::to_string).collect(),
                    PathBuf::from(f[1]),
                )
            })
        })
        .collect()
}

fn probe(base: &Path) -> std::io::Result<()> {
    let probe = base.join(format!("hone-probe-{}", std::process::id()));
    fs::create_dir(&probe)?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

fn words(path: &Path) -> std::io::Result<Vec<String>> {
    Ok(fs::read_to_string(path)?.split_whitespace().map(str::to_string).collect())
}

impl Cgroups {
    /// Finds the hierarchies and checks that the agent may create groups in them.
    pub fn detect() -> Cgroups {
        let override_root = std::env::var_os("HONE_CGROUP_ROOT").map(PathBuf::from);
        Cgroups::detect_from(
            override_root.as_deref(),
            &fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
            &fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        )
    }

    /// [`Cgroups::detect`] over given mount and membership tables (`/proc/self/mounts`,
    /// `/proc/self/cgroup`), or under `override_root`.
    pub fn detect_from(override_root: Option<&Path>, mounts: &str, own: &str) -> Cgroups {
        if let Some(root) = override_root {
            return if root.join("cgroup.controllers").is_file() {
                Cgroups::detect_v2(root.to_path_buf())
            } else {
                let mut out = Cgroups::default();
                for name in WANTED {
                    out.probe_v1(name, root.join(name));
                }
                out
            };
        }
        let mounts = mount_points(mounts);
        let own = own_paths(own);
        let v1 = |name: &str| {
            mounts
                .iter()
                .find(|(fs, opts, _)| fs == "cgroup" && opts.iter().any(|o| o == name))
                .map(|(_, _, p)| p.clone())
        };
        if WANTED.iter().any(|n| v1(n).is_some()) {
            let mut out = Cgroups::default();
            for name in WANTED {
                let Some(mount) = v1(name) else {
                    out.problems.push(format!("no cgroup v1 `{name}` hierarchy is mounted"));
                    continue;
                };
                let rel = own
                    .iter()
                    .find(|(c, _)| c.iter().any(|x| x == name))
                    .map(|(_, p)| p.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                out.probe_v1(name, mount.join(rel));
            }
            return out;
        }
        let Some((_, _, mount)) = mounts.iter().find(|(fs, _, _)| fs == "cgroup2") else {
            return Cgroups {
                problems: vec!["no cgroup hierarchy (v1 or v2) is mounted".into()],
                ..Cgroups::default()
            };
        };
        let rel = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.trim_start_matches('/').to_string())
            .unwrap_or_default();
        Cgroups::detect_v2(mount.join(rel))
    }

    fn probe_v1(&mut self, name: &str, base: PathBuf) {
        match probe(&base) {
            Ok(()) => {
                let controller = Some(Controller { base });
                match name {
                    "cpu" => self.cpu = controller,
                    "cpuset" => self.cpuset = controller,
                    _ => self.memory = controller,
                }
            }
            Err(e) => self
                .problems
                .push(format!("cannot create a `{name}` cgroup under {}: {e}", base.display())),
        }
    }

    fn detect_v2(base: PathBuf) -> Cgroups {
        let mut out = Cgroups { version: Version::V2, ..Cgroups::default() };
        let available = match words(&base.join("cgroup.controllers")) {
            Ok(w) => w,
            Err(e) => {
                out.problems.push(format!(
                    "cgroup v2: cannot read {}: {e}",
                    base.join("cgroup.controllers").display()
                ));
                return out;
            }
        };
        let usable: Vec<&str> =
            WANTED.iter().copied().filter(|n| available.iter().any(|a| a == n)).collect();
        for name in WANTED.iter().filter(|n| !usable.contains(n)) {
            out.problems.push(format!(
                "cgroup v2: the `{name}` controller is not delegated to {} (cgroup.controllers)",
                base.display()
            ));
        }
        if let Err(e) = enable_v2(&base, &usable) {
            out.problems.push(e);
            return out;
        }
        if let Err(e) = probe(&base) {
            out.problems.push(format!("cannot create a cgroup under {}: {e}", base.display()));
            return out;
        }
        for name in usable {
            let controller = Some(Controller { base: base.clone() });
            match name {
                "cpu" => out.cpu = controller,
                "cpuset" => out.cpuset = controller,
                _ => out.memory = controller,
            }
        }
        out
    }

    /// Creates groups for one process with the given limits. `quota` of `None` leaves the CPU
    /// unlimited; `cpus` restricts to the first N cores the agent may use.
    pub fn create(
        &self,
        name: &str,
        quota: Option<(u64, u64)>,
        cpus: Option<u32>,
        memory_limit: Option<u64>,
    ) -> std::io::Result<Group> {
        let mut group = Group {
            version: self.version,
            period_us: quota.map_or(0, |(_, p)| p),
            ..Group::default()
        };
        let result = match self.version {
            Version::V1 => self.create_v1(&mut group, name, quota, cpus, memory_limit),
            Version::V2 => self.create_v2(&mut group, name, quota, cpus, memory_limit),
        };
        match result {
            Ok(()) => Ok(group),
            Err(e) => {
                group.remove();
                Err(e)
            }
        }
    }

    fn create_v1(
        &self,
        group: &mut Group,
        name: &str,
        quota: Option<(u64, u64)>,
        cpus: Option<u32>,
        memory_limit: Option<u64>,
    ) -> std::io::Result<()> {
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
            let parent = fs::read_to_string(c.base.join("cpuset.effective_cpus"))
                .or_else(|_| fs::read_to_string(c.base.join("cpuset.cpus")))
                .unwrap_or_default();
            fs::write(dir.join("cpuset.cpus"), first_cpus(&parent, n))?;
        }
        if let (Some(c), Some(limit)) = (&self.memory, memory_limit) {
            let dir = c.base.join(name);
            fs::create_dir_all(&dir)?;
            group.dirs.push(dir.clone());
            fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())?;
            // Only where swap accounting is on; without it there is nothing to limit.
            let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
            group.memory_dir = Some(dir);
        }
        Ok(())
    }

    fn create_v2(
        &self,
        group: &mut Group,
        name: &str,
        quota: Option<(u64, u64)>,
        cpus: Option<u32>,
        memory_limit: Option<u64>,
    ) -> std::io::Result<()> {
        let base = [&self.cpu, &self.cpuset, &self.memory]
            .into_iter()
            .flatten()
            .map(|c| c.base.clone())
            .next();
        let Some(base) = base else { return Ok(()) };
        let dir = base.join(name);
        fs::create_dir_all(&dir)?;
        group.dirs.push(dir.clone());
        if let (Some(_), Some((quota_us, period_us))) = (&self.cpu, quota) {
            fs::write(dir.join("cpu.max"), format!("{quota_us} {period_us}"))?;
            group.cpu_dir = Some(dir.clone());
        }
        if let (Some(_), Some(n)) = (&self.cpuset, cpus) {
            let parent = fs::read_to_string(base.join("cpuset.cpus.effective"))
                .or_else(|_| fs::read_to_string(base.join("cpuset.cpus")))
                .unwrap_or_default();
            fs::write(dir.join("cpuset.cpus"), first_cpus(&parent, n))?;
        }
        if let (Some(_), Some(limit)) = (&self.memory, memory_limit) {
            fs::write(dir.join("memory.max"), limit.to_string())?;
            // Only where swap accounting is on; without it there is nothing to limit.
            let _ = fs::write(dir.join("memory.swap.max"), "0");
            group.memory_dir = Some(dir);
        }
        Ok(())
    }
}

/// Enables `names` in `base/cgroup.subtree_control`, moving this process into a leaf first
/// when the group's own processes forbid it.
fn enable_v2(base: &Path, names: &[&str]) -> Result<(), String> {
    let control = base.join("cgroup.subtree_control");
    let enabled = words(&control).unwrap_or_default();
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !enabled.iter().any(|e| e == *n))
        .map(|n| format!("+{n}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = missing.join(" ");
    let Err(first) = fs::write(&control, &line) else { return Ok(()) };
    let leaf = base.join("hone-agent");
    let moved = fs::create_dir_all(&leaf)
        .and_then(|()| fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()));
    match moved.and_then(|()| fs::write(&control, &line)) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!(
            "cgroup v2: cannot enable `{line}` in {}: {first} (then, with the agent moved to \
             {}: {e}); run the agent in a group of its own with the controllers delegated \
             (systemd `Delegate=yes`)",
            control.display(),
            leaf.display()
        )),
    }
}

/// The first `n` CPUs of a cpuset list such as `0-3,8,10-11` (`0-(n-1)` when it is empty or
/// unreadable).
pub fn first_cpus(list: &str, n: u32) -> String {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            cpus.extend(a..=b);
        }
    }
    if cpus.is_empty() {
        cpus = (0..n.max(1)).collect();
    }
    cpus.truncate(n.max(1) as usize);
    cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
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
        let Some(dir) = &self.cpu_dir else { return Ok(()) };
        let quota = quota_us.max(super::MIN_QUOTA_US);
        match self.version {
            Version::V1 => fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()),
            Version::V2 => fs::write(dir.join("cpu.max"), format!("{quota} {}", self.period_us)),
        }
    }

    /// Whether the kernel killed a process of the memory group for exceeding its limit.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory_dir else { return false };
        match self.version {
            Version::V1 => {
                let control =
                    fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
                let kills = stat_value(&control, "oom_kill ").unwrap_or(0);
                let failcnt = fs::read_to_string(dir.join("memory.failcnt"))
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                kills > 0 || failcnt > 0
            }
            Version::V2 => {
                let events = fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
                stat_value(&events, "oom_kill ").unwrap_or(0) > 0
            }
        }
    }

    /// CFS periods in which the kernel throttled the group (`nr_throttled` in `cpu.stat`).
    pub fn throttled_periods(&self) -> Option<u64> {
        let dir = self.cpu_dir.as_ref()?;
        stat_value(&fs::read_to_string(dir.join("cpu.stat")).ok()?, "nr_throttled ")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 group as the kernel shows it to a delegated agent.
    fn v2_tree(controllers: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        fs::write(dir.path().join("cpuset.cpus.effective"), "2-5\n").unwrap();
        dir
    }

    #[test]
    fn a_v2_group_delegates_its_controllers_and_gets_v2_limit_files() {
        let root = v2_tree("cpuset cpu io memory pids\n");
        let cg = Cgroups::detect_from(Some(root.path()), "", "");
        assert_eq!(cg.version, Version::V2);
        assert!(cg.problems.is_empty(), "{:?}", cg.problems);
        assert!(cg.cpu.is_some() && cg.cpuset.is_some() && cg.memory.is_some());
        let control = fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+cpu +cpuset +memory");

        let g = cg.create("bench-1", Some((2_500, 5_000)), Some(2), Some(64 << 20)).unwrap();
        let dir = root.path().join("bench-1");
        assert_eq!(g.dirs, vec![dir.clone()], "one group for every controller");
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("cpu.max"), "2500 5000");
        assert_eq!(read("cpuset.cpus"), "2,3", "the first cores the agent may use");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        g.set_quota(1_500).unwrap();
        assert_eq!(read("cpu.max"), "1500 5000");
        g.add(4242).unwrap();
        assert_eq!(read("cgroup.procs"), "4242");

        assert!(!g.oom_killed());
        fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n").unwrap();
        assert!(g.oom_killed());
        fs::write(dir.join("cpu.stat"), "usage_usec 10\nnr_periods 40\nnr_throttled 17\n").unwrap();
        assert_eq!(g.throttled_periods(), Some(17));
    }

    #[test]
    fn a_v2_group_without_a_controller_says_which() {
        let root = v2_tree("cpu pids");
        let cg = Cgroups::detect_from(Some(root.path()), "", "");
        assert!(cg.cpu.is_some());
        assert!(cg.memory.is_none() && cg.cpuset.is_none());
        assert!(cg.problems.iter().any(|p| p.contains("`memory`")), "{:?}", cg.problems);
        let control = fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+cpu");
        let g = cg.create("b", Some((1_000, 5_000)), Some(1), Some(1 << 20)).unwrap();
        assert!(g.memory_dir.is_none());
        assert!(!root.path().join("b/memory.max").exists());
    }

    #[test]
    fn the_unified_hierarchy_is_found_from_the_mount_table() {
        let root = v2_tree("cpu cpuset memory");
        let sub = root.path().join("system.slice/hone.service");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("cgroup.controllers"), "cpu cpuset memory").unwrap();
        fs::write(sub.join("cgroup.subtree_control"), "cpu memory cpuset").unwrap();
        let mounts = format!(
            "proc /proc proc rw 0 0\ncgroup2 {} cgroup2 rw,nosuid,nsdelegate 0 0\n",
            root.path().display()
        );
        let cg = Cgroups::detect_from(None, &mounts, "0::/system.slice/hone.service\n");
        assert_eq!(cg.version, Version::V2);
        assert_eq!(cg.cpu.unwrap().base, sub);
        assert_eq!(
            fs::read_to_string(sub.join("cgroup.subtree_control")).unwrap(),
            "cpu memory cpuset",
            "already delegated: nothing rewritten"
        );
    }

    #[test]
    fn v1_hierarchies_win_over_an_empty_unified_mount() {
        let root = tempfile::tempdir().unwrap();
        for n in WANTED {
            fs::create_dir_all(root.path().join(n).join("agent")).unwrap();
        }
        let p = root.path().display();
        let mounts = format!(
            "cgroup2 {p}/unified cgroup2 rw 0 0\ncgroup {p}/cpu cgroup rw,cpu,cpuacct 0 0\n\
             cgroup {p}/cpuset cgroup rw,cpuset 0 0\ncgroup {p}/memory cgroup rw,memory 0 0\n"
        );
        let own = "4:memory:/agent\n3:cpuset:/agent\n2:cpu,cpuacct:/agent\n0::/agent\n";
        let cg = Cgroups::detect_from(None, &mounts, own);
        assert_eq!(cg.version, Version::V1);
        assert!(cg.problems.is_empty(), "{:?}", cg.problems);
        assert_eq!(cg.cpu.as_ref().unwrap().base, root.path().join("cpu/agent"));
        let g = cg.create("b", Some((2_000, 5_000)), None, Some(1 << 20)).unwrap();
        let read = |f: &str| fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(read("cpu/agent/b/cpu.cfs_quota_us"), "2000");
        assert_eq!(read("cpu/agent/b/cpu.cfs_period_us"), "5000");
        assert_eq!(read("memory/agent/b/memory.limit_in_bytes"), (1u64 << 20).to_string());
        g.set_quota(3_000).unwrap();
        assert_eq!(read("cpu/agent/b/cpu.cfs_quota_us"), "3000");
    }

    #[test]
    fn no_hierarchy_at_all_is_a_problem_not_a_panic() {
        let cg = Cgroups::detect_from(None, "proc /proc proc rw 0 0\n", "");
        assert!(cg.cpu.is_none());
        assert!(cg.problems[0].contains("no cgroup hierarchy"), "{:?}", cg.problems);
    }

    #[test]
    fn first_cpus_follow_the_allowed_list() {
        assert_eq!(first_cpus("0-3", 2), "0,1");
        assert_eq!(first_cpus("2,4-6\n", 3), "2,4,5");
        assert_eq!(first_cpus("", 2), "0,1");
        assert_eq!(first_cpus("1", 4), "1", "never more cores than allowed");
    }
}
