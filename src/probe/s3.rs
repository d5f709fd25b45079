//! The `s3` probe: a signed `HEAD` of the bucket (SigV4, presigned by rusty-s3).
//!
//! - 200: healthy.
//! - 404: ask a second witness, a `ListObjectsV2` with `max-keys=1`, whose XML error body names
//!   the reason. `NoSuchBucket` there is deletion evidence, but **weak**: a CubeFS ObjectNode
//!   answers 404 for about 10 s after any failed volume load, so it needs more answers over a
//!   longer window to confirm. A listing that works after a HEAD 404 is inconclusive.
//! - 403: transient (credentials, clock skew on the signature); 5xx and timeouts: transient.
//!
//! Credentials come from the environment (`access_key_env`, `secret_key_env`) or a file; they are
//! never logged. Without any, requests go unsigned.

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::{Authority, BoxFuture, Evidence, Probe, Strength, TransientKind, Verdict};
use crate::config::S3ProbeSettings;

const BODY_LIMIT: usize = 64 << 10;
const SIGNATURE_TTL: Duration = Duration::from_secs(120);

/// See the module docs.
pub struct S3Probe {
    bucket: Result<Bucket, String>,
    credentials: Result<Option<Credentials>, String>,
    timeout: Duration,
    client: reqwest::Client,
    source: String,
}

impl S3Probe {
    /// A probe of bucket `settings.bucket` (or `name`).
    pub fn new(settings: &S3ProbeSettings, name: &str, client: reqwest::Client) -> S3Probe {
        let bucket_name = settings.bucket.clone().unwrap_or_else(|| name.to_string());
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = url::Url::parse(&settings.endpoint)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                Bucket::new(u, style, bucket_name.clone(), settings.region.clone())
                    .map_err(|e| e.to_string())
            });
        S3Probe {
            bucket,
            credentials: load_credentials(settings),
            timeout: settings.timeout,
            client,
            source: format!("s3 {} bucket {bucket_name}", settings.endpoint),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: url::Url,
    ) -> Result<(u16, Vec<u8>), Verdict> {
        let resp = self
            .client
            .request(method, url.as_str())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(super::transport_failure)?;
        let status = resp.status().as_u16();
        let body = super::read_body(resp, BODY_LIMIT).await?;
        Ok((status, body))
    }
}

impl Probe for S3Probe {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn authority(&self) -> Authority {
        Authority::ObjectStore
    }

    fn check(&self) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            let bucket = match &self.bucket {
                Ok(b) => b,
                Err(e) => {
                    return Verdict::transient(
                        TransientKind::Unexpected,
                        format!("bad endpoint: {e}"),
                    );
                }
            };
            let creds = match &self.credentials {
                Ok(c) => c.as_ref(),
                Err(e) => return Verdict::transient(TransientKind::Auth, e.clone()),
            };
            let head = bucket.head_bucket(creds).sign(SIGNATURE_TTL);
            let (status, _) = match self.send(reqwest::Method::HEAD, head).await {
                Ok(r) => r,
                Err(v) => return v,
            };
            if status != 404 {
                return classify_head(status, &self.source);
            }
            // A HEAD answer has no body: ask the listing why.
            let mut list = bucket.list_objects_v2(creds);
            list.with_max_keys(1);
            let url = list.sign(SIGNATURE_TTL);
            match self.send(reqwest::Method::GET, url).await {
                Ok((status, body)) => classify_witness(status, &body, &self.source),
                Err(v) => v,
            }
        })
    }
}

/// Classify the status of a HEAD bucket (404 needs the witness).
pub fn classify_head(status: u16, source: &str) -> Verdict {
    match status {
        200..=299 => Verdict::healthy(),
        403 => Verdict::transient(
            TransientKind::Auth,
            format!("{source}: HEAD 403 (credentials or clock skew)"),
        ),
        404 => Verdict::transient(
            TransientKind::Inconclusive,
            format!("{source}: HEAD 404 without a witness"),
        ),
        500..=599 => Verdict::transient(
            TransientKind::ServerError,
            format!("{source}: HEAD {status}"),
        ),
        other => Verdict::transient(TransientKind::Unexpected, format!("{source}: HEAD {other}")),
    }
}

