//! The admin HTTP server: what an operator (or systemd, Kubernetes, Prometheus) asks a running
//! mount.
//!
//! - `GET /healthz`: the process is alive (200).
//! - `GET /readyz`: 200 when the mount serves and the active volume is healthy, or has been
//!   unreachable for less than [`READY_GRACE`]; 503 with the reason otherwise.
//! - `GET /status`: JSON: the mount, its state, the route generation, every volume's confirmed
//!   state and last answer, counters, and the recent switches.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `POST /switch?to=NAME[&force=true]`: a manual switch through the same drain and swap as an
//!   automatic one; refused (409) when the target's probes do not say healthy, unless forced.
//!
//! Invariants: the server only reads shared state and sends commands to the supervisor; it never
//! swaps the route itself (the supervisor stays the only writer). With a token configured, every
//! request without `Authorization: Bearer <token>` gets 401. A Unix socket is made mode 0600.
//! Nothing secret reaches a response: volumes are shown by name and state, and evidence and
//! probe answers carry no credentials (the probes redact them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode, Uri, header};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::AdminAddress;
use crate::failover::{AuditEntry, Outcome, SwitchTotals};
use crate::fuse::deadline::Deadlines;
use crate::monitor::{Health, Monitor};
use crate::vfs::Vfs;

/// How long an unreachable active volume still counts as ready.
pub const READY_GRACE: Duration = Duration::from_secs(30);

/// Switches shown in `/status`.
const TRANSITIONS_SHOWN: usize = 20;

/// A manual switch asked through the admin server, for the supervisor.
pub struct SwitchRequest {
    /// Volume index.
    pub target: usize,
    /// For the audit.
    pub reason: String,
    /// How it ended.
    pub reply: oneshot::Sender<Outcome>,
}

/// What the server reads.
pub struct AdminState {
    /// Mount point.
    pub mount: PathBuf,
    /// The fleet label.
    pub fleet: String,
    /// The logical volume.
    pub vfs: Arc<Vfs>,
    /// The probes' verdicts.
    pub monitor: Arc<Monitor>,
    /// The recent switches.
    pub audit: Arc<Mutex<Vec<AuditEntry>>>,
    /// Totals over every switch.
    pub totals: Arc<SwitchTotals>,
    /// Operation deadlines.
    pub deadlines: Arc<Deadlines>,
    /// Manual switches go to the supervisor through here.
    pub switches: mpsc::UnboundedSender<SwitchRequest>,
    /// The bearer token, when one is required.
    pub token: Option<String>,
}

/// The admin server's socket, bound but not yet served. Bound before the mount, so that once
/// the mount answers, so does the admin server (requests that come first wait in the backlog).
/// Dropped unserved (the start failed), it removes its socket file.
pub struct Bound {
    listener: Option<Listener>,
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(Listener::Unix(_, path)) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bind `address` (`None` for [`AdminAddress::Off`]). Must run inside the runtime.
pub fn bind(address: &AdminAddress) -> std::io::Result<Option<Bound>> {
    let listener = match address {
        AdminAddress::Off => return Ok(None),
        AdminAddress::Tcp(addr) => {
            let std = std::net::TcpListener::bind(addr)?;
            std.set_nonblocking(true)?;
            Listener::Tcp(tokio::net::TcpListener::from_std(std)?)
        }
        AdminAddress::Unix(path) => Listener::Unix(bind_unix(path)?, path.clone()),
    };
    Ok(Some(Bound {
        listener: Some(listener),
    }))
}

/// Serve `bound` until `stop` is cancelled (on the current runtime).
pub fn serve(mut bound: Bound, state: Arc<AdminState>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/switch", post(switch))
        .with_state(state);
    match bound.listener.take() {
        None => {}
        Some(Listener::Tcp(listener)) => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listen = %addr, "admin server listening");
            }
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "admin server ended");
                }
            });
        }
        Some(Listener::Unix(listener, path)) => {
            tracing::info!(listen = %path.display(), "admin server listening");
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "admin server ended");
                }
                let _ = std::fs::remove_file(&path);
            });
        }
    }
}

/// Bind a Unix socket at `path` (mode 0600), replacing a stale socket file but never one another
/// process still answers on. The socket's directory is made 0755 if missing and must be one no
/// other user can write (see [`crate::ownfiles`]): otherwise another user could move the socket
/// away and listen in its place, and the admin commands would send it their token.
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = crate::ownfiles::parent_of(path);
    crate::ownfiles::tighten_default(dir);
    crate::ownfiles::ensure_dir(dir, 0o755)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another process answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // The process umask (group and other write off, see `backend::identity`) lets nobody else
    // connect from the start; the chmod makes it 0600 under any umask.
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

