//! The S3 client for one bucket and prefix, and its small requests: listing (every
//! page), a manifest read or written in one request, deletion, and the clean-up of
//! uploads a killed run left behind. The streaming upload and download are
//! [`super::upload`] and [`super::download`].

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::errors::failed;
use super::settings::S3Settings;
use crate::backup::{err, BackupError};

/// A bucket and prefix ready for requests.
#[derive(Clone)]
pub struct S3 {
    pub(super) client: Client,
    pub settings: S3Settings,
}

/// An object under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The name after the prefix.
    pub file: String,
    /// Unix seconds of the last modification (0 when the server did not say).
    pub modified: i64,
}

/// How long a request may go without an answer (connect, then each read) before it
/// fails: a server that accepts and never answers must not hold a run forever.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long one attempt of one request may take in all (an 8 MiB part at 15 KB/s).
const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

impl S3 {
    /// Builds the client; no request is made yet.
    pub async fn connect(s: &S3Settings) -> Result<S3, BackupError> {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        // With a custom endpoint the region is defaulted instead of asking the chain
        // (which would try instance metadata).
        if let Some(r) = s.signing_region() {
            loader = loader.region(aws_config::Region::new(r));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s.path_style)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if shared.region().is_none() {
            return Err(err(
                "no AWS region (none set, and no instance metadata gave one): set BACKUP_S3_REGION (or AWS_REGION), or BACKUP_S3_ENDPOINT for another provider",
            ));
        }
        if let Some(e) = &s.endpoint {
            b = b.endpoint_url(e).request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            );
        }
        Ok(S3 {
            client: Client::from_conf(b.build()),
            settings: s.clone(),
        })
    }

    /// Where messages say a file is: `s3://bucket/prefix/file`.
    pub fn location(&self, file: &str) -> String {
        self.settings.location(file)
    }

    pub(super) fn key(&self, file: &str) -> String {
        self.settings.key(file)
    }

    /// The objects directly under the prefix, every page of them.
    pub async fn list(&self) -> Result<Vec<Object>, BackupError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(&self.settings.prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                failed(
                    format!(
                        "listing s3://{}/{}",
                        self.settings.bucket, self.settings.prefix
                    ),
                    e,
                )
            })?;
            for o in page.contents() {
                if let Some(file) = o.key().and_then(|k| self.settings.file_of(k)) {
                    out.push(Object {
                        file: file.to_string(),
                        modified: o.last_modified().map_or(0, |t| t.secs()),
                    });
                }
            }
        }
        Ok(out)
    }

    /// A small object's content (a manifest).
    pub async fn get_bytes(&self, file: &str) -> Result<Vec<u8>, BackupError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(self.key(file))
            .send()
            .await
            .map_err(|e| failed(self.location(file), e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| err(format!("{}: {e}", self.location(file))).with_source(e))?;
        Ok(data.into_bytes().to_vec())
    }

    /// Writes a small object (a manifest) in one request.
    pub async fn put_bytes(&self, file: &str, data: Vec<u8>) -> Result<(), BackupError> {
        let s = &self.settings;
        self.client
            .put_object()
            .bucket(&s.bucket)
            .key(self.key(file))
            .body(ByteStream::from(data))
            .content_type("application/json")
            .set_storage_class(s.storage_class.as_deref().map(Into::into))
            .set_server_side_encryption(s.sse.as_deref().map(Into::into))
            .set_ssekms_key_id(s.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| failed(self.location(file), e))?;
        Ok(())
    }

    pub async fn delete(&self, file: &str) -> Result<(), BackupError> {
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(self.key(file))
            .send()
            .await
            .map_err(|e| failed(format!("deleting {}", self.location(file)), e))?;
        Ok(())
    }

    /// Multipart uploads under the prefix that were started and never completed or
    /// aborted: (file, upload id).
    pub async fn incomplete_uploads(&self) -> Result<Vec<(String, String, i64)>, BackupError> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.settings.bucket)
            .prefix(&self.settings.prefix)
            .send()
            .await
            .map_err(|e| failed("listing uploads", e))?;
        Ok(out
            .uploads()
            .iter()
            .filter_map(|u| {
                let file = self.settings.file_of(u.key()?)?;
                let started = u.initiated().map_or(0, |t| t.secs());
                Some((file.to_string(), u.upload_id()?.to_string(), started))
            })
            .collect())
    }

    /// When the newest part of an incomplete upload arrived (unix seconds), or `None`
    /// when it has no part (or the server does not say).
    pub async fn last_part(&self, file: &str, upload_id: &str) -> Result<Option<i64>, BackupError> {
        let mut newest: Option<i64> = None;
        let mut pages = self
            .client
            .list_parts()
            .bucket(&self.settings.bucket)
            .key(self.key(file))
            .upload_id(upload_id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| failed(format!("listing the parts of {}", self.location(file)), e))?;
            for p in page.parts() {
                if let Some(t) = p.last_modified() {
                    newest = newest.max(Some(t.secs()));
                }
            }
        }
        Ok(newest)
    }

    /// Aborts an upload an earlier, killed run left behind.
    pub async fn abort_upload(&self, file: &str, upload_id: &str) -> Result<(), BackupError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(self.key(file))
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| failed(format!("aborting the upload of {}", self.location(file)), e))?;
        Ok(())
    }
}
