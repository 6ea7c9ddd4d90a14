//! The canary's health gate: a pure function of the canary's telemetry since the gate opened.
//!
//! The gate opens when every canary device reported the model active. From then on the
//! canary's telemetry windows (of this deployment only) are summed: requests, errors, and the
//! latency figures (p99: the largest window p99; p50: the request-weighted mean of the window
//! medians). After `window_s`:
//! - with at least `min_requests` requests, the gate passes if every threshold holds and fails
//!   naming the figure that does not;
//! - with fewer, the window is extended (a quiet canary), up to `max_window_s`, after which the
//!   gate fails: too little traffic to judge. Probe traffic (`probe_rps`) avoids this.
//!
//! An error rate over its threshold with `min_requests` already seen fails at once, without
//! waiting for the window to end.

use serde::{Deserialize, Serialize};

use crate::db::TelemetryRow;

/// Thresholds; `None` is not checked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Largest accepted p99, ms.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Largest accepted p50, ms.
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// Largest accepted error rate (errors / requests, 0..1).
    #[serde(default)]
    pub error_rate: Option<f64>,
}

impl std::str::FromStr for Gate {
    type Err = String;

    /// `p99_ms<=X,p50_ms<=Y,error_rate<=Z` (any subset; `none` for no threshold).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut g = Gate { p99_ms: None, p50_ms: None, error_rate: None };
        if s.trim() == "none" {
            return Ok(g);
        }
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once("<=")
                .ok_or_else(|| format!("gate term `{part}`: use NAME<=VALUE"))?;
            let v: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("gate term `{part}`: `{value}` is not a number"))?;
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("gate term `{part}`: the value must be non-negative"));
            }
            match key.trim() {
                "p99_ms" => g.p99_ms = Some(v),
                "p50_ms" => g.p50_ms = Some(v),
                "error_rate" if v <= 1.0 => g.error_rate = Some(v),
                "error_rate" => return Err("error_rate is a fraction between 0 and 1".into()),
                other => {
                    return Err(format!(
                        "unknown gate figure `{other}`: p99_ms, p50_ms or error_rate"
                    ));
                }
            }
        }
        Ok(g)
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.p99_ms {
            parts.push(format!("p99_ms<={v}"));
        }
        if let Some(v) = self.p50_ms {
            parts.push(format!("p50_ms<={v}"));
        }
        if let Some(v) = self.error_rate {
            parts.push(format!("error_rate<={v}"));
        }
        if parts.is_empty() { f.write_str("none") } else { f.write_str(&parts.join(",")) }
    }
}

/// What the canary's telemetry adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests answered.
    pub requests: u64,
    /// Errors among them.
    pub errors: u64,
    /// Requests refused (503).
    pub rejected: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// Request-weighted mean of the window medians, ms.
    pub p50_ms: Option<f64>,
    /// Largest window p99, ms.
    pub p99_ms: Option<f64>,
    /// Windows counted.
    pub windows: u64,
    /// Seconds since the gate opened.
    pub elapsed_s: f64,
}

/// Sums the windows.
pub fn figures(windows: &[TelemetryRow], elapsed_s: f64) -> Figures {
    let mut f = Figures { elapsed_s, ..Figures::default() };
    let mut weighted = 0.0;
    let mut weight = 0u64;
    for w in windows {
        f.windows += 1;
        f.requests += w.requests.max(0) as u64;
        f.errors += w.errors.max(0) as u64;
        f.rejected += w.rejected.max(0) as u64;
        let ok = (w.requests - w.errors).max(0) as u64;
        if let Some(p50) = w.p50_ms.filter(|_| ok > 0) {
            weighted += p50 * ok as f64;
            weight += ok;
        }
        if let Some(p99) = w.p99_ms.filter(|_| ok > 0) {
            f.p99_ms = Some(f.p99_ms.map_or(p99, |m: f64| m.max(p99)));
        }
    }
    f.error_rate = if f.requests == 0 { 0.0 } else { f.errors as f64 / f.requests as f64 };
    f.p50_ms = (weight > 0).then(|| weighted / weight as f64);
    f
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Keep waiting; why.
    Wait {
        /// What it waits for.
        reason: String,
        /// The figures so far.
        figures: Figures,
    },
    /// Promote.
    Pass {
        /// The figures that passed.
        figures: Figures,
    },
    /// Roll back; why.
    Fail {
        /// The failed figure, with its value and threshold.
        reason: String,
        /// The figures.
        figures: Figures,
    },
}

