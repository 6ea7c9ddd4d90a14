//! The embedded MQTT broker (rumqttd): Hone's zero-setup default.
//!
//! It is fine for development, tests and a single site; it has no per-topic ACLs and keeps
//! retained messages and sessions only in memory. Production fleets should run Mosquitto or
//! EMQX and start the coordinator with `--mqtt-url` (see README).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hone_common::wire::MAX_PACKET_BYTES;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts rumqttd listening on `addr` on its own threads and waits until it accepts TCP
/// connections. The broker lives until the process exits.
pub async fn start(addr: SocketAddr) -> anyhow::Result<()> {
    // rumqttd reports a failed bind only in its logs, so check the address first.
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("embedded MQTT broker cannot listen on {addr}"))?;
    let mut v4 = HashMap::new();
    v4.insert(
        "hone".to_string(),
        ServerSettings {
            name: "hone-v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: MAX_PACKET_BYTES,
                max_inflight_count: 200,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("hone-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded broker thread")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("embedded MQTT broker did not start listening on {addr}")
}
