//! DVC-tracked data sets, resolved by Hone itself (no `dvc` program at run time).
//!
//! A data set is named `dvc://PATH[@REV]`, where `PATH` is the tracked file or folder (or its
//! `.dvc` file) inside a DVC repository on this machine; the repository's root is the nearest
//! folder above `PATH` that holds a `.dvc/` folder. Resolving it ([`resolve`]):
//!
//! 1. reads the `.dvc` record: at `REV` with `git show COMMIT:./PATH.dvc` after pinning `REV`
//!    to a commit (`git rev-parse --verify REV^{commit}`; Hone shells out to `git` rather than
//!    reading the object database itself), else the working tree's file;
//! 2. finds each object in the DVC 3 layout, `files/md5/AB/CDEF…`, first in the repository's
//!    cache (`.dvc/cache`, or `[cache] dir` of `.dvc/config`), else in its default remote when
//!    that is a local folder (`[core] remote` and its `url`, from `.dvc/config` then
//!    `.dvc/config.local`; a relative url is relative to `.dvc/`). Other remote kinds (`s3://`,
//!    `ssh://`, …) are refused: `dvc pull` into the cache first;
//! 3. copies the object into `DIR/MD5/NAME` (a folder: every file of its manifest, at its
//!    relpath), computing the md5 of the bytes while copying; an object whose md5 differs from
//!    its record, or that is larger than its record says, is refused and nothing is kept;
//!    the copy is written under a temporary name and renamed into place;
//! 4. returns the copy's path and the data set's [`DatasetIdentity`] `{repo, path, rev, md5}`.
//!
//! A copy already in `DIR` is reused only after its bytes are hashed again ([`verify_copy`]); one
//! that no longer matches is rebuilt. Hone never writes into the repository, its cache or its
//! remote. Only DVC 3 records (`hash: md5`: the md5 of the raw bytes) are read: DVC 2 records
//! hashed text files with their line endings normalised, so their md5 cannot be checked against
//! the bytes; they are refused with "re-add with DVC 3". Pipeline outputs (`dvc.lock`) are out of
//! scope.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

/// The prefix of a DVC data set reference.
pub const SCHEME: &str = "dvc://";

/// Most bytes of a `.dvc` record or a folder's manifest read.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Most files a tracked folder may hold.
pub const MAX_FILES: usize = 1_000_000;

/// Most bytes of a data set whose record does not give its size.
pub const MAX_DATASET_BYTES: u64 = 1 << 40;

/// The copy of a folder's manifest kept beside the materialised folder, so that a later use can
/// check the copy without the repository.
const MANIFEST_COPY: &str = ".dvc-manifest.json";

/// A DVC data set as named: `dvc://PATH[@REV]`, or a `.dvc` file (`PATH.dvc[@REV]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DvcRef {
    /// The tracked file or folder, or its `.dvc` file (absolute, or relative to the current
    /// folder).
    pub path: PathBuf,
    /// The git revision (`v1`, a branch, a commit); `None`: the working tree's `.dvc` file.
    pub rev: Option<String>,
}

/// Whether `s` names a DVC data set: it starts with `dvc://`, or is a path to a `.dvc` file
/// (optionally followed by `@REV`).
pub fn is_dvc(s: &str) -> bool {
    if s.starts_with(SCHEME) {
        return true;
    }
    is_dvc_file(Path::new(s)) || s.rsplit_once('@').is_some_and(|(p, _)| is_dvc_file(Path::new(p)))
}

/// Whether `path`'s file name ends in `.dvc` (the `.dvc/` folder itself does not count).
fn is_dvc_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() > ".dvc".len() && n.ends_with(".dvc"))
}

