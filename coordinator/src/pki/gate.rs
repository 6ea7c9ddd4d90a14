//! The MQTT gate: the embedded broker's front door when the fleet runs on TLS.
//!
//! rumqttd has no per-topic ACLs (conventions §0.3), so the embedded broker listens on loopback
//! only and devices reach it through this gate, which terminates TLS with a required client
//! certificate of the Hone CA (the CRL is checked in the handshake) and reads every packet a
//! device sends before passing its bytes on unchanged:
//!
//! - CONNECT: MQTT 3.1.1 only, the client id must be the certificate's device id, and a Last
//!   Will may only be the device's own status;
//! - PUBLISH: only `hone/v1/dev/{id}/status` and `hone/v1/dev/{id}/evt/{kind}` of its own id;
//! - SUBSCRIBE: only its own command topics.
//!
//! Anything else ends the connection (as AWS IoT Core does on an authorisation failure): MQTT
//! 3.1.1 has no way to refuse one PUBLISH, and answering in the broker's place would mean
//! interleaving packets into its stream. Each refusal is counted (`hone_mqtt_denied`) and
//! logged with the device and the topic. The broker-to-device direction is copied as bytes.
//! A revocation ([`super::Pki::kick`]) ends the device's session at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use hone_common::bus::MAX_INCOMING_PACKET_BYTES;
use hone_common::topic::{self, Topic};
use rumqttc::mqttbytes::{self, v4::Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Pki;
use super::listener::HANDSHAKE_TIMEOUT;
use crate::metrics::Metrics;

/// Why a device's connection was ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// The first packet was not a CONNECT, or a second CONNECT came.
    Protocol(String),
    /// A CONNECT under another client id than the certificate's.
    ClientId(String),
    /// A Last Will on a topic that is not the device's status.
    Will(String),
    /// A PUBLISH on a topic that is not the device's own.
    Publish(String),
    /// A SUBSCRIBE to a filter that is not the device's commands.
    Subscribe(String),
    /// Bytes that are not MQTT 3.1.1.
    Malformed(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Protocol(m) => write!(f, "protocol: {m}"),
            Denied::ClientId(id) => write!(f, "client id `{id}` is not the certificate's"),
            Denied::Will(t) => write!(f, "Last Will on `{t}`, not its own status"),
            Denied::Publish(t) => write!(f, "publish on `{t}`, not its own topic"),
            Denied::Subscribe(t) => write!(f, "subscribe to `{t}`, not its own commands"),
            Denied::Malformed(m) => write!(f, "malformed MQTT: {m}"),
        }
    }
}

/// What `device` may do with `packet` (`connected`: a CONNECT was already seen).
pub fn authorize(device: &str, packet: &Packet, connected: &mut bool) -> Result<(), Denied> {
    match packet {
        Packet::Connect(c) => {
            if *connected {
                return Err(Denied::Protocol("a second CONNECT".into()));
            }
            if c.client_id != device {
                return Err(Denied::ClientId(c.client_id.clone()));
            }
            if let Some(will) = &c.last_will
                && will.topic != topic::status(device)
            {
                return Err(Denied::Will(will.topic.clone()));
            }
            *connected = true;
            Ok(())
        }
        _ if !*connected => Err(Denied::Protocol("the first packet must be CONNECT".into())),
        Packet::Publish(p) => match topic::parse(&p.topic) {
            Some(Topic::Status { device: d }) | Some(Topic::Evt { device: d, .. })
                if d == device =>
            {
                Ok(())
            }
            _ => Err(Denied::Publish(p.topic.clone())),
        },
        Packet::Subscribe(s) => {
            for f in &s.filters {
                let own = f.path == topic::agent_subscription(device)
                    || matches!(topic::parse(&f.path),
                        Some(Topic::Cmd { device: d, .. }) if d == device);
                if !own {
                    return Err(Denied::Subscribe(f.path.clone()));
                }
            }
            Ok(())
        }
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            Err(Denied::Protocol("a broker-to-client packet from a client".into()))
        }
        _ => Ok(()),
    }
}

