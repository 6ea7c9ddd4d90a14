//! Hone's shared vocabulary, used by the coordinator and the edge agent alike.
//!
//! - [`wire`]: the versioned postcard messages carried over MQTT (the protocol contract).
//! - [`topic`]: the only place MQTT topic strings are built or parsed.
//! - [`bench`]: benchmark specifications and latency statistics.
//! - [`artifact`]: the bytes an artifact signature covers.
//! - [`shapes`]: input shapes (`NAME=1x3x48x320`) and how declared shapes become concrete.
//!
//! Invariant: this crate does no IO and depends on no async runtime, MQTT or database crate.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod bench;
pub mod shapes;
pub mod topic;
pub mod wire;

/// Hone's version, reported by agents in their birth message.
pub const HONE_VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// Parses an MQTT broker address: `mqtt://host:port`, `tcp://host:port` or `host:port`
/// (port defaults to 1883). TLS (`mqtts://`) is not supported yet and is refused by name.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = if let Some(r) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) {
        r
    } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err(format!("`{url}`: TLS brokers are not supported yet; use mqtt://"));
    } else if url.contains("://") {
        return Err(format!("`{url}`: unknown scheme, expected mqtt://host:port"));
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => {
            (h, p.parse::<u16>().map_err(|_| format!("`{url}`: port `{p}` is not a number"))?)
        }
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(format!("`{url}`: missing host"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

#[cfg(test)]
mod url_tests {
    use super::parse_mqtt_url;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:1883").unwrap(), ("127.0.0.1".into(), 1883));
        assert_eq!(parse_mqtt_url("tcp://broker:1884").unwrap(), ("broker".into(), 1884));
        assert_eq!(parse_mqtt_url("broker").unwrap(), ("broker".into(), 1883));
    }

    #[test]
    fn refuses_bad_broker_urls_with_a_reason() {
        assert!(parse_mqtt_url("mqtts://b:8883").unwrap_err().contains("TLS"));
        assert!(parse_mqtt_url("http://b").unwrap_err().contains("scheme"));
        assert!(parse_mqtt_url("mqtt://b:x").unwrap_err().contains("port"));
        assert!(parse_mqtt_url("mqtt://:1").unwrap_err().contains("host"));
    }
}