impl DvcRef {
    /// Parses `dvc://PATH[@REV]` (the revision is what follows the last `@`, so a path holding
    /// `@` needs an explicit revision, e.g. `@HEAD`) or `PATH.dvc[@REV]`.
    pub fn parse(s: &str) -> anyhow::Result<DvcRef> {
        let s = s.trim();
        let (path, rev) = match s.strip_prefix(SCHEME) {
            Some(body) => match body.rsplit_once('@') {
                Some((p, r)) => (p, Some(r)),
                None => (body, None),
            },
            None if is_dvc_file(Path::new(s)) => (s, None),
            None => match s.rsplit_once('@') {
                Some((p, r)) if is_dvc_file(Path::new(p)) => (p, Some(r)),
                _ => bail!("`{s}` is not a DVC data set: write dvc://PATH[@REV] or a .dvc file"),
            },
        };
        if path.is_empty() {
            bail!(
                "`{s}`: no path: write dvc://PATH[@REV], e.g. dvc://./repo/data/reviews.jsonl@v1"
            );
        }
        if let Some(r) = rev {
            if r.is_empty() {
                bail!("`{s}`: empty revision after `@`");
            }
            if r.starts_with('-') || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("`{s}`: `{r}` is not a git revision");
            }
        }
        Ok(DvcRef { path: PathBuf::from(path), rev: rev.map(str::to_owned) })
    }

    /// The same reference with a relative path taken from `base` (an absolute one is kept).
    pub fn relative_to(&self, base: &Path) -> DvcRef {
        DvcRef { path: base.join(&self.path), rev: self.rev.clone() }
    }

    /// The repository root (the nearest folder above the path that holds `.dvc/`), the `.dvc`
    /// file relative to it, and the tracked name the reference asks for (`None` when it names
    /// the `.dvc` file itself).
    pub fn locate(&self) -> anyhow::Result<Located> {
        let (record, tracked) = if is_dvc_file(&self.path) {
            (self.path.clone(), None)
        } else {
            let name = self
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow::anyhow!("{self}: the path names no file or folder"))?;
            (self.path.with_file_name(format!("{name}.dvc")), Some(name.to_owned()))
        };
        let parent = record.parent().unwrap_or(Path::new(""));
        let root = parent
            .ancestors()
            .find(|a| {
                let dir = if a.as_os_str().is_empty() { Path::new(".") } else { a };
                dir.join(".dvc").is_dir()
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{self}: no DVC repository holds `{}` (no `.dvc/` folder in it or above it)",
                    self.path.display()
                )
            })?;
        let root = if root.as_os_str().is_empty() { PathBuf::from(".") } else { root.to_owned() };
        let rel = record.strip_prefix(&root).unwrap_or(&record).to_owned();
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!(
                "{self}: the path inside the repository at {} must not hold `..`",
                root.display()
            );
        }
        Ok(Located { root, record: rel, tracked })
    }
}

impl fmt::Display for DvcRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.path.display())?;
        if let Some(r) = &self.rev {
            write!(f, "@{r}")?;
        }
        Ok(())
    }
}

/// Where a [`DvcRef`] points in its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The repository root (the folder holding `.dvc/`).
    pub root: PathBuf,
    /// The `.dvc` file, relative to the root.
    pub record: PathBuf,
    /// The tracked file or folder's name the reference asked for; `None` when it named the
    /// `.dvc` file.
    pub tracked: Option<String>,
}

/// What a DVC data set was: recorded on every pipeline, candidate and run that used it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetIdentity {
    /// The repository root (canonical path).
    pub repo: String,
    /// The tracked file or folder, relative to the root, `/`-separated.
    pub path: String,
    /// The git commit the record was read at (40 hex digits). A record read from the working
    /// tree gives HEAD's commit when it is the same as HEAD's, `COMMIT+workspace` when it
    /// differs from HEAD's (or HEAD has none), and `workspace` outside git.
    pub rev: String,
    /// The record's md5: of the file's bytes, or of a folder's manifest (ends in `.dir`).
    pub md5: String,
}

