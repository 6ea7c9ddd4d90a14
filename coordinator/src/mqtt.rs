//! The only coordinator module that knows rumqttc.
//!
//! One task polls the event loop ([`run_loop`]); it turns every incoming publish into an
//! [`Inbound`] for the engine, after the size check and wire decode. Rejected payloads are
//! counted in [`crate::metrics::Metrics`] and never close the connection.

use std::sync::Arc;
use std::time::Duration;

pub use hone_common::bus::BusConfig;
use hone_common::bus::{
    CLEAN_SESSION, CLIENT_REQUEST_QUEUE, MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES,
};
use hone_common::topic::{self, Topic};
use hone_common::wire::{self, DecodeError, Message};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// What a device sent, as far as the coordinator could read it.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // decoded once and moved to the engine; boxing gains nothing
pub enum Payload {
    /// A message of this build's wire version.
    Message(Message),
    /// A payload of another wire version (the agent must be upgraded, or this coordinator).
    OtherWireVersion(u16),
}

/// A message from a device.
#[derive(Debug)]
pub struct Inbound {
    /// Device the topic names.
    pub device: String,
    /// What it sent.
    pub payload: Payload,
}

/// Publishing handle (cheap to clone).
#[derive(Clone)]
pub struct Bus {
    client: AsyncClient,
    outbox: mpsc::UnboundedSender<Outgoing>,
}

/// A publish waiting in [`Bus`]'s own queue for room in the MQTT client's.
struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Bus {
    /// Queues a message for publishing with QoS 1 and returns at once.
    ///
    /// The event loop may itself be waiting for the caller: it hands incoming messages to the
    /// engine over a bounded channel, and the engine is the main publisher. Awaiting a full
    /// request queue here deadlocked a 10,000-agent campaign (the engine waited for the loop to
    /// send, the loop for the engine to read). Publishes go to an unbounded queue of the bus's
    /// own, which one task feeds to the MQTT client in order (see [`CLIENT_REQUEST_QUEUE`]);
    /// the engine bounds what it queues (a tick dispatches a bounded number of jobs).
    pub async fn publish(
        &self,
        topic: &str,
        message: &Message,
        retain: bool,
    ) -> anyhow::Result<()> {
        let payload = wire::encode(message)?;
        self.outbox
            .send(Outgoing { topic: topic.to_string(), payload, retain })
            .map_err(|_| anyhow::anyhow!("the MQTT connection is closed"))
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

/// The coordinator's retained status, online or as its Last Will.
fn coordinator_status(online: bool, started_at_ms: u64) -> Vec<u8> {
    wire::encode(&Message::CoordinatorStatus(wire::CoordinatorStatus {
        online,
        version: hone_common::HONE_VERSION.into(),
        started_at_ms,
    }))
    .expect("status encodes")
}

/// The connection settings of a coordinator started at `started_at_ms`.
pub fn config(
    host: String,
    port: u16,
    client_id: String,
    keepalive: Duration,
    started_at_ms: u64,
) -> BusConfig {
    let will = (topic::COORD_STATUS.to_string(), coordinator_status(false, started_at_ms));
    BusConfig { host, port, client_id, keepalive, will }
}

/// Connects (persistent session, retained status + Last Will; over TLS with `tls`) and spawns
/// the event-loop task.
pub fn start(
    config: BusConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    pki: Option<Arc<crate::pki::Pki>>,
    started_at_ms: u64,
    metrics: Arc<Metrics>,
    inbound: mpsc::Sender<Inbound>,
) -> Bus {
    let mut opts = MqttOptions::new(&config.client_id, &config.host, config.port);
    opts.set_keep_alive(config.keepalive)
        .set_clean_session(CLEAN_SESSION)
        .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES)
        .set_inflight(100)
        .set_last_will(LastWill::new(
            &config.will.0,
            config.will.1.clone(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            tls,
        )));
    }
    let (client, eventloop) = AsyncClient::new(opts, CLIENT_REQUEST_QUEUE);
    let (outbox, mut queued) = mpsc::unbounded_channel::<Outgoing>();
    let feeder = client.clone();
    tokio::spawn(async move {
        while let Some(o) = queued.recv().await {
            if let Err(e) = feeder.publish(&o.topic, QoS::AtLeastOnce, o.retain, o.payload).await {
                // Only when the event loop has ended, with the process.
                warn!(topic = %o.topic, error = %e, "publish dropped: the MQTT client is closed");
                return;
            }
        }
    });
    let bus = Bus { client, outbox };
    tokio::spawn(run_loop(bus.clone(), eventloop, config, pki, started_at_ms, metrics, inbound));
    bus
}

async fn run_loop(
    bus: Bus,
    mut eventloop: rumqttc::EventLoop,
    config: BusConfig,
    pki: Option<Arc<crate::pki::Pki>>,
    started_at_ms: u64,
    metrics: Arc<Metrics>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first_connection = true;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                info!(broker = %format!("{}:{}", config.host, config.port), session_present = ack.session_present, "connected to MQTT broker");
                metrics.bus_connected.store(1, std::sync::atomic::Ordering::Relaxed);
                let client = bus.client.clone();
                // At this process's first connection, subscribe even to a kept session: the
                // retained births it then receives tell a restarted coordinator the fleet's
                // state. On a reconnection the kept session still has its subscriptions, and
                // subscribing again would make the broker re-send every retained birth (10,000
                // at once in a large fleet, when the connection was already struggling).
                let subscribe = first_connection || !ack.session_present;
                first_connection = false;
                tokio::spawn(async move {
                    for filter in topic::COORDINATOR_SUBSCRIPTIONS.iter().filter(|_| subscribe) {
                        if let Err(e) = client.subscribe(*filter, QoS::AtLeastOnce).await {
                            warn!(%filter, error = %e, "subscribe failed");
                        }
                    }
                    let online = coordinator_status(true, started_at_ms);
                    let _ =
                        client.publish(topic::COORD_STATUS, QoS::AtLeastOnce, true, online).await;
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                handle_publish(&p.topic, &p.payload, pki.as_deref(), &metrics, &inbound).await;
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
    pki: Option<&crate::pki::Pki>,
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
    let stopped = pki.and_then(|p| p.stopped(&device));
    match wire::decode(payload) {
        // An external broker keeps a revoked device's open session until it ends: everything
        // from it is dropped but its going offline (its Last Will, after a revocation); from a
        // decommissioned device, everything.
        Ok(message)
            if stopped == Some(crate::pki::Stopped::Decommissioned)
                || (stopped.is_some() && !matches!(&message, Message::Status(s) if !s.online)) =>
        {
            metrics.mqtt_denied.fetch_add(1, Relaxed);
            debug!(%device, topic = %topic_name, "dropped: the device is revoked");
        }
        Ok(message) => {
            metrics.messages_received.fetch_add(1, Relaxed);
            let _ = inbound.send(Inbound { device, payload: Payload::Message(message) }).await;
        }
        Err(DecodeError::UnsupportedVersion { found }) => {
            // The engine marks the device incompatible, so it shows why and gets no jobs.
            metrics.rejected_version.fetch_add(1, Relaxed);
            warn!(topic = %topic_name, found, speaks = wire::WIRE_VERSION, "payload of another wire version");
            let _ =
                inbound.send(Inbound { device, payload: Payload::OtherWireVersion(found) }).await;
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
