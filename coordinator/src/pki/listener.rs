//! The API over TLS: a listener for `axum::serve` that completes handshakes off the accept loop
//! (a slow or hostile client cannot stall others), with the live configuration of [`Pki`] (a
//! revoked certificate fails the handshake), and [`Peer`], the connection's client certificate
//! as handlers see it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Pki, common_name, fingerprint};
use crate::metrics::Metrics;

/// Handshakes in progress at most; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 512;

/// A handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    /// Accepts on `tcp`; each handshake uses the configuration of `pki` current at its start.
    pub fn new(tcp: TcpListener, pki: Arc<Pki>, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (stream, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(pki.http_config());
                let (tx, metrics) = (tx.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_refused.fetch_add(1, Relaxed);
                            tracing::info!(peer = %addr, error = %e, "HTTPS handshake refused");
                        }
                        Err(_) => {
                            metrics.tls_refused.fetch_add(1, Relaxed);
                            tracing::info!(peer = %addr, "HTTPS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { ready, local, accept_task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client certificate a connection presented (checked against the CA and the CRL by the
/// handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Its subject common name: a device id, or [`super::COORDINATOR_IDENTITY`].
    pub identity: String,
    /// SHA-256 of its DER, hex.
    pub fingerprint: String,
}

/// Who is on the other end of an API connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client certificate, over TLS when one was sent.
    pub cert: Option<PeerCert>,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        let cert = conn.peer_certificates().and_then(|c| c.first()).map(|der| PeerCert {
            identity: common_name(der).unwrap_or_default(),
            fingerprint: fingerprint(der),
        });
        Peer { cert }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, TcpListener>) -> Self {
        Peer { cert: None }
    }
}
