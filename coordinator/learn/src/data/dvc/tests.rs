//! DVC references, records and manifests, and resolution from hand-made DVC 3 layouts (a cache
//! and a local remote written here, outside git). The real `dvc` program's repositories, with
//! git revisions, are the end-to-end test `tests/tests/dvc.rs`.

use super::*;

/// A repository `root/repo` with `.dvc/` and a config naming the local remote `root/remote`.
struct Repo {
    _dir: tempfile::TempDir,
    root: PathBuf,
    remote: PathBuf,
    out: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        Repo::with_config(
            "[core]\n    remote = local\n['remote \"local\"']\n    url = ../../remote\n",
        )
    }

    fn with_config(config: &str) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join(".dvc/cache")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join(".dvc/config"), config).unwrap();
        let remote = dir.path().join("remote");
        let out = dir.path().join("out");
        Repo { root, remote, out, _dir: dir }
    }

    fn cache(&self) -> PathBuf {
        self.root.join(".dvc/cache")
    }

    /// Stores `bytes` as an object in `store`; returns its md5.
    fn put(&self, store: &Path, bytes: &[u8]) -> String {
        let md5 = md5_hex(bytes);
        let p = object_path(store, &md5);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        md5
    }

    /// Writes the working tree's `data/NAME.dvc` for one output.
    fn record(&self, name: &str, md5: &str, size: usize, nfiles: Option<usize>) {
        let nfiles = nfiles.map_or_else(String::new, |n| format!("  nfiles: {n}\n"));
        std::fs::write(
            self.root.join(format!("data/{name}.dvc")),
            format!("outs:\n- md5: {md5}\n  size: {size}\n{nfiles}  hash: md5\n  path: {name}\n"),
        )
        .unwrap();
    }

    fn reference(&self, name: &str) -> DvcRef {
        DvcRef::parse(&format!("dvc://{}/data/{name}", self.root.display())).unwrap()
    }

    fn resolve(&self, name: &str) -> anyhow::Result<Resolved> {
        resolve(&self.reference(name), &self.out)
    }
}

const REVIEWS: &[u8] =
    b"{\"text\": \"The Rock is destined to be the 21st Century's new Conan.\", \"label\": 1}\r\n\
{\"text\": \"Effective but too tepid biopic\", \"label\": 0}\n";

#[test]
fn references_split_the_revision_at_the_last_at_sign() {
    let r = DvcRef::parse("dvc://./repo/data/reviews.jsonl@v1").unwrap();
    assert_eq!(
        (r.path.as_path(), r.rev.as_deref()),
        (Path::new("./repo/data/reviews.jsonl"), Some("v1"))
    );
    assert_eq!(r.to_string(), "dvc://./repo/data/reviews.jsonl@v1");
    let r = DvcRef::parse("dvc:///srv/a@b/photos@HEAD").unwrap();
    assert_eq!((r.path.as_path(), r.rev.as_deref()), (Path::new("/srv/a@b/photos"), Some("HEAD")));
    let r = DvcRef::parse("dvc://repo/photos").unwrap();
    assert_eq!(r.rev, None);
    // A .dvc file, with or without a revision.
    let r = DvcRef::parse("repo/data/reviews.jsonl.dvc").unwrap();
    assert_eq!(
        (r.path.as_path(), r.rev.as_deref()),
        (Path::new("repo/data/reviews.jsonl.dvc"), None)
    );
    let r = DvcRef::parse("reviews.jsonl.dvc@v2").unwrap();
    assert_eq!(r.rev.as_deref(), Some("v2"));
    for bad in ["dvc://", "dvc://x@", "dvc://x@-n", "dvc://x@a b", "reviews.jsonl"] {
        assert!(DvcRef::parse(bad).is_err(), "{bad}");
    }
    assert!(is_dvc("dvc://x") && is_dvc("a/x.dvc") && is_dvc("x.dvc@v1"));
    assert!(!is_dvc("repo/.dvc") && !is_dvc("photos") && !is_dvc("x.jsonl@v1"));
}

