//! The streaming multipart upload: fed part by part from the backup stream's thread
//! (memory stays at a few parts whatever the database size), the parts sent
//! concurrently by a task in the runtime, completed only when told to and aborted
//! otherwise, so a failed or stopped run leaves no incomplete upload behind. Its own
//! module because it is the one request that lives as long as a run, with a writer
//! on each side of the runtime.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::bucket::S3;
use super::errors::failed;
use crate::backup::{err, BackupError, Cancel};

/// Parts handed to the uploader and not yet uploaded (in flight or queued); with the
/// one being filled, at most this + 1 parts are in memory.
const IN_FLIGHT: usize = 2;

/// How long stopping an upload waits for the server to drop its parts; a stalled
/// server's leftovers are aborted by the next run instead.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl S3 {
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
                .unwrap_or_else(|| crate::backup::cancelled("cancelled"));
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
                Some(r) => r.unwrap_or_else(|e| {
                    Err(err(format!("the upload task failed: {e}")).with_source(e))
                }),
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

/// The task behind an [`Upload`]: starts the multipart upload, sends the parts as they
/// come, and completes it when told to; on any failure (an abort too), the server is
/// asked to drop what it got.
async fn upload_task(
    s3: S3,
    file: String,
    rx: mpsc::Receiver<Part>,
    decision: oneshot::Receiver<bool>,
    give_back: std::sync::mpsc::Sender<Vec<u8>>,
    cancel: Arc<Cancel>,
) -> Result<(), BackupError> {
    let upload = Multipart::create(s3, file, cancel).await?;
    let result = upload.send_and_complete(rx, decision, give_back).await;
    if result.is_err() {
        upload.abort().await;
    }
    result
}

/// A multipart upload the server has started: what each step of [`upload_task`] needs.
struct Multipart {
    s3: S3,
    file: String,
    key: String,
    location: String,
    upload_id: String,
    cancel: Arc<Cancel>,
}

impl Multipart {
    /// Starts the upload (the server gives it an id).
    async fn create(s3: S3, file: String, cancel: Arc<Cancel>) -> Result<Multipart, BackupError> {
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
        .map_err(|e| failed(format!("{location}: cannot start the upload"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| err(format!("{location}: the server gave no upload id")))?
            .to_string();
        Ok(Multipart {
            s3,
            file,
            key,
            location,
            upload_id,
            cancel,
        })
    }

    /// Sends the parts until the writer decides, then completes the upload if the
    /// decision is to keep it and every part arrived.
    async fn send_and_complete(
        &self,
        mut rx: mpsc::Receiver<Part>,
        mut decision: oneshot::Receiver<bool>,
        give_back: std::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<(), BackupError> {
        let (location, cancel) = (&self.location, &self.cancel);
        let mut decided: Option<bool> = None;
        let parts: Result<Vec<CompletedPart>, BackupError> = {
            // The running uploads of parts live in `work`: they are dropped (and so
            // aborted) as soon as this block is left, e.g. on an abort.
            let work = self.send_parts(&mut rx, &give_back);
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
        self.complete(parts).await
    }

    /// Uploads each part as it comes, several at a time, until the writer is done;
    /// the parts uploaded, in no particular order.
    async fn send_parts(
        &self,
        rx: &mut mpsc::Receiver<Part>,
        give_back: &std::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<Vec<CompletedPart>, BackupError> {
        let mut running: JoinSet<Result<CompletedPart, BackupError>> = JoinSet::new();
        let mut parts: Vec<CompletedPart> = Vec::new();
        let mut number = 0;
        while let Some((part, slot)) = rx.recv().await {
            while let Some(done) = running.try_join_next() {
                parts.push(joined(Some(done))?);
            }
            number += 1;
            running.spawn(self.upload_part(number, part, slot, give_back.clone()));
        }
        while let Some(r) = running.join_next().await {
            parts.push(joined(Some(r))?);
        }
        Ok(parts)
    }

    /// One part's request, to run on its own task; its buffer goes back to the writer
    /// and its memory slot is freed once the server has it.
    fn upload_part(
        &self,
        number: i32,
        part: Bytes,
        slot: OwnedSemaphorePermit,
        give_back: std::sync::mpsc::Sender<Vec<u8>>,
    ) -> impl std::future::Future<Output = Result<CompletedPart, BackupError>> + Send + 'static
    {
        let (client, bucket, key, id, loc) = (
            self.s3.client.clone(),
            self.s3.settings.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
            self.location.clone(),
        );
        async move {
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
                .map_err(|e| failed(format!("{loc}: part {number}"), e))?;
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
        }
    }

    /// Completes the upload from its parts, in order: the object appears.
    async fn complete(&self, parts: Vec<CompletedPart>) -> Result<(), BackupError> {
        let location = &self.location;
        self.s3
            .client
            .complete_multipart_upload()
            .bucket(&self.s3.settings.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| failed(format!("{location}: cannot complete the upload"), e))?;
        Ok(())
    }

    /// Asks the server to drop the parts. Nothing half-uploaded may stay behind (it is
    /// billed and invisible); a server that does not answer the abort in time is left
    /// to the next run's clean-up.
    async fn abort(&self) {
        let location = &self.location;
        match tokio::time::timeout(ABORT_WAIT, self.s3.abort_upload(&self.file, &self.upload_id))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}; the next run aborts it"),
            Err(_) => tracing::warn!(
                "{location}: the server did not confirm the abort in time; the next run aborts the upload"
            ),
        }
    }
}

fn joined(
    r: Option<Result<Result<CompletedPart, BackupError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, BackupError> {
    match r {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(err(format!("upload task: {e}")).with_source(e)),
        None => Err(err("upload task: nothing to wait for")),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::types::CompletedPart;

    use super::joined;
    use crate::backup::err;

    #[test]
    fn a_parts_task_gives_its_part_its_error_or_says_it_failed() {
        let part = CompletedPart::builder().part_number(3).build();
        assert_eq!(joined(Some(Ok(Ok(part.clone())))).unwrap(), part);
        let e = joined(Some(Ok(Err(err("s3://b/x: part 3: HTTP 500"))))).unwrap_err();
        assert_eq!(e.message(), "s3://b/x: part 3: HTTP 500");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let aborted = rt.block_on(async {
            let t = tokio::spawn(std::future::pending::<Result<CompletedPart, _>>());
            t.abort();
            t.await
        });
        let e = joined(Some(aborted)).unwrap_err();
        assert!(e.message().starts_with("upload task: "), "{e}");
        assert!(e.message().contains("cancelled"), "{e}");
        let e = joined(None).unwrap_err();
        assert_eq!(e.message(), "upload task: nothing to wait for");
    }
}
