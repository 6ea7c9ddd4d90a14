//! Durable agent state: the result outbox, the seen-command log, the session counter and the
//! last accepted document of each kind (`sequences.json`: its sequence number and command id,
//! the replay defence of [`crate::store::verify_job`]).
//!
//! A result is written to `outbox/` (write to a temporary file, fsync, atomic rename) *before*
//! it is published, and deleted only when the coordinator acknowledges it. After a restart or a
//! reconnect every pending result is re-published with its original `result_id`, so the
//! coordinator (which stores by job id, once) sees each result at least once and stores it
//! exactly once. MQTT client state alone would not do: rumqttc keeps in-flight QoS 1 publishes
//! only in memory.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Command ids remembered for redelivery detection. Older ids are forgotten: a command
/// redelivered after this many newer ones runs again, and the coordinator, which stores results
/// by job id once, keeps the first result.
pub const SEEN_CAPACITY: usize = 10_000;

/// Longest command id the log stores (ids are one line each in the log).
pub const MAX_COMMAND_ID_BYTES: usize = 128;

/// Longest escaped result id used as a file name as is; longer ones are named by their hash.
const MAX_ESCAPED_NAME: usize = 160;

/// The kinds of signed documents whose sequence numbers the agent follows apart (they travel on
/// different topics, so their order between kinds is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// Benchmark jobs.
    Job,
    /// Activations (deployments).
    Deploy,
}

/// The last document of a kind the agent accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    /// Its sequence number.
    pub seq: u64,
    /// Its command id (a redelivery of this command is not a replay).
    pub command_id: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Sequences {
    job: Option<Accepted>,
    deploy: Option<Accepted>,
}

/// The agent's durable state directory.
#[derive(Debug)]
pub struct Durable {
    root: PathBuf,
    sequences: Sequences,
    seen: HashSet<String>,
    order: VecDeque<String>,
    /// Lines in the seen-command file (compacted when it reaches twice the capacity).
    seen_lines: usize,
    capacity: usize,
}

