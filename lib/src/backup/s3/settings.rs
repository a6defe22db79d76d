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

impl S3Settings {
    /// The object key of `file`: the prefix, then the file name.
    pub(super) fn key(&self, file: &str) -> String {
        format!("{}{file}", self.prefix)
    }

    /// Where messages say a file is: `s3://bucket/prefix/file`.
    pub fn location(&self, file: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(file))
    }

    /// The file an object key under the prefix names, or `None` for a key elsewhere.
    pub(super) fn file_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)
    }

    /// The region requests are signed for: the one set, else `us-east-1` with a
    /// custom endpoint (which mostly ignores it, but signing needs one), else `None`,
    /// left to the AWS chain.
    pub(super) fn signing_region(&self) -> Option<String> {
        self.region
            .clone()
            .or_else(|| self.endpoint.as_ref().map(|_| "us-east-1".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::S3Settings;

    fn settings(prefix: &str) -> S3Settings {
        S3Settings {
            bucket: "backups".into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            path_style: false,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            part_size: 8 << 20,
        }
    }

    #[test]
    fn a_file_is_keyed_under_the_prefix_and_located_in_its_bucket() {
        let s = settings("prod/db/");
        assert_eq!(s.key("app.dump.zst"), "prod/db/app.dump.zst");
        assert_eq!(
            s.location("app.dump.zst"),
            "s3://backups/prod/db/app.dump.zst"
        );
        let s = settings("");
        assert_eq!(s.key("app.dump.zst"), "app.dump.zst");
        assert_eq!(s.location("app.dump.zst"), "s3://backups/app.dump.zst");
    }

    #[test]
    fn a_key_names_a_file_only_under_the_prefix() {
        let s = settings("prod/");
        assert_eq!(s.file_of("prod/app.dump.zst"), Some("app.dump.zst"));
        assert_eq!(s.file_of("staging/app.dump.zst"), None);
        assert_eq!(s.file_of("production/app.dump.zst"), None);
        assert_eq!(settings("").file_of("x/y"), Some("x/y"));
        // the key of a file names that file again
        assert_eq!(s.file_of(&s.key("a b.json")), Some("a b.json"));
    }

    #[test]
    fn the_signing_region_is_the_one_set_else_a_default_only_for_a_custom_endpoint() {
        let mut s = settings("");
        assert_eq!(s.signing_region(), None, "left to the AWS chain");
        s.endpoint = Some("http://127.0.0.1:9000".into());
        assert_eq!(s.signing_region().as_deref(), Some("us-east-1"));
        s.region = Some("eu-central-1".into());
        assert_eq!(s.signing_region().as_deref(), Some("eu-central-1"));
        s.endpoint = None;
        assert_eq!(s.signing_region().as_deref(), Some("eu-central-1"));
    }
}
