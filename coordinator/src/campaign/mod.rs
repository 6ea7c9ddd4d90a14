//! Campaigns: models × devices → jobs, planned here (pure) and driven by [`engine`].

pub mod engine;

use std::collections::{HashMap, HashSet};

use hone_common::bench::{BenchSpec, Runtime};
use serde::{Deserialize, Serialize};

use crate::db::DeviceRow;

/// Which devices a campaign targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSelector {
    /// Every device online (and speaking this wire version) when the campaign starts.
    All,
    /// Every online device with this profile (and speaking this wire version).
    Profile(String),
    /// These devices, online or not (offline or incompatible ones wait, then fail after the job
    /// timeout with the reason).
    Ids(Vec<String>),
}

impl std::str::FromStr for DeviceSelector {
    type Err = String;

    /// `all`, `profile:NAME` or `ID,ID,...`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(DeviceSelector::All);
        }
        if let Some(p) = s.strip_prefix("profile:") {
            if p.is_empty() {
                return Err("`profile:` needs a profile name".into());
            }
            return Ok(DeviceSelector::Profile(p.to_string()));
        }
        let ids: Vec<String> =
            s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
        if ids.is_empty() {
            return Err(
                "no devices given: use `all`, `profile:NAME` or a list of device ids".into()
            );
        }
        for id in &ids {
            hone_common::validate_device_id(id)?;
        }
        Ok(DeviceSelector::Ids(ids))
    }
}

/// A campaign as requested through the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignRequest {
    /// Client-chosen id, which makes creation idempotent (retries by schedulers such as Airflow
    /// do not create twice). Generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Models by id, name or digest prefix.
    pub models: Vec<String>,
    /// `all`, `profile:NAME` or comma-separated device ids.
    pub devices: String,
    /// Benchmark settings.
    #[serde(default)]
    pub bench: BenchSpec,
    /// Time allowed for one attempt on a device (download + benchmark), ms.
    #[serde(default = "default_job_timeout_ms")]
    pub job_timeout_ms: u64,
    /// Dispatches per job before it fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// At most this many jobs of the campaign run at once (fleet-wide). `None`: one per device.
    #[serde(default)]
    pub max_parallel: Option<u32>,
}

fn default_job_timeout_ms() -> u64 {
    300_000
}

fn default_max_attempts() -> u32 {
    3
}

/// What is stored for a campaign: the request with models and devices resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignSpec {
    /// Model ids.
    pub models: Vec<String>,
    /// Device ids.
    pub devices: Vec<String>,
    /// The selector as given.
    pub selector: DeviceSelector,
    /// Benchmark settings.
    pub bench: BenchSpec,
    /// Per-attempt timeout, ms.
    pub job_timeout_ms: u64,
    /// Dispatches per job.
    pub max_attempts: u32,
    /// Fleet-wide concurrency limit.
    pub max_parallel: Option<u32>,
    /// Whether a job whose device dies (offline, agent restarted, incompatible) moves to
    /// another device with that device's profile, as jobs of a `Profile` selector always do.
    /// For id-selected campaigns whose devices share a profile (a pipeline's device class).
    #[serde(default)]
    pub reassign_within_class: bool,
}

impl CampaignSpec {
    /// The device class a job of this campaign may move within when its device dies: the
    /// selector's profile, or with [`CampaignSpec::reassign_within_class`] the profile of the
    /// job's device (`device_profile`). `None`: jobs stay on their device.
    pub fn device_class<'a>(&'a self, device_profile: Option<&'a str>) -> Option<&'a str> {
        match &self.selector {
            DeviceSelector::Profile(p) => Some(p),
            _ if self.reassign_within_class => device_profile,
            _ => None,
        }
    }
}

/// Where a job of device class `profile` goes when its device `from` cannot take it: another
/// dispatchable device of that profile that runs the job's `runtime`. Idle devices (not in `busy`) come first, then the least
/// loaded (`load`: jobs queued on or active at each device), then by id. With `idle_only`, only
/// an idle device will do. `None` if no device fits.
#[allow(clippy::too_many_arguments)]
pub fn pick_class_device<'a>(
    profile: &str,
    runtime: Runtime,
    from: &str,
    devices: impl IntoIterator<Item = &'a DeviceRow>,
    busy: &HashSet<String>,
    load: &HashMap<String, usize>,
    idle_only: bool,
) -> Option<String> {
    devices
        .into_iter()
        .filter(|d| {
            d.id != from && d.dispatchable_for(runtime) && d.profile.as_deref() == Some(profile)
        })
        .filter(|d| !idle_only || !busy.contains(&d.id))
        .min_by_key(|d| (busy.contains(&d.id), load.get(&d.id).copied().unwrap_or(0), &d.id))
        .map(|d| d.id.clone())
}