impl DatasetIdentity {
    /// The reference that reads this data set again: pinned to [`DatasetIdentity::rev`] when it
    /// is a commit, else the working tree's record.
    pub fn reference(&self) -> DvcRef {
        let commit = self.rev.len() == 40 && self.rev.bytes().all(|b| b.is_ascii_hexdigit());
        DvcRef {
            path: Path::new(&self.repo).join(&self.path),
            rev: commit.then(|| self.rev.clone()),
        }
    }
}

impl fmt::Display for DatasetIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}@{} (md5 {})", self.repo, self.path, self.rev, self.md5)
    }
}

/// One output of a `.dvc` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The md5: 32 hex digits, with `.dir` for a folder.
    pub md5: String,
    /// Bytes (a folder: all its files).
    pub size: Option<u64>,
    /// Files of a folder.
    pub nfiles: Option<u64>,
    /// The tracked path, relative to the `.dvc` file's folder.
    pub path: String,
}

impl Record {
    /// Whether the output is a folder.
    pub fn is_dir(&self) -> bool {
        self.md5.ends_with(".dir")
    }
}

/// The outputs of a DVC 3 `.dvc` file (`file` names it in errors). Refuses DVC 2 records (no
/// `hash: md5`), outputs DVC does not cache, and md5s that are not 32 hex digits.
pub fn parse_record(text: &str, file: &str) -> anyhow::Result<Vec<Record>> {
    use yaml_rust2::Yaml;
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .map_err(|e| anyhow::anyhow!("{file}: not a YAML .dvc file: {e}"))?;
    let Some(doc) = docs.first() else { bail!("{file}: empty .dvc file") };
    let Some(outs) = doc["outs"].as_vec() else {
        bail!("{file}: no `outs` list: not a .dvc file written by `dvc add`")
    };
    // A value DVC writes unquoted may read as a number (an md5 of digits and one `e`).
    let text_of = |y: &Yaml| match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    };
    let count = |y: &Yaml, key: &str| -> anyhow::Result<Option<u64>> {
        match y {
            Yaml::BadValue | Yaml::Null => Ok(None),
            Yaml::Integer(i) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{file}: `{key}` {i} is negative")),
            other => bail!("{file}: `{key}` is not a count: {other:?}"),
        }
    };
    let mut records = Vec::new();
    for out in outs {
        let path = text_of(&out["path"])
            .ok_or_else(|| anyhow::anyhow!("{file}: an output has no `path`"))?;
        match out["hash"].as_str() {
            Some("md5") => {}
            None => bail!(
                "{file}: `{path}` was recorded by DVC 2 (no `hash: md5`), whose md5 of a text \
                 file normalises its line endings, so Hone cannot check the bytes against it: \
                 re-add it with DVC 3 (`dvc add {path}` with DVC 3 or later)"
            ),
            Some(other) => bail!(
                "{file}: `{path}` is hashed with `{other}`, not `md5` (DVC 3): re-add it with DVC 3"
            ),
        }
        if out["cache"].as_bool() == Some(false) {
            bail!("{file}: `{path}` is not cached by DVC (`cache: false`), so it has no object");
        }
        let md5 = text_of(&out["md5"]).ok_or_else(|| {
            anyhow::anyhow!("{file}: `{path}` has no md5: run `dvc add` or `dvc commit` first")
        })?;
        check_md5(&md5, true).with_context(|| format!("{file}: `{path}`"))?;
        records.push(Record {
            md5,
            size: count(&out["size"], "size")?,
            nfiles: count(&out["nfiles"], "nfiles")?,
            path,
        });
    }
    if records.is_empty() {
        bail!("{file}: `outs` is empty");
    }
    Ok(records)
}

/// Checks that `md5` is 32 lower-case hex digits (and `.dir` when `dir_ok`).
fn check_md5(md5: &str, dir_ok: bool) -> anyhow::Result<()> {
    let hex = if dir_ok { md5.strip_suffix(".dir").unwrap_or(md5) } else { md5 };
    if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("`{md5}` is not an md5 (32 lower-case hex digits)");
    }
    Ok(())
}

