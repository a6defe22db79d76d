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
//!
//! One module each: [`settings`] (where backups go), [`bucket`] (the client, and the
//! small requests: list, get, put, delete, clean-up of uploads), [`upload`] (the
//! streaming multipart upload), [`download`] (the resumed streaming read) and
//! [`errors`] (an SDK error as one short line).

mod bucket;
mod download;
mod errors;
mod settings;
mod upload;

pub use bucket::{Object, S3};
pub use settings::S3Settings;
pub use upload::Upload;
