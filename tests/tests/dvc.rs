//! DVC data sets, resolved by Hone itself. The repositories are made by the real `dvc` program
//! (the pinned DVC 3 of `scripts/python-tools.sh`) and git, with a local folder remote, from real
//! data: VADER's review sentences as JSONL, crops of the real photographs as a folder of PNG
//! images in class folders. Hone reads them without `dvc`: at each git revision, from the cache
//! or the remote, refusing an object with one byte changed, and it records the data set's
//! identity on a pipeline, its candidates and its result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hone_e2e::*;
use hone_learn::data::dvc::{self, DvcRef};
use serde_json::{Value, json};

use hone_e2e::run_ok as run;

/// A repository made with git and the real `dvc`.
pub(crate) struct Repo {
    root: PathBuf,
    dvc_bin: PathBuf,
}

impl Repo {
    /// `git init`, `dvc init`, and a default local remote `remote` (a folder beside the repo).
    pub(crate) fn init(root: &Path) -> Repo {
        std::fs::create_dir_all(root.join("data")).unwrap();
        let repo = Repo { root: root.to_owned(), dvc_bin: python_tool("dvc").join("dvc") };
        run(repo.git().args(["init", "-q"]));
        run(repo.dvc().args(["init", "-q"]));
        run(repo.dvc().args(["remote", "add", "-d", "local", "../remote"]));
        repo
    }

    fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.current_dir(&self.root)
            .args(["-c", "user.name=Hone", "-c", "user.email=hone@example.invalid"])
            .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]);
        c
    }

    fn dvc(&self) -> Command {
        let mut c = Command::new(&self.dvc_bin);
        c.current_dir(&self.root).env("DVC_NO_ANALYTICS", "1");
        c
    }

    /// `dvc add` the paths, `dvc push`, commit everything and tag it.
    pub(crate) fn version(&self, paths: &[&str], tag: &str) {
        run(self.dvc().arg("add").arg("-q").args(paths));
        run(self.dvc().args(["push", "-q"]));
        run(self.git().args(["add", "-A"]));
        run(self.git().args(["commit", "-q", "-m", tag]));
        run(self.git().args(["tag", tag]));
    }

    /// The md5 DVC recorded for `rel` at `rev` (read from its `.dvc` file with git and plain
    /// text matching, not with Hone's parser).
    pub(crate) fn recorded_md5(&self, rev: &str, rel: &str) -> String {
        let text = run(self.git().args(["show", &format!("{rev}:{rel}.dvc")]));
        text.lines()
            .find_map(|l| l.trim().trim_start_matches("- ").strip_prefix("md5: "))
            .unwrap_or_else(|| panic!("no md5 in {rel}.dvc at {rev}:\n{text}"))
            .trim()
            .to_owned()
    }

    pub(crate) fn commit(&self, rev: &str) -> String {
        run(self.git().args(["rev-parse", &format!("{rev}^{{commit}}")])).trim().to_owned()
    }

    fn reference(&self, rel: &str, rev: Option<&str>) -> DvcRef {
        DvcRef { path: self.root.join(rel), rev: rev.map(str::to_owned) }
    }
}

/// The first `n` VADER review sentences, labelled `positive` or `negative`, as JSONL.
fn reviews(n: usize) -> Vec<u8> {
    let d = hone_learn::data::vader_movie_reviews().expect("the vader asset (fetch-assets.sh)");
    let mut out = Vec::new();
    for (text, label) in d.sentences.iter().zip(&d.labels).take(n) {
        let label = if *label == 1 { "positive" } else { "negative" };
        out.extend(serde_json::to_vec(&json!({"text": text, "label": label})).unwrap());
        out.push(b'\n');
    }
    out
}

/// Crops `range` of the real photographs, 64×64 RGB PNG, in `dir/china/` and `dir/flower/`;
/// returns each file's relpath and bytes.
fn photo_pngs(dir: &Path, range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    let set = hone_learn::eval::photos().expect("the photos asset (fetch-assets.sh)");
    const SIDE: usize = 64;
    let mut files = Vec::new();
    for i in range {
        let c = set.crops[i];
        let p = &set.photos[c.photo];
        let mut rgb = Vec::with_capacity(SIDE * SIDE * 3);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (sy, sx) = (c.y + y * c.side / SIDE, c.x + x * c.side / SIDE);
                rgb.extend_from_slice(&p.rgb[(sy * p.width + sx) * 3..][..3]);
            }
        }
        let mut bytes = Vec::new();
        let mut e = png::Encoder::new(&mut bytes, SIDE as u32, SIDE as u32);
        e.set_color(png::ColorType::Rgb);
        e.write_header().unwrap().write_image_data(&rgb).unwrap();
        let class = p.name.trim_start_matches("photo-");
        let rel = format!("{class}/{i:03}.png");
        std::fs::create_dir_all(dir.join(class)).unwrap();
        std::fs::write(dir.join(&rel), &bytes).unwrap();
        files.push((rel, bytes));
    }
    files
}