type Reply = Response<Body>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(status, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

impl AdminState {
    /// `Err(401)` unless the request carries the token (when one is configured).
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Box<Reply>> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in full, whatever the length, so the time taken says nothing about the token.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if ok {
            Ok(())
        } else {
            Err(Box::new(text(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required\n",
            )))
        }
    }
}

async fn healthz(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Reply {
    if let Err(r) = st.authorize(&headers) {
        return *r;
    }
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Reply {
    if let Err(r) = st.authorize(&headers) {
        return *r;
    }
    let route = st.vfs.router().current();
    let active = route.volume();
    let Some(state) = st.monitor.state(active.index) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no active volume\n");
    };
    if route.gate().is_closed() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "switching volumes\n");
    }
    match &state.health {
        Health::Healthy { .. } => text(StatusCode::OK, format!("serving {}\n", active.name)),
        Health::Unknown | Health::Unreachable { .. } if state.since.elapsed() < READY_GRACE => {
            text(
                StatusCode::OK,
                format!("serving {} ({})\n", active.name, state.health),
            )
        }
        other => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("active volume {}: {other}\n", active.name),
        ),
    }
}

/// The `/status` document.
#[derive(Serialize)]
pub struct Status {
    /// Mount point.
    pub mount: String,
    /// Fleet label.
    pub fleet: String,
    /// serving, holding-changes, refusing-changes (the served root is detached), switching
    /// (draining the old volume) or exiting (fenced).
    pub state: &'static str,
    /// Route generation.
    pub generation: u64,
    /// The volume serving now.
    pub active: String,
    /// Every volume, in table order.
    pub volumes: Vec<VolumeStatus>,
    /// Counters since start.
    pub counters: Counters,
    /// The most recent switches, oldest first.
    pub transitions: Vec<Transition>,
}

/// One volume in `/status`.
#[derive(Serialize)]
pub struct VolumeStatus {
    /// Name.
    pub name: String,
    /// active or standby.
    pub role: &'static str,
    /// Confirmed state (`healthy`, `unreachable`, `suspect`, `deleted`, …).
    pub state: &'static str,
    /// The state with its evidence.
    pub detail: String,
    /// Seconds in this state.
    pub since_seconds: f64,
    /// The last combined probe answer.
    pub last_answer: Option<String>,
    /// How long the last probe round took, in milliseconds.
    pub last_probe_ms: Option<f64>,
    /// Deletion answers in a row (while suspect or deleted).
    pub consecutive: u32,
    /// Probe rounds.
    pub rounds: u64,
    /// Probe rounds that did not answer healthy.
    pub probe_failures: u64,
    /// Each probe's own answers.
    pub probes: Vec<ProbeStatus>,
}

/// One probe of a volume in `/status`.
#[derive(Serialize)]
pub struct ProbeStatus {
    /// `cubefs`, `s3`, `http`, `dir` (with `#N` when a volume has several of a kind).
    pub probe: String,
    /// Whether its last answer was healthy.
    pub healthy: bool,
    /// Its last answer.
    pub last_answer: Option<String>,
    /// Its answers that were not healthy.
    pub failures: u64,
}

/// Counters in `/status`, in the spirit of `nfsstat -m`.
#[derive(Serialize, Default)]
pub struct Counters {
    /// Switches to another volume.
    pub failovers: u64,
    /// Operations in the old volume when a switch closed it.
    pub drained_operations: u64,
    /// Operations that waited for a new route.
    pub queued_operations: u64,
    /// Idempotent operations run again on a new route.
    pub retried_operations: u64,
    /// Open handles with no file on the new volume at a switch.
    pub stale_handles: u64,
    /// Files changed on the old volume through handles still open at a switch.
    pub writes_left: u64,
    /// Operations answered after `mount.op_timeout`.
    pub op_timeouts: u64,
    /// Operations refused because the volume hangs.
    pub refused_operations: u64,
    /// Failures on the data path that had the volume probed at once.
    pub data_path_alarms: u64,
    /// `ESTALE` answers to the kernel (a name that holds another file now, a removed file):
    /// the kernel retries each once with a fresh lookup.
    pub stale_answers: u64,
    /// Operations in the volume now.
    pub in_flight: u64,
}

/// One switch in `/status`.
#[derive(Serialize)]
pub struct Transition {
    /// Route generation it made (or would have).
    pub generation: u64,
    /// From.
    pub from: String,
    /// To, if it switched.
    pub to: Option<String>,
    /// Why.
    pub reason: String,
    /// The monitor's evidence.
    pub evidence: String,
    /// swapped, no-target, refused or interrupted.
    pub outcome: &'static str,
    /// Unix time it started, in seconds.
    pub started_at: f64,
    /// Drain, in milliseconds.
    pub drain_ms: f64,
    /// Gate closed to new route published, in milliseconds.
    pub swap_ms: f64,
    /// Files with writes left on the old volume (at most 20).
    pub writes_left: Vec<String>,
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The outcome's name.
pub fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Swapped { .. } => "swapped",
        Outcome::NoTarget => "no-target",
        Outcome::Refused => "refused",
        Outcome::Interrupted => "interrupted",
    }
}

