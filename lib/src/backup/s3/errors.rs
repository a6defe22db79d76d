//! An SDK error as one short line: the HTTP status and S3 error code when the server
//! answered, else what failed on the way, and what to check. Its own module because
//! every request (small ones, the upload, the download) reports through it, and the
//! SDK's errors are deep enough to need the walking kept in one place.

use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::backup::{err, BackupError};

/// The error of a request that failed: `what` (the object, or the step), the
/// [`reason`], and the SDK's error kept as the cause.
pub(super) fn failed<E, R>(
    what: impl std::fmt::Display,
    e: aws_sdk_s3::error::SdkError<E, R>,
) -> BackupError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus + Send + Sync + 'static,
{
    err(format!("{what}: {}", reason(&e))).with_source(e)
}

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

#[cfg(test)]
mod tests {
    use std::io;

    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata, SdkError};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::{cause_of, failed, one_line, reason};

    type Failed = SdkError<GetObjectError, HttpResponse>;

    fn answer(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn refused(code: &str, message: Option<&str>, status: u16) -> Failed {
        let mut meta = ErrorMetadata::builder().code(code);
        if let Some(m) = message {
            meta = meta.message(m);
        }
        SdkError::service_error(GetObjectError::generic(meta.build()), answer(status))
    }

    #[test]
    fn a_server_refusal_names_status_code_message_and_what_to_check() {
        let e = refused(
            "NoSuchBucket",
            Some("The specified bucket does not exist"),
            404,
        );
        assert_eq!(
            reason(&e),
            "HTTP 404 NoSuchBucket (The specified bucket does not exist): check BACKUP_S3_BUCKET"
        );
        for code in [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ] {
            let r = reason(&refused(code, None, 403));
            assert_eq!(
                r,
                format!("HTTP 403 {code}: check the AWS credentials and the bucket policy")
            );
        }
        let r = reason(&refused("PermanentRedirect", None, 301));
        assert!(r.ends_with(": check BACKUP_S3_REGION"), "{r}");
        // a code with no advice is given as the server said it
        assert_eq!(reason(&refused("SlowDown", None, 503)), "HTTP 503 SlowDown");
    }

    #[test]
    fn a_servers_long_message_is_one_short_line() {
        let long = format!("first\n  second\t{}", "x".repeat(400));
        let r = reason(&refused("InternalError", Some(&long), 500));
        assert!(
            r.starts_with("HTTP 500 InternalError (first second xxx"),
            "{r}"
        );
        assert!(!r.contains('\n') && !r.contains('\t'), "{r}");
        assert!(r.ends_with("...)"), "{r}");
        assert_eq!(one_line("a\n b"), "a b");
        let cut = one_line(&"é".repeat(200));
        assert_eq!(cut.chars().count(), 163, "160 characters and ...");
    }

    #[test]
    fn a_request_that_got_no_answer_says_what_failed_on_the_way() {
        let e = Failed::dispatch_failure(ConnectorError::io(Box::new(
            io::Error::from_raw_os_error(111),
        )));
        assert_eq!(
            reason(&e),
            "cannot connect (connection refused): check BACKUP_S3_ENDPOINT and that the server runs"
        );
        let e = Failed::dispatch_failure(ConnectorError::timeout(Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            "read",
        ))));
        assert_eq!(
            reason(&e),
            "timed out (timed out): check BACKUP_S3_ENDPOINT and the network"
        );
        let e = Failed::timeout_error("attempt timeout");
        assert_eq!(
            reason(&e),
            "timed out: check BACKUP_S3_ENDPOINT and the network"
        );
        let e = Failed::response_error("unexpected end of XML", answer(200));
        assert_eq!(
            reason(&e),
            "HTTP 200: the server's answer could not be read (unexpected end of XML)"
        );
        let e = Failed::construction_failure("no bucket given");
        assert_eq!(reason(&e), "no bucket given");
    }

    #[test]
    fn a_failed_request_says_what_failed_and_keeps_the_sdks_error_as_its_cause() {
        let e = failed(
            "s3://b/x.dump.zst",
            Failed::timeout_error("attempt timeout"),
        );
        assert_eq!(
            e.message(),
            "s3://b/x.dump.zst: timed out: check BACKUP_S3_ENDPOINT and the network"
        );
        let cause = std::error::Error::source(&e).expect("the SDK's error");
        assert!(cause.downcast_ref::<Failed>().is_some(), "{cause:?}");
    }

    #[test]
    fn missing_credentials_are_named_as_such_not_as_the_endpoints_fault() {
        let e = Failed::dispatch_failure(ConnectorError::other(
            "failed to load credentials: the credential provider was not enabled".into(),
            None,
        ));
        let r = reason(&e);
        assert!(r.starts_with("no AWS credentials"), "{r}");
        assert!(r.contains("AWS_ACCESS_KEY_ID"), "{r}");
        // a server's refusal is its own, whatever its message says
        let r = reason(&refused("AccessDenied", Some("bad credentials"), 403));
        assert!(r.starts_with("HTTP 403 AccessDenied"), "{r}");
    }

    #[test]
    fn the_cause_is_the_innermost_error_and_an_io_error_is_said_short() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(io::Error::from_raw_os_error(104));
        assert_eq!(cause_of(&e), "connection reset by peer");
        let e = io::Error::other("plain\nfailure");
        assert_eq!(cause_of(&e), "plain failure");
    }
}
