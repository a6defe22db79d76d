//! The streaming download behind restore and verify: the object read in the runtime
//! and handed as a `Read` to a thread outside it, a cut resumed where it happened, and
//! never passed on as the end of the data (a cut taken for the end would look like a
//! damaged backup). Its own module because the resumption is a small state machine of
//! its own, apart from the client's one-shot requests.

use std::io::{self, Read};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::bucket::S3;
use super::errors::{cause_of, failed, reason};
use crate::backup::BackupError;

impl S3 {
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
            .map_err(|e| failed(&location, e))?;
        let total = first
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(expected);
        let etag = first.e_tag().map(String::from);
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let feed = Feed {
            s3: self.clone(),
            file: file.to_string(),
            location,
            etag,
            total,
            tx,
        };
        rt.spawn(feed.run(first.body));
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

/// The task behind [`S3::open`]: the object's bytes sent to the reader, resumed after
/// each cut.
struct Feed {
    s3: S3,
    file: String,
    location: String,
    /// The version being read: a resumption reads the same one or fails.
    etag: Option<String>,
    /// The object's size, from its `Content-Length` or the manifest.
    total: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Feed {
    /// Sends the body's bytes to the reader until the object's end, a cut that could
    /// not be resumed (the reader gets the reason), or the reader gone.
    async fn run(self, body: ByteStream) {
        let (tx, total) = (&self.tx, self.total);
        let mut body = body;
        let mut offset = 0u64;
        // Bytes a server that ignored the Range sends again: dropped.
        let mut skip = 0u64;
        let mut cuts = 0u32;
        loop {
            let why = match body.try_next().await {
                Ok(Some(mut b)) => {
                    drop_resent(&mut b, &mut skip);
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
            match self.resume(offset, why, &mut cuts).await {
                Some((rest, again)) => {
                    body = rest;
                    skip = again;
                }
                None => return,
            }
        }
    }

    /// After a cut (`why`) at `offset`: resumes from there, with a pause that grows
    /// while no byte comes through. The new body and how many of its first bytes the
    /// reader already has, or `None` once the reader has been told why it cannot go on.
    async fn resume(&self, offset: u64, why: String, cuts: &mut u32) -> Option<(ByteStream, u64)> {
        let (tx, location, total) = (&self.tx, &self.location, self.total);
        let mut why = why;
        loop {
            *cuts += 1;
            let cuts = *cuts;
            if cuts >= READ_ATTEMPTS {
                let _ = tx
                    .send(Err(io::Error::other(format!(
                        "{location}: the download was cut off at byte {offset} of {total}, {cuts} times in a row ({why}): a network fault, not a damaged backup; try again"
                    ))))
                    .await;
                return None;
            }
            tracing::warn!(
                "{location}: the download was cut off at byte {offset} of {total} ({why}); resuming"
            );
            tokio::time::sleep(pause(cuts)).await;
            match self
                .s3
                .get_from(&self.file, offset, self.etag.as_deref())
                .await
            {
                Ok(out) => match already_sent(out.content_range(), offset) {
                    Ok(skip) => return Some((out.body, skip)),
                    Err(answered) => why = answered,
                },
                Err(e) => {
                    if replaced(&e) {
                        let _ = tx
                            .send(Err(io::Error::other(format!(
                                "{location}: the object was replaced while being read (its ETag changed)"
                            ))))
                            .await;
                        return None;
                    }
                    why = reason(&e);
                }
            }
        }
    }
}

/// Drops from the front of `b` what is left of the `skip` bytes the reader already has.
fn drop_resent(b: &mut Bytes, skip: &mut u64) {
    if *skip > 0 {
        let n = (*skip).min(b.len() as u64);
        let _ = b.split_to(n as usize);
        *skip -= n;
    }
}

/// How many first bytes of a resumed body, asked from `offset` on, the reader already
/// has: none when the server answered that range, all `offset` when it ignored the
/// Range and sent the whole object; any other range is why the resumption failed.
fn already_sent(content_range: Option<&str>, offset: u64) -> Result<u64, String> {
    match content_range {
        Some(r) if r.starts_with(&format!("bytes {offset}-")) => Ok(0),
        Some(r) => Err(format!("the server answered the range {r:?}")),
        None => Ok(offset),
    }
}

/// The pause before resuming after the `cuts`-th cut in a row (from 1): doubling.
fn pause(cuts: u32) -> std::time::Duration {
    RESUME_PAUSE * 2u32.pow(cuts.saturating_sub(1))
}

/// Whether a resumption failed because the object is no longer the version being read
/// (its `If-Match` ETag failed): no retry can help.
fn replaced(
    e: &aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::get_object::GetObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
) -> bool {
    let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
    code == "PreconditionFailed" || e.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

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

#[cfg(test)]
mod tests {
    use std::io::{self, Read};

    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::{ErrorMetadata, SdkError};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn bytes_the_reader_has_are_dropped_across_chunks() {
        let mut skip = 5;
        let mut b = Bytes::from_static(b"abc");
        drop_resent(&mut b, &mut skip);
        assert!(b.is_empty());
        assert_eq!(skip, 2);
        let mut b = Bytes::from_static(b"defgh");
        drop_resent(&mut b, &mut skip);
        assert_eq!(&b[..], b"fgh");
        assert_eq!(skip, 0);
        let mut b = Bytes::from_static(b"ij");
        drop_resent(&mut b, &mut skip);
        assert_eq!(&b[..], b"ij", "nothing more is dropped");
    }

    #[test]
    fn a_resumption_skips_only_what_a_server_that_ignored_the_range_sends_again() {
        assert_eq!(already_sent(Some("bytes 1000-4999/5000"), 1000), Ok(0));
        assert_eq!(already_sent(None, 1000), Ok(1000), "the whole object again");
        let e = already_sent(Some("bytes 0-4999/5000"), 1000).unwrap_err();
        assert_eq!(e, "the server answered the range \"bytes 0-4999/5000\"");
        // a range that only starts with the same digits is another range
        assert!(already_sent(Some("bytes 10000-19999/20000"), 1000).is_err());
    }

    #[test]
    fn the_pause_doubles_with_each_cut_in_a_row() {
        assert_eq!(pause(1), RESUME_PAUSE);
        assert_eq!(pause(2), RESUME_PAUSE * 2);
        assert_eq!(pause(4), RESUME_PAUSE * 8);
        assert_eq!(pause(0), RESUME_PAUSE);
    }

    #[test]
    fn a_changed_etag_is_told_from_other_failures() {
        let answer = |status: u16| HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        let failed = |code: &str, status: u16| {
            let meta = ErrorMetadata::builder().code(code).build();
            SdkError::service_error(GetObjectError::generic(meta), answer(status))
        };
        assert!(replaced(&failed("PreconditionFailed", 412)));
        assert!(replaced(&failed("", 412)), "by the status alone");
        assert!(
            replaced(&failed("PreconditionFailed", 400)),
            "by the code alone"
        );
        assert!(!replaced(&failed("NoSuchKey", 404)));
        assert!(!replaced(&SdkError::timeout_error("slow")));
    }

    #[test]
    fn the_reader_hands_on_chunks_in_order_then_the_error_or_the_end() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"hello "))).unwrap();
        tx.try_send(Ok(Bytes::new())).unwrap();
        tx.try_send(Ok(Bytes::from_static(b"world"))).unwrap();
        tx.try_send(Err(io::Error::other("cut off"))).unwrap();
        drop(tx);
        let mut r = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let mut small = [0u8; 4];
        assert_eq!(r.read(&mut small).unwrap(), 4);
        assert_eq!(&small, b"hell");
        let mut rest = Vec::new();
        let e = r.read_to_end(&mut rest).unwrap_err();
        assert_eq!(rest, b"o world");
        assert_eq!(e.to_string(), "cut off");
        assert_eq!(r.read(&mut small).unwrap(), 0, "the feed is gone: the end");
    }
}