impl AdminState {
    /// The status document, now.
    pub fn status(&self) -> Status {
        let route = self.vfs.router().current();
        let active = route.volume().index;
        let volumes = self
            .monitor
            .states()
            .into_iter()
            .map(|s| VolumeStatus {
                role: if s.index == active {
                    "active"
                } else {
                    "standby"
                },
                state: s.health.name(),
                detail: s.health.to_string(),
                since_seconds: (s.since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                last_answer: s.last.as_ref().map(|v| v.to_string()),
                last_probe_ms: s.last_latency.map(ms),
                consecutive: match &s.health {
                    Health::Suspect { count, .. } | Health::Deleted { count, .. } => *count,
                    _ => 0,
                },
                rounds: s.rounds,
                probe_failures: s.failures,
                probes: s
                    .probes
                    .iter()
                    .map(|p| ProbeStatus {
                        probe: p.name.clone(),
                        healthy: matches!(p.last, Some(crate::probe::Verdict::Healthy { .. })),
                        last_answer: p.last.as_ref().map(|v| v.to_string()),
                        failures: p.failures,
                    })
                    .collect(),
                name: s.name,
            })
            .collect();
        let t = &self.totals;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let counters = Counters {
            // Every swap but a re-opening of the same volume after a remount.
            failovers: t.failovers(),
            drained_operations: load(&t.drained),
            stale_handles: load(&t.stale_handles),
            writes_left: load(&t.writes_left),
            queued_operations: self.vfs.router().queued_total(),
            retried_operations: self.vfs.retried_total(),
            op_timeouts: self.deadlines.timeouts_total(),
            refused_operations: self.deadlines.refused_total(),
            data_path_alarms: self.vfs.alarms_total(),
            stale_answers: self.vfs.stale_answers_total(),
            in_flight: route.gate().in_flight(),
        };
        let audit = self.audit.lock();
        let transitions = audit
            .iter()
            .skip(audit.len().saturating_sub(TRANSITIONS_SHOWN))
            .map(|a| Transition {
                generation: a.generation,
                from: a.from.clone(),
                to: a.to.clone(),
                reason: a.reason.clone(),
                evidence: a.evidence.clone(),
                outcome: outcome_name(&a.outcome),
                started_at: unix_secs(a.started_at),
                drain_ms: ms(a.drain),
                swap_ms: ms(a.swap),
                writes_left: a.writes_left.clone(),
            })
            .collect();
        drop(audit);
        Status {
            mount: self.mount.display().to_string(),
            fleet: self.fleet.clone(),
            state: if route.fenced_errno().is_some() {
                // Fenced: stopping, or no volume left to serve.
                "exiting"
            } else if route.gate().is_closed() {
                "switching"
            } else if route.is_held() {
                "holding-changes"
            } else if route.changes() == crate::routing::Changes::Refuse {
                "refusing-changes"
            } else {
                "serving"
            },
            generation: route.generation(),
            active: route.volume().name.clone(),
            volumes,
            counters,
            transitions,
        }
    }
}

async fn status(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Reply {
    if let Err(r) = st.authorize(&headers) {
        return *r;
    }
    json(StatusCode::OK, &st.status())
}

async fn metrics(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Reply {
    if let Err(r) = st.authorize(&headers) {
        return *r;
    }
    match crate::metrics::render(&st) {
        Ok(body) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[derive(Serialize)]
struct SwitchAnswer {
    outcome: &'static str,
    active: String,
    generation: u64,
    message: String,
}

async fn switch(State(st): State<Arc<AdminState>>, headers: HeaderMap, uri: Uri) -> Reply {
    if let Err(r) = st.authorize(&headers) {
        return *r;
    }
    let mut to = None;
    let mut force = false;
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "to" => to = Some(v.into_owned()),
            "force" => force = matches!(&*v, "true" | "1" | "yes"),
            _ => {}
        }
    }
    let answer = |status, outcome, message: String| {
        let route = st.vfs.router().current();
        json(
            status,
            &SwitchAnswer {
                outcome,
                active: route.volume().name.clone(),
                generation: route.generation(),
                message,
            },
        )
    };
    let Some(to) = to else {
        return answer(
            StatusCode::BAD_REQUEST,
            "refused",
            "name the target: POST /switch?to=NAME".into(),
        );
    };
    let states = st.monitor.states();
    let Some(target) = states.iter().find(|s| s.name == to) else {
        return answer(
            StatusCode::NOT_FOUND,
            "refused",
            format!("no volume named {to:?}"),
        );
    };
    if !matches!(target.health, Health::Healthy { .. }) && !force {
        return answer(
            StatusCode::CONFLICT,
            "refused",
            format!(
                "{to} is {}: not switching to a volume whose probes do not say healthy \
                 (force=true to insist)",
                target.health
            ),
        );
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    let asked = SwitchRequest {
        target: target.index,
        reason: format!("admin request{}", if force { ", forced" } else { "" }),
        reply: reply_tx,
    };
    if st.switches.send(asked).is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "refused",
            "the mount is stopping".into(),
        );
    }
    match reply_rx.await {
        Ok(o @ Outcome::Swapped { .. }) => answer(
            StatusCode::OK,
            outcome_name(&o),
            format!("now serving {to}"),
        ),
        Ok(o) => answer(
            StatusCode::CONFLICT,
            outcome_name(&o),
            "not switched: see the log and /status".into(),
        ),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "refused",
            "the mount is stopping".into(),
        ),
    }
}

/// Ask the admin server at `address`: `method` on `path` (with its query), with `token` when
/// given. Returns the status code and the body. For the `status` and `switch` commands.
pub async fn request(
    address: &AdminAddress,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let not_running = |e: std::io::Error| {
        format!("cannot reach the admin server at {address}: {e} (is the mount running?)")
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "failoverfs");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    macro_rules! send {
        ($stream:expr) => {{
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(|e| e.to_string())?
        }};
    }
    let resp = match address {
        AdminAddress::Off => return Err("the admin server is off (admin.listen = \"off\")".into()),
        AdminAddress::Unix(p) => {
            let stream = tokio::net::UnixStream::connect(p)
                .await
                .map_err(not_running)?;
            // Only a server run by root or by our own user gets the token (another user could
            // have put a listener of its own at the path).
            let peer = stream.peer_cred().map_err(|e| e.to_string())?;
            let me = nix::unistd::geteuid().as_raw();
            if peer.uid() != 0 && peer.uid() != me {
                return Err(format!(
                    "refusing the admin socket {}: its server runs as uid {}, not as root or as \
                     this user",
                    p.display(),
                    peer.uid()
                ));
            }
            send!(stream)
        }
        AdminAddress::Tcp(a) => send!(
            tokio::net::TcpStream::connect(a)
                .await
                .map_err(not_running)?
        ),
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `/status` as a table for people (the `status` command).
pub fn status_table(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mount {}  fleet {}  state {}  generation {}  active {}",
        s(&v["mount"]),
        s(&v["fleet"]),
        s(&v["state"]),
        s(&v["generation"]),
        s(&v["active"])
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:<8} {:<14} {:>9} {:>8} {:>9} {:>10}  LAST ANSWER",
        "VOLUME", "ROLE", "STATE", "SINCE(s)", "ROUNDS", "FAILURES", "PROBE(ms)"
    );
    for vol in v["volumes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<14} {:>9} {:>8} {:>9} {:>10}  {}",
            s(&vol["name"]),
            s(&vol["role"]),
            s(&vol["state"]),
            s(&vol["since_seconds"]),
            s(&vol["rounds"]),
            s(&vol["probe_failures"]),
            s(&vol["last_probe_ms"]),
            s(&vol["last_answer"])
        );
        // A probe that fails under a combined answer that does not show it (a master down
        // while the directory answers: deletion detection is blind).
        for p in vol["probes"].as_array().into_iter().flatten() {
            if p["healthy"] == false {
                let _ = writeln!(
                    out,
                    "  {:<14} probe failing ({} answers not healthy): {}",
                    s(&p["probe"]),
                    s(&p["failures"]),
                    s(&p["last_answer"])
                );
            }
        }
    }
    let _ = writeln!(out, "\nCOUNTERS");
    if let Some(c) = v["counters"].as_object() {
        for (k, n) in c {
            let _ = writeln!(out, "  {k:<20} {n}");
        }
    }
    let transitions = v["transitions"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nRECENT SWITCHES ({})", transitions.len());
    for t in &transitions {
        let _ = writeln!(
            out,
            "  gen {} {} -> {} {} ({}; drain {} ms, swap {} ms){}",
            s(&t["generation"]),
            s(&t["from"]),
            s(&t["to"]),
            s(&t["outcome"]),
            s(&t["reason"]),
            s(&t["drain_ms"]),
            s(&t["swap_ms"]),
            match t["writes_left"].as_array() {
                Some(w) if !w.is_empty() => format!("; writes left in {}", w.len()),
                _ => String::new(),
            }
        );
    }
    out
}
