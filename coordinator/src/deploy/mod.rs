//! Deployments: a model rolled out to devices in two waves, a canary under a health gate, then
//! the rest, with automatic rollback; then watched.
//!
//! - [`DeployRequest`]: what `coordinator deploy` and `POST /api/v1/deployments` take, and
//!   [`create`], the one place a deployment is planned and stored (also used by
//!   `compress --deploy` when a pipeline ends).
//! - [`gate`]: the canary's health gate, a pure function of the canary's telemetry.
//! - [`rollout`]: the task that moves deployments along (activation commands over MQTT,
//!   re-sends, timeouts, promotion, rollback). All state is in the database, so a restarted
//!   coordinator resumes every rollout where it stood.
//! - [`monitor`]: telemetry ingestion, the monitoring rules, alerts, suggestions, downsampling.
//! - [`reference`]: reference input statistics for drift, from the data a model was validated on.

pub mod gate;
pub mod monitor;
pub mod reference;
pub mod rollout;

use serde::{Deserialize, Serialize};

use crate::campaign::DeviceSelector;
use crate::db::Db;

/// How many devices form the canary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Canary {
    /// This many devices (at least one, unless the deployment has one device only).
    Count(u32),
    /// This percentage of the devices, rounded up.
    Percent(f64),
}

impl Default for Canary {
    fn default() -> Self {
        Canary::Count(1)
    }
}

impl std::str::FromStr for Canary {
    type Err = String;

    /// `N` or `N%`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("bad canary percentage `{s}`"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("canary percentage must be in (0, 100], got {v}"));
            }
            return Ok(Canary::Percent(v));
        }
        s.parse::<u32>().map(Canary::Count).map_err(|_| format!("bad canary `{s}`: use N or N%"))
    }
}

impl Canary {
    /// Size of the canary among `n` devices: at least 1, and fewer than `n` when `n > 1` so
    /// that a rest remains to be gated.
    pub fn size(self, n: usize) -> usize {
        if n <= 1 {
            return n;
        }
        let k = match self {
            Canary::Count(c) => c as usize,
            Canary::Percent(p) => ((p / 100.0) * n as f64).ceil() as usize,
        };
        k.clamp(1, n - 1)
    }
}

/// A deployment as requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Client-chosen id: creating twice with it returns the first deployment.
    #[serde(default)]
    pub id: Option<String>,
    /// The model: registry id, name or digest prefix.
    pub model: String,
    /// Devices: `all`, `profile:NAME` or ids (see campaigns).
    pub devices: String,
    /// Canary size (`N` or `N%`).
    #[serde(default, deserialize_with = "canary_text")]
    pub canary: Canary,
    /// Health gate, e.g. `p99_ms<=50,error_rate<=0.01`.
    #[serde(default = "default_gate", deserialize_with = "gate_text")]
    pub gate: gate::Gate,
    /// Gate window, seconds.
    #[serde(default = "default_window_s")]
    pub window_s: f64,
    /// The gate needs this many requests over the canary; a quieter canary's window is
    /// extended up to `max_window_s`, then the gate fails (unless probe traffic is on).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Longest gate window, seconds (default: 3 × `window_s`).
    #[serde(default)]
    pub max_window_s: Option<f64>,
    /// Probe requests per second each agent sends to itself while the model is new, so quiet
    /// devices still give the gate traffic. 0: none.
    #[serde(default)]
    pub probe_rps: u32,
    /// Latency budget of the monitoring rule, ms (of p50 unless `objective` says otherwise);
    /// default: the pipeline's budget for a pipeline's winner.
    #[serde(default)]
    pub latency_budget_ms: Option<f64>,
    /// Reference data for drift (a data spec, as `compress --data`); default: the pipeline's
    /// validation data for a pipeline's winner.
    #[serde(default)]
    pub reference_data: Option<String>,
    /// The pipeline whose winner this is, if any.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Name the model is served under (default: its registry name).
    #[serde(default)]
    pub model_name: Option<String>,
    /// Time an agent has to fetch, load and warm the model, seconds.
    #[serde(default = "default_activation_timeout_s")]
    pub activation_timeout_s: f64,
}

fn default_gate() -> gate::Gate {
    gate::Gate { p99_ms: None, p50_ms: None, error_rate: Some(0.05) }
}

fn default_window_s() -> f64 {
    60.0
}