/// Judges the canary: `windows` are its telemetry since the gate opened, `elapsed_s` the time
/// since then.
pub fn judge(
    gate: &Gate,
    windows: &[TelemetryRow],
    elapsed_s: f64,
    window_s: f64,
    max_window_s: f64,
    min_requests: u64,
) -> Verdict {
    let f = figures(windows, elapsed_s);
    let enough = f.requests >= min_requests.max(1);
    let error_fail = gate.error_rate.filter(|max| f.error_rate > *max).map(|max| {
        format!(
            "error rate {:.1}% over {} requests exceeds the gate's {:.1}%",
            f.error_rate * 100.0,
            f.requests,
            max * 100.0
        )
    });
    if enough && let Some(reason) = error_fail.clone() {
        return Verdict::Fail { reason, figures: f };
    }
    if elapsed_s < window_s {
        return Verdict::Wait {
            reason: format!(
                "gate window: {:.0} of {:.0} s, {} requests so far",
                elapsed_s, window_s, f.requests
            ),
            figures: f,
        };
    }
    if !enough {
        if elapsed_s < max_window_s {
            return Verdict::Wait {
                reason: format!(
                    "quiet canary: {} of the {} requests the gate needs; window extended ({:.0} of at most {:.0} s)",
                    f.requests, min_requests, elapsed_s, max_window_s
                ),
                figures: f,
            };
        }
        return Verdict::Fail {
            reason: format!(
                "the canary served {} requests in {:.0} s; the gate needs {} (ask for probe traffic with --probe-rps, or lower --min-requests)",
                f.requests, elapsed_s, min_requests
            ),
            figures: f,
        };
    }
    if let (Some(max), Some(v)) = (gate.p99_ms, f.p99_ms)
        && v > max
    {
        return Verdict::Fail {
            reason: format!(
                "p99 {v:.1} ms over {} requests exceeds the gate's {max} ms",
                f.requests
            ),
            figures: f,
        };
    }
    if let (Some(max), Some(v)) = (gate.p50_ms, f.p50_ms)
        && v > max
    {
        return Verdict::Fail {
            reason: format!(
                "p50 {v:.1} ms over {} requests exceeds the gate's {max} ms",
                f.requests
            ),
            figures: f,
        };
    }
    if let Some(reason) = error_fail {
        return Verdict::Fail { reason, figures: f };
    }
    Verdict::Pass { figures: f }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: i64, errors: i64, p50: f64, p99: f64) -> TelemetryRow {
        TelemetryRow {
            device_id: "d".into(),
            resolution_ms: 1000,
            window_start_ms: 0,
            window_ms: 1000,
            model_id: None,
            deployment_id: None,
            requests,
            errors,
            rejected: 0,
            p50_ms: Some(p50),
            p90_ms: Some(p99),
            p99_ms: Some(p99),
            rss_bytes: 0,
            temperature_c: None,
            clock_mhz: None,
            throttled: 0,
            reading_source: None,
            dropped_windows: 0,
            stats: None,
        }
    }

    fn gate(s: &str) -> Gate {
        s.parse().unwrap()
    }

    #[test]
    fn a_healthy_canary_passes_after_its_window() {
        let w = [window(30, 0, 10.0, 20.0), window(30, 0, 12.0, 25.0)];
        let g = gate("p99_ms<=30,error_rate<=0.01");
        assert!(matches!(judge(&g, &w, 5.0, 10.0, 30.0, 20), Verdict::Wait { .. }));
        match judge(&g, &w, 10.0, 10.0, 30.0, 20) {
            Verdict::Pass { figures } => {
                assert_eq!(figures.requests, 60);
                assert_eq!(figures.p99_ms, Some(25.0), "the largest window p99");
                assert!((figures.p50_ms.unwrap() - 11.0).abs() < 1e-9, "request-weighted");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_canary_fails_naming_the_figure() {
        let w = [window(30, 0, 10.0, 45.0)];
        match judge(&gate("p99_ms<=30"), &w, 10.0, 10.0, 30.0, 20) {
            Verdict::Fail { reason, .. } => assert!(reason.contains("p99 45.0 ms"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_fail_at_once_once_there_is_enough_traffic() {
        let w = [window(25, 5, 10.0, 20.0)];
        match judge(&gate("error_rate<=0.05"), &w, 1.0, 60.0, 180.0, 20) {
            Verdict::Fail { reason, .. } => assert!(reason.contains("20.0%"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Too few requests to judge yet: wait.
        let w = [window(5, 5, 10.0, 20.0)];
        assert!(matches!(
            judge(&gate("error_rate<=0.05"), &w, 1.0, 60.0, 180.0, 20),
            Verdict::Wait { .. }
        ));
    }

    #[test]
    fn a_quiet_canary_extends_its_window_then_fails() {
        let w = [window(3, 0, 10.0, 20.0)];
        let g = gate("p99_ms<=30");
        match judge(&g, &w, 61.0, 60.0, 180.0, 20) {
            Verdict::Wait { reason, .. } => assert!(reason.contains("quiet canary"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match judge(&g, &w, 180.0, 60.0, 180.0, 20) {
            Verdict::Fail { reason, .. } => {
                assert!(
                    reason.contains("served 3 requests") && reason.contains("probe"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gates_parse_and_print_back() {
        let g = gate("p99_ms<=50, error_rate<=0.02");
        assert_eq!(g.to_string(), "p99_ms<=50,error_rate<=0.02");
        assert_eq!(gate("none").to_string(), "none");
        assert!("p99_ms>50".parse::<Gate>().is_err());
        assert!("latency<=5".parse::<Gate>().is_err());
        assert!("error_rate<=2".parse::<Gate>().is_err());
    }
}
