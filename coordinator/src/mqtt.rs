//! The only coordinator module that knows rumqttc.
//!
//! One task polls the event loop ([`run_loop`]); it turns every incoming publish into an
//! [`Inbound`] for the engine, after the size check and wire decode. Rejected payloads are
//! counted in [`crate::metrics::Metrics`] and never close the connection.

use std::sync::Arc;
use std::time::Duration;

use hone_common::topic::{self, Topic};
use hone_common::wire::{self, DecodeError, MAX_PACKET_BYTES, Message};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Largest packet the coordinator reads. Larger than [`MAX_PACKET_BYTES`] on purpose: a
/// permissive broker (Mosquitto's default has no limit) may deliver an oversized payload; the
/// decoder then rejects and counts it, where a client-side limit would drop the connection.
pub const MAX_INCOMING_PACKET_BYTES: usize = 16 * MAX_PACKET_BYTES;

/// A decoded message from a device.
#[derive(Debug)]
pub struct Inbound {
    /// Device the topic names.
    pub device: String,
    /// The message.
    pub message: Message,
}

/// Publishing handle (cheap to clone).
#[derive(Clone)]
pub struct Bus {
    client: AsyncClient,
}

impl Bus {
    /// Publishes a message with QoS 1.
    pub async fn publish(
        &self,
        topic: &str,
        message: &Message,
        retain: bool,
    ) -> anyhow::Result<()> {
        let payload = wire::encode(message)?;
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await?;
        Ok(())
    }

    /// Publishes raw bytes (used by tests and tools to probe the protocol).
    pub async fn publish_raw(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> anyhow::Result<()> {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await?;
        Ok(())
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id; stable so that the broker keeps the session across restarts.
    pub client_id: String,
    /// Keepalive.
    pub keepalive: Duration,
    /// Coordinator start time (for the retained status).
    pub started_at_ms: u64,
}

/// Connects (persistent session, retained status + Last Will) and spawns the event-loop task.
pub fn start(config: BusConfig, metrics: Arc<Metrics>, inbound: mpsc::Sender<Inbound>) -> Bus {
    let offline = wire::encode(&Message::CoordinatorStatus(wire::CoordinatorStatus {
        online: false,
        version: hone_common::HONE_VERSION.into(),
        started_at_ms: config.started_at_ms,
    }))
    .expect("status encodes");
    let mut opts = MqttOptions::new(&config.client_id, &config.host, config.port);
    opts.set_keep_alive(config.keepalive)
        .set_clean_session(false)
        .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(100)
        .set_last_will(LastWill::new(topic::COORD_STATUS, offline, QoS::AtLeastOnce, true));
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let bus = Bus { client };
    tokio::spawn(run_loop(bus.clone(), eventloop, config, metrics, inbound));
    bus
}

async fn run_loop(
    bus: Bus,
    mut eventloop: rumqttc::EventLoop,
    config: BusConfig,
    metrics: Arc<Metrics>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                info!(broker = %format!("{}:{}", config.host, config.port), session_present = ack.session_present, "connected to MQTT broker");
                metrics.bus_connected.store(1, std::sync::atomic::Ordering::Relaxed);
                let client = bus.client.clone();
                let started = config.started_at_ms;
                tokio::spawn(async move {
                    for filter in topic::COORDINATOR_SUBSCRIPTIONS {
                        if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                            warn!(%filter, error = %e, "subscribe failed");
                        }
                    }
                    let online = Message::CoordinatorStatus(wire::CoordinatorStatus {
                        online: true,
                        version: hone_common::HONE_VERSION.into(),
                        started_at_ms: started,
                    });
                    let _ = client
                        .publish(
                            topic::COORD_STATUS,
                            QoS::AtLeastOnce,
                            true,
                            wire::encode(&online).expect("encodes"),
                        )
                        .await;
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                handle_publish(&p.topic, &p.payload, &metrics, &inbound).await;
            }
            Ok(_) => {}
            Err(e) => {
                metrics.bus_connected.store(0, std::sync::atomic::Ordering::Relaxed);
                if inbound.is_closed() {
                    return;
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn handle_publish(
    topic_name: &str,
    payload: &[u8],
    metrics: &Metrics,
    inbound: &mpsc::Sender<Inbound>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let device = match topic::parse(topic_name) {
        Some(Topic::Status { device }) | Some(Topic::Evt { device, .. }) => device,
        _ => {
            metrics.unknown_topics.fetch_add(1, Relaxed);
            debug!(topic = %topic_name, "ignoring unknown topic");
            return;
        }
    };
    match wire::decode(payload) {
        Ok(message) => {
            metrics.messages_received.fetch_add(1, Relaxed);
            let _ = inbound.send(Inbound { device, message }).await;
        }
        Err(DecodeError::Empty) => {} // a cleared retained message
        Err(e) => {
            match e {
                DecodeError::TooLarge { .. } => metrics.rejected_oversized.fetch_add(1, Relaxed),
                DecodeError::UnsupportedVersion { .. } => {
                    metrics.rejected_version.fetch_add(1, Relaxed)
                }
                _ => metrics.rejected_malformed.fetch_add(1, Relaxed),
            };
            warn!(topic = %topic_name, size = payload.len(), error = %e, "rejected MQTT payload");
        }
    }
}