/// One file of a folder's manifest (the `.dir` object).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestEntry {
    /// The file's md5.
    pub md5: String,
    /// Its path inside the folder, `/`-separated.
    pub relpath: String,
}

/// The files of a folder's manifest (a JSON list of `{md5, relpath}`). Refuses relpaths that
/// leave the folder (`..`, absolute, empty parts), duplicates, and md5s that are not 32 hex
/// digits.
pub fn parse_manifest(bytes: &[u8], file: &str) -> anyhow::Result<Vec<ManifestEntry>> {
    let entries: Vec<ManifestEntry> = serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a DVC folder manifest: {e}"))?;
    if entries.len() > MAX_FILES {
        bail!("{file}: {} files, more than the {MAX_FILES} Hone reads", entries.len());
    }
    let mut seen = BTreeSet::new();
    for e in &entries {
        check_md5(&e.md5, false).with_context(|| format!("{file}: `{}`", e.relpath))?;
        check_relpath(&e.relpath).with_context(|| file.to_owned())?;
        if !seen.insert(e.relpath.as_str()) {
            bail!("{file}: `{}` is listed twice", e.relpath);
        }
    }
    Ok(entries)
}

/// Refuses a relpath that is empty, absolute, or holds `..`, `.`, empty parts or backslashes.
fn check_relpath(rel: &str) -> anyhow::Result<()> {
    let ok = !rel.is_empty()
        && !rel.contains('\\')
        && !rel.contains('\0')
        && rel.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if !ok {
        bail!("relpath `{rel}` leaves the folder or is not a plain relative path; refused");
    }
    Ok(())
}

/// Where an object lives in a DVC 3 cache or local remote: `STORE/files/md5/AB/CDEF…`.
pub fn object_path(store: &Path, md5: &str) -> PathBuf {
    store.join("files").join("md5").join(&md5[..2]).join(&md5[2..])
}

/// The md5 of `bytes`, as lower-case hex.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// Where [`crate::eval::EvalData::open`] puts the copies of DVC data sets: `$HONE_DVC_DIR`,
/// else `${XDG_CACHE_HOME:-$HOME/.cache}/hone/dvc`. The coordinator uses `DATA_DIR/dvc`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HONE_DVC_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("hone")
        .join("dvc")
}

/// A resolved DVC data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The verified copy: `DIR/MD5/NAME`, a file or a folder with the tracked name.
    pub path: PathBuf,
    /// What it is.
    pub identity: DatasetIdentity,
}

/// Resolves `r` into a verified copy under `dir` (see the module documentation). Errors start
/// with the reference and name the file at fault; an md5 mismatch gives both md5s.
pub fn resolve(r: &DvcRef, dir: &Path) -> anyhow::Result<Resolved> {
    let loc = r.locate()?;
    let root = std::fs::canonicalize(&loc.root)
        .with_context(|| format!("{r}: reading the repository at {}", loc.root.display()))?;
    let record_rel = slash_path(&loc.record);
    let (text, rev) = read_record(r, &root, &record_rel)?;
    let records = parse_record(&text, &format!("{r}: `{record_rel}`"))?;
    let record = match &loc.tracked {
        Some(name) => records.iter().find(|o| o.path == *name).ok_or_else(|| {
            let paths: Vec<&str> = records.iter().map(|o| o.path.as_str()).collect();
            anyhow::anyhow!("{r}: `{record_rel}` does not track `{name}` (it tracks {paths:?})")
        })?,
        None => match records.as_slice() {
            [one] => one,
            many => bail!(
                "{r}: `{record_rel}` tracks {} outputs: name the one to use (dvc://…/PATH)",
                many.len()
            ),
        },
    };
    check_relpath(&record.path).with_context(|| format!("{r}: `{record_rel}`"))?;
    let parent = Path::new(&record_rel).parent().map(slash_path).unwrap_or_default();
    let tracked =
        if parent.is_empty() { record.path.clone() } else { format!("{parent}/{}", record.path) };
    let name = record.path.rsplit('/').next().unwrap_or(&record.path).to_owned();
    let store = Store::open(&root).with_context(|| format!("{r}"))?;
    let path = materialise(&store, record, &name, dir, &r.to_string())?;
    Ok(Resolved {
        path,
        identity: DatasetIdentity {
            repo: root.display().to_string(),
            path: tracked,
            rev,
            md5: record.md5.clone(),
        },
    })
}

