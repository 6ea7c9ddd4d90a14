//! Every file shipped in `profiles/` is valid, registered in `builtin()`, and named after its
//! file; `load_dir` behaves on real directories.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use hone_firmware_profiles::{Arch, IsaFeature, ProfileError, builtin, find, load_dir, parse};

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

/// `(file stem, contents)` of every `*.toml` in `profiles/`, read with plain `std::fs`.
fn shipped_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(profiles_dir())
        .expect("profiles/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).expect("UTF-8 file stem").to_owned();
            (stem, fs::read_to_string(&p).expect("profile file is readable"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no profiles found in {}", profiles_dir().display());
    files
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir()
            .join(format!("hone-firmware-profiles-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_profile_file_parses_and_validates() {
    for (stem, text) in shipped_files() {
        if let Err(e) = parse(&stem, &text) {
            panic!("profiles/{stem}.toml is invalid: {e}");
        }
    }
}

#[test]
fn every_profile_file_is_registered_in_builtin() {
    let on_disk: BTreeSet<String> = shipped_files().into_iter().map(|(stem, _)| stem).collect();
    let registered: BTreeSet<String> = builtin().iter().map(|p| p.name.clone()).collect();
    let unregistered: Vec<_> = on_disk.difference(&registered).collect();
    let missing: Vec<_> = registered.difference(&on_disk).collect();
    assert!(
        unregistered.is_empty(),
        "add these files to BUILTIN_FILES in src/lib.rs: {unregistered:?}"
    );
    assert!(missing.is_empty(), "registered but no file in profiles/: {missing:?}");
}

#[test]
fn builtin_profiles_equal_their_files() {
    for (stem, text) in shipped_files() {
        let from_file = parse(&stem, &text).expect("valid");
        assert_eq!(find(&stem), Some(&from_file), "builtin `{stem}` differs from its file");
    }
}

#[test]
fn profile_names_are_unique_and_equal_file_stems() {
    let mut seen = BTreeSet::new();
    for (stem, text) in shipped_files() {
        let profile = parse(&stem, &text).expect("valid");
        assert_eq!(profile.name, stem, "profiles/{stem}.toml declares name `{}`", profile.name);
        assert!(seen.insert(profile.name.clone()), "duplicate name `{}`", profile.name);
    }
    let names: Vec<&str> = builtin().iter().map(|p| p.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(names.len(), unique.len(), "builtin() has duplicate names: {names:?}");
}

#[test]
fn builtin_is_sorted_by_name() {
    let names: Vec<&str> = builtin().iter().map(|p| p.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
}

#[test]
fn ships_the_expected_devices() {
    let names: Vec<&str> = builtin().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["imx8mp", "intel-n100", "jetson-orin-nano-cpu", "rpi4", "rpi5", "x86-vm-2core"]
    );
}

#[test]
fn load_dir_of_shipped_profiles_equals_builtin() {
    let loaded = load_dir(&profiles_dir()).expect("shipped profiles load");
    assert_eq!(loaded, builtin());
}

#[test]
fn find_returns_none_for_unknown_name() {
    assert!(find("rpi3").is_none());
    assert!(find("RPI4").is_none(), "lookup is exact");
}

#[test]
fn shipped_profiles_have_expected_key_facts() {
    let rpi4 = find("rpi4").expect("rpi4");
    assert_eq!((rpi4.arch, rpi4.cores, rpi4.clock.nominal_mhz), (Arch::Aarch64, 4, 1500));
    assert_eq!(rpi4.clock_mhz_at(90.0), rpi4.clock.throttled_mhz);
    assert_eq!(
        rpi4.summary(),
        "rpi4: Raspberry Pi 4 Model B (Cortex-A72), aarch64 4 cores @1500 MHz (throttled 1000), \
         3.5 GiB, NEON x4"
    );

    let rpi5 = find("rpi5").expect("rpi5");
    assert_eq!((rpi5.clock.nominal_mhz, rpi5.clock.throttled_mhz), (2400, 1500));
    assert!(rpi5.isa_features.contains(&IsaFeature::DotProd));

    let jetson = find("jetson-orin-nano-cpu").expect("jetson");
    assert_eq!(jetson.cores, 6);

    let n100 = find("intel-n100").expect("n100");
    assert_eq!((n100.arch, n100.simd_width_f32), (Arch::X86_64, 8));
    assert!(n100.summary().ends_with("AVX2 x8"), "{}", n100.summary());

    let imx = find("imx8mp").expect("imx8mp");
    assert_eq!((imx.clock.nominal_mhz, imx.clock.throttled_mhz), (1800, 1200));

    let vm = find("x86-vm-2core").expect("vm");
    assert_eq!((vm.cores, vm.unit_cost_usd), (2, 0.0));
}

#[test]
fn every_citation_is_substantive() {
    for p in builtin() {
        for s in &p.sources {
            assert!(s.citation.len() >= 20, "{}: citation for `{}` is too thin", p.name, s.field);
        }
    }
}

#[test]
fn shipped_profiles_round_trip_through_toml() {
    for p in builtin() {
        let text = toml::to_string(p).expect("serializes");
        let back = parse(&p.name, &text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", p.name));
        assert_eq!(&back, p);
    }
}

#[test]
fn load_dir_reports_missing_directory_with_its_path() {
    let missing = profiles_dir().join("does-not-exist");
    match load_dir(&missing) {
        Err(ProfileError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn load_dir_rejects_profile_named_differently_from_its_file() {
    let dir = TempDir::new("mismatch");
    let text = fs::read_to_string(profiles_dir().join("rpi4.toml")).expect("read rpi4");
    fs::write(dir.0.join("my-pi.toml"), text).expect("write");
    match load_dir(&dir.0) {
        Err(e @ ProfileError::NameMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("profile name `rpi4` must equal the file stem `my-pi`"), "{msg}");
        }
        other => panic!("expected NameMismatch, got {other:?}"),
    }
}

#[test]
fn load_dir_names_the_file_of_an_invalid_profile() {
    let dir = TempDir::new("invalid");
    let text = fs::read_to_string(profiles_dir().join("rpi4.toml")).expect("read rpi4");
    let bad = text.replacen("throttled_mhz = 1000", "throttled_mhz = 1800", 1);
    assert_ne!(bad, text, "test setup: edit did not apply");
    let file = dir.0.join("rpi4.toml");
    fs::write(&file, bad).expect("write");
    let err = load_dir(&dir.0).expect_err("invalid profile");
    assert_eq!(err.field(), Some("clock.throttled_mhz"));
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
}

#[test]
fn load_dir_ignores_other_files_and_subdirectories() {
    let dir = TempDir::new("mixed");
    let text = fs::read_to_string(profiles_dir().join("rpi5.toml")).expect("read rpi5");
    fs::write(dir.0.join("rpi5.toml"), text).expect("write");
    fs::write(dir.0.join("README.md"), "not a profile").expect("write");
    fs::create_dir(dir.0.join("nested.toml")).expect("mkdir");
    let loaded = load_dir(&dir.0).expect("loads");
    assert_eq!(loaded.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["rpi5"]);
}
