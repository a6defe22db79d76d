//! S3-compatible storage through aws-sdk-s3: a streaming multipart upload fed part by
//! part from the backup stream (memory stays at a few parts whatever the database
//! size) that is completed only when told to and aborted otherwise, so a failed or
//! stopped run leaves no incomplete upload behind; paginated listing; a streaming
//! download for restore and verify, resumed where it was cut off; deletion.
//!
//! Credentials come from the standard AWS chain (environment, profile, web identity,
//! ECS, instance metadata). A custom endpoint (`BACKUP_S3_ENDPOINT`: MinIO, R2,
//! Hetzner, B2, ...) uses path-style addressing by default and sends checksums only
//! where the API requires them, which every compatible server understands. HTTPS uses
//! rustls with ring and the system's CA certificates (`SSL_CERT_FILE` or
//! `/etc/ssl/certs`).

use std::io::{self, Read};
use std::sync::Arc;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{err, BackupError, Cancel};

/// Where and how backups go to S3-compatible storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// A custom endpoint (MinIO, R2, Hetzner, B2, ...).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`): the default with a custom endpoint.
    pub path_style: bool,
    pub storage_class: Option<String>,
    /// `AES256` or `aws:kms`.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Multipart part size in bytes (5 MiB to 5 GiB).
    pub part_size: usize,
}

/// Parts handed to the uploader and not yet uploaded (in flight or queued); with the
/// one being filled, at most this + 1 parts are in memory.
const IN_FLIGHT: usize = 2;

/// A bucket and prefix ready for requests.
#[derive(Clone)]
pub struct S3 {
    client: Client,
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
/// How long stopping an upload waits for the server to drop its parts; a stalled
/// server's leftovers are aborted by the next run instead.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// One short line for an SDK error: the HTTP status and S3 error code when the server
/// answered, else what failed on the way (connection refused, DNS, TLS, timeout), and
/// what to check. Never a `Debug` dump.
fn reason<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let status = e.raw_response().map(|r| r.status_code());
    if let Some(service) = e.as_service_error() {
        let code = service.code().unwrap_or("no error code");
        let hint = match code {
            "NoSuchBucket" => ": check BACKUP_S3_BUCKET",
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
                ": check the AWS credentials and the bucket policy"
            }
            "PermanentRedirect" | "AuthorizationHeaderMalformed" => ": check BACKUP_S3_REGION",
            _ => "",
        };
        let status = status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
        let message = service
            .message()
            .map(|m| format!(" ({})", one_line(m)))
            .unwrap_or_default();
        return format!("{status}{code}{message}{hint}");
    }
    let cause = cause_of(e);
    if mentions_credentials(e) {
        // Identity resolution fails before any connection: not the endpoint's fault.
        // (Its innermost cause is the chain's last provider, instance metadata, whose
        // "IMDS is disabled" says nothing useful.)
        return "no AWS credentials (none in the environment, a profile, web identity, ECS or instance metadata): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or their _FILE), or AWS_PROFILE".into();
    }
    match e {
        SdkError::TimeoutError(_) => "timed out: check BACKUP_S3_ENDPOINT and the network".into(),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            format!("timed out ({cause}): check BACKUP_S3_ENDPOINT and the network")
        }
        SdkError::DispatchFailure(_) => {
            format!("cannot connect ({cause}): check BACKUP_S3_ENDPOINT and that the server runs")
        }
        SdkError::ResponseError(_) => match status {
            Some(s) => format!("HTTP {s}: the server's answer could not be read ({cause})"),
            None => format!("the server's answer could not be read ({cause})"),
        },
        _ => match status {
            Some(s) => format!("HTTP {s} ({cause})"),
            None => cause,
        },
    }
}

/// Whether the SDK failed to load credentials (its `CredentialsError` says
/// "credential" in every variant; the crate that defines it is not a dependency).
fn mentions_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.to_string().to_ascii_lowercase().contains("credential") {
            return true;
        }
        source = s.source();
    }
    false
}