/// Accepts devices on `listener` and relays each to the broker at `upstream` until `stop`.
pub async fn run(
    listener: TcpListener,
    upstream: SocketAddr,
    pki: Arc<Pki>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT gate accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let (pki, metrics) = (pki.clone(), metrics.clone());
        tokio::spawn(async move { session(stream, addr, upstream, pki, metrics).await });
    }
}

async fn session(
    stream: TcpStream,
    addr: SocketAddr,
    upstream: SocketAddr,
    pki: Arc<Pki>,
    metrics: Arc<Metrics>,
) {
    let _ = stream.set_nodelay(true);
    let acceptor = TlsAcceptor::from(pki.mqtt_config());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.tls_refused.fetch_add(1, Relaxed);
            tracing::info!(peer = %addr, error = %e, "MQTT TLS handshake refused");
            return;
        }
        Err(_) => {
            metrics.tls_refused.fetch_add(1, Relaxed);
            tracing::info!(peer = %addr, "MQTT TLS handshake timed out");
            return;
        }
    };
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
    let Some(der) = der else { return };
    let device = super::common_name(&der).unwrap_or_default();
    if hone_common::validate_device_id(&device).is_err()
        || pki.is_revoked(&super::fingerprint(&der))
    {
        metrics.mqtt_denied.fetch_add(1, Relaxed);
        tracing::warn!(peer = %addr, identity = %device, "MQTT gate: not a device certificate, or revoked");
        return;
    }
    let mut kicks = pki.kicks();
    let up = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%device, error = %e, "MQTT gate cannot reach the embedded broker");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let (mut client_r, mut client_w) = tokio::io::split(tls);
    let (mut up_r, mut up_w) = up.into_split();
    let down = tokio::io::copy(&mut up_r, &mut client_w);
    let upward = forward_checked(&mut client_r, &mut up_w, &device);
    let kicked = async {
        loop {
            match kicks.recv().await {
                Ok(d) if d == device => return,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        }
    };
    tokio::select! {
        r = upward => match r {
            Ok(Ok(())) => {}
            Ok(Err(denied)) => {
                metrics.mqtt_denied.fetch_add(1, Relaxed);
                tracing::warn!(%device, peer = %addr, reason = %denied, "MQTT gate refused a packet; connection closed");
            }
            Err(e) => tracing::debug!(%device, error = %e, "device connection ended"),
        },
        _ = down => {}
        _ = kicked => {
            metrics.revocation_kicks.fetch_add(1, Relaxed);
            tracing::info!(%device, "certificate revoked: MQTT session ended");
        }
    }
    // Close the broker side first, so that it publishes the device's Last Will now.
    drop(up_w);
    drop(up_r);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client_w.shutdown()).await;
}