/// `path` with `/` separators.
fn slash_path(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The record's text and the revision it was read at.
fn read_record(r: &DvcRef, root: &Path, rel: &str) -> anyhow::Result<(String, String)> {
    match &r.rev {
        Some(rev) => {
            let commit =
                git(root, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])
                    .with_context(|| format!("{r}: reading revision `{rev}` needs git"))?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{r}: `{rev}` is not a commit of the git repository at {}",
                            root.display()
                        )
                    })?;
            let commit = String::from_utf8_lossy(&commit).trim().to_owned();
            let text = git(root, &["show", &format!("{commit}:./{rel}")])
                .with_context(|| format!("{r}: reading `{rel}` at `{rev}`"))?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{r}: `{rel}` is not in commit {commit} (`{rev}`): was it `dvc add`ed and \
                         committed there?{}",
                        lock_hint(root)
                    )
                })?;
            Ok((record_text(text, r, rel)?, commit))
        }
        None => {
            let file = root.join(rel);
            let text = match std::fs::metadata(&file) {
                Ok(m) if m.len() > MAX_RECORD_BYTES => {
                    bail!("{r}: `{rel}` is {} bytes: not a .dvc file", m.len())
                }
                Ok(_) => std::fs::read(&file).with_context(|| format!("{r}: reading `{rel}`"))?,
                Err(_) => bail!(
                    "{r}: no `{rel}` in the repository at {}: `dvc add` the data first{}",
                    root.display(),
                    lock_hint(root)
                ),
            };
            let text = record_text(text, r, rel)?;
            let head = git(root, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
                .ok()
                .flatten()
                .map(|c| String::from_utf8_lossy(&c).trim().to_owned());
            let rev = match head {
                None => "workspace".to_owned(),
                Some(commit) => {
                    let at_head = git(root, &["show", &format!("{commit}:./{rel}")]).ok().flatten();
                    if at_head.as_deref() == Some(text.as_bytes()) {
                        commit
                    } else {
                        format!("{commit}+workspace")
                    }
                }
            };
            Ok((text, rev))
        }
    }
}

/// The record's bytes as text, bounded.
fn record_text(bytes: Vec<u8>, r: &DvcRef, rel: &str) -> anyhow::Result<String> {
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        bail!("{r}: `{rel}` is {} bytes: not a .dvc file", bytes.len());
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{r}: `{rel}` is not UTF-8 text"))
}

/// A note for a repository that has a `dvc.lock`: pipeline outputs are not read.
fn lock_hint(root: &Path) -> &'static str {
    if root.join("dvc.lock").is_file() {
        " (outputs of DVC pipelines, recorded in dvc.lock, are not supported: only `.dvc` files)"
    } else {
        ""
    }
}

/// Runs `git -C root ARGS`: its stdout when it succeeds, `None` when it fails; an error when git
/// cannot be run.
fn git(root: &Path, args: &[&str]) -> anyhow::Result<Option<Vec<u8>>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running `git`")?;
    Ok(out.status.success().then_some(out.stdout))
}

/// The repository's cache and default remote.
#[derive(Debug)]
struct Store {
    root: PathBuf,
    cache: PathBuf,
    remote: Remote,
}