/// Why a campaign cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Selector matched nothing.
    #[error("no device matches `{0}` (devices must be online for `all` and `profile:`)")]
    NoDevices(String),
    /// Named devices are unknown.
    #[error("unknown device(s): {0}")]
    UnknownDevices(String),
    /// No models.
    #[error("a campaign needs at least one model")]
    NoModels,
    /// Bad numbers.
    #[error("{0}")]
    Invalid(String),
    /// Devices that cannot run the campaign's runtime, each with its agent's reason.
    #[error("{0}")]
    RuntimeUnavailable(String),
}

/// Resolves the devices of a selector against the registry, for jobs in `runtime`: `all` and
/// `profile:` take the online devices that run it; named devices that are known not to run it
/// are refused with their agents' reasons (never sent a job they would refuse).
pub fn select_devices(
    selector: &DeviceSelector,
    devices: &[DeviceRow],
    runtime: Runtime,
) -> Result<Vec<String>, PlanError> {
    let in_selector = |d: &&DeviceRow| match selector {
        DeviceSelector::All => d.dispatchable(),
        DeviceSelector::Profile(p) => d.dispatchable() && d.profile.as_deref() == Some(p),
        DeviceSelector::Ids(_) => false,
    };
    let cannot = |ds: Vec<&DeviceRow>| {
        let why: Vec<String> = ds
            .iter()
            .map(|d| format!("{}: {}", d.id, d.runtime_problem(runtime).unwrap_or_default()))
            .collect();
        PlanError::RuntimeUnavailable(format!(
            "no device can run {runtime} here ({})",
            why.join("; ")
        ))
    };
    let chosen: Vec<String> = match selector {
        DeviceSelector::All | DeviceSelector::Profile(_) => {
            let matching: Vec<&DeviceRow> = devices.iter().filter(in_selector).collect();
            let able: Vec<String> = matching
                .iter()
                .filter(|d| d.runtime_problem(runtime).is_none())
                .map(|d| d.id.clone())
                .collect();
            if able.is_empty() && !matching.is_empty() {
                return Err(cannot(matching));
            }
            able
        }
        DeviceSelector::Ids(ids) => {
            let unknown: Vec<&str> = ids
                .iter()
                .filter(|id| !devices.iter().any(|d| &d.id == *id))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(PlanError::UnknownDevices(unknown.join(", ")));
            }
            // A device on another wire version has announced nothing yet: it waits as before.
            let unable: Vec<&DeviceRow> = devices
                .iter()
                .filter(|d| ids.contains(&d.id) && d.problem.is_none())
                .filter(|d| d.runtime_problem(runtime).is_some())
                .collect();
            if !unable.is_empty() {
                return Err(cannot(unable));
            }
            let mut ids = ids.clone();
            ids.dedup();
            ids
        }
    };
    if chosen.is_empty() {
        let text = match selector {
            DeviceSelector::All => "all".to_string(),
            DeviceSelector::Profile(p) => format!("profile:{p}"),
            DeviceSelector::Ids(ids) => ids.join(","),
        };
        return Err(PlanError::NoDevices(text));
    }
    Ok(chosen)
}

/// The jobs of a campaign, as (model id, device id) in dispatch order: model-major, so every
/// device starts on the first model.
pub fn plan_jobs(
    models: &[String],
    devices: &[String],
) -> Result<Vec<(String, String)>, PlanError> {
    if models.is_empty() {
        return Err(PlanError::NoModels);
    }
    Ok(models.iter().flat_map(|m| devices.iter().map(move |d| (m.clone(), d.clone()))).collect())
}

