//! Agent configuration: raw command-line values validated into [`AgentConfig`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Device id; also the MQTT client id.
    pub device_id: String,
    /// Broker host.
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// Coordinator base URL (used to fetch its public key on first start).
    pub coordinator_url: String,
    /// The enrolled TLS identity: the broker and artifact downloads then use TLS with its
    /// client certificate. `None`: plain transport (loopback only).
    pub identity: Option<crate::enroll::Identity>,
    /// Device profile to benchmark under.
    pub profile: Option<hone_firmware_profiles::DeviceProfile>,
    /// The agent runs on the profiled device itself: measure, do not emulate.
    pub native: bool,
    /// Thermal model speed-up for sustained runs.
    pub thermal_time_scale: f64,
    /// Durable state: outbox, seen commands, session counter, model store, trusted key.
    pub state_dir: PathBuf,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// Coordinator key that artifacts must be signed with; `None` = pinned file or fetch once.
    pub trust_key: Option<VerifyingKey>,
    /// Without a key or a pinned one, fetch the coordinator's key over HTTP once and pin it.
    pub trust_on_first_use: bool,
    /// Host-wide calibration cache and lock (shared by every agent on this host).
    pub calibration_dir: PathBuf,
    /// Executable started for each benchmark (`bench-child`) and for serving
    /// (`serve-child`); normally the agent itself.
    pub bench_exe: PathBuf,
    /// How deployed models are served; `None`: not at all (`--no-serve`).
    pub serving: Option<crate::deploy::ServingConfig>,
    /// ONNX Runtime's shared library; `None`: tract only.
    pub ort_lib: Option<PathBuf>,
    /// What the agent found it can run, filled at start by probing (`ort-probe`); empty
    /// before.
    pub runtimes: Vec<hone_common::bench::RuntimeAvailability>,
}

impl AgentConfig {
    /// Why this agent cannot run `runtime` (`None`: it can). tract always runs.
    pub fn runtime_problem(&self, runtime: hone_common::bench::Runtime) -> Option<String> {
        if runtime == hone_common::bench::Runtime::Tract {
            return None;
        }
        match self.runtimes.iter().find(|r| r.runtime == runtime) {
            Some(r) => r.problem.clone(),
            None => Some(format!("this agent has not probed for {runtime}")),
        }
    }
}

/// Parses a hex-encoded ed25519 public key, or `@path` to a file holding one.
pub fn parse_trust_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let hex_text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading trust key {path}"))?
        }
        None => text.to_string(),
    };
    let bytes = hex::decode(hex_text.trim()).context("trust key is not hex")?;
    let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!("trust key must be 32 bytes (64 hex characters), got {}", bytes.len());
    };
    VerifyingKey::from_bytes(&arr).context("trust key is not a valid ed25519 public key")
}

/// The default device id: the host name, lowercased and restricted to the allowed characters.
pub fn default_device_id() -> String {
    let raw = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "edge-device".into());
    let id: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .take(64)
        .collect();
    let id = id.trim_start_matches('-').to_string();
    if id.is_empty() { "edge-device".to_string() } else { id }
}

/// Resolves a profile by built-in name or from a TOML file.
pub fn resolve_profile(
    name: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<hone_firmware_profiles::DeviceProfile>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        let hint = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(Some(hone_firmware_profiles::parse(&hint, &text)?));
    }
    match name {
        None => Ok(None),
        Some(n) => match hone_firmware_profiles::find(n) {
            Some(p) => Ok(Some(p.clone())),
            None => {
                let names: Vec<&str> =
                    hone_firmware_profiles::builtin().iter().map(|p| p.name.as_str()).collect();
                bail!("unknown profile `{n}`; known profiles: {}", names.join(", "))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_key_must_be_32_hex_bytes() {
        assert!(parse_trust_key("zz").unwrap_err().to_string().contains("hex"));
        assert!(parse_trust_key("abcd").unwrap_err().to_string().contains("32 bytes"));
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(parse_trust_key(&hex::encode(key.as_bytes())).unwrap(), key);
    }

    #[test]
    fn default_device_id_is_a_valid_id() {
        hone_common::validate_device_id(&default_device_id()).unwrap();
    }
}
