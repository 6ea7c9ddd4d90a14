//! How both sides connect to the MQTT bus: one definition of the connection settings and packet
//! limits, as plain values. Each side turns a [`BusConfig`] into its MQTT client's options; this
//! module opens no connection and knows no MQTT crate.

use std::time::Duration;

use crate::wire::MAX_PACKET_BYTES;

/// Largest packet a Hone client reads from a broker. Larger than [`MAX_PACKET_BYTES`] on
/// purpose: a permissive broker (Mosquitto's default has no limit) may deliver an oversized
/// payload, which the wire decoder then rejects and counts; refusing it at the MQTT layer would
/// drop the whole connection instead.
pub const MAX_INCOMING_PACKET_BYTES: usize = 16 * MAX_PACKET_BYTES;

/// Largest packet a Hone client writes: the wire limit plus MQTT framing.
pub const MAX_OUTGOING_PACKET_BYTES: usize = MAX_PACKET_BYTES;

const _: () = assert!(MAX_INCOMING_PACKET_BYTES > MAX_OUTGOING_PACKET_BYTES);

/// Both sides keep a persistent session (`clean_session = false`) under a stable client id, so
/// the broker queues QoS 1 messages while they are away.
pub const CLEAN_SESSION: bool = false;

/// Capacity of each side's MQTT client request queue: one. Each side queues its requests in a
/// queue of its own, in order, and feeds them to the client one at a time.
///
/// rumqttc 0.25 loses publishes when a connection drops with more than one request in that
/// queue and its in-flight window full: on reconnection it re-sends the unacknowledged
/// publishes under their packet ids, then gives the queued ones the next ids, which those
/// re-sent publishes still hold; each such "collision" replaces the one saved before it
/// (`MqttState::outgoing_publish`), so all but the last are dropped. At 10,000 agents every
/// drop of the coordinator's connection lost 80 to 100 job documents this way. With one request
/// at most in that queue, at most one collides, and rumqttc keeps it until its id is free.
pub const CLIENT_REQUEST_QUEUE: usize = 1;

/// Settings of one client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id: the device id for agents, a stable name for the coordinator.
    pub client_id: String,
    /// Keepalive; the broker fires the Last Will after 1.5x this without traffic.
    pub keepalive: Duration,
    /// Topic and payload of the Last Will (retained, QoS 1).
    pub will: (String, Vec<u8>),
}

/// Parses an MQTT broker address: `mqtt://host:port`, `tcp://host:port` or `host:port`
/// (port defaults to 1883). A TLS address (`mqtts://`) is refused by name: read it with
/// [`parse_broker_url`].
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = if let Some(r) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) {
        r
    } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err(format!("`{url}`: a TLS broker address where a plain one is needed"));
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

/// A broker address and whether it speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `mqtts://` (or `ssl://`): TLS with a client certificate.
    pub tls: bool,
}

/// Parses `mqtts://host:port` (default port 8883) as well as everything [`parse_mqtt_url`]
/// accepts.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    if let Some(rest) = url.strip_prefix("mqtts://").or_else(|| url.strip_prefix("ssl://")) {
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                (h, p.parse::<u16>().map_err(|_| format!("`{url}`: port `{p}` is not a number"))?)
            }
            _ => (rest, 8883),
        };
        if host.is_empty() {
            return Err(format!("`{url}`: missing host"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        return Ok(BrokerUrl { host, port, tls: true });
    }
    let (host, port) = parse_mqtt_url(url)?;
    Ok(BrokerUrl { host, port, tls: false })
}

/// Whether `host` names this machine only (`localhost`, 127.0.0.0/8, `::1`): where plain
/// transport is allowed.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:1883").unwrap(), ("127.0.0.1".into(), 1883));
        assert_eq!(parse_mqtt_url("tcp://broker:1884").unwrap(), ("broker".into(), 1884));
        assert_eq!(parse_mqtt_url("broker").unwrap(), ("broker".into(), 1883));
    }

    #[test]
    fn parses_tls_broker_urls_and_knows_loopback() {
        let b = parse_broker_url("mqtts://broker.lan").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("broker.lan", 8883, true));
        let b = parse_broker_url("mqtts://127.0.0.1:18883").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("127.0.0.1", 18883, true));
        let b = parse_broker_url("mqtt://10.0.0.2:1883").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("10.0.0.2", 1883, false));
        assert!(parse_broker_url("mqtts://:1").is_err());
        assert!(is_loopback_host("127.0.0.1") && is_loopback_host("::1"));
        assert!(is_loopback_host("localhost") && is_loopback_host("127.3.0.1"));
        assert!(!is_loopback_host("10.0.0.2") && !is_loopback_host("broker.lan"));
    }

    #[test]
    fn refuses_bad_broker_urls_with_a_reason() {
        assert!(parse_mqtt_url("mqtts://b:8883").unwrap_err().contains("TLS"));
        assert!(parse_mqtt_url("http://b").unwrap_err().contains("scheme"));
        assert!(parse_mqtt_url("mqtt://b:x").unwrap_err().contains("port"));
        assert!(parse_mqtt_url("mqtt://:1").unwrap_err().contains("host"));
    }
}