/// Checks the numbers of a request.
pub fn validate(req: &CampaignRequest) -> Result<(), PlanError> {
    if req.max_attempts == 0 || req.max_attempts > 20 {
        return Err(PlanError::Invalid("max_attempts must be between 1 and 20".into()));
    }
    if req.job_timeout_ms < 1_000 {
        return Err(PlanError::Invalid("job_timeout_ms must be at least 1000".into()));
    }
    if req.bench.max_iterations == 0 {
        return Err(PlanError::Invalid("bench.max_iterations must be at least 1".into()));
    }
    if req.max_parallel == Some(0) {
        return Err(PlanError::Invalid("max_parallel must be at least 1".into()));
    }
    if let Some(id) = &req.id
        && (id.is_empty()
            || id.len() > 64
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(PlanError::Invalid("campaign id: 1-64 letters, digits, `-` or `_`".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, online: bool, profile: Option<&str>) -> DeviceRow {
        DeviceRow {
            id: id.into(),
            online,
            session: 1,
            arch: "x86_64".into(),
            os: "linux".into(),
            cores: 2,
            memory_bytes: 1,
            agent_version: "0".into(),
            profile: profile.map(Into::into),
            first_seen_ms: 0,
            last_seen_ms: 0,
            status_changed_ms: 0,
            wire_version: i64::from(hone_common::wire::WIRE_VERSION),
            status: if online { "online" } else { "offline" },
            problem: None,
            runtimes: Vec::new(),
        }
    }

    /// A device whose agent announced ONNX Runtime: `Ok(version)` or `Err(problem)`.
    fn with_ort(mut d: DeviceRow, ort: Result<&str, &str>) -> DeviceRow {
        use hone_common::bench::RuntimeAvailability;
        d.runtimes = vec![
            RuntimeAvailability {
                runtime: Runtime::Tract,
                version: Some("0.23.9".into()),
                problem: None,
            },
            RuntimeAvailability {
                runtime: Runtime::Ort,
                version: ort.ok().map(Into::into),
                problem: ort.err().map(Into::into),
            },
        ];
        d
    }

    #[test]
    fn onnx_runtime_jobs_go_only_to_devices_that_run_it() {
        let devs = [
            with_ort(dev("a", true, Some("rpi4")), Ok("1.31.1")),
            with_ort(dev("b", true, Some("rpi4")), Err("no ONNX Runtime library at /x")),
            dev("c", true, Some("rpi5")), // announced nothing (tract only)
        ];
        let ort = Runtime::Ort;
        assert_eq!(select_devices(&DeviceSelector::All, &devs, ort).unwrap(), vec!["a"]);
        assert_eq!(
            select_devices(&DeviceSelector::Profile("rpi4".into()), &devs, ort).unwrap(),
            vec!["a"]
        );
        // Every device of the class lacks it: refused with each one's reason.
        let e = select_devices(&DeviceSelector::Profile("rpi5".into()), &devs, ort).unwrap_err();
        assert!(
            matches!(&e, PlanError::RuntimeUnavailable(m) if m.contains("c: its agent does not announce ort")),
            "{e}"
        );
        // Named: a device known not to run it is refused by name, the others are not blamed.
        let e = select_devices(&DeviceSelector::Ids(vec!["a".into(), "b".into()]), &devs, ort)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b: no ONNX Runtime library at /x") && !e.contains("a:"), "{e}");
        assert_eq!(
            select_devices(&DeviceSelector::Ids(vec!["b".into()]), &devs, Runtime::Tract).unwrap(),
            vec!["b"],
            "tract runs everywhere"
        );
        // A device on another wire version has announced nothing yet: it waits, as before.
        let mut old = dev("d", true, Some("rpi4"));
        old.wire_version -= 1;
        old.problem = crate::db::wire_problem("d", old.wire_version);
        let devs = [old];
        assert_eq!(
            select_devices(&DeviceSelector::Ids(vec!["d".into()]), &devs, ort).unwrap(),
            vec!["d"]
        );
        // A job moving within its class goes only to a device that runs its runtime.
        let devs = [
            with_ort(dev("a", true, Some("rpi4")), Ok("1.31.1")),
            with_ort(dev("b", true, Some("rpi4")), Err("broken")),
            with_ort(dev("e", true, Some("rpi4")), Err("broken")),
        ];
        let (none, load) = (HashSet::new(), HashMap::new());
        assert_eq!(
            pick_class_device("rpi4", ort, "e", &devs, &none, &load, false).as_deref(),
            Some("a")
        );
        assert_eq!(pick_class_device("rpi4", ort, "a", &devs, &none, &load, false), None);
        assert_eq!(
            pick_class_device("rpi4", Runtime::Tract, "a", &devs, &none, &load, false).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn selectors_parse() {
        assert_eq!("all".parse::<DeviceSelector>().unwrap(), DeviceSelector::All);
        assert_eq!(
            "profile:rpi4".parse::<DeviceSelector>().unwrap(),
            DeviceSelector::Profile("rpi4".into())
        );
        assert_eq!(
            "a, b".parse::<DeviceSelector>().unwrap(),
            DeviceSelector::Ids(vec!["a".into(), "b".into()])
        );
        assert!("".parse::<DeviceSelector>().is_err());
        assert!("profile:".parse::<DeviceSelector>().is_err());
        assert!("a/b".parse::<DeviceSelector>().is_err());
    }

    #[test]
    fn all_and_profile_select_only_online_devices() {
        let devs = [
            dev("a", true, Some("rpi4")),
            dev("b", false, Some("rpi4")),
            dev("c", true, Some("rpi5")),
        ];
        assert_eq!(
            select_devices(&DeviceSelector::All, &devs, Runtime::Tract).unwrap(),
            vec!["a", "c"]
        );
        assert_eq!(
            select_devices(&DeviceSelector::Profile("rpi4".into()), &devs, Runtime::Tract).unwrap(),
            vec!["a"]
        );
        assert!(matches!(
            select_devices(&DeviceSelector::Profile("n100".into()), &devs, Runtime::Tract),
            Err(PlanError::NoDevices(_))
        ));
    }

    #[test]
    fn all_and_profile_skip_devices_on_another_wire_version() {
        let mut old = dev("old", true, Some("rpi4"));
        old.wire_version -= 1;
        old.problem = crate::db::wire_problem("old", old.wire_version);
        let devs = [old, dev("new", true, Some("rpi4"))];
        assert_eq!(
            select_devices(&DeviceSelector::All, &devs, Runtime::Tract).unwrap(),
            vec!["new"]
        );
        assert_eq!(
            select_devices(&DeviceSelector::Profile("rpi4".into()), &devs, Runtime::Tract).unwrap(),
            vec!["new"]
        );
    }

    #[test]
    fn explicit_ids_must_exist_but_may_be_offline() {
        let devs = [dev("a", true, None), dev("b", false, None)];
        assert_eq!(
            select_devices(&DeviceSelector::Ids(vec!["b".into()]), &devs, Runtime::Tract).unwrap(),
            vec!["b"]
        );
        assert_eq!(
            select_devices(
                &DeviceSelector::Ids(vec!["a".into(), "zz".into()]),
                &devs,
                Runtime::Tract
            ),
            Err(PlanError::UnknownDevices("zz".into()))
        );
    }

    #[test]
    fn a_class_device_is_another_dispatchable_one_of_the_profile_idle_first_then_least_loaded() {
        let mut incompatible = dev("e", true, Some("rpi4"));
        incompatible.problem = Some("needs wire version 9".into());
        let devs = [
            dev("a", false, Some("rpi4")),
            dev("b", true, Some("rpi4")),
            dev("c", true, Some("rpi4")),
            dev("d", true, Some("rpi5")),
            incompatible,
        ];
        let none = HashSet::new();
        let load: HashMap<String, usize> = [("b".to_string(), 2), ("c".to_string(), 1)].into();
        let pick = |busy: &HashSet<String>, idle_only| {
            pick_class_device("rpi4", Runtime::Tract, "a", &devs, busy, &load, idle_only)
        };
        assert_eq!(pick(&none, false).as_deref(), Some("c"), "both idle: the least loaded");
        let c_busy: HashSet<String> = ["c".to_string()].into();
        assert_eq!(pick(&c_busy, false).as_deref(), Some("b"), "idle beats less loaded");
        let both: HashSet<String> = ["b".to_string(), "c".to_string()].into();
        assert_eq!(pick(&both, false).as_deref(), Some("c"), "all busy: still moved");
        assert_eq!(pick(&both, true), None, "idle only");
        assert_eq!(
            pick_class_device("rpi5", Runtime::Tract, "d", &devs, &none, &load, false),
            None,
            "alone"
        );
        assert_eq!(
            pick_class_device("n100", Runtime::Tract, "a", &devs, &none, &load, false),
            None
        );
    }

    #[test]
    fn the_device_class_is_the_selector_profile_or_on_request_the_device_profile() {
        let mut spec = CampaignSpec {
            models: vec![],
            devices: vec![],
            selector: DeviceSelector::Profile("rpi4".into()),
            bench: Default::default(),
            job_timeout_ms: 1,
            max_attempts: 1,
            max_parallel: None,
            reassign_within_class: false,
        };
        assert_eq!(spec.device_class(Some("rpi5")), Some("rpi4"));
        spec.selector = DeviceSelector::Ids(vec!["a".into()]);
        assert_eq!(spec.device_class(Some("rpi5")), None, "ids stay put by default");
        spec.reassign_within_class = true;
        assert_eq!(spec.device_class(Some("rpi5")), Some("rpi5"));
        assert_eq!(spec.device_class(None), None);
        let mut stored = serde_json::to_value(&spec).unwrap();
        stored.as_object_mut().unwrap().remove("reassign_within_class").unwrap();
        let old: CampaignSpec = serde_json::from_value(stored).unwrap();
        assert!(!old.reassign_within_class, "specs stored before the flag read as false");
    }

    #[test]
    fn jobs_are_models_times_devices_model_major() {
        let jobs = plan_jobs(&["m1".into(), "m2".into()], &["a".into(), "b".into()]).unwrap();
        let flat: Vec<String> = jobs.iter().map(|(m, d)| format!("{m}@{d}")).collect();
        assert_eq!(flat, ["m1@a", "m1@b", "m2@a", "m2@b"]);
        assert_eq!(plan_jobs(&[], &["a".into()]), Err(PlanError::NoModels));
    }
}