/// Every file under `dir` (relpath, bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Makes the object `md5` in `store` writable and changes one byte in it.
fn alter_one_byte(store: &Path, md5: &str) -> PathBuf {
    let p = dvc::object_path(store, md5);
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&p, perm).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[7] ^= 0x20;
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A version's files: the JSONL bytes, and each photo's relpath and bytes.
type Version = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// A repository with two tagged versions: `v1` (40 reviews, 8 photo crops) and `v2` (45
/// reviews, 10 crops). Returns the repo and each version's files.
fn two_versions(root: &Path) -> (Repo, [Version; 2]) {
    let repo = Repo::init(root);
    let photos = root.join("data/photos");
    let r1 = reviews(40);
    std::fs::write(root.join("data/reviews.jsonl"), &r1).unwrap();
    let p1 = photo_pngs(&photos, 0..8);
    repo.version(&["data/reviews.jsonl", "data/photos"], "v1");
    let r2 = reviews(45);
    std::fs::write(root.join("data/reviews.jsonl"), &r2).unwrap();
    let mut p2 = p1.clone();
    p2.extend(photo_pngs(&photos, 40..42));
    p2.sort();
    repo.version(&["data/reviews.jsonl", "data/photos"], "v2");
    (repo, [(r1, p1), (r2, p2)])
}

#[test]
fn dvc_data_sets_resolve_at_each_revision_from_the_cache_or_the_remote_and_altered_bytes_are_refused()
 {
    let dir = tempfile::tempdir().unwrap();
    let (repo, versions) = two_versions(&dir.path().join("repo"));
    let canonical = repo.root.canonicalize().unwrap().display().to_string();
    let out = dir.path().join("copies");
    let check_all = |out: &Path| {
        for (rev, (jsonl, pngs)) in ["v1", "v2"].iter().zip(&versions) {
            let r = dvc::resolve(&repo.reference("data/reviews.jsonl", Some(rev)), out).unwrap();
            let want = dvc::DatasetIdentity {
                repo: canonical.clone(),
                path: "data/reviews.jsonl".into(),
                rev: repo.commit(rev),
                md5: repo.recorded_md5(rev, "data/reviews.jsonl"),
            };
            assert_eq!(r.identity, want, "{rev}");
            assert_eq!(r.path.file_name().unwrap(), "reviews.jsonl", "the name is kept");
            assert_eq!(&std::fs::read(&r.path).unwrap(), jsonl, "{rev}: the same bytes");
            let r = dvc::resolve(&repo.reference("data/photos", Some(rev)), out).unwrap();
            assert_eq!(r.identity.md5, repo.recorded_md5(rev, "data/photos"), "{rev}");
            assert!(r.identity.md5.ends_with(".dir"));
            let mut want: Vec<(String, Vec<u8>)> = pngs.clone();
            want.sort();
            assert_eq!(&tree(&r.path), &want, "{rev}: the same files");
        }
    };
    check_all(&out);
    let v1 = repo.recorded_md5("v1", "data/reviews.jsonl");
    assert_ne!(v1, repo.recorded_md5("v2", "data/reviews.jsonl"));

    // The working tree: HEAD's commit while its record is HEAD's; marked once it differs.
    let head = dvc::resolve(&repo.reference("data/reviews.jsonl", None), &out).unwrap();
    assert_eq!(head.identity.rev, repo.commit("HEAD"));
    let r3 = reviews(47);
    std::fs::write(repo.root.join("data/reviews.jsonl"), &r3).unwrap();
    run(repo.dvc().args(["add", "-q", "data/reviews.jsonl"]));
    let ws = dvc::resolve(&repo.reference("data/reviews.jsonl.dvc", None), &out).unwrap();
    assert_eq!(ws.identity.rev, format!("{}+workspace", repo.commit("HEAD")));
    assert_eq!(std::fs::read(&ws.path).unwrap(), r3);

    // One byte of v1's reviews changed in the cache: refused, and nothing kept.
    let altered = alter_one_byte(&repo.root.join(".dvc/cache"), &v1);
    let found = dvc::md5_hex(&std::fs::read(&altered).unwrap());
    let fresh = dir.path().join("fresh");
    let err = dvc::resolve(&repo.reference("data/reviews.jsonl", Some("v1")), &fresh)
        .unwrap_err()
        .to_string();
    let shown = format!(".dvc/cache/files/md5/{}/{}", &v1[..2], &v1[2..]);
    assert!(err.contains(&shown), "{err}");
    assert!(err.contains(&format!("md5 expected {v1}, found {found}")), "{err}");
    assert!(err.contains("the data set is refused"), "{err}");
    assert!(!fresh.join(&v1).join("reviews.jsonl").exists(), "nothing materialised");
    println!("refused: {err}");

    // Without the cache, from the local remote only.
    std::fs::remove_dir_all(repo.root.join(".dvc/cache")).unwrap();
    check_all(&dir.path().join("from-remote"));

    // `coordinator eval` takes the same reference (resolved into $HONE_DVC_DIR) and reports it.
    let model = asset("corpus-ppocr-cls");
    let spec = format!("dvc://{}/data/photos@v1,size=48x192,mean=0.5,std=0.5", repo.root.display());
    let cli_dir = dir.path().join("cli-copies");
    let stdout = run(Command::new(bin("coordinator"))
        .env("HONE_DVC_DIR", &cli_dir)
        .args(["eval", "--json", "--model"])
        .arg(&model)
        .arg("--reference")
        .arg(&model)
        .args(["--data", &spec]));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["fidelity"]["top1_agreement"], 1.0, "{v}");
    assert_eq!(v["dataset"]["md5"], repo.recorded_md5("v1", "data/photos"), "{v}");
    assert_eq!(v["dataset"]["rev"], repo.commit("v1"), "{v}");
    assert!(cli_dir.join(repo.recorded_md5("v1", "data/photos")).join("photos").is_dir());
}

