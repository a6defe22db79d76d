//! A throwaway certificate authority and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`, written as PEM files, for HTTPS and PostgreSQL TLS tests;
//! [`TestCa::expired`] makes one whose server certificate expired in 2021.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate (trust it with SSL_CERT_FILE or sslrootcert).
    pub ca_pem: PathBuf,
    /// The server certificate and key.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        Self::make(false)
    }

    /// A CA whose server certificate was valid from 2020-01-01 to 2021-01-01 (UTC).
    pub fn expired() -> TestCa {
        Self::make(true)
    }

    fn make(expired: bool) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dockhand test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        TestCa {
            ca_pem: write("ca.pem", &ca.pem()),
            cert_pem: write("server.pem", &cert.pem()),
            key_pem: write("server.key", &key.serialize_pem()),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            dir,
        }
    }

    /// A rustls server configuration with the server certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .unwrap();
        Arc::new(config)
    }

    /// Copies the server certificate and key into `dir` for a service to read.
    pub fn install_server_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        std::fs::copy(&self.cert_pem, &cert).unwrap();
        std::fs::copy(&self.key_pem, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