fn default_min_requests() -> u64 {
    20
}

fn default_activation_timeout_s() -> f64 {
    120.0
}

fn canary_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Canary, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u32),
        Canary(Canary),
    }
    match Either::deserialize(d)? {
        Either::Text(s) => s.parse().map_err(serde::de::Error::custom),
        Either::Number(n) => Ok(Canary::Count(n)),
        Either::Canary(c) => Ok(c),
    }
}

fn gate_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<gate::Gate, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Gate(gate::Gate),
    }
    match Either::deserialize(d)? {
        Either::Text(s) => s.parse().map_err(serde::de::Error::custom),
        Either::Gate(g) => Ok(g),
    }
}

impl DeployRequest {
    /// A request with the defaults for `model` on `devices`.
    pub fn new(model: &str, devices: &str) -> DeployRequest {
        DeployRequest {
            id: None,
            model: model.into(),
            devices: devices.into(),
            canary: Canary::default(),
            gate: default_gate(),
            window_s: default_window_s(),
            min_requests: default_min_requests(),
            max_window_s: None,
            probe_rps: 0,
            latency_budget_ms: None,
            reference_data: None,
            pipeline: None,
            model_name: None,
            activation_timeout_s: default_activation_timeout_s(),
        }
    }

    /// Checks that need neither the database nor the fleet.
    pub fn check(&self) -> Result<(), String> {
        if let Some(id) = &self.id
            && (id.is_empty()
                || id.len() > 64
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!(
                "deployment id `{id}`: 1 to 64 letters, digits, dashes or underscores"
            ));
        }
        self.devices.parse::<DeviceSelector>()?;
        let positive = |v: f64, what: &str| {
            if v > 0.0 && v.is_finite() { Ok(()) } else { Err(format!("{what} must be positive")) }
        };
        positive(self.window_s, "window")?;
        positive(self.activation_timeout_s, "activation timeout")?;
        if let Some(m) = self.max_window_s {
            positive(m, "max window")?;
            if m < self.window_s {
                return Err(format!(
                    "max window {m} s is shorter than the window {} s",
                    self.window_s
                ));
            }
        }
        if let Some(b) = self.latency_budget_ms {
            positive(b, "latency budget")?;
        }
        if self.probe_rps > 100 {
            return Err("probe traffic is at most 100 requests per second".into());
        }
        if let Some(n) = &self.model_name
            && (n.is_empty()
                || n.len() > 64
                || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(format!("model name `{n}`: 1 to 64 letters, digits, `-`, `_` or `.`"));
        }
        Ok(())
    }

    /// The longest gate window, seconds.
    pub fn max_window(&self) -> f64 {
        self.max_window_s.unwrap_or(self.window_s * 3.0)
    }
}

