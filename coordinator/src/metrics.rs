//! Counters the coordinator exposes at `/api/v1/metrics` (JSON) and `/metrics` (Prometheus).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Process-wide counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Name, help and value of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name.load(Relaxed)),)*]
            }
        }
    };
}

counters! {
    messages_received: "MQTT messages decoded",
    rejected_oversized: "MQTT payloads rejected for exceeding the size limit",
    rejected_malformed: "MQTT payloads rejected as malformed",
    rejected_version: "MQTT payloads rejected for an unsupported wire version",
    unknown_topics: "MQTT messages on topics Hone does not know",
    stale_wills: "Last Will messages ignored because a newer session exists",
    jobs_dispatched: "job dispatches sent",
    jobs_retried: "job attempts ended and queued again",
    jobs_failed: "jobs that failed for good",
    jobs_moved: "queued jobs moved to another device of their class because theirs died",
    jobs_cancelled: "jobs failed because their campaign was cancelled",
    results_stored: "results stored",
    results_duplicate: "results received again after being stored (acked, not stored)",
    documents_replayed: "job and activation documents agents refused as replayed (sequence number not above the last they accepted)",
    bus_connected: "1 while connected to the MQTT broker",
    tls_refused: "TLS handshakes refused (no, foreign, expired or revoked client certificate, or not TLS)",
    mqtt_denied: "device MQTT connections ended by the gate for a packet outside the device's own topics",
    revocation_kicks: "live device MQTT sessions ended by a revocation",
    enrolments: "device certificates issued on enrolment or approved re-enrolment",
    renewals: "device certificates renewed",
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.snapshot() {
            let kind = if name == "bus_connected" { "gauge" } else { "counter" };
            out.push_str(&format!(
                "# HELP hone_{name} {help}\n# TYPE hone_{name} {kind}\nhone_{name} {value}\n"
            ));
        }
        out
    }

    /// JSON object of every counter.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.snapshot().into_iter().map(|(n, _, v)| (n.to_string(), v.into())).collect(),
        )
    }
}
