//! The only agent module that knows rumqttc: connection options, Last Will, publishing, and
//! turning the event loop into a small closed set of [`BusEvent`]s.

use std::time::Duration;

pub use hone_common::bus::BusConfig;
use hone_common::bus::{
    CLEAN_SESSION, CLIENT_REQUEST_QUEUE, MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// What the rest of the agent sees of MQTT.
#[derive(Debug)]
pub enum BusEvent {
    /// (Re)connected; the broker acknowledged the session.
    Connected {
        /// Whether the broker still had our persistent session.
        session_present: bool,
    },
    /// A message on a subscribed topic.
    Message {
        /// Topic.
        topic: String,
        /// Payload bytes.
        payload: Vec<u8>,
    },
    /// The connection failed or dropped; polling again reconnects.
    Disconnected(String),
}

/// Cloneable publishing handle: requests go, in order, through a queue of its own to the MQTT
/// client, whose own queue holds one at most ([`CLIENT_REQUEST_QUEUE`]: more are lost when a
/// connection drops with the in-flight window full).
#[derive(Clone)]
pub struct BusHandle {
    outbox: mpsc::UnboundedSender<Request>,
}

enum Request {
    Publish { topic: String, payload: Vec<u8>, retain: bool },
    Subscribe(String),
    Disconnect,
}

/// The event loop; poll it from exactly one task.
pub struct BusLoop {
    eventloop: EventLoop,
}

/// Creates a persistent-session connection with the Last Will set, on the shared bus settings;
/// over TLS with `tls` (the enrolled identity's configuration). Call within a Tokio runtime
/// (it spawns the task that feeds the client).
pub fn connect(
    config: &BusConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> (BusHandle, BusLoop) {
    let mut opts = MqttOptions::new(&config.client_id, &config.host, config.port);
    opts.set_keep_alive(config.keepalive)
        .set_clean_session(CLEAN_SESSION)
        .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES)
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
    let (outbox, mut queued) = mpsc::unbounded_channel::<Request>();
    tokio::spawn(async move {
        while let Some(request) = queued.recv().await {
            let sent = match request {
                Request::Publish { topic, payload, retain } => {
                    client.publish(topic, QoS::AtLeastOnce, retain, payload).await
                }
                Request::Subscribe(filter) => client.subscribe(filter, QoS::AtLeastOnce).await,
                Request::Disconnect => client.disconnect().await,
            };
            if sent.is_err() {
                return; // the event loop is gone
            }
        }
    });
    (BusHandle { outbox }, BusLoop { eventloop })
}

impl BusHandle {
    fn queue(&self, request: Request) -> Result<(), String> {
        self.outbox.send(request).map_err(|_| "the MQTT connection is closed".to_string())
    }

    /// Queues a QoS 1 publish; returns an error only if the connection is closed for good.
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        self.queue(Request::Publish { topic: topic.to_string(), payload, retain })
    }

    /// Queues a QoS 1 subscription.
    pub fn subscribe(&self, filter: &str) -> Result<(), String> {
        self.queue(Request::Subscribe(filter.to_string()))
    }

    /// Queues a clean disconnect, after what was queued before it (the broker then does not
    /// fire the Last Will).
    pub fn disconnect(&self) -> Result<(), String> {
        self.queue(Request::Disconnect)
    }
}

impl BusLoop {
    /// Waits for the next event that matters to the agent.
    pub async fn next(&mut self) -> BusEvent {
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return BusEvent::Connected { session_present: ack.session_present };
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    return BusEvent::Message { topic: p.topic, payload: p.payload.to_vec() };
                }
                Ok(_) => continue,
                Err(e) => return BusEvent::Disconnected(e.to_string()),
            }
        }
    }

    /// Drives the loop until the queued disconnect is sent or `limit` passes.
    pub async fn drain(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while let Ok(ev) = self.eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}