/// Why a deployment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// Some of the devices are in another deployment that has not ended (409): two rollouts
    /// on one device would each believe their model is the one it serves.
    #[error("{0}")]
    Busy(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// Plans and stores a deployment; returns its id and whether it is new (an existing id returns
/// the stored deployment unchanged). The devices are those the selector names and that are
/// dispatchable now; the canary is the first of them in id order.
pub async fn create(
    db: &Db,
    req: &DeployRequest,
    now_ms: i64,
) -> Result<(String, bool), CreateError> {
    req.check().map_err(CreateError::Invalid)?;
    let id = req
        .id
        .clone()
        .unwrap_or_else(|| format!("d-{}", ulid::Ulid::new().to_string().to_lowercase()));
    if db.deployment(&id).await?.is_some() {
        return Ok((id, false));
    }
    let model = db
        .find_model(&req.model)
        .await?
        .ok_or_else(|| CreateError::Invalid(format!("no model `{}`", req.model)))?;
    if let Some(why) = crate::models::runtime_refusal(&model, hone_common::bench::Runtime::Tract) {
        return Err(CreateError::Invalid(format!("{why}; agents serve in tract only")));
    }
    let selector: DeviceSelector = req.devices.parse().map_err(CreateError::Invalid)?;
    let devices = db.devices().await?;
    let mut chosen =
        crate::campaign::select_devices(&selector, &devices, hone_common::bench::Runtime::Tract)
            .map_err(|e| CreateError::Invalid(e.to_string()))?;
    let offline: Vec<&String> = chosen
        .iter()
        .filter(|id| !devices.iter().any(|d| &&d.id == id && d.dispatchable()))
        .collect();
    if !offline.is_empty() {
        return Err(CreateError::Invalid(format!(
            "devices not online (or speaking another wire version): {}",
            offline.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    chosen.sort();
    for other in db.deployments(true).await? {
        let busy: Vec<String> = db
            .deployment_devices(&other.id)
            .await?
            .into_iter()
            .filter(|x| chosen.contains(&x.device_id))
            .map(|x| x.device_id)
            .collect();
        if !busy.is_empty() {
            return Err(CreateError::Busy(format!(
                "{} in deployment {} ({}): wait for it to end, or roll it back",
                busy.join(", "),
                other.id,
                other.state
            )));
        }
    }
    let canary = req.canary.size(chosen.len());
    let current = db.device_models().await?;
    let plan: Vec<(String, i64, Option<String>)> = chosen
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let previous =
                current.iter().find(|m| &m.device_id == d).and_then(|m| m.active_model_id.clone());
            (d.clone(), i64::from(i >= canary), previous)
        })
        .collect();
    let mut stored = req.clone();
    stored.id = Some(id.clone());
    stored.model = model.id.clone();
    if stored.model_name.is_none() {
        stored.model_name = Some(served_name(&model.name));
    }
    let value = serde_json::to_value(&stored).expect("serialises");
    let new = db.create_deployment(&id, &value, &model.id, &plan, now_ms).await?;
    if new {
        for (device, _, _) in &plan {
            db.set_device_model(device, Some(Some(&model.id)), None, &id, now_ms).await?;
        }
    }
    Ok((id, new))
}

/// A registry name as a served model name (`/v2/models/{name}`): unsafe characters become `-`.
pub fn served_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(64)
        .collect();
    if n.is_empty() { "model".into() } else { n }
}

/// Starts rolling a deployment back (the gate failed, a device could not activate, or an
/// operator asked): `false` if it is already rolling back or rolled back. Every device of the
/// deployment should serve its previous model again, whatever it serves now: the rollout then
/// sends it back where needed.
pub async fn rollback(db: &Db, id: &str, reason: &str, now_ms: i64) -> crate::db::Result<bool> {
    if !db.begin_rollback(id, reason, now_ms).await? {
        return Ok(false);
    }
    for x in db.deployment_devices(id).await? {
        db.set_device_model(&x.device_id, Some(x.previous_model_id.as_deref()), None, id, now_ms)
            .await?;
    }
    Ok(true)
}

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_sizes_leave_a_rest() {
        assert_eq!(Canary::Count(1).size(10), 1);
        assert_eq!(Canary::Count(20).size(10), 9);
        assert_eq!(Canary::Percent(10.0).size(10), 1);
        assert_eq!(Canary::Percent(25.0).size(10), 3, "rounded up");
        assert_eq!(Canary::Percent(100.0).size(3), 2);
        assert_eq!(Canary::Count(3).size(1), 1, "a single device is its own canary");
        assert_eq!("20%".parse::<Canary>().unwrap(), Canary::Percent(20.0));
        assert_eq!("2".parse::<Canary>().unwrap(), Canary::Count(2));
        assert!("0%".parse::<Canary>().is_err());
        assert!("x".parse::<Canary>().is_err());
    }

    #[test]
    fn requests_parse_from_text_fields_and_check_their_numbers() {
        let r: DeployRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "devices": "profile:rpi4", "canary": "50%", "gate": "p99_ms<=40,error_rate<=0.01",
        }))
        .unwrap();
        assert_eq!(r.canary, Canary::Percent(50.0));
        assert_eq!(r.gate.p99_ms, Some(40.0));
        assert_eq!(r.gate.error_rate, Some(0.01));
        assert!(r.check().is_ok());
        let mut bad = r.clone();
        bad.devices = "Bad/Id".into();
        assert!(bad.check().is_err());
        let mut bad = r.clone();
        bad.max_window_s = Some(1.0);
        assert!(bad.check().unwrap_err().contains("shorter"));
        let mut bad = r;
        bad.id = Some("a b".into());
        assert!(bad.check().is_err());
    }

    #[test]
    fn served_names_are_safe_path_segments() {
        assert_eq!(served_name("mnist cnn/v2"), "mnist-cnn-v2");
        assert_eq!(served_name(""), "model");
    }
}