#[test]
fn dvc3_records_are_read_and_dvc2_records_refused() {
    let text = "outs:\n- md5: 068aeb8d288ca647e8868b8c89b961bc.dir\n  size: 339640\n  nfiles: 2\n  \
                hash: md5\n  path: photos\n";
    let r = parse_record(text, "photos.dvc").unwrap();
    assert_eq!(
        r,
        vec![Record {
            md5: "068aeb8d288ca647e8868b8c89b961bc.dir".into(),
            size: Some(339_640),
            nfiles: Some(2),
            path: "photos".into(),
        }]
    );
    assert!(r[0].is_dir());
    // An md5 of digits and one `e` reads as a YAML float; it is kept as written.
    let r = parse_record(
        "outs:\n- md5: 1234567890123456e789012345678901\n  hash: md5\n  path: a\n",
        "a.dvc",
    )
    .unwrap();
    assert_eq!(r[0].md5, "1234567890123456e789012345678901");
    // DVC 2: no `hash: md5`.
    let err = parse_record(
        "outs:\n- md5: 9a203301d84941ae414923ed28789cd1\n  size: 13\n  path: r.jsonl\n",
        "r.jsonl.dvc",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("DVC 2") && err.contains("re-add it with DVC 3"), "{err}");
    let err = parse_record("outs:\n- md5: ../../etc/passwd\n  hash: md5\n  path: r\n", "r.dvc")
        .unwrap_err();
    assert!(format!("{err:#}").contains("not an md5"), "{err:#}");
    assert!(parse_record("stages: {}\n", "x.dvc").is_err());
    let err = parse_record(
        "outs:\n- md5: 9a203301d84941ae414923ed28789cd1\n  hash: md5\n  cache: false\n  path: r\n",
        "r.dvc",
    )
    .unwrap_err();
    assert!(err.to_string().contains("cache: false"), "{err}");
}

#[test]
fn manifests_with_paths_leaving_the_folder_are_refused() {
    let md5 = "1c6116212e35016fa7c3b67c81ec1335";
    let ok = format!(r#"[{{"md5": "{md5}", "relpath": "a/china.jpg"}}]"#);
    assert_eq!(parse_manifest(ok.as_bytes(), "m").unwrap()[0].relpath, "a/china.jpg");
    for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "a/../../b", "", "a\\..\\b"] {
        let m = format!(r#"[{{"md5": "{md5}", "relpath": "{}"}}]"#, bad.replace('\\', "\\\\"));
        let err = parse_manifest(m.as_bytes(), "m").unwrap_err();
        assert!(format!("{err:#}").contains("leaves the folder"), "{bad}: {err:#}");
    }
    let twice =
        format!(r#"[{{"md5": "{md5}", "relpath": "a"}}, {{"md5": "{md5}", "relpath": "a"}}]"#);
    assert!(parse_manifest(twice.as_bytes(), "m").unwrap_err().to_string().contains("twice"));
}

#[test]
fn a_file_resolves_from_the_cache_into_a_verified_copy_with_its_identity() {
    let repo = Repo::new();
    let md5 = repo.put(&repo.cache(), REVIEWS);
    repo.record("reviews.jsonl", &md5, REVIEWS.len(), None);
    let got = repo.resolve("reviews.jsonl").unwrap();
    assert_eq!(got.path, repo.out.join(&md5).join("reviews.jsonl"), "the tracked name is kept");
    assert_eq!(std::fs::read(&got.path).unwrap(), REVIEWS, "raw bytes, line endings as stored");
    let canonical = repo.root.canonicalize().unwrap().display().to_string();
    assert_eq!(
        got.identity,
        DatasetIdentity {
            repo: canonical,
            path: "data/reviews.jsonl".into(),
            rev: "workspace".into(),
            md5: md5.clone(),
        }
    );
    verify_copy(&got.path, &got.identity).unwrap();
    // The `.dvc` file names the same data set.
    let by_record =
        DvcRef::parse(&format!("{}/data/reviews.jsonl.dvc", repo.root.display())).unwrap();
    assert_eq!(resolve(&by_record, &repo.out).unwrap(), got);
    // A copy altered afterwards is refused by `verify_copy`, and rebuilt by the next resolution.
    std::fs::write(&got.path, b"{\"text\": \"tampered\"}\n").unwrap();
    let err = verify_copy(&got.path, &got.identity).unwrap_err().to_string();
    assert!(err.contains("was altered") && err.contains(&md5), "{err}");
    assert_eq!(repo.resolve("reviews.jsonl").unwrap(), got);
    assert_eq!(std::fs::read(&got.path).unwrap(), REVIEWS);
}

#[test]
fn a_file_missing_from_the_cache_resolves_from_the_local_remote() {
    let repo = Repo::new();
    let md5 = repo.put(&repo.remote, REVIEWS);
    repo.record("reviews.jsonl", &md5, REVIEWS.len(), None);
    let got = repo.resolve("reviews.jsonl").unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), REVIEWS);
    assert!(!object_path(&repo.cache(), &md5).exists(), "Hone does not write into the cache");
}

