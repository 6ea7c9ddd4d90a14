//! The agent's Debian package (`scripts/package-agent.sh`) in a clean Debian 12 root made by
//! debootstrap (`scripts/debian-chroot.sh`), installed by `scripts/install-agent.sh --root`
//! against a TLS coordinator on this host: `dpkg -i` creates the unit's user and state folder,
//! the installer writes the settings and enrols with a one-time token as the unit's user (the
//! device key is that user's, 0600), the unit passes `systemd-analyze verify`, the agent started
//! as the unit's user with the unit's environment runs a campaign job over TLS; installing again
//! with the used token keeps the enrolment; an upgrade keeps the state, removal keeps it, purge
//! deletes it (the device key with it) and the user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hone_e2e::*;
use serde_json::json;

use hone_e2e::run_ok as run;

fn script(name: &str) -> Command {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name))
}

/// A Debian root in a temporary folder with /proc mounted; unmounted when dropped.
struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let tarball = run(&mut script("debian-chroot.sh"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root");
        std::fs::create_dir_all(&path).unwrap();
        run(Command::new("tar").arg("-C").arg(&path).arg("-xf").arg(tarball.trim()));
        run(Command::new("mount").args(["-t", "proc", "proc"]).arg(path.join("proc")));
        Root { _dir: dir, path }
    }

    fn chroot(&self) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.path);
        c
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path.join("proc")).status();
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_deb_installs_into_clean_debian_and_its_user_runs_a_campaign_job() {
    let root = Root::new();
    let out = tempfile::tempdir().unwrap();
    let deb = run(script("package-agent.sh")
        .arg("--out")
        .arg(out.path())
        .env("CARGO_TARGET_DIR", bin_dir().parent().unwrap()));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.file_name().unwrap().to_string_lossy().ends_with("_amd64.deb"), "{deb:?}");
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: hone-agent") && info.contains("Depends: adduser"), "{info}");

    // The installer, against a TLS coordinator on this host (the chroot shares its network):
    // the package, the settings, and enrolment as the unit's user with a one-time token.
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start_tls(
        &dir.path().join("coord"),
        Broker::Embedded(free_port()),
        None,
        &[],
    )
    .unwrap();
    let api = coord.api();
    let device = unique("deb-agent");
    let (token, ca_sha256) = coord.enrol_token(None).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // Runs the installer with the token in HONE_ENROL_TOKEN, or in a file; returns its output.
    let install = |from_file: bool| {
        let mut c = script("install-agent.sh");
        c.arg("--root")
            .arg(&root.path)
            .arg("--deb")
            .arg(&deb)
            .args(["--coordinator", &coord.api_url(), "--broker", &coord.mqtt_url()])
            .args(["--ca-sha256", &ca_sha256, "--device-id", &device])
            .args(["--profile", "x86-vm-2core", "--no-start"])
            .env_remove("HONE_ENROL_TOKEN");
        if from_file {
            c.arg("--token-file").arg(&token_file);
        } else {
            c.env("HONE_ENROL_TOKEN", &token);
        }
        let out = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{c:?} failed:\n{text}");
        assert!(!text.contains(&token), "the installer printed the token:\n{text}");
        text
    };
    let first = install(false);
    assert!(first.contains(&format!("enrolled as {device}")), "{first}");

    // The package: user, state folder, conffile, unit; the key: the unit user's alone.
    let passwd = run(root.chroot().args(["getent", "passwd", "hone-agent"]));
    assert!(passwd.contains("/var/lib/hone-agent") && passwd.contains("nologin"), "{passwd}");
    let state = run(root.chroot().args(["stat", "-c", "%U:%G %a", "/var/lib/hone-agent"]));
    assert_eq!(state.trim(), "hone-agent:hone-agent 750");
    let key =
        run(root.chroot().args(["stat", "-c", "%U %a", "/var/lib/hone-agent/tls/device.key"]));
    assert_eq!(key.trim(), "hone-agent 600", "the device key is the unit user's alone");
    let conf = run(root.chroot().args(["stat", "-c", "%U:%G %a", "/etc/default/hone-agent"]));
    assert_eq!(conf.trim(), "root:hone-agent 640", "the settings are not world-readable");
    run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.path.display()))
        .args(["verify", "hone-agent.service"]));
    let unit =
        std::fs::read_to_string(root.path.join("lib/systemd/system/hone-agent.service")).unwrap();
    for line in [
        "User=hone-agent",
        "Restart=on-failure",
        "StateDirectory=hone-agent",
        "EnvironmentFile=/etc/default/hone-agent",
    ] {
        assert!(unit.contains(line), "{line}");
    }
    let written = std::fs::read_to_string(root.path.join("etc/default/hone-agent")).unwrap();
    for line in [
        format!("HONE_BROKER={}", coord.mqtt_url()),
        format!("HONE_COORDINATOR={}", coord.api_url()),
        format!("HONE_DEVICE_ID={device}"),
        "HONE_PROFILE=x86-vm-2core".to_string(),
    ] {
        assert!(written.lines().any(|l| l == line), "{line} in\n{written}");
    }
    assert!(written.contains("# HONE_NATIVE=true"), "the file's comments are kept:\n{written}");
    // The operator's own edit (a free serving port: tests run side by side).
    let settings = format!("{written}HONE_SERVE_ADDR=127.0.0.1:{}\n", free_port());
    std::fs::write(root.path.join("etc/default/hone-agent"), &settings).unwrap();

    // The agent, as the unit's user with the unit's environment, runs a job over TLS.
    let env: Vec<(String, String)> = settings
        .lines()
        .filter(|l| !l.starts_with('#'))
        .chain(["HONE_AGENT_STATE=/var/lib/hone-agent"])
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    assert!(env.iter().all(|(k, _)| k != "HONE_TRUST_KEY"), "enrolment pins the key: {env:?}");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let agent = Agent(
        Command::new("chroot")
            .arg("--userspec=hone-agent:hone-agent")
            .arg(&root.path)
            .args(["/usr/bin/edge-agent", "run"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    api.wait_device(&device, true, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    let model_path = dir.path().join("mlp.onnx");
    std::fs::write(&model_path, models::mlp(64)).unwrap();
    let model = api.register(&model_path, "mlp64").unwrap();
    let campaign = api
        .start_campaign(json!({
            "models": [model], "devices": device,
            "bench": {"warmup": 2, "max_iterations": 10, "max_time_ms": 2000, "symbols": []},
        }))
        .unwrap();
    let view = api.wait_campaign(&campaign, Duration::from_secs(120)).unwrap();
    let line = &view["lines"][0];
    assert_eq!(line["state"], "done", "{view}\n{}", agent_log());
    assert!(line["p50_ms"].as_f64().unwrap() > 0.0);
    drop(agent);
    // The agent wrote its state as its own user.
    let owned =
        run(root.chroot().args(["find", "/var/lib/hone-agent", "-not", "-user", "hone-agent"]));
    assert!(owned.trim().is_empty(), "files not owned by hone-agent: {owned}");
    let pinned = run(root.chroot().args(["cat", "/var/lib/hone-agent/trusted-coordinator.pub"]));
    assert_eq!(pinned.trim(), coord.trust_key(), "enrolment pinned the signing key");

    // Installing again with the used token: already enrolled, nothing enrolled again, the
    // identity and the operator's settings kept.
    let tls =
        |name: &str| std::fs::read(root.path.join("var/lib/hone-agent/tls").join(name)).unwrap();
    let before = (tls("device.key"), tls("device.pem"), tls("identity.json"));
    let again = install(true);
    assert!(again.contains("already enrolled"), "{again}");
    assert_eq!((tls("device.key"), tls("device.pem"), tls("identity.json")), before);
    assert_eq!(
        std::fs::read_to_string(root.path.join("etc/default/hone-agent")).unwrap(),
        settings
    );

    // Upgrade (the same package again, by hand): state and settings kept.
    std::fs::copy(&deb, root.path.join("tmp/hone-agent.deb")).unwrap();
    run(root.chroot().args(["dpkg", "-i", "/tmp/hone-agent.deb"]));
    assert!(root.path.join("var/lib/hone-agent/tls/device.key").is_file());
    assert_eq!(
        std::fs::read_to_string(root.path.join("etc/default/hone-agent")).unwrap(),
        settings
    );
    // Removal keeps the state and the user; purge deletes both, the device key with them.
    let uninstall = |purge: bool| {
        let mut c = script("install-agent.sh");
        c.arg("--uninstall").arg("--root").arg(&root.path);
        if purge {
            c.arg("--purge");
        }
        run(&mut c)
    };
    uninstall(false);
    assert!(!root.path.join("usr/bin/edge-agent").exists());
    assert!(
        root.path.join("var/lib/hone-agent/tls/device.key").is_file(),
        "removal keeps the state"
    );
    run(root.chroot().args(["getent", "passwd", "hone-agent"]));
    let purged = uninstall(true);
    assert!(purged.contains(&format!("coordinator devices decommission {device}")), "{purged}");
    assert!(!root.path.join("var/lib/hone-agent").exists(), "purge deletes the state and key");
    assert!(!root.path.join("etc/default/hone-agent").exists(), "purge deletes the settings");
    let gone = root.chroot().args(["getent", "passwd", "hone-agent"]).output().unwrap();
    assert!(!gone.status.success(), "purge deletes the user");
}
