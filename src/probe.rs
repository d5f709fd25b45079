//! Volume probes: ask the system that owns a volume whether it still exists.
//!
//! A probe answers one [`Verdict`] per call: Healthy, Transient, PendingDelete or Deleted. Only
//! *authoritative* answers can be evidence of deletion: an HTTP 200 JSON envelope from a CubeFS
//! master saying code 7 or `Status 1`; a volume root that is gone; an HTTP status the operator
//! mapped to "deleted"; an S3 404 `NoSuchBucket`, which is *weak* (an ObjectNode answers 404 for
//! about 10 s after any failed volume load). Timeouts, refused connections, unexpected statuses,
//! unparseable bodies and unknown codes are Transient: they never count toward a deletion, and no
//! answer from a server, however malformed, makes a probe panic.
//!
//! A volume may have several probes; [`combine`] keeps the answer of the most authoritative probe
//! that gave one (a CubeFS master outranks an S3 endpoint), and turns disagreement at the top into
//! Transient. Turning verdicts into a *confirmed* state is the monitor's job ([`crate::monitor`]).

pub mod cubefs;
pub mod dir;
pub mod http;
pub mod s3;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{BackendSettings, HealthSettings, ProbeSettings, VolumeSettings};

/// A boxed future, for dyn-compatible async probe calls.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How much a deletion answer is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Needs more answers over a longer window to confirm (S3 404).
    Weak,
    /// Normal confirmation applies.
    Strong,
}

/// What an authoritative deletion answer said, and who said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Which probe and endpoint answered (`cubefs 10.0.0.1:17010`).
    pub source: String,
    /// What it answered (`code 7 "vol not exists"`).
    pub detail: String,
    /// Weak or strong.
    pub strength: Strength,
    /// The answer is a `dir` volume's served root found detached from its path (moved away,
    /// replaced, unmounted): whatever is written through it reaches a directory that is no
    /// longer the volume's.
    pub detached: bool,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.detail)?;
        if self.strength == Strength::Weak {
            write!(f, " (weak)")?;
        }
        Ok(())
    }
}

/// Why an answer was not authoritative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransientKind {
    /// No answer within the timeout.
    Timeout,
    /// Connection refused, reset or otherwise failed.
    Down,
    /// CubeFS: no leader (election, startup).
    NoLeader,
    /// CubeFS: a leader exists but has not loaded its metadata.
    LeaderNotReady,
    /// Rate limited (HTTP 429).
    RateLimited,
    /// A proxy could not reach the server behind it (HTTP 502).
    Proxy,
    /// Wrong endpoint or method (HTTP 404/405 from a master).
    WrongEndpoint,
    /// Credentials or permissions (HTTP 403, CubeFS code 34).
    Auth,
    /// The server failed (HTTP 5xx, CubeFS code 1).
    ServerError,
    /// An answer that could not be understood: never guessed at.
    Malformed,
    /// A well-formed answer that says nothing about existence (other codes, other statuses).
    Unexpected,
    /// An answer from the wrong cluster.
    WrongCluster,
    /// A weak deletion answer outranked by nothing, or conflicting answers.
    Inconclusive,
    /// The filesystem did not answer in time (hung mount) or failed with an I/O error.
    Io,
    /// A deletion answer for a volume this process never saw healthy: a configuration error
    /// (a misspelt volume name, marker or path), never evidence of a deletion.
    NeverHealthy,
    /// A `dir` volume's served root is no longer at its path (moved, replaced, unmounted), seen
    /// by the root check of a volume whose existence other probes decide (a master): the
    /// volume may well exist, but not where this node serves it from.
    Detached,
}

impl TransientKind {
    /// A short label for logs and status.
    pub fn label(self) -> &'static str {
        match self {
            TransientKind::Timeout => "timeout",
            TransientKind::Down => "down",
            TransientKind::NoLeader => "no-leader",
            TransientKind::LeaderNotReady => "leader-not-ready",
            TransientKind::RateLimited => "rate-limited",
            TransientKind::Proxy => "proxy",
            TransientKind::WrongEndpoint => "wrong-endpoint",
            TransientKind::Auth => "auth",
            TransientKind::ServerError => "server-error",
            TransientKind::Malformed => "malformed",
            TransientKind::Unexpected => "unexpected",
            TransientKind::WrongCluster => "wrong-cluster",
            TransientKind::Inconclusive => "inconclusive",
            TransientKind::Io => "io",
            TransientKind::NeverHealthy => "never-healthy",
            TransientKind::Detached => "detached",
        }
    }
}

/// One probe answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The volume exists and can serve. `note` flags oddities that are not problems
    /// (a CubeFS volume with writes forbidden).
    Healthy {
        /// An observation worth showing.
        note: Option<String>,
    },
    /// No authoritative answer.
    Transient {
        /// Why.
        kind: TransientKind,
        /// Details for the log.
        detail: String,
    },
    /// Deletion requested but not final (CubeFS delayed mode, before `DeleteExecTime`).
    PendingDelete(Evidence),
    /// The volume is gone.
    Deleted(Evidence),
}

