//! Hone's shared vocabulary, used by the coordinator and the edge agent alike.
//!
//! - [`wire`]: the versioned postcard messages carried over MQTT (the protocol contract).
//! - [`topic`]: the only place MQTT topic strings are built or parsed.
//! - [`bench`]: benchmark specifications and latency statistics.
//! - [`artifact`]: the bytes a job signature covers.
//! - [`serving`]: serving telemetry windows, tensor statistics and the drift test.
//! - [`shapes`]: input shapes (`NAME=1x3x48x320`) and how declared shapes become concrete.
//! - [`bus`]: the MQTT connection settings and packet limits both sides use.
//! - [`clock`]: the one wall clock (Unix milliseconds).
//!
//! Invariant: this crate does no IO and depends on no async runtime, MQTT or database crate.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod bench;
pub mod bus;
pub mod clock;
pub mod serving;
pub mod shapes;
pub mod topic;
pub mod wire;

/// Hone's version, reported by agents in their birth message.
pub const HONE_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use bus::{BrokerUrl, is_loopback_host, parse_broker_url, parse_mqtt_url};

/// Checks a device id: 1 to 64 characters of lowercase ASCII letters, digits and dashes, not
/// starting with a dash. Device ids are MQTT client ids and topic levels, so they must be safe in
/// both.
pub fn validate_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("device id must be 1 to 64 characters long, got {}", id.len()));
    }
    if id.starts_with('-') {
        return Err(format!("device id `{id}` must not start with a dash"));
    }
    if let Some(c) =
        id.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "device id `{id}` contains `{c}`: only lowercase letters, digits and dashes are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_device_id;

    #[test]
    fn device_ids_accept_lowercase_digits_and_dashes() {
        assert!(validate_device_id("rpi4-lab-01").is_ok());
    }

    #[test]
    fn device_ids_reject_topic_wildcards_and_uppercase() {
        for bad in ["", "a/b", "a+", "#", "Upper", "-lead", &"x".repeat(65)] {
            assert!(validate_device_id(bad).is_err(), "{bad} was accepted");
        }
    }
}