#[test]
fn an_object_whose_md5_differs_from_its_record_is_refused_and_nothing_is_kept() {
    let repo = Repo::new();
    let md5 = repo.put(&repo.cache(), REVIEWS);
    repo.record("reviews.jsonl", &md5, REVIEWS.len(), None);
    let mut altered = REVIEWS.to_vec();
    altered[10] ^= 1;
    std::fs::write(object_path(&repo.cache(), &md5), &altered).unwrap();
    // The remote's good copy is not used instead: the cache is wrong.
    repo.put(&repo.remote, REVIEWS);
    let err = repo.resolve("reviews.jsonl").unwrap_err().to_string();
    let found = md5_hex(&altered);
    let shown = format!(".dvc/cache/files/md5/{}/{}", &md5[..2], &md5[2..]);
    assert!(err.starts_with("dvc://"), "{err}");
    assert!(err.contains(&shown), "{err}");
    assert!(err.contains(&format!("md5 expected {md5}, found {found}")), "{err}");
    assert!(err.ends_with("the data set is refused"), "{err}");
    assert!(!repo.out.join(&md5).exists(), "nothing materialised");
}

#[test]
fn an_object_larger_than_its_record_is_refused_before_it_is_read() {
    let repo = Repo::new();
    let md5 = repo.put(&repo.cache(), REVIEWS);
    repo.record("reviews.jsonl", &md5, 10, None);
    let err = repo.resolve("reviews.jsonl").unwrap_err().to_string();
    assert!(err.contains("more than its record allows (10)"), "{err}");
}

#[test]
fn a_missing_object_says_where_it_was_looked_for() {
    let repo = Repo::new();
    let md5 = md5_hex(REVIEWS);
    repo.record("reviews.jsonl", &md5, REVIEWS.len(), None);
    let err = repo.resolve("reviews.jsonl").unwrap_err().to_string();
    assert!(err.contains("the cache (`.dvc/cache/files/md5/"), "{err}");
    assert!(err.contains("local remote `local`") && err.contains("dvc push"), "{err}");
    // No remote at all.
    let bare = Repo::with_config("[core]\n");
    bare.record("reviews.jsonl", &md5, REVIEWS.len(), None);
    let err = bare.resolve("reviews.jsonl").unwrap_err().to_string();
    assert!(err.contains("no default remote"), "{err}");
}