/// Why a command id cannot go into the seen-command log.
fn check_command_id(id: &str) -> std::io::Result<()> {
    let invalid = |why: &str| {
        Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("command id {why}")))
    };
    if id.is_empty() {
        return invalid("is empty");
    }
    if id.len() > MAX_COMMAND_ID_BYTES {
        return invalid(&format!("is longer than {MAX_COMMAND_ID_BYTES} bytes"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return invalid("has characters other than printable ASCII");
    }
    Ok(())
}

impl Durable {
    /// Opens (creating) the state under `root`.
    pub fn open(root: &Path) -> std::io::Result<Durable> {
        Durable::open_with_capacity(root, SEEN_CAPACITY)
    }

    /// Opens the state, remembering at most `capacity` command ids.
    pub fn open_with_capacity(root: &Path, capacity: usize) -> std::io::Result<Durable> {
        fs::create_dir_all(root.join("outbox"))?;
        let text = match fs::read_to_string(root.join("seen-commands")) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // A file that does not parse stops the agent: starting from nothing would accept every
        // old document again.
        let sequences = match fs::read(root.join("sequences.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", root.join("sequences.json").display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Sequences::default(),
            Err(e) => return Err(e),
        };
        let mut d = Durable {
            root: root.to_path_buf(),
            sequences,
            seen: HashSet::new(),
            order: VecDeque::new(),
            seen_lines: 0,
            capacity: capacity.max(1),
        };
        for line in text.lines() {
            d.seen_lines += 1;
            // A torn last line or a line written by hand is skipped, never trusted.
            if check_command_id(line).is_ok() {
                d.remember(line.to_string());
            }
        }
        Ok(d)
    }

    fn remember(&mut self, id: String) {
        if self.seen.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    /// The last document of `kind` this agent accepted.
    pub fn last_accepted(&self, kind: DocKind) -> Option<&Accepted> {
        match kind {
            DocKind::Job => self.sequences.job.as_ref(),
            DocKind::Deploy => self.sequences.deploy.as_ref(),
        }
    }

    /// Records a verified document of `kind` as the last accepted one, durably (atomic write)
    /// and before it is acted on; a `seq` not above the current one changes nothing.
    pub fn accept(&mut self, kind: DocKind, seq: u64, command_id: &str) -> std::io::Result<()> {
        if self.last_accepted(kind).is_some_and(|a| a.seq >= seq) {
            return Ok(());
        }
        let mut next = self.sequences.clone();
        let new = Some(Accepted { seq, command_id: command_id.to_string() });
        match kind {
            DocKind::Job => next.job = new,
            DocKind::Deploy => next.deploy = new,
        }
        let bytes = serde_json::to_vec(&next).map_err(std::io::Error::other)?;
        write_atomic(&self.root.join("sequences.json"), &bytes)?;
        self.sequences = next;
        Ok(())
    }

    /// Increments and returns the session counter (1 on the first start).
    pub fn next_session(&self) -> std::io::Result<u64> {
        let path = self.root.join("session");
        let current =
            fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        write_atomic(&path, format!("{}\n", current + 1).as_bytes())?;
        Ok(current + 1)
    }

    /// Records a command id; returns `false` if it had been seen before. Ids that cannot be
    /// stored one per line (empty, too long, whitespace or control characters) are refused
    /// with `InvalidInput`. The log keeps the newest [`SEEN_CAPACITY`] ids and is rewritten
    /// (atomically) when it has grown to twice that.
    pub fn mark_seen(&mut self, command_id: &str) -> std::io::Result<bool> {
        check_command_id(command_id)?;
        if self.seen.contains(command_id) {
            return Ok(false);
        }
        let path = self.root.join("seen-commands");
        if self.seen_lines >= 2 * self.capacity {
            let mut text = String::new();
            for id in self.order.iter().chain(std::iter::once(&command_id.to_string())) {
                text.push_str(id);
                text.push('\n');
            }
            write_atomic(&path, text.as_bytes())?;
            self.seen_lines = self.order.len() + 1;
        } else {
            let mut f = fs::OpenOptions::new().create(true).append(true).open(&path)?;
            writeln!(f, "{command_id}")?;
            f.sync_data()?;
            self.seen_lines += 1;
        }
        self.remember(command_id.to_string());
        Ok(true)
    }

    /// Checks that the state folder and the outbox take durable writes again (a faulty agent
    /// calls this before it announces that the fault cleared).
    pub fn probe(&self) -> std::io::Result<()> {
        for dir in [self.root.clone(), self.root.join("outbox")] {
            let path = dir.join(".probe");
            write_atomic(&path, b"probe")?;
            fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// Stores an encoded result payload under its result id (durably).
    pub fn put(&self, result_id: &str, payload: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.entry(result_id), payload)
    }

    /// Removes an acknowledged result; `true` if it was pending.
    pub fn ack(&self, result_id: &str) -> std::io::Result<bool> {
        // Results written by agents before 0.x used a lossy name; remove that one too.
        let _ = fs::remove_file(self.legacy_entry(result_id));
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

    /// The file of a result id. The name is injective: ASCII letters, digits and `-` stay,
    /// every other byte becomes `_XX` (hex); a name that would be too long for a file system is
    /// `_h` followed by the SHA-256 of the id (no escaped name starts with `_h`).
    fn entry(&self, result_id: &str) -> PathBuf {
        self.root.join("outbox").join(format!("{}.bin", entry_name(result_id)))
    }

    fn legacy_entry(&self, result_id: &str) -> PathBuf {
        let safe: String = result_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        self.root.join("outbox").join(format!("{safe}.bin"))
    }
}

/// The outbox file name (without extension) of a result id; see [`Durable::put`].
pub fn entry_name(result_id: &str) -> String {
    let mut name = String::with_capacity(result_id.len());
    for b in result_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("_{b:02x}"));
        }
    }
    if name.len() > MAX_ESCAPED_NAME {
        format!("_h{}", hex::encode(Sha256::digest(result_id.as_bytes())))
    } else {
        name
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
    use super::{Durable, entry_name};

    #[test]
    fn two_result_ids_never_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = Durable::open(dir.path()).unwrap();
        let long_a = format!("{}a/1", "x".repeat(300));
        let long_b = format!("{}b/1", "x".repeat(300));
        let ids = ["job/1", "job_1", "job.1", "job 1", "jöb/1", long_a.as_str(), long_b.as_str()];
        for (i, id) in ids.iter().enumerate() {
            d.put(id, format!("{i}").as_bytes()).unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(d.get(id), Some(format!("{i}").into_bytes()), "{id}");
            assert!(entry_name(id).len() < 200, "{id}");
        }
        assert_eq!(d.pending().unwrap().len(), ids.len());
    }

    #[test]
    fn the_seen_log_stays_bounded_and_refuses_ids_it_cannot_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Durable::open_with_capacity(dir.path(), 4).unwrap();
        for bad in ["", "a\nb", "with space", &"x".repeat(200)] {
            let e = d.mark_seen(bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }
        for i in 0..50 {
            assert!(d.mark_seen(&format!("c{i}")).unwrap());
        }
        let lines = std::fs::read_to_string(dir.path().join("seen-commands")).unwrap();
        assert!(lines.lines().count() <= 8, "{lines}");
        assert!(!lines.contains('\n') || lines.lines().all(|l| !l.is_empty()));
        let mut d = Durable::open_with_capacity(dir.path(), 4).unwrap();
        assert!(!d.mark_seen("c49").unwrap(), "recent ids survive a restart");
        assert!(d.mark_seen("c0").unwrap(), "the oldest ids are forgotten");
    }

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
    fn the_last_accepted_sequence_of_each_kind_survives_a_restart_and_never_goes_down() {
        use super::{Accepted, DocKind};
        let dir = tempfile::tempdir().unwrap();
        let mut d = Durable::open(dir.path()).unwrap();
        assert_eq!(d.last_accepted(DocKind::Job), None);
        d.accept(DocKind::Job, 10, "a").unwrap();
        d.accept(DocKind::Deploy, 3, "x").unwrap();
        d.accept(DocKind::Job, 9, "b").unwrap();
        let d = Durable::open(dir.path()).unwrap();
        let job = Accepted { seq: 10, command_id: "a".into() };
        assert_eq!(d.last_accepted(DocKind::Job), Some(&job));
        assert_eq!(d.last_accepted(DocKind::Deploy).unwrap().seq, 3, "kinds apart");
        std::fs::write(dir.path().join("sequences.json"), b"{not json").unwrap();
        assert!(Durable::open(dir.path()).is_err(), "a damaged file is not read as nothing");
    }

    #[test]
    fn session_counter_increments_per_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = Durable::open(dir.path()).unwrap();
        assert_eq!(d.next_session().unwrap(), 1);
        assert_eq!(Durable::open(dir.path()).unwrap().next_session().unwrap(), 2);
    }
}
