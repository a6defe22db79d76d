//! An SDK error as one short line: the HTTP status and S3 error code when the server
//! answered, else what failed on the way, and what to check. Its own module because
//! every request (small ones, the upload, the download) reports through it, and the
//! SDK's errors are deep enough to need the walking kept in one place.

use aws_sdk_s3::error::ProvideErrorMetadata;

/// One short line for an SDK error: the HTTP status and S3 error code when the server
/// answered, else what failed on the way (connection refused, DNS, TLS, timeout), and
/// what to check. Never a `Debug` dump.
pub(super) fn reason<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
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
pub(super) fn cause_of(e: &(dyn std::error::Error + 'static)) -> String {
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
pub(super) trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}