impl Verdict {
    /// A transient answer.
    pub fn transient(kind: TransientKind, detail: impl Into<String>) -> Verdict {
        Verdict::Transient {
            kind,
            detail: detail.into(),
        }
    }

    /// A healthy answer without note.
    pub fn healthy() -> Verdict {
        Verdict::Healthy { note: None }
    }

    /// Whether the answer is authoritative (not Transient).
    pub fn is_authoritative(&self) -> bool {
        !matches!(self, Verdict::Transient { .. })
    }

    /// A one-word name.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Healthy { .. } => "healthy",
            Verdict::Transient { .. } => "transient",
            Verdict::PendingDelete(_) => "pending-delete",
            Verdict::Deleted(_) => "deleted",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Healthy { note: None } => write!(f, "healthy"),
            Verdict::Healthy { note: Some(n) } => write!(f, "healthy ({n})"),
            Verdict::Transient { kind, detail } => {
                write!(f, "transient({}): {detail}", kind.label())
            }
            Verdict::PendingDelete(e) => write!(f, "pending-delete: {e}"),
            Verdict::Deleted(e) => write!(f, "deleted: {e}"),
        }
    }
}

/// How far a probe's answers are trusted relative to other probes of the same volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authority {
    /// The implicit check of a `dir` volume's served root, added when its configured probes do
    /// not look at the directory: it re-opens a remounted root and says "healthy" only when no
    /// configured probe answers with authority, so it never hides what they say (an S3 bucket
    /// deleted under an s3fs mount whose directory still answers).
    Root,
    /// An object-store endpoint (S3 HEAD bucket): may be stale or blacklisted.
    ObjectStore,
    /// The volume's own filesystem, or an operator-chosen HTTP endpoint.
    Service,
    /// The system of record for volume existence (a CubeFS master).
    Master,
}

/// A probe of one volume.
pub trait Probe: Send + Sync + 'static {
    /// Probe kind (`cubefs`, `s3`, `http`, `dir`).
    fn kind(&self) -> &'static str;
    /// How much its answers are trusted.
    fn authority(&self) -> Authority;
    /// Ask once. Never panics; every failure is a Transient verdict. The monitor bounds the
    /// whole call with its own timeout as well.
    fn check(&self) -> BoxFuture<'_, Verdict>;
}

/// Combine the answers of several probes of one volume: the most authoritative answer wins;
/// disagreement among the most authoritative answers is Transient (never a guess).
pub fn combine(answers: &[(Authority, Verdict)]) -> Verdict {
    let top = answers
        .iter()
        .filter(|(_, v)| v.is_authoritative())
        .map(|(a, _)| *a)
        .max();
    let Some(top) = top else {
        return answers.first().map(|(_, v)| v.clone()).unwrap_or_else(|| {
            Verdict::transient(TransientKind::Inconclusive, "no probe answered")
        });
    };
    let at_top: Vec<&Verdict> = answers
        .iter()
        .filter(|(a, v)| *a == top && v.is_authoritative())
        .map(|(_, v)| v)
        .collect();
    let first = at_top[0];
    let agree = at_top
        .iter()
        .all(|v| std::mem::discriminant(*v) == std::mem::discriminant(first));
    if !agree {
        let detail = at_top
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Verdict::transient(
            TransientKind::Inconclusive,
            format!("probes disagree: {detail}"),
        );
    }
    // Among agreeing deletion answers, keep the strongest evidence.
    at_top
        .iter()
        .max_by_key(|v| match v {
            Verdict::Deleted(e) | Verdict::PendingDelete(e) => e.strength,
            _ => Strength::Weak,
        })
        .map(|v| (*v).clone())
        .unwrap_or_else(|| first.clone())
}

/// Build the probes a volume's settings ask for (the backend's default when none is given);
/// `health` is the volume's effective policy. `watch` is the served root of a `dir` backend
/// (`None` where nothing is served, as in `check`): a volume with such a root and no `dir`
/// probe of its own gets a root-only one (see [`dir`]).
pub fn build(
    volume: &VolumeSettings,
    health: &HealthSettings,
    client: &reqwest::Client,
    watch: Option<Arc<dir::RootWatch>>,
) -> Vec<Arc<dyn Probe>> {
    let configured: Vec<&ProbeSettings> = volume.probe.iter().chain(volume.probes.iter()).collect();
    if configured.is_empty() {
        return vec![default_for(&volume.backend, watch)];
    }
    let has_dir = configured
        .iter()
        .any(|p| matches!(p, ProbeSettings::Dir(_)));
    let root_only = watch
        .clone()
        .filter(|_| !has_dir)
        .map(|w| Arc::new(dir::DirProbe::root_only(w)) as Arc<dyn Probe>);
    configured
        .into_iter()
        .map(|p| -> Arc<dyn Probe> {
            match p {
                ProbeSettings::Cubefs(c) => Arc::new(cubefs::CubefsProbe::new(
                    c,
                    &volume.name,
                    health.clock_skew,
                    client.clone(),
                )),
                ProbeSettings::S3(c) => Arc::new(s3::S3Probe::new(c, &volume.name, client.clone())),
                ProbeSettings::Http(c) => Arc::new(http::HttpProbe::new(c, client.clone())),
                ProbeSettings::Dir(c) => {
                    Arc::new(dir::DirProbe::new(c, &volume.backend, watch.clone()))
                }
            }
        })
        .chain(root_only)
        .collect()
}