/// The default remote, as far as Hone reads it.
#[derive(Debug)]
enum Remote {
    /// `[core] remote` is not set.
    None,
    /// A local folder.
    Local { name: String, dir: PathBuf },
    /// A remote of another kind (`s3`, `ssh`, …), or one that is named but has no url.
    Unsupported { name: String, kind: String },
}

impl Store {
    /// Reads `.dvc/config` then `.dvc/config.local` of the repository at `root`.
    fn open(root: &Path) -> anyhow::Result<Store> {
        let dvc_dir = root.join(".dvc");
        let mut values: BTreeMap<(String, String), String> = BTreeMap::new();
        for name in ["config", "config.local"] {
            let file = dvc_dir.join(name);
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            for (section, key, value) in parse_ini(&text) {
                values.insert((section, key), value);
            }
        }
        let get = |section: &str, key: &str| values.get(&(section.into(), key.into())).cloned();
        let cache = get("cache", "dir")
            .map_or_else(|| dvc_dir.join("cache"), |d| normalise(&dvc_dir.join(d)));
        let remote = match get("core", "remote") {
            None => Remote::None,
            Some(name) => match get(&format!("remote \"{name}\""), "url") {
                None => Remote::Unsupported { name, kind: "(no url)".into() },
                Some(url) => match url.split_once("://") {
                    Some((kind, _)) => Remote::Unsupported { name, kind: kind.to_owned() },
                    None => Remote::Local { name, dir: normalise(&dvc_dir.join(url)) },
                },
            },
        };
        Ok(Store { root: root.to_owned(), cache, remote })
    }

    /// `path` as errors show it: relative to the repository when inside it.
    fn shown(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    /// [`Store::shown`] in backquotes.
    fn quoted(&self, path: &Path) -> String {
        format!("`{}`", self.shown(path))
    }

    /// The object `md5`: in the cache, else in the local remote.
    fn find(&self, md5: &str, what: &str, ctx: &str) -> anyhow::Result<PathBuf> {
        let in_cache = object_path(&self.cache, md5);
        if in_cache.is_file() {
            return Ok(in_cache);
        }
        let looked = format!("the cache (`{}`)", self.shown(&in_cache));
        match &self.remote {
            Remote::Local { dir, .. } if object_path(dir, md5).is_file() => {
                Ok(object_path(dir, md5))
            }
            Remote::Local { name, dir } => bail!(
                "{ctx}: the object of {what} (md5 {md5}) is in neither {looked} nor the local \
                 remote `{name}` (`{}`): run `dvc push` where it was added, or `dvc pull` here",
                self.shown(&object_path(dir, md5))
            ),
            Remote::Unsupported { name, kind } => bail!(
                "{ctx}: the object of {what} (md5 {md5}) is not in {looked}, and the default \
                 remote `{name}` is of kind `{kind}`: remote kind `{kind}` is not supported: \
                 `dvc pull` into the cache first (Hone reads local folder remotes only)"
            ),
            Remote::None => bail!(
                "{ctx}: the object of {what} (md5 {md5}) is not in {looked}, and the repository \
                 has no default remote ([core] remote in .dvc/config): `dvc pull` it, or `dvc \
                 push` it to a local remote"
            ),
        }
    }
}

/// `path` canonical when it exists, else with `.` and `..` removed lexically.
fn normalise(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `(section, key, value)` of a DVC config file: `[core]`, `['remote "NAME"']`; `key = value`;
/// `#` and `;` start comments; quotes around a section name or a value are removed.
fn parse_ini(text: &str) -> Vec<(String, String, String)> {
    let unquote = |s: &str| -> String {
        let s = s.trim();
        for q in ['\'', '"'] {
            if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
                return s[1..s.len() - 1].to_owned();
            }
        }
        s.to_owned()
    };
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = unquote(name);
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), unquote(v)));
        }
    }
    out
}