#[test]
fn a_pipeline_on_a_dvc_data_set_records_its_identity_and_refuses_an_altered_object() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let agent = AgentProc::start(&coord, &dir.path().join("agents"), &unique("e2e-dvc"), "rpi4", 3)
        .unwrap();
    api.wait_device(&agent.device_id, true, Duration::from_secs(20)).unwrap();
    let model =
        api.register_with_inputs(&asset("corpus-ppocr-cls"), "ppocr-cls", "x=1x3x48x192").unwrap();
    let import = coord.import_dir.canonicalize().unwrap();
    let (repo, _) = two_versions(&import.join("repo"));
    let body = |id: &str, rev: &str| {
        json!({
            "id": id,
            "model": model,
            "data": format!("dvc://repo/data/photos@{rev},size=48x192,mean=0.5,std=0.5"),
            "devices": ["rpi4"],
            "min_fidelity": 0.0,
            "prune_grid": {"criteria": ["magnitude"], "allocations": ["uniform"],
                           "sparsities": [0.25]},
            "max_measurements": 1,
            "max_parallel": 1,
            "bench": {"warmup": 1, "max_iterations": 5, "max_time_ms": 500, "symbols": []},
            "job_timeout_ms": 60000,
        })
    };
    let (status, v) = api.post("/api/v1/pipelines", &body("dvc-v1", "v1")).unwrap();
    assert_eq!(status, 201, "{v}");
    let identity = json!({
        "repo": repo.root.canonicalize().unwrap(),
        "path": "data/photos",
        "rev": repo.commit("v1"),
        "md5": repo.recorded_md5("v1", "data/photos"),
    });
    assert_eq!(v["request"]["data"]["dataset"], identity, "{v}");
    let copy = v["request"]["data"]["source"]["path"].as_str().unwrap().to_owned();
    assert!(Path::new(&copy).starts_with(coord.data_dir.join("dvc")), "{copy}");

    // One byte of an image only v2 has, changed in the cache: refused before any work.
    let v2 = repo.recorded_md5("v2", "data/photos");
    let manifest = std::fs::read(dvc::object_path(&repo.root.join(".dvc/cache"), &v2)).unwrap();
    let entries = dvc::parse_manifest(&manifest, "manifest").unwrap();
    let new = entries.iter().find(|e| e.relpath.ends_with("040.png")).unwrap();
    alter_one_byte(&repo.root.join(".dvc/cache"), &new.md5);
    let (status, v) = api.post("/api/v1/pipelines", &body("dvc-v2", "v2")).unwrap();
    assert_eq!(status, 400, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains(&format!("({}) does not match its record", new.relpath)), "{err}");
    assert!(err.contains(&format!("md5 expected {}", new.md5)), "{err}");
    assert!(!coord.data_dir.join("dvc").join(&v2).join("photos").exists(), "nothing kept");
    // A repository outside the import folder is refused like any path there.
    let outside = Repo::init(&dir.path().join("outside"));
    let mut b = body("dvc-outside", "HEAD");
    b["data"] = json!(format!("dvc://{}/data/x.jsonl", outside.root.display()));
    let (status, v) = api.post("/api/v1/pipelines", &b).unwrap();
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("import folder"), "{v}");

    // An identity sent by a client is not trusted: the data set is read again from the
    // repository at the identity's commit (here with a forged md5 and path).
    let mut forged = body("dvc-forged", "v1");
    let mut forged_identity = identity.clone();
    forged_identity["md5"] = json!("0".repeat(32));
    forged["data"] = json!({
        "source": {"path": "/etc"},
        "image_size": [48, 192], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "dataset": forged_identity,
    });
    let (status, v) = api.post("/api/v1/pipelines", &forged).unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["request"]["data"]["dataset"], identity, "{v}");
    assert_eq!(v["request"]["data"]["source"]["path"], json!(copy), "{v}");
    let (status, v) = api.post("/api/v1/pipelines/dvc-forged/cancel", &json!({})).unwrap();
    assert_eq!(status, 200, "{v}");

    // The run: the identity on the result and on every candidate's lineage.
    let start = Instant::now();
    let done = loop {
        let v = api.get("/api/v1/pipelines/dvc-v1").unwrap();
        if matches!(v["state"].as_str(), Some("done" | "failed" | "cancelled")) {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "pipeline stuck: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(done["state"], "done", "{done}\n{}", coord.log());
    assert_eq!(done["result"]["dataset"], identity, "{done}");
    assert!(done["result"]["data"].as_str().unwrap().contains(identity["md5"].as_str().unwrap()));
    let candidates: Vec<&str> = done["result"]["classes"][0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["model"].as_str())
        .collect();
    assert!(!candidates.is_empty(), "{done}");
    for c in candidates {
        let m = api.get(&format!("/api/v1/models/{c}")).unwrap();
        assert_eq!(m["lineage"]["dataset"], identity, "{m}");
    }
}

#[test]
fn the_dvc_datasets_script_puts_hone_s_real_data_sets_under_dvc_with_a_local_remote() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dvc-datasets.sh");
    let stdout = run(Command::new("bash").arg(&script).arg(dir.path()));
    let refs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("dvc://")).collect();
    assert_eq!(refs.len(), 2, "{stdout}");
    let repo = dir.path().canonicalize().unwrap().join("repo");
    let v1 = run(Command::new("git").current_dir(&repo).args(["rev-parse", "v1^{commit}"]));
    // The objects are in the local remote: Hone reads them with the cache gone.
    std::fs::remove_dir_all(repo.join(".dvc/cache")).unwrap();
    assert!(dir.path().join("remote/files/md5").is_dir());
    let copies = dir.path().join("copies");
    let open = |text: &str| {
        let spec = hone_learn::eval::DataSpec::parse(text).unwrap().resolve_dvc(&copies).unwrap();
        let id = spec.dataset.clone().unwrap();
        assert_eq!(id.rev, v1.trim(), "{text}");
        let data = hone_learn::eval::EvalData::open(&spec).unwrap_or_else(|e| panic!("{e:#}"));
        use hone_learn::data::Part;
        let n: usize =
            [Part::Train, Part::Validation, Part::Test].iter().map(|p| data.part_len(*p)).sum();
        assert!(data.labelled(), "{text}");
        (id, n)
    };
    let (vader, n) = open(refs.iter().find(|r| r.contains("vader.jsonl")).unwrap());
    assert_eq!(vader.path, "data/vader.jsonl");
    let builtin = hone_learn::data::vader_movie_reviews().unwrap();
    assert_eq!(n, builtin.len(), "every sentence Hone's built-in vader has");
    let (photos, n) = open(refs.iter().find(|r| r.contains("photos")).unwrap());
    assert!(photos.md5.ends_with(".dir"));
    assert_eq!(n, 2, "the two photographs");
}