fn default_for(backend: &BackendSettings, watch: Option<Arc<dir::RootWatch>>) -> Arc<dyn Probe> {
    match backend {
        BackendSettings::Dir { .. } => {
            Arc::new(dir::DirProbe::new(&Default::default(), backend, watch))
        }
    }
}

/// The HTTP client every network probe shares: no proxy (health checks must reach the server
/// itself), a short connect timeout, TLS through rustls (ring) with the platform's trust store.
pub fn http_client() -> Result<reqwest::Client, String> {
    // The process-wide TLS provider; a second install (another client) is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(1))
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| {
            format!(
                "cannot build the HTTP client for probes: {}",
                error_chain(&e)
            )
        })
}

/// Classify a transport failure of an HTTP request. The detail names the endpoint without its
/// query, fragment or user info: a presigned URL carries an access key id and a live signature in
/// its query, and neither may reach a log, `check` or the status.
pub(crate) fn transport_failure(e: reqwest::Error) -> Verdict {
    let endpoint = e.url().map(|u| {
        let mut u = u.clone();
        u.set_query(None);
        u.set_fragment(None);
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.to_string()
    });
    let kind = if e.is_timeout() {
        TransientKind::Timeout
    } else {
        TransientKind::Down
    };
    let e = e.without_url();
    let detail = match endpoint {
        Some(u) => format!("{u}: {}", error_chain(&e)),
        None => error_chain(&e),
    };
    Verdict::transient(kind, detail)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Read at most `limit` bytes of a response body; an oversized or broken body is an error
/// (never a reason to buffer without bound).
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Verdict> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Verdict::transient(
                        TransientKind::Malformed,
                        format!("body larger than {limit} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport_failure(e)),
        }
    }
}

/// A printable, bounded excerpt of a body for logs.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(120)]);
    s.trim().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transport_failures_never_carry_a_presigned_query() {
        // A closed port on loopback: the request fails before any answer.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!(
            "http://user:pw@127.0.0.1:{port}/bucket?X-Amz-Credential=AKIDSECRET%2F20261130&X-Amz-Signature=deadbeef"
        );
        let e = http_client().unwrap().head(&url).send().await.unwrap_err();
        let v = transport_failure(e);
        let text = v.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}/bucket")), "{text}");
        for secret in ["AKIDSECRET", "deadbeef", "X-Amz", "pw@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    fn deleted(strength: Strength) -> Verdict {
        Verdict::Deleted(Evidence {
            source: "x".into(),
            detail: "y".into(),
            strength,
            detached: false,
        })
    }

    #[test]
    fn master_outranks_object_store() {
        let v = combine(&[
            (Authority::ObjectStore, deleted(Strength::Weak)),
            (Authority::Master, Verdict::healthy()),
        ]);
        assert_eq!(v, Verdict::healthy());
        let v = combine(&[
            (Authority::ObjectStore, Verdict::healthy()),
            (Authority::Master, deleted(Strength::Strong)),
        ]);
        assert_eq!(v, deleted(Strength::Strong));
    }

    #[test]
    fn transient_master_leaves_lower_authority() {
        let v = combine(&[
            (
                Authority::Master,
                Verdict::transient(TransientKind::Timeout, "t"),
            ),
            (Authority::ObjectStore, deleted(Strength::Weak)),
        ]);
        assert_eq!(v, deleted(Strength::Weak));
    }

    #[test]
    fn the_served_root_never_hides_what_a_configured_probe_says() {
        // An s3fs-style mount: the directory answers, the bucket is gone.
        let v = combine(&[
            (Authority::Root, Verdict::healthy()),
            (Authority::ObjectStore, deleted(Strength::Weak)),
        ]);
        assert!(matches!(v, Verdict::Deleted(_)), "{v}");
        // With nothing else answering, the root's answer stands.
        let v = combine(&[
            (Authority::Root, Verdict::healthy()),
            (
                Authority::ObjectStore,
                Verdict::transient(TransientKind::Timeout, "t"),
            ),
        ]);
        assert_eq!(v, Verdict::healthy());
    }

    #[test]
    fn disagreement_at_the_top_is_transient() {
        let v = combine(&[
            (Authority::Service, Verdict::healthy()),
            (Authority::Service, deleted(Strength::Strong)),
        ]);
        assert!(matches!(
            v,
            Verdict::Transient {
                kind: TransientKind::Inconclusive,
                ..
            }
        ));
    }

    #[test]
    fn the_probe_client_supports_https() {
        let client = http_client().unwrap();
        // Building an https request needs the TLS provider; nothing is sent.
        assert!(client.get("https://127.0.0.1:1/").build().is_ok());
    }

    #[test]
    fn nothing_authoritative_is_transient() {
        let t = Verdict::transient(TransientKind::Down, "refused");
        assert_eq!(combine(&[(Authority::Master, t.clone())]), t);
        assert!(!combine(&[]).is_authoritative());
    }
}