/// Builds (or reuses, after checking it) `dir/MD5/NAME` from the record's objects.
fn materialise(
    store: &Store,
    record: &Record,
    name: &str,
    dir: &Path,
    ctx: &str,
) -> anyhow::Result<PathBuf> {
    if name == MANIFEST_COPY {
        bail!("{ctx}: a tracked path named `{MANIFEST_COPY}` is not supported");
    }
    let key_dir = dir.join(&record.md5);
    let dest = key_dir.join(name);
    if std::fs::symlink_metadata(&dest).is_ok() {
        if verify_at(&dest, &record.md5).is_ok() {
            return Ok(dest);
        }
        remove_any(&dest).with_context(|| format!("{ctx}: removing the altered copy"))?;
    }
    std::fs::create_dir_all(&key_dir)
        .with_context(|| format!("{ctx}: creating {}", key_dir.display()))?;
    let tmp = temp_name(&key_dir);
    let built = if record.is_dir() {
        build_dir(store, record, &key_dir, &tmp, ctx)
    } else {
        store.find(&record.md5, &format!("`{}`", record.path), ctx).and_then(|src| {
            let limit = record.size.unwrap_or(MAX_DATASET_BYTES);
            copy_verified(&src, &tmp, &record.md5, limit, &store.quoted(&src), ctx).map(|_| ())
        })
    };
    if let Err(e) = built {
        let _ = remove_any(&tmp);
        let _ = std::fs::remove_dir(&key_dir); // only when empty
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        // Another resolution may have put the same copy there first.
        let ok = verify_at(&dest, &record.md5).is_ok();
        let _ = remove_any(&tmp);
        if !ok {
            return Err(e).with_context(|| format!("{ctx}: writing {}", dest.display()));
        }
    }
    Ok(dest)
}

/// A fresh temporary name in `dir`.
fn temp_name(dir: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Removes a file or a folder.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A folder: its manifest (checked), kept as `key_dir/.dvc-manifest.json`, then every file at
/// its relpath under `tmp`, each checked, within the record's size and file count.
fn build_dir(
    store: &Store,
    record: &Record,
    key_dir: &Path,
    tmp: &Path,
    ctx: &str,
) -> anyhow::Result<()> {
    let what = format!("`{}`'s manifest", record.path);
    let src = store.find(&record.md5, &what, ctx)?;
    let manifest_tmp = temp_name(key_dir);
    let built = (|| {
        copy_verified(
            &src,
            &manifest_tmp,
            &record.md5,
            MAX_RECORD_BYTES,
            &store.quoted(&src),
            ctx,
        )?;
        let bytes = std::fs::read(&manifest_tmp)?;
        let entries = parse_manifest(&bytes, &format!("{ctx}: `{}`", store.shown(&src)))?;
        if let Some(n) = record.nfiles
            && n != entries.len() as u64
        {
            bail!(
                "{ctx}: `{}` lists {} files where its record says {n}; the data set is refused",
                store.shown(&src),
                entries.len()
            );
        }
        std::fs::create_dir_all(tmp)?;
        let mut left = record.size.unwrap_or(MAX_DATASET_BYTES);
        for e in &entries {
            let what = format!("`{}/{}`", record.path, e.relpath);
            let obj = store.find(&e.md5, &what, ctx)?;
            let dst = tmp.join(&e.relpath);
            if let Some(p) = dst.parent() {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("{ctx}: creating the folder of {what}"))?;
            }
            let shown = format!("{} ({})", store.quoted(&obj), e.relpath);
            left -= copy_verified(&obj, &dst, &e.md5, left, &shown, ctx)?;
        }
        std::fs::rename(&manifest_tmp, key_dir.join(MANIFEST_COPY))?;
        Ok(())
    })();
    if built.is_err() {
        let _ = std::fs::remove_file(&manifest_tmp);
    }
    built
}

