//! MQTT topics: the only place topic strings are built or parsed.
//!
//! Scheme (`hone` prefix, `v1` schema major; see docs/wire-protocol.md):
//!
//! | topic | direction | QoS | retained |
//! |---|---|---|---|
//! | `hone/v1/dev/{device}/status` | agent → all (birth, and Last Will with `online=false`) | 1 | yes |
//! | `hone/v1/dev/{device}/cmd/{kind}` | coordinator → agent | 1 | no |
//! | `hone/v1/dev/{device}/evt/{kind}` | agent → coordinator | 1 | no |
//! | `hone/v1/coord/status` | coordinator → all (and its Last Will) | 1 | yes |

use crate::validate_device_id;

const PREFIX: &str = "hone/v1";

/// Commands sent to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdKind {
    /// Run a benchmark job ([`crate::wire::JobCommand`]).
    Job,
    /// A result was stored; drop it from the outbox ([`crate::wire::ResultAck`]).
    Ack,
    /// Serve a model ([`crate::wire::ActivateCommand`]).
    Deploy,
}

/// Events sent by a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvtKind {
    /// A job was accepted and started.
    Accepted,
    /// A job finished (success or failure).
    Result,
    /// An activation ended ([`crate::wire::ActivationReport`]).
    Activation,
    /// A serving window ([`crate::wire::Telemetry`]); windows the agent could not send are
    /// counted in the next one.
    Telemetry,
}

impl CmdKind {
    fn as_str(self) -> &'static str {
        match self {
            CmdKind::Job => "job",
            CmdKind::Ack => "ack",
            CmdKind::Deploy => "deploy",
        }
    }
}

impl EvtKind {
    fn as_str(self) -> &'static str {
        match self {
            EvtKind::Accepted => "accepted",
            EvtKind::Result => "result",
            EvtKind::Activation => "activation",
            EvtKind::Telemetry => "telemetry",
        }
    }
}

/// A parsed Hone topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// A device's retained status.
    Status {
        /// Device id.
        device: String,
    },
    /// A command to a device.
    Cmd {
        /// Device id.
        device: String,
        /// Command kind.
        kind: CmdKind,
    },
    /// An event from a device.
    Evt {
        /// Device id.
        device: String,
        /// Event kind.
        kind: EvtKind,
    },
    /// The coordinator's retained status.
    CoordStatus,
}

/// `hone/v1/dev/{device}/status`.
pub fn status(device: &str) -> String {
    format!("{PREFIX}/dev/{device}/status")
}

/// `hone/v1/dev/{device}/cmd/{kind}`.
pub fn cmd(device: &str, kind: CmdKind) -> String {
    format!("{PREFIX}/dev/{device}/cmd/{}", kind.as_str())
}

/// `hone/v1/dev/{device}/evt/{kind}`.
pub fn evt(device: &str, kind: EvtKind) -> String {
    format!("{PREFIX}/dev/{device}/evt/{}", kind.as_str())
}

/// `hone/v1/coord/status`.
pub const COORD_STATUS: &str = "hone/v1/coord/status";

/// Filter an agent subscribes to: its own commands only (never `#`).
pub fn agent_subscription(device: &str) -> String {
    format!("{PREFIX}/dev/{device}/cmd/+")
}

/// Filters the coordinator subscribes to.
pub const COORDINATOR_SUBSCRIPTIONS: [&str; 2] = ["hone/v1/dev/+/status", "hone/v1/dev/+/evt/+"];

/// Parses a topic; `None` for anything that is not a well-formed Hone topic.
pub fn parse(topic: &str) -> Option<Topic> {
    if topic == COORD_STATUS {
        return Some(Topic::CoordStatus);
    }
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/dev/")?;
    let mut parts = rest.split('/');
    let device = parts.next()?;
    validate_device_id(device).ok()?;
    let device = device.to_string();
    let parsed = match (parts.next()?, parts.next()) {
        ("status", None) => return Some(Topic::Status { device }),
        ("cmd", Some("job")) => Topic::Cmd { device, kind: CmdKind::Job },
        ("cmd", Some("ack")) => Topic::Cmd { device, kind: CmdKind::Ack },
        ("cmd", Some("deploy")) => Topic::Cmd { device, kind: CmdKind::Deploy },
        ("evt", Some("accepted")) => Topic::Evt { device, kind: EvtKind::Accepted },
        ("evt", Some("result")) => Topic::Evt { device, kind: EvtKind::Result },
        ("evt", Some("activation")) => Topic::Evt { device, kind: EvtKind::Activation },
        ("evt", Some("telemetry")) => Topic::Evt { device, kind: EvtKind::Telemetry },
        _ => return None,
    };
    parts.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_topics_parse_back() {
        let d = "rpi4-01";
        assert_eq!(parse(&status(d)), Some(Topic::Status { device: d.into() }));
        for kind in [CmdKind::Job, CmdKind::Ack, CmdKind::Deploy] {
            assert_eq!(parse(&cmd(d, kind)), Some(Topic::Cmd { device: d.into(), kind }));
        }
        for kind in [EvtKind::Accepted, EvtKind::Result, EvtKind::Activation, EvtKind::Telemetry] {
            assert_eq!(parse(&evt(d, kind)), Some(Topic::Evt { device: d.into(), kind }));
        }
        assert_eq!(parse(COORD_STATUS), Some(Topic::CoordStatus));
    }

    #[test]
    fn topics_follow_the_documented_scheme() {
        assert_eq!(status("a"), "hone/v1/dev/a/status");
        assert_eq!(cmd("a", CmdKind::Job), "hone/v1/dev/a/cmd/job");
        assert_eq!(evt("a", EvtKind::Result), "hone/v1/dev/a/evt/result");
        assert_eq!(agent_subscription("a"), "hone/v1/dev/a/cmd/+");
    }

    #[test]
    fn foreign_or_malformed_topics_are_rejected() {
        for t in [
            "hone/v2/dev/a/status",
            "hone/v1/dev/A/status",
            "hone/v1/dev/a/status/extra",
            "hone/v1/dev/a/evt/result/x",
            "hone/v1/dev/a/evt/unknown",
            "hone/v1/dev//status",
            "other/topic",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }
}