/// Classify the listing that follows a HEAD 404.
pub fn classify_witness(status: u16, body: &[u8], source: &str) -> Verdict {
    match (status, error_code(body).as_deref()) {
        (404, Some("NoSuchBucket")) => Verdict::Deleted(Evidence {
            source: source.to_string(),
            detail: "404 NoSuchBucket".into(),
            strength: Strength::Weak,
            detached: false,
        }),
        (200..=299, _) => Verdict::transient(
            TransientKind::Inconclusive,
            format!("{source}: HEAD 404 but the listing answers {status}"),
        ),
        (403, _) => Verdict::transient(TransientKind::Auth, format!("{source}: listing 403")),
        (_, Some(code)) => Verdict::transient(
            TransientKind::Unexpected,
            format!("{source}: listing {status} {code}"),
        ),
        (_, None) => Verdict::transient(
            TransientKind::Malformed,
            format!("{source}: listing {status} without an S3 error code"),
        ),
    }
}

/// The `<Code>` of an S3 XML error body, if it has a plausible one.
pub fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = text[start..start + len].trim();
    let plausible = !code.is_empty()
        && code.len() <= 64
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    plausible.then(|| code.to_string())
}

fn load_credentials(s: &S3ProbeSettings) -> Result<Option<Credentials>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        access_key: String,
        secret_key: String,
    }
    if let Some(path) = &s.credentials_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read credentials file {}: {e}", path.display()))?;
        // The error text of a bad file never includes its contents.
        let f: File = toml_from_str(&text).ok_or_else(|| {
            format!(
                "credentials file {} must hold access_key = \"…\" and secret_key = \"…\"",
                path.display()
            )
        })?;
        return Ok(Some(Credentials::new(f.access_key, f.secret_key)));
    }
    match (
        std::env::var(&s.access_key_env),
        std::env::var(&s.secret_key_env),
    ) {
        (Ok(k), Ok(v)) if !k.is_empty() => Ok(Some(Credentials::new(k, v))),
        _ => Ok(None),
    }
}

fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(text)).extract().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_SUCH_BUCKET: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>vol1</BucketName></Error>"#;

    #[test]
    fn witness_classification() {
        assert!(matches!(
            classify_witness(404, NO_SUCH_BUCKET.as_bytes(), "s"),
            Verdict::Deleted(Evidence {
                strength: Strength::Weak,
                detached: false,
                ..
            })
        ));
        let other = NO_SUCH_BUCKET.replace("NoSuchBucket", "NoSuchKey");
        assert!(!classify_witness(404, other.as_bytes(), "s").is_authoritative());
        assert!(!classify_witness(404, b"", "s").is_authoritative());
        assert!(!classify_witness(200, b"<ListBucketResult/>", "s").is_authoritative());
        assert!(!classify_witness(500, NO_SUCH_BUCKET.as_bytes(), "s").is_authoritative());
    }

    #[test]
    fn head_classification() {
        assert_eq!(classify_head(200, "s"), Verdict::healthy());
        for s in [403, 500, 503, 301, 400] {
            assert!(!classify_head(s, "s").is_authoritative(), "{s}");
        }
    }

    #[test]
    fn error_codes_are_extracted_carefully() {
        assert_eq!(
            error_code(NO_SUCH_BUCKET.as_bytes()).as_deref(),
            Some("NoSuchBucket")
        );
        assert_eq!(error_code(b"<Code>No Such</Code>"), None);
        assert_eq!(error_code(b"<Code>NoSuchBucket"), None);
        assert_eq!(error_code(b"\xff\xfe<Code>NoSuchBucket</Code>"), None);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bodies_never_panic(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = error_code(&body);
                let v = classify_witness(status, &body, "s");
                // Without the exact NoSuchBucket code, nothing reads as a deletion.
                prop_assert!(!matches!(v, Verdict::Deleted(_)) || error_code(&body).as_deref() == Some("NoSuchBucket"));
                prop_assert!(!matches!(classify_head(status, "s"), Verdict::Deleted(_) | Verdict::PendingDelete(_)));
            }

            #[test]
            fn truncated_error_bodies_are_never_deletions(cut in 0usize..NO_SUCH_BUCKET.find("</Code>").unwrap_or(0) + 6) {
                // Cut anywhere before the closing </Code> is complete: never a deletion.
                let v = classify_witness(404, &NO_SUCH_BUCKET.as_bytes()[..cut], "s");
                prop_assert!(!matches!(v, Verdict::Deleted(_)));
            }
        }
    }
}
