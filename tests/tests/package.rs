//! The agent's Debian package (`scripts/package-agent.sh`) in a clean Debian 12 root made by
//! debootstrap (`scripts/debian-chroot.sh`): `dpkg -i` creates the unit's user and state folder,
//! the unit passes `systemd-analyze verify`, the agent started as the unit's user with the
//! unit's environment connects to a coordinator on this host and runs a campaign job; an
//! upgrade keeps the state, removal keeps it, purge deletes it and the user.

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
    std::fs::copy(&deb, root.path.join("tmp/hone-agent.deb")).unwrap();

    // Install: user, state folder, conffile, unit.
    run(root.chroot().args(["dpkg", "-i", "/tmp/hone-agent.deb"]));
    let passwd = run(root.chroot().args(["getent", "passwd", "hone-agent"]));
    assert!(passwd.contains("/var/lib/hone-agent") && passwd.contains("nologin"), "{passwd}");
    let state = run(root.chroot().args(["stat", "-c", "%U:%G %a", "/var/lib/hone-agent"]));
    assert_eq!(state.trim(), "hone-agent:hone-agent 750");
    let conf = run(root.chroot().args(["stat", "-c", "%U:%G %a", "/etc/default/hone-agent"]));
    assert_eq!(
        conf.trim(),
        "root:hone-agent 640",
        "the trust key and settings are not world-readable"
    );
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

    // The agent, as the unit's user with the unit's environment, runs a job for a coordinator.
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let device = unique("deb-agent");
    let settings = format!(
        "HONE_BROKER={}\nHONE_COORDINATOR={}\nHONE_TRUST_KEY={}\nHONE_DEVICE_ID={device}\nHONE_PROFILE=x86-vm-2core\n\
         HONE_SERVE_ADDR=127.0.0.1:{}\n",
        coord.mqtt_url(),
        coord.api_url(),
        coord.trust_key(),
        free_port()
    );
    std::fs::write(root.path.join("etc/default/hone-agent"), &settings).unwrap();
    let env: Vec<(String, String)> = settings
        .lines()
        .chain(["HONE_AGENT_STATE=/var/lib/hone-agent"])
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
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
    assert_eq!(pinned.trim(), coord.trust_key());

    // Upgrade (the same package again): state and settings kept.
    run(root.chroot().args(["dpkg", "-i", "/tmp/hone-agent.deb"]));
    assert!(root.path.join("var/lib/hone-agent/trusted-coordinator.pub").is_file());
    assert_eq!(
        std::fs::read_to_string(root.path.join("etc/default/hone-agent")).unwrap(),
        settings
    );
    // Removal keeps the state and the user; purge deletes both.
    run(root.chroot().args(["dpkg", "-r", "hone-agent"]));
    assert!(!root.path.join("usr/bin/edge-agent").exists());
    assert!(
        root.path.join("var/lib/hone-agent/trusted-coordinator.pub").is_file(),
        "removal keeps the state"
    );
    run(root.chroot().args(["getent", "passwd", "hone-agent"]));
    run(root.chroot().args(["dpkg", "-P", "hone-agent"]));
    assert!(!root.path.join("var/lib/hone-agent").exists(), "purge deletes the state");
    assert!(!root.path.join("etc/default/hone-agent").exists(), "purge deletes the settings");
    let gone = root.chroot().args(["getent", "passwd", "hone-agent"]).output().unwrap();
    assert!(!gone.status.success(), "purge deletes the user");
}
