//! Where and how backups go to S3-compatible storage: the settings the client is
//! built from, apart from the client so that reading settings needs no SDK type.

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
