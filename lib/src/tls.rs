//! TLS clients on rustls (ring), for HTTPS, `rediss://` and PostgreSQL `sslmode`.
//!
//! Trust roots, first found wins: the PEM file in `SSL_CERT_FILE`; the system bundle
//! (`/etc/ssl/certs/ca-certificates.crt` and the other usual paths); the Mozilla roots
//! compiled in (so a `FROM scratch` image can still reach public HTTPS endpoints).
//! A PostgreSQL `sslrootcert` file replaces them for that connection.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::{permanent, NetError};

/// How much of the server's certificate to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Chain and host name (HTTPS default, `sslmode=verify-full`).
    Full,
    /// Chain only, any host name (`sslmode=verify-ca`).
    ChainOnly,
    /// Nothing: encryption without authentication (`--insecure`, `sslmode=require`).
    None,
}

const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_pem(path: &Path, roots: &mut RootCertStore) -> Result<(), NetError> {
    // Bounded and never blocking: a FIFO or device named here is refused at once.
    let bytes = crate::files::read_regular(path, 16 * 1024 * 1024).map_err(|e| {
        permanent(format!(
            "cannot read CA certificates from {}: {e}",
            path.display()
        ))
        .with_source(e)
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes);
    let mut n = 0;
    for cert in certs {
        let cert =
            cert.map_err(|e| permanent(format!("bad certificate in {}: {e}", path.display())))?;
        if roots.add(cert).is_ok() {
            n += 1;
        }
    }
    if n == 0 {
        return Err(permanent(format!(
            "no usable CA certificate in {}",
            path.display()
        )));
    }
    Ok(())
}

/// The trust roots, from `root_file` when given, else as the module doc says.
pub fn roots(root_file: Option<&Path>) -> Result<RootCertStore, NetError> {
    let mut roots = RootCertStore::empty();
    if let Some(p) = root_file {
        load_pem(p, &mut roots)?;
        return Ok(roots);
    }
    if let Some(p) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
        load_pem(Path::new(&p), &mut roots).map_err(|e| e.context("SSL_CERT_FILE"))?;
        return Ok(roots);
    }
    for p in SYSTEM_BUNDLES {
        if Path::new(p).exists() && load_pem(Path::new(p), &mut roots).is_ok() {
            return Ok(roots);
        }
    }
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(roots)
}

/// A rustls client configuration for the given verification level.
pub fn client_config(
    verify: Verify,
    root_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, NetError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| permanent(format!("TLS setup: {e}")))?;
    let config = match verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        Verify::Full | Verify::ChainOnly => {
            let roots = Arc::new(roots(root_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| permanent(format!("TLS setup: {e}")))?;
            if verify == Verify::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(Arc::new(config))
}

/// A short reason for a failed TLS handshake with `name` (the host connected to), in
/// words: when a certificate expired, which names it is valid for. `trust_hint` says
/// how to trust a certificate this client does not (it differs between HTTPS and
/// PostgreSQL).
pub fn reason(e: &io::Error, name: &str, trust_hint: &str) -> String {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return error_reason(inner, name, trust_hint);
    }
    format!(
        "TLS handshake with {name} failed: {}",
        crate::error::io_reason(e)
    )
}

/// [`reason`] for a rustls error itself.
pub fn error_reason(e: &rustls::Error, name: &str, trust_hint: &str) -> String {
    let cert = format!("the TLS certificate of {name}");
    let c = match e {
        rustls::Error::InvalidCertificate(c) => c,
        other => return format!("TLS error with {name}: {other}"),
    };
    match c {
        CertificateError::ExpiredContext { time, not_after } => format!(
            "{cert} expired on {} ({} ago): renew it on the server",
            utc(not_after.as_secs()),
            age(time.as_secs().saturating_sub(not_after.as_secs()))
        ),
        CertificateError::Expired => format!("{cert} has expired: renew it on the server"),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "{cert} is not valid before {} ({} from now): check this machine's clock and the certificate's dates",
            utc(not_before.as_secs()),
            age(not_before.as_secs().saturating_sub(time.as_secs()))
        ),
        CertificateError::NotValidYet => format!(
            "{cert} is not valid yet: check this machine's clock and the certificate's dates"
        ),
        CertificateError::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
            format!(
                "{cert} is not valid for {name}: it names {}",
                presented.join(", ")
            )
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("{cert} is not valid for {name}")
        }
        CertificateError::UnknownIssuer => {
            format!("{cert} is not trusted: its issuer is an unknown authority ({trust_hint})")
        }
        other => format!("{cert} was rejected: {other} ({trust_hint})"),
    }
}

/// `2021-01-01 00:00:00 UTC`.
fn utc(unix_secs: u64) -> String {
    let t = crate::time::rfc3339(unix_secs.min(i64::MAX as u64) as i64, 0);
    format!("{} UTC", t[..19].replace('T', " "))
}

/// `3 days`, or a shorter span as a duration.
fn age(secs: u64) -> String {
    match secs / 86400 {
        0 => crate::duration::format(std::time::Duration::from_secs(secs)),
        1 => "1 day".to_string(),
        days => format!("{days} days"),
    }
}

/// Accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but accepts any host name (libpq's `verify-ca`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// rustls for tokio-postgres: `MakeTlsConnect` over any async stream.
#[derive(Clone)]
pub struct PgTls(pub Arc<ClientConfig>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PgTlsConnect> {
        // tokio-postgres asks for a connector for every host, Unix sockets (whose
        // "domain" is empty or a path) included, before it knows whether TLS will be
        // used; libpq never uses TLS on a socket. A name that is not a valid server
        // name gets a placeholder (0.0.0.0) that no certificate matches, so the handshake, if
        // one ever happens, fails verification instead of the connection failing here.
        let name = ServerName::try_from(domain.to_string()).unwrap_or_else(|_| {
            ServerName::IpAddress(std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED).into())
        });
        Ok(PgTlsConnect {
            name,
            config: self.0.clone(),
        })
    }
}

pub struct PgTlsConnect {
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL. It gives tokio-postgres the `tls-server-end-point`
/// channel binding data (RFC 5929), so SCRAM-SHA-256-PLUS is used when the server
/// offers it, and `channel_binding=require` can be honoured as libpq does.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| server_end_point(c))
        {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// `tls-server-end-point` (RFC 5929 section 4.1): the hash of the server's certificate,
/// with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1 (as
/// PostgreSQL computes it). `None` for an algorithm without one hash (Ed25519,
/// RSASSA-PSS), which the server cannot bind either.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{digest, SHA256, SHA384, SHA512};
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (body, _) = der(cert, 0x30)?;
    let (_, after_tbs) = der(body, 0x30)?;
    let (algorithm, _) = der(after_tbs, 0x30)?;
    let (oid, _) = der(algorithm, 0x06)?;
    // 1.2.840.113549.1.1.n (RSA with MD5 4, SHA-1 5, SHA-256 11, SHA-384 12, SHA-512 13)
    // and 1.2.840.10045.4.1 / 4.3.n (ECDSA with SHA-1, SHA-256 2, SHA-384 3, SHA-512 4).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let algorithm = match oid {
        [rsa @ .., n] if rsa == RSA => match n {
            4 | 5 | 11 => &SHA256,
            12 => &SHA384,
            13 => &SHA512,
            _ => return None,
        },
        [ec @ .., 1] if ec == ECDSA => &SHA256,
        [ec @ .., 3, n] if ec == ECDSA => match n {
            2 => &SHA256,
            3 => &SHA384,
            4 => &SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(digest(algorithm, cert).as_ref().to_vec())
}

/// One DER element of type `tag` at the start of `input`: its contents and the rest
/// after it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| a << 8 | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((&rest[..len], &rest[len..]))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest::{digest, Algorithm, SHA256, SHA384, SHA512};

    /// A certificate's outline: SEQUENCE { tbs, SEQUENCE { OID }, BIT STRING }, with a
    /// tbs long enough to need a long-form length.
    fn cert(oid: &[u8]) -> Vec<u8> {
        let mut tbs = vec![0x30, 0x81, 200];
        tbs.extend([0u8; 200]);
        let mut alg = vec![0x30, oid.len() as u8 + 2, 0x06, oid.len() as u8];
        alg.extend(oid);
        let mut body = tbs;
        body.extend(alg);
        body.extend([0x03, 0x02, 0x00, 0xff]);
        let mut out = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        const RSA: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
        const EC: [u8; 6] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
        let with = |prefix: &[u8], tail: &[u8]| [prefix, tail].concat();
        let cases: [(Vec<u8>, Option<&Algorithm>); 9] = [
            (with(&RSA, &[4]), Some(&SHA256)), // MD5: SHA-256, as PostgreSQL
            (with(&RSA, &[5]), Some(&SHA256)), // SHA-1: SHA-256
            (with(&RSA, &[11]), Some(&SHA256)),
            (with(&RSA, &[12]), Some(&SHA384)),
            (with(&RSA, &[13]), Some(&SHA512)),
            (with(&EC, &[3, 2]), Some(&SHA256)),
            (with(&EC, &[3, 4]), Some(&SHA512)),
            (with(&RSA, &[10]), None),      // RSASSA-PSS: no single hash
            (vec![0x2b, 0x65, 0x70], None), // Ed25519
        ];
        for (oid, algorithm) in cases {
            let c = cert(&oid);
            let want = algorithm.map(|a| digest(a, &c).as_ref().to_vec());
            assert_eq!(server_end_point(&c), want, "{oid:02x?}");
        }
        // truncated or not a certificate: no binding data, never a panic
        let c = cert(&with(&RSA, &[11]));
        for n in [0, 1, 3, 10, c.len() - 1] {
            assert_eq!(server_end_point(&c[..n]), None);
        }
    }

    #[test]
    fn certificate_errors_read_as_sentences() {
        let expired = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                1_609_459_200 + 3 * 86400,
            )),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_609_459_200)),
        });
        assert_eq!(
            error_reason(&expired, "db", "hint"),
            "the TLS certificate of db expired on 2021-01-01 00:00:00 UTC (3 days ago): renew it on the server"
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("db").unwrap(),
            presented: vec!["localhost".into(), "127.0.0.1".into()],
        });
        assert_eq!(
            error_reason(&name, "db", "hint"),
            "the TLS certificate of db is not valid for db: it names localhost, 127.0.0.1"
        );
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(error_reason(&unknown, "db", "use X").ends_with("unknown authority (use X)"));
    }
}