/// Reads packets from the device, checks each, writes the accepted bytes upstream unchanged.
async fn forward_checked<R, W>(
    from: &mut R,
    to: &mut W,
    device: &str,
) -> std::io::Result<Result<(), Denied>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut connected = false;
    loop {
        loop {
            match mqttbytes::check(buf.iter(), MAX_INCOMING_PACKET_BYTES) {
                Ok(header) => {
                    let frame = buf.split_to(header.frame_length());
                    let packet = match Packet::read(&mut frame.clone(), MAX_INCOMING_PACKET_BYTES) {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(Denied::Malformed(e.to_string()))),
                    };
                    if let Err(denied) = authorize(device, &packet, &mut connected) {
                        return Ok(Err(denied));
                    }
                    to.write_all(&frame).await?;
                }
                Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Ok(Err(Denied::Malformed(e.to_string()))),
            }
        }
        if from.read_buf(&mut buf).await? == 0 {
            return Ok(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Connect, LastWill, Publish, Subscribe};

    fn connected() -> bool {
        true
    }

    #[test]
    fn a_device_may_connect_only_as_itself_with_its_own_will() {
        let mut c = false;
        let mut connect = Connect::new("rpi-a");
        assert_eq!(authorize("rpi-a", &Packet::Connect(connect.clone()), &mut c), Ok(()));
        assert!(c);
        let mut c = false;
        assert_eq!(
            authorize("rpi-b", &Packet::Connect(connect.clone()), &mut c),
            Err(Denied::ClientId("rpi-a".into()))
        );
        connect.last_will =
            Some(LastWill::new(topic::status("rpi-b"), vec![], QoS::AtLeastOnce, true));
        let mut c = false;
        assert!(matches!(
            authorize("rpi-a", &Packet::Connect(connect), &mut c),
            Err(Denied::Will(_))
        ));
        let mut c = connected();
        assert!(matches!(
            authorize("rpi-a", &Packet::Connect(Connect::new("rpi-a")), &mut c),
            Err(Denied::Protocol(_))
        ));
    }

    #[test]
    fn a_device_publishes_only_its_own_status_and_events() {
        use hone_common::topic::EvtKind;
        let ok = [topic::status("rpi-a"), topic::evt("rpi-a", EvtKind::Result)];
        for t in ok {
            let p = Packet::Publish(Publish::new(&t, QoS::AtLeastOnce, vec![1]));
            assert_eq!(authorize("rpi-a", &p, &mut connected()), Ok(()), "{t}");
        }
        let refused = [
            topic::evt("rpi-b", EvtKind::Result),
            topic::status("rpi-b"),
            topic::cmd("rpi-a", topic::CmdKind::Job),
            topic::COORD_STATUS.to_string(),
            "hone/v1/dev/rpi-a/evt/unknown".to_string(),
            "other".to_string(),
        ];
        for t in refused {
            let p = Packet::Publish(Publish::new(&t, QoS::AtLeastOnce, vec![1]));
            assert_eq!(authorize("rpi-a", &p, &mut connected()), Err(Denied::Publish(t.clone())));
        }
        let mut not_yet = false;
        let p = Packet::Publish(Publish::new(topic::status("rpi-a"), QoS::AtLeastOnce, vec![1]));
        assert!(matches!(authorize("rpi-a", &p, &mut not_yet), Err(Denied::Protocol(_))));
    }

    #[test]
    fn a_device_subscribes_only_to_its_own_commands() {
        for f in [topic::agent_subscription("rpi-a"), topic::cmd("rpi-a", topic::CmdKind::Deploy)] {
            let s = Packet::Subscribe(Subscribe::new(&f, QoS::AtLeastOnce));
            assert_eq!(authorize("rpi-a", &s, &mut connected()), Ok(()), "{f}");
        }
        for f in [
            "#",
            "hone/v1/dev/+/evt/+",
            "hone/v1/dev/rpi-b/cmd/+",
            "hone/v1/dev/rpi-a/#",
            topic::COORD_STATUS,
        ] {
            let s = Packet::Subscribe(Subscribe::new(f, QoS::AtLeastOnce));
            assert_eq!(
                authorize("rpi-a", &s, &mut connected()),
                Err(Denied::Subscribe(f.to_string()))
            );
        }
    }

    #[tokio::test]
    async fn forwarding_stops_at_the_first_refused_packet_and_passes_bytes_unchanged() {
        let mut bytes = BytesMut::new();
        Packet::Connect(Connect::new("rpi-a")).write(&mut bytes, 1 << 20).unwrap();
        let mut ok = Publish::new(topic::status("rpi-a"), QoS::AtLeastOnce, vec![7; 10]);
        ok.pkid = 1;
        Packet::Publish(ok).write(&mut bytes, 1 << 20).unwrap();
        let allowed = bytes.len();
        let mut bad = Publish::new(topic::status("rpi-b"), QoS::AtLeastOnce, vec![9]);
        bad.pkid = 2;
        Packet::Publish(bad).write(&mut bytes, 1 << 20).unwrap();
        let input = bytes.to_vec();
        let mut out = Vec::new();
        let r = forward_checked(&mut input.as_slice(), &mut out, "rpi-a").await.unwrap();
        assert_eq!(r, Err(Denied::Publish(topic::status("rpi-b"))));
        assert_eq!(out, input[..allowed], "only the allowed packets, byte for byte");
        let garbage = [0xf0u8, 0x00];
        let mut out = Vec::new();
        let r = forward_checked(&mut garbage.as_slice(), &mut out, "rpi-a").await.unwrap();
        assert!(matches!(r, Err(Denied::Malformed(_))), "{r:?}");
        assert!(out.is_empty());
    }
}