#[test]
fn remotes_other_than_local_folders_are_refused_by_kind() {
    for (kind, url) in [
        ("s3", "s3://bucket/hone"),
        ("gs", "gs://bucket/hone"),
        ("azure", "azure://container/hone"),
        ("ssh", "ssh://user@host/srv/dvc"),
        ("https", "https://example.invalid/dvc"),
    ] {
        let repo = Repo::with_config(&format!(
            "[core]\nremote = store\n['remote \"store\"']\nurl = {url}\n"
        ));
        let md5 = md5_hex(REVIEWS);
        repo.record("reviews.jsonl", &md5, REVIEWS.len(), None);
        let err = repo.resolve("reviews.jsonl").unwrap_err().to_string();
        let want =
            format!("remote kind `{kind}` is not supported: `dvc pull` into the cache first");
        assert!(err.contains(&want), "{err}");
        // In the cache, the remote is not needed.
        repo.put(&repo.cache(), REVIEWS);
        repo.resolve("reviews.jsonl").unwrap();
    }
}

#[test]
fn a_manifest_listing_another_number_of_files_than_its_record_is_refused() {
    let repo = Repo::new();
    let md5 =
        photos(&repo, &repo.cache(), &[("a/1.jpg", b"\xff\xd8one"), ("b/1.jpg", b"\xff\xd8two")]);
    std::fs::write(
        repo.root.join("data/photos.dvc"),
        format!("outs:\n- md5: {md5}\n  size: 10\n  nfiles: 3\n  hash: md5\n  path: photos\n"),
    )
    .unwrap();
    let err = repo.resolve("photos").unwrap_err().to_string();
    assert!(err.contains("lists 2 files where its record says 3"), "{err}");
}

#[test]
fn copies_go_under_the_user_cache_unless_hone_dvc_dir_says_otherwise() {
    if let Some(dir) = std::env::var_os("HONE_DVC_DIR") {
        assert_eq!(default_dir(), PathBuf::from(dir));
    } else {
        assert!(default_dir().ends_with("hone/dvc"), "{}", default_dir().display());
    }
}

#[test]
fn config_local_and_a_cache_dir_are_read() {
    let repo = Repo::with_config("[cache]\n    dir = ../../elsewhere\n");
    std::fs::write(
        repo.root.join(".dvc/config.local"),
        "[core]\n    remote = mine\n['remote \"mine\"']\n    url = ../../remote\n",
    )
    .unwrap();
    let elsewhere = repo.root.parent().unwrap().join("elsewhere");
    let a = repo.put(&elsewhere, REVIEWS);
    repo.record("a.jsonl", &a, REVIEWS.len(), None);
    repo.resolve("a.jsonl").unwrap();
    let b = repo.put(&repo.remote, b"{\"text\": \"only in the remote\"}\n");
    repo.record("b.jsonl", &b, 31, None);
    repo.resolve("b.jsonl").unwrap();
}

/// A folder `photos` of two class sub-folders, its objects in `store`; returns the md5.
fn photos(repo: &Repo, store: &Path, files: &[(&str, &[u8])]) -> String {
    let entries: Vec<String> = files
        .iter()
        .map(|(rel, bytes)| {
            let md5 = repo.put(store, bytes);
            format!(r#"{{"md5": "{md5}", "relpath": "{rel}"}}"#)
        })
        .collect();
    let manifest = format!("[{}]", entries.join(", "));
    let md5 = format!("{}.dir", md5_hex(manifest.as_bytes()));
    let p = object_path(store, &md5);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, manifest).unwrap();
    let size: usize = files.iter().map(|(_, b)| b.len()).sum();
    repo.record("photos", &md5, size, Some(files.len()));
    md5
}