/// The innermost cause of an error, as a short lower-case reason.
fn cause_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return crate::error::io_reason(io);
        }
        last = s.to_string();
        source = s.source();
    }
    one_line(&last)
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// The HTTP status of a raw response, whatever its type.
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

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
        // A custom endpoint mostly ignores the region, but signing needs one: default
        // it instead of asking the chain (which would try instance metadata).
        let region = s
            .region
            .clone()
            .or_else(|| s.endpoint.as_ref().map(|_| "us-east-1".to_string()));
        if let Some(r) = region {
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
        format!("s3://{}/{}", self.settings.bucket, self.key(file))
    }

    fn key(&self, file: &str) -> String {
        format!("{}{file}", self.settings.prefix)
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
                err(format!(
                    "listing s3://{}/{}: {}",
                    self.settings.bucket,
                    self.settings.prefix,
                    reason(&e)
                ))
            })?;
            for o in page.contents() {
                if let Some(file) = o.key().and_then(|k| k.strip_prefix(&self.settings.prefix)) {
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
            .map_err(|e| err(format!("{}: {}", self.location(file), reason(&e))))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| err(format!("{}: {e}", self.location(file))))?;
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
            .map_err(|e| err(format!("{}: {}", self.location(file), reason(&e))))?;
        Ok(())
    }

    pub async fn delete(&self, file: &str) -> Result<(), BackupError> {
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(self.key(file))
            .send()
            .await
            .map_err(|e| err(format!("deleting {}: {}", self.location(file), reason(&e))))?;
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
            .map_err(|e| err(format!("listing uploads: {}", reason(&e))))?;
        Ok(out
            .uploads()
            .iter()
            .filter_map(|u| {
                let file = u.key()?.strip_prefix(&self.settings.prefix)?;
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
            let page = page.map_err(|e| {
                err(format!(
                    "listing the parts of {}: {}",
                    self.location(file),
                    reason(&e)
                ))
            })?;
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
            .map_err(|e| {
                err(format!(
                    "aborting the upload of {}: {}",
                    self.location(file),
                    reason(&e)
                ))
            })?;
        Ok(())
    }

    /// Starts a streaming upload of `file`; feed it from a thread outside the runtime.
    /// Every wait it makes ends when `cancel` fires, whatever the server does.
    pub fn upload(&self, rt: &Handle, file: &str, cancel: Arc<Cancel>) -> Upload {
        let (tx, rx) = mpsc::channel::<Part>(IN_FLIGHT);
        let (decide, decision) = oneshot::channel::<bool>();
        let (give_back, spare) = std::sync::mpsc::channel();
        let task = rt.spawn(upload_task(
            self.clone(),
            file.to_string(),
            rx,
            decision,
            give_back,
            cancel.clone(),
        ));
        Upload {
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            tx: Some(tx),
            decide: Some(decide),
            task: Some(task),
            buf: Vec::new(),
            spare,
            part_size: self.settings.part_size,
            rt: rt.clone(),
            failed: None,
            cancel,
        }
    }

    /// Streams `file` for reading from a thread outside the runtime. A download cut
    /// short (an error, or the end before the object's `Content-Length`; `expected`,
    /// the manifest's size, when the server gives none) is resumed from the byte
    /// reached with a ranged GET of the same object (`If-Match` its ETag), up to
    /// [`READ_ATTEMPTS`] times in a row without progress; then the read fails naming
    /// the network error. A cut is never passed on as the end of the data, so it can
    /// never be taken for a damaged backup.
    pub fn open(
        &self,
        rt: &Handle,
        file: &str,
        expected: u64,
    ) -> Result<Box<dyn Read + Send>, BackupError> {
        let location = self.location(file);
        let first = rt
            .block_on(self.get_from(file, 0, None))
            .map_err(|e| err(format!("{location}: {}", reason(&e))))?;
        let total = first
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(expected);
        let etag = first.e_tag().map(String::from);
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let s3 = self.clone();
        let file = file.to_string();
        rt.spawn(async move {
            let mut body = first.body;
            let mut offset = 0u64;
            // Bytes a server that ignored the Range sends again: dropped.
            let mut skip = 0u64;
            let mut cuts = 0u32;
            loop {
                let why = match body.try_next().await {
                    Ok(Some(mut b)) => {
                        if skip > 0 {
                            let n = skip.min(b.len() as u64);
                            let _ = b.split_to(n as usize);
                            skip -= n;
                        }
                        if b.is_empty() {
                            continue;
                        }
                        offset += b.len() as u64;
                        cuts = 0;
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) if offset >= total => return,
                    Ok(None) => format!("the connection ended at byte {offset} of {total}"),
                    Err(e) => cause_of(&e),
                };
                // Cut short: resume from `offset`, with a pause that grows while no
                // byte comes through.
                let mut why = why;
                loop {
                    cuts += 1;
                    if cuts >= READ_ATTEMPTS {
                        let _ = tx
                            .send(Err(io::Error::other(format!(
                                "{location}: the download was cut off at byte {offset} of {total}, {cuts} times in a row ({why}): a network fault, not a damaged backup; try again"
                            ))))
                            .await;
                        return;
                    }
                    tracing::warn!(
                        "{location}: the download was cut off at byte {offset} of {total} ({why}); resuming"
                    );
                    tokio::time::sleep(RESUME_PAUSE * 2u32.pow(cuts - 1)).await;
                    match s3.get_from(&file, offset, etag.as_deref()).await {
                        Ok(out) => {
                            skip = match out.content_range() {
                                Some(r) if r.starts_with(&format!("bytes {offset}-")) => 0,
                                Some(r) => {
                                    why = format!("the server answered the range {r:?}");
                                    continue;
                                }
                                None => offset,
                            };
                            body = out.body;
                            break;
                        }
                        Err(e) => {
                            let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
                            if code == "PreconditionFailed" || e.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
                                let _ = tx
                                    .send(Err(io::Error::other(format!(
                                        "{location}: the object was replaced while being read (its ETag changed)"
                                    ))))
                                    .await;
                                return;
                            }
                            why = reason(&e);
                        }
                    }
                }
            }
        });
        Ok(Box::new(ChannelReader {
            rx,
            current: Bytes::new(),
        }))
    }

    /// A GET of `file` from byte `offset` on, of the version `etag` when given.
    async fn get_from(
        &self,
        file: &str,
        offset: u64,
        etag: Option<&str>,
    ) -> Result<
        aws_sdk_s3::operation::get_object::GetObjectOutput,
        aws_sdk_s3::error::SdkError<
            aws_sdk_s3::operation::get_object::GetObjectError,
            aws_sdk_s3::config::http::HttpResponse,
        >,
    > {
        self.client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(self.key(file))
            .set_range((offset > 0).then(|| format!("bytes={offset}-")))
            .set_if_match(etag.map(String::from))
            .send()
            .await
    }
}

/// How many cuts in a row, with no byte read in between, a download survives.
const READ_ATTEMPTS: u32 = 5;
/// The pause before the first resumption; it doubles with each cut in a row.
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The download as a `Read`: chunks from the task, which reads the body in the runtime.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A full part and its memory slot, freed once uploaded.
type Part = (Bytes, OwnedSemaphorePermit);

/// The writing end of a multipart upload, used from the backup stream's thread.
pub struct Upload {
    slots: Arc<Semaphore>,
    tx: Option<mpsc::Sender<Part>>,
    decide: Option<oneshot::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<Result<(), BackupError>>>,
    buf: Vec<u8>,
    /// Part buffers the uploader is done with: a run allocates a few, not one per part
    /// (a fresh part is megabytes of new pages to fault in, then unmapped again).
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    part_size: usize,
    rt: Handle,
    failed: Option<BackupError>,
    cancel: Arc<Cancel>,
}

impl Upload {
    /// Appends data; full parts are handed to the uploader (waiting while it is busy).
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), BackupError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = self.spare.try_recv().unwrap_or_default();
                self.buf.clear();
                self.buf.reserve_exact(self.part_size);
            }
            let n = (self.part_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.part_size {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn send_part(&mut self) -> Result<(), BackupError> {
        let part = Bytes::from(std::mem::take(&mut self.buf));
        // Wait for a slot: memory stays bounded however slow the upload is.
        // Cancellation ends the wait too: a stalled server must not hold a stop.
        let cancel = self.cancel.clone();
        let slot = self.rt.block_on(async {
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => slot.ok(),
                _ = cancel.cancelled() => None,
            }
        });
        if self.cancel.is_cancelled() {
            let e = self
                .cancel
                .check()
                .err()
                .unwrap_or_else(|| super::cancelled("cancelled"));
            self.failed = Some(e.clone());
            return Err(e);
        }
        let sent = match slot {
            Some(slot) => self
                .tx
                .as_ref()
                .map(|tx| tx.blocking_send((part, slot)).map_err(|_| ())),
            None => Some(Err(())),
        };
        if let Some(Err(_)) = sent {
            // The uploader stopped: its result says why.
            let e = self
                .join()
                .err()
                .unwrap_or_else(|| err("the upload stopped"));
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    fn join(&mut self) -> Result<(), BackupError> {
        self.tx = None;
        let Some(t) = self.task.take() else {
            return self.failed.clone().map_or(Ok(()), Err);
        };
        let cancel = self.cancel.clone();
        self.rt.block_on(async move {
            tokio::pin!(t);
            let joined = tokio::select! {
                r = &mut t => Some(r),
                _ = cancel.cancelled() => None,
            };
            let joined = match joined {
                Some(r) => Some(r),
                // Cancelled: the task aborts the upload itself; wait a little for that,
                // never longer (the next run cleans up what a stalled server kept).
                None => tokio::time::timeout(ABORT_WAIT, &mut t).await.ok(),
            };
            match joined {
                Some(r) => r.unwrap_or_else(|e| Err(err(format!("the upload task failed: {e}")))),
                None => Err(err(
                    "cancelled; the upload is aborted in the background or by the next run",
                )),
            }
        })
    }

    /// Sends the last part and completes the upload.
    pub fn commit(mut self) -> Result<(), BackupError> {
        if let Some(e) = self.failed.take() {
            self.abort();
            return Err(e);
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        if let Some(d) = self.decide.take() {
            let _ = d.send(true);
        }
        self.join()
    }

    /// Aborts the upload and waits until the server has dropped the parts.
    pub fn abort(mut self) {
        self.abort_now();
    }

    fn abort_now(&mut self) {
        if let Some(d) = self.decide.take() {
            let _ = d.send(false);
        }
        let _ = self.join();
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.abort_now();
        }
    }
}

async fn upload_task(
    s3: S3,
    file: String,
    mut rx: mpsc::Receiver<Part>,
    decision: oneshot::Receiver<bool>,
    give_back: std::sync::mpsc::Sender<Vec<u8>>,
    cancel: Arc<Cancel>,
) -> Result<(), BackupError> {
    let s = &s3.settings;
    let key = s3.key(&file);
    let location = s3.location(&file);
    let created = tokio::select! {
        r = s3
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .set_storage_class(s.storage_class.as_deref().map(Into::into))
            .set_server_side_encryption(s.sse.as_deref().map(Into::into))
            .set_ssekms_key_id(s.sse_kms_key_id.clone())
            .send() => r,
        _ = cancel.cancelled() => return Err(err(format!("{location}: upload cancelled"))),
    }
    .map_err(|e| {
        err(format!(
            "{location}: cannot start the upload: {}",
            reason(&e)
        ))
    })?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| err(format!("{location}: the server gave no upload id")))?
        .to_string();
    let mut decision = decision;
    let mut decided: Option<bool> = None;
    let result: Result<(), BackupError> = async {
        let parts: Result<Vec<CompletedPart>, BackupError> = {
            // Parts are sent and collected here; the running uploads are dropped (and
            // so aborted) as soon as this block is left, e.g. on an abort.
            let mut running: JoinSet<Result<CompletedPart, BackupError>> = JoinSet::new();
            let work = async {
                let mut parts: Vec<CompletedPart> = Vec::new();
                let mut number = 0;
                while let Some((part, slot)) = rx.recv().await {
                    while let Some(done) = running.try_join_next() {
                        parts.push(joined(Some(done))?);
                    }
                    number += 1;
                    let (client, bucket, key, id, loc, give_back) = (
                        s3.client.clone(),
                        s.bucket.clone(),
                        key.clone(),
                        upload_id.clone(),
                        location.clone(),
                        give_back.clone(),
                    );
                    running.spawn(async move {
                        let kept = part.clone();
                        let out = client
                            .upload_part()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(id)
                            .part_number(number)
                            .body(ByteStream::from(part))
                            .send()
                            .await
                            .map_err(|e| err(format!("{loc}: part {number}: {}", reason(&e))))?;
                        // The request is gone: the buffer is ours alone again. Handed
                        // back before the slot, so the writer finds it when it next waits.
                        if let Ok(buf) = kept.try_into_mut() {
                            let _ = give_back.send(Vec::from(buf));
                        }
                        drop(slot);
                        Ok(CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(String::from))
                            .build())
                    });
                }
                while let Some(r) = running.join_next().await {
                    parts.push(joined(Some(r))?);
                }
                Ok(parts)
            };
            tokio::pin!(work);
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    d = &mut decision, if decided.is_none() => {
                        decided = Some(d == Ok(true));
                        if decided == Some(false) {
                            break Err(err(format!("{location}: upload aborted")));
                        }
                    }
                    _ = cancel.cancelled() => break Err(err(format!("{location}: upload cancelled"))),
                }
            }
        };
        let mut parts = parts?;
        let go = match decided {
            Some(d) => d,
            None => tokio::select! {
                d = &mut decision => d == Ok(true),
                _ = cancel.cancelled() => false,
            },
        };
        if !go {
            return Err(err(format!("{location}: upload aborted")));
        }
        if parts.is_empty() {
            return Err(err(format!("{location}: nothing to upload")));
        }
        parts.sort_by_key(|p| p.part_number());
        s3.client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                err(format!(
                    "{location}: cannot complete the upload: {}",
                    reason(&e)
                ))
            })?;
        Ok(())
    }
    .await;
    if result.is_err() {
        // Nothing half-uploaded may stay behind (it is billed and invisible); a server
        // that does not answer the abort in time is left to the next run's clean-up.
        match tokio::time::timeout(ABORT_WAIT, s3.abort_upload(&file, &upload_id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}; the next run aborts it"),
            Err(_) => tracing::warn!(
                "{location}: the server did not confirm the abort in time; the next run aborts the upload"
            ),
        }
    }
    result
}

fn joined(
    r: Option<Result<Result<CompletedPart, BackupError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, BackupError> {
    match r {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(err(format!("upload task: {e}"))),
        None => Err(err("upload task: nothing to wait for")),
    }
}
