//! Event hooks (`[events]`): tell the outside world what happened, without ever delaying it.
//!
//! Events: `volume_state_changed`, `failover_started`, `failover_completed`, `exiting`. Each is
//! one JSON object (`{"event": "…", "time": <unix seconds>, "fleet": "…", …}`) handed to the
//! configured hooks: `exec` runs a command with the event on its stdin, `webhook` POSTs it
//! (retried with backoff). Both are bounded by `timeout`.
//!
//! Invariant: emitting never blocks and never fails the caller. Events go through a bounded
//! queue to one task that runs the hooks one event at a time, in order; when the queue is full
//! (hooks far slower than events), new events are dropped and counted, with a warning. A switch
//! therefore takes exactly as long with hooks as without.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::EventSettings;

/// Events waiting for the hooks, at most.
const QUEUE: usize = 256;

/// The emitting side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Option<mpsc::Sender<Value>>,
    fleet: Arc<str>,
    dropped: Arc<AtomicU64>,
    /// Events queued, and events the hooks are done with.
    queued: Arc<AtomicU64>,
    handled: Arc<AtomicU64>,
}

impl Events {
    /// No hooks: every event is dropped at once.
    pub fn none() -> Events {
        Events {
            tx: None,
            fleet: Arc::from(""),
            dropped: Arc::new(AtomicU64::new(0)),
            queued: Arc::new(AtomicU64::new(0)),
            handled: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Start the hook task on `runtime` for `settings`; `fleet` goes into every event.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        settings: &EventSettings,
        fleet: &str,
    ) -> Events {
        if settings.exec.is_empty() && settings.webhook.is_none() {
            return Events::none();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let handled = Arc::new(AtomicU64::new(0));
        runtime.spawn(run_hooks(rx, settings.clone(), handled.clone()));
        Events {
            tx: Some(tx),
            fleet: Arc::from(fleet),
            dropped: Arc::new(AtomicU64::new(0)),
            queued: Arc::new(AtomicU64::new(0)),
            handled,
        }
    }

    /// Emit `event` with `fields` (an object). Never blocks.
    pub fn emit(&self, event: &str, fields: Value) {
        let Some(tx) = &self.tx else {
            return;
        };
        let mut e = json!({
            "event": event,
            "time": SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            "fleet": &*self.fleet,
        });
        if let (Some(e), Value::Object(f)) = (e.as_object_mut(), fields) {
            e.extend(f);
        }
        if tx.try_send(e).is_ok() {
            self.queued.fetch_add(1, Ordering::SeqCst);
        } else {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(event, dropped = n, "event hooks are behind; event dropped");
        }
    }

    /// Wait (at most `limit`) until the hooks are done with every event emitted so far: for the
    /// way out, so that `exiting` reaches them before the process ends.
    pub async fn flush(&self, limit: Duration) {
        if self.tx.is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        while self.handled.load(Ordering::SeqCst) < self.queued.load(Ordering::SeqCst)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn run_hooks(
    mut rx: mpsc::Receiver<Value>,
    settings: EventSettings,
    handled: Arc<AtomicU64>,
) {
    // The probes' client (no proxy, the process's TLS provider); each request bounded below.
    let client = match crate::probe::http_client() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "event webhook disabled");
            None
        }
    };
    while let Some(event) = rx.recv().await {
        let body = event.to_string();
        let name = event["event"].as_str().unwrap_or("?").to_string();
        if let Some((cmd, args)) = settings.exec.split_first() {
            match tokio::time::timeout(settings.timeout, exec(cmd, args, &body)).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    tracing::warn!(event = %name, hook = %cmd, %status, "event hook failed")
                }
                Ok(Err(e)) => {
                    tracing::warn!(event = %name, hook = %cmd, error = %e, "event hook failed")
                }
                Err(_) => tracing::warn!(event = %name, hook = %cmd, "event hook timed out"),
            }
        }
        if let (Some(url), Some(client)) = (&settings.webhook, &client) {
            let post = || async {
                client
                    .post(url.as_str())
                    .timeout(settings.timeout)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
            };
            let tried = post
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_times(3)
                        .with_jitter(),
                )
                .await;
            if let Err(e) = tried {
                // Without the URL: it may carry credentials.
                let e = e.without_url();
                tracing::warn!(event = %name, error = %e, "event webhook failed");
            }
        }
        handled.fetch_add(1, Ordering::SeqCst);
    }
}

async fn exec(cmd: &str, args: &[String], body: &str) -> std::io::Result<std::process::ExitStatus> {
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(body.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    child.wait().await
}