#[test]
fn a_folder_is_rebuilt_from_its_manifest_and_checked_file_by_file() {
    let repo = Repo::new();
    let files: [(&str, &[u8]); 3] = [
        ("china/1.jpg", b"\xff\xd8china"),
        ("flower/1.jpg", b"\xff\xd8flower"),
        ("flower/2.jpg", b"\xff\xd8two"),
    ];
    let md5 = photos(&repo, &repo.cache(), &files);
    let got = repo.resolve("photos").unwrap();
    assert_eq!(got.path, repo.out.join(&md5).join("photos"));
    assert_eq!(got.identity.md5, md5);
    for (rel, bytes) in files {
        assert_eq!(std::fs::read(got.path.join(rel)).unwrap(), bytes, "{rel}");
    }
    verify_copy(&got.path, &got.identity).unwrap();
    // An extra file in the copy is an alteration too.
    std::fs::write(got.path.join("china/2.jpg"), b"x").unwrap();
    let err = verify_copy(&got.path, &got.identity).unwrap_err().to_string();
    assert!(err.contains("china/2.jpg"), "{err}");
    assert_eq!(repo.resolve("photos").unwrap(), got, "rebuilt");
    assert!(!got.path.join("china/2.jpg").exists());

    // One file of the folder with one byte changed in the cache.
    std::fs::remove_dir_all(&repo.out).unwrap();
    let flower = md5_hex(b"\xff\xd8flower");
    std::fs::write(object_path(&repo.cache(), &flower), b"\xff\xd8flowes").unwrap();
    let err = repo.resolve("photos").unwrap_err().to_string();
    assert!(err.contains("(flower/1.jpg) does not match its record"), "{err}");
    assert!(err.contains(&format!("md5 expected {flower}")), "{err}");
    assert!(!repo.out.join(&md5).join("photos").exists(), "nothing materialised");
}

#[test]
fn a_manifest_whose_relpath_escapes_is_refused_even_with_a_matching_md5() {
    let repo = Repo::new();
    photos(&repo, &repo.cache(), &[("../escaped.jpg", b"\xff\xd8")]);
    let err = format!("{:#}", repo.resolve("photos").unwrap_err());
    assert!(err.contains("leaves the folder"), "{err}");
    assert!(!repo.root.parent().unwrap().join("out/escaped.jpg").exists());
}

#[test]
fn paths_that_leave_the_repository_or_name_no_repository_are_refused() {
    let repo = Repo::new();
    let outside = tempfile::tempdir().unwrap();
    let err = resolve(
        &DvcRef::parse(&format!("dvc://{}/x.jsonl", outside.path().display())).unwrap(),
        &repo.out,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no DVC repository"), "{err}");
    let err = DvcRef::parse(&format!("dvc://{}/data/../../x.jsonl", repo.root.display()))
        .unwrap()
        .locate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("must not hold `..`"), "{err}");
    let err = repo.resolve("absent.jsonl").unwrap_err().to_string();
    assert!(err.contains("no `data/absent.jsonl.dvc`") && err.contains("dvc add"), "{err}");
}

#[test]
fn identities_read_back_as_references() {
    let id = DatasetIdentity {
        repo: "/srv/data".into(),
        path: "data/reviews.jsonl".into(),
        rev: "0123456789abcdef0123456789abcdef01234567".into(),
        md5: "9a203301d84941ae414923ed28789cd1".into(),
    };
    assert_eq!(
        id.reference().to_string(),
        format!("dvc:///srv/data/data/reviews.jsonl@{}", id.rev)
    );
    let ws = DatasetIdentity { rev: format!("{}+workspace", id.rev), ..id.clone() };
    assert_eq!(ws.reference().rev, None);
    let json = serde_json::to_value(&id).unwrap();
    assert_eq!(json["md5"], "9a203301d84941ae414923ed28789cd1");
    assert_eq!(serde_json::from_value::<DatasetIdentity>(json).unwrap(), id);
}

#[test]
fn a_pipeline_output_recorded_only_in_dvc_lock_is_refused_as_not_supported() {
    let repo = Repo::new();
    std::fs::write(repo.root.join("dvc.lock"), "schema: '2.0'\nstages: {}\n").unwrap();
    let err = repo.resolve("model.onnx").unwrap_err().to_string();
    assert!(err.contains("dvc.lock") && err.contains("not supported"), "{err}");
}