/// Copies `src` to `dst` (a new file) while hashing it; refuses (removing `dst`) bytes over
/// `limit` or an md5 other than `md5` (a `.dir` suffix is ignored). Returns the bytes copied.
fn copy_verified(
    src: &Path,
    dst: &Path,
    md5: &str,
    limit: u64,
    shown: &str,
    ctx: &str,
) -> anyhow::Result<u64> {
    let want = md5.strip_suffix(".dir").unwrap_or(md5);
    let mut file = std::fs::File::open(src).with_context(|| format!("{ctx}: reading {shown}"))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let too_big = |n: u64| {
        anyhow::anyhow!(
            "{ctx}: {shown} holds {n} bytes, more than its record allows ({limit}); the data \
             set is refused"
        )
    };
    if len > limit {
        return Err(too_big(len));
    }
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .with_context(|| format!("{ctx}: writing {}", dst.display()))?;
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).with_context(|| format!("{ctx}: reading {shown}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                return Err(too_big(total));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("{ctx}: writing {}", dst.display()))?;
        }
        out.flush()?;
        let found = hex::encode(hasher.finalize());
        if found != want {
            bail!(
                "{ctx}: {shown} does not match its record (md5 expected {want}, found {found}); \
                 the data set is refused"
            );
        }
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

/// Checks a copy made by [`resolve`] against `identity`: a file's md5, or a folder's kept
/// manifest (its md5) and every file in it (the same set of files, each with its md5). Used
/// before every use of a copy, so an altered copy is refused rather than read.
pub fn verify_copy(path: &Path, identity: &DatasetIdentity) -> anyhow::Result<()> {
    verify_at(path, &identity.md5).map_err(|e| {
        anyhow::anyhow!(
            "the copy of {identity} at {} was altered since it was checked: {e:#}; the data set is \
             refused (resolve it again)",
            path.display()
        )
    })
}

/// [`verify_copy`] against an md5.
fn verify_at(path: &Path, md5: &str) -> anyhow::Result<()> {
    check_md5(md5, true)?;
    let meta = std::fs::symlink_metadata(path)?;
    if !md5.ends_with(".dir") {
        if !meta.is_file() {
            bail!("{} is not a file", path.display());
        }
        let found = hash_file(path)?;
        if found != md5 {
            bail!("md5 expected {md5}, found {found}");
        }
        return Ok(());
    }
    if !meta.is_dir() {
        bail!("{} is not a folder", path.display());
    }
    let manifest = path.parent().unwrap_or(Path::new(".")).join(MANIFEST_COPY);
    let bytes = std::fs::read(&manifest)
        .with_context(|| format!("reading the kept manifest {}", manifest.display()))?;
    let want = md5.trim_end_matches(".dir");
    let found = md5_hex(&bytes);
    if found != want {
        bail!("the kept manifest: md5 expected {want}, found {found}");
    }
    let entries = parse_manifest(&bytes, &manifest.display().to_string())?;
    let mut files = BTreeSet::new();
    list_files(path, "", &mut files)?;
    let listed: BTreeSet<String> = entries.iter().map(|e| e.relpath.clone()).collect();
    if files != listed {
        let extra: Vec<&String> = files.difference(&listed).collect();
        let missing: Vec<&String> = listed.difference(&files).collect();
        bail!("files differ from the manifest (not listed: {extra:?}; missing: {missing:?})");
    }
    for e in &entries {
        let found = hash_file(&path.join(&e.relpath))?;
        if found != e.md5 {
            bail!("`{}`: md5 expected {}, found {found}", e.relpath, e.md5);
        }
    }
    Ok(())
}

/// Every regular file under `dir`, as `/`-separated relpaths; refuses links and other kinds.
fn list_files(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_files(&entry.path(), &rel, out)?;
        } else if kind.is_file() {
            out.insert(rel);
        } else {
            bail!("`{rel}` is not a plain file");
        }
        if out.len() > MAX_FILES {
            bail!("more than {MAX_FILES} files");
        }
    }
    Ok(())
}

/// The md5 of a file's bytes.
fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests;
