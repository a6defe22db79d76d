//! How a probe reaches its target: TCP, with TLS when asked (HTTPS, `rediss://`), as one
//! stream type, and the stage it is at, for the message when time runs out. Its own
//! module because the HTTP and Redis probes both connect this way.

use std::cell::Cell;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::net::{self, permanent, transient, NetError};
use crate::tls::{self, Verify};

/// What a probe was doing, for the timeout message.
#[derive(Clone, Copy)]
pub(super) enum Stage {
    Connecting,
    Handshake,
    Waiting,
    /// The HTTP status came; the body has not (yet) held the text searched for.
    Searching(u16),
}

impl Stage {
    pub(super) fn describe(self, expect_body: Option<&str>) -> String {
        match self {
            Stage::Connecting => "while connecting".into(),
            Stage::Handshake => "during the TLS handshake".into(),
            Stage::Waiting => "connected, no response".into(),
            Stage::Searching(status) => {
                let want: String = expect_body.unwrap_or("").chars().take(60).collect();
                format!("status {status}, but the body so far does not contain {want:?}")
            }
        }
    }
}

/// What to do about a certificate that is not trusted, for HTTPS and `rediss://`.
const TRUST_HINT: &str =
    "use --insecure for a self-signed certificate, or SSL_CERT_FILE for its CA";

/// Connects over TCP, with TLS when asked; the stream type is erased so that the
/// request code is written once.
pub(super) async fn open(
    host: &str,
    port: u16,
    tls: bool,
    verify: Verify,
    stage: &Cell<Stage>,
) -> Result<Box<dyn Stream>, NetError> {
    let tcp = net::connect(host, port).await?;
    if !tls {
        return Ok(Box::new(tcp));
    }
    stage.set(Stage::Handshake);
    let config = tls::client_config(verify, None)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| permanent(format!("invalid TLS server name {host:?}")))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            // A TLS alert or a bad certificate will not change by waiting; a reset or
            // a close during the handshake (a server still starting) may.
            if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                permanent(tls::reason(&e, host, TRUST_HINT))
            } else {
                transient(tls::reason(&e, host, TRUST_HINT))
            }
        })?;
    Ok(Box::new(stream))
}

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
