//! Durable agent state: the result outbox, the seen-command log and the session counter.
//!
//! A result is written to `outbox/` (write to a temporary file, fsync, atomic rename) *before*
//! it is published, and deleted only when the coordinator acknowledges it. After a restart or a
//! reconnect every pending result is re-published with its original `result_id`, so the
//! coordinator (which stores by job id, once) sees each result at least once and stores it
//! exactly once. MQTT client state alone would not do: rumqttc keeps in-flight QoS 1 publishes
//! only in memory.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The agent's durable state directory.
#[derive(Debug)]
pub struct Durable {
    root: PathBuf,
    seen: HashSet<String>,
}

impl Durable {
    /// Opens (creating) the state under `root`.
    pub fn open(root: &Path) -> std::io::Result<Durable> {
        fs::create_dir_all(root.join("outbox"))?;
        let seen = match fs::read_to_string(root.join("seen-commands")) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        Ok(Durable { root: root.to_path_buf(), seen })
    }

    /// Increments and returns the session counter (1 on the first start).
    pub fn next_session(&self) -> std::io::Result<u64> {
        let path = self.root.join("session");
        let current =
            fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        write_atomic(&path, format!("{}\n", current + 1).as_bytes())?;
        Ok(current + 1)
    }

    /// Records a command id; returns `false` if it had been seen before.
    pub fn mark_seen(&mut self, command_id: &str) -> std::io::Result<bool> {
        if self.seen.contains(command_id) {
            return Ok(false);
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("seen-commands"))?;
        writeln!(f, "{command_id}")?;
        f.sync_data()?;
        self.seen.insert(command_id.to_string());
        Ok(true)
    }

    /// Stores an encoded result payload under its result id (durably).
    pub fn put(&self, result_id: &str, payload: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.entry(result_id), payload)
    }

    /// Removes an acknowledged result; `true` if it was pending.
    pub fn ack(&self, result_id: &str) -> std::io::Result<bool> {
        match fs::remove_file(self.entry(result_id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The payload stored for a result id, if still pending.
    pub fn get(&self, result_id: &str) -> Option<Vec<u8>> {
        fs::read(self.entry(result_id)).ok()
    }

    /// Every pending payload, oldest file name first.
    pub fn pending(&self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut names: Vec<PathBuf> = fs::read_dir(self.root.join("outbox"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        names.sort();
        names.into_iter().map(fs::read).collect()
    }

    fn entry(&self, result_id: &str) -> PathBuf {
        let safe: String = result_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        self.root.join("outbox").join(format!("{safe}.bin"))
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Durable;

    #[test]
    fn pending_results_survive_a_reopen_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d = Durable::open(dir.path()).unwrap();
            d.put("job-1/1", b"one").unwrap();
            d.put("job-2/1", b"two").unwrap();
        }
        let d = Durable::open(dir.path()).unwrap();
        assert_eq!(d.pending().unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(d.ack("job-1/1").unwrap());
        assert!(!d.ack("job-1/1").unwrap(), "a second ack finds nothing");
        assert_eq!(d.pending().unwrap(), vec![b"two".to_vec()]);
    }

    #[test]
    fn seen_commands_are_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Durable::open(dir.path()).unwrap();
        assert!(d.mark_seen("c1").unwrap());
        assert!(!d.mark_seen("c1").unwrap());
        let mut d = Durable::open(dir.path()).unwrap();
        assert!(!d.mark_seen("c1").unwrap());
        assert!(d.mark_seen("c2").unwrap());
    }

    #[test]
    fn session_counter_increments_per_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = Durable::open(dir.path()).unwrap();
        assert_eq!(d.next_session().unwrap(), 1);
        assert_eq!(Durable::open(dir.path()).unwrap().next_session().unwrap(), 2);
    }
}
