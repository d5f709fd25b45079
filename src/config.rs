//! Configuration: defaults, then the TOML file, then `FAILOVERFS_…` environment variables, then
//! command-line flags (each layer overrides the one before).
//!
//! Invariants:
//! - Unknown keys are errors, in every layer (a typo must never silently fall back to a default).
//! - Every error names the key and where its value came from (the file, or the environment), and
//!   fits on one line; the binary prints it and exits with code 2.
//! - The volume table is ordered: the first entry is the primary, the others are standbys in the
//!   order failover tries them. It can only come from the file (environment variables cannot
//!   express an ordered table).
//! - [`Settings::load`] returns settings that passed [`Settings::validate`]: paths are absolute,
//!   names are unique, numbers are in range, and (after [`Settings::prepare_paths`]) every path
//!   exists and is a directory.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Deserialize;

/// Prefix of the environment variables that override configuration keys. Nested keys use a double
/// underscore: `FAILOVERFS_MOUNT__THREADS=8` sets `mount.threads`.
pub const ENV_PREFIX: &str = "FAILOVERFS_";

/// The whole configuration of one failoverfs process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where and how the logical volume is mounted.
    #[serde(default)]
    pub mount: MountSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// How volumes are probed and when a deletion counts as confirmed.
    #[serde(default)]
    pub health: HealthSettings,
    /// What happens when the active volume's deletion is confirmed.
    #[serde(default)]
    pub failover: FailoverSettings,
    /// The ordered volume table: primary first, then standbys.
    #[serde(default)]
    pub volumes: Vec<VolumeSettings>,
    /// The admin HTTP server (status, metrics, manual switch).
    #[serde(default)]
    pub admin: AdminSettings,
    /// Event hooks.
    #[serde(default)]
    pub events: EventSettings,
}

/// `[events]`: hooks told about state changes and switches (see [`crate::events`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// A command and its arguments, run with each event as JSON on stdin.
    pub exec: Vec<String>,
    /// A URL each event is POSTed to as JSON.
    pub webhook: Option<String>,
    /// How long one hook may take for one event.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            exec: Vec::new(),
            webhook: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where the admin server listens: a Unix socket path (made mode 0600), a TCP address
    /// (`127.0.0.1:9477`), or `"off"`. Default: a socket under `/run/failoverfs/` named after
    /// the mount point ([`AdminSettings::address`]).
    pub listen: Option<String>,
    /// A file holding a bearer token: requests without `Authorization: Bearer <token>` get 401.
    pub token_file: Option<PathBuf>,
}

/// Where the admin server of a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// No admin server.
    Off,
}

impl std::fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddress::Unix(p) => write!(f, "{}", p.display()),
            AdminAddress::Tcp(a) => write!(f, "{a}"),
            AdminAddress::Off => f.write_str("off"),
        }
    }
}

impl AdminSettings {
    /// The bearer token from `token_file`, trimmed; `Ok(None)` without one. The error names the
    /// key and the file (never the contents).
    pub fn token(&self) -> Result<Option<String>, String> {
        let Some(f) = &self.token_file else {
            return Ok(None);
        };
        match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            Ok(_) => Err(format!("admin.token_file: {} is empty", f.display())),
            Err(e) => Err(format!(
                "admin.token_file: cannot read {}: {e}",
                f.display()
            )),
        }
    }

    /// The address for a mount at `mount`: `listen`, or `/run/failoverfs/<mount path with / as
    /// ->.sock` (`/mnt/data` → `/run/failoverfs/mnt-data.sock`).
    pub fn address(&self, mount: &Path) -> AdminAddress {
        match self.listen.as_deref().map(str::trim) {
            Some("off") => AdminAddress::Off,
            Some(l) if l.starts_with('/') => AdminAddress::Unix(PathBuf::from(l)),
            Some(l) => match l.parse() {
                Ok(a) => AdminAddress::Tcp(a),
                // Refused by `validate`; never reached for a loaded configuration.
                Err(_) => AdminAddress::Off,
            },
            None => {
                let name = mount.to_string_lossy().trim_matches('/').replace('/', "-");
                let name = if name.is_empty() { "-".into() } else { name };
                AdminAddress::Unix(Path::new("/run/failoverfs").join(format!("{name}.sock")))
            }
        }
    }
}

/// `[mount]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountSettings {
    /// The mount point (an existing, absolute directory).
    pub path: Option<PathBuf>,
    /// Mount read-only: the kernel refuses every write with `EROFS`.
    pub read_only: bool,
    /// Let every user access the mount (FUSE `allow_other`); otherwise only the owner and root.
    pub allow_other: bool,
    /// How long the kernel may cache attributes.
    #[serde(with = "duration")]
    pub attr_ttl: Duration,
    /// How long the kernel may cache name lookups.
    #[serde(with = "duration")]
    pub entry_ttl: Duration,
    /// FUSE worker threads, each with its own `/dev/fuse` descriptor. A slow operation holds one
    /// thread; the others keep serving.
    pub threads: usize,
    /// Create the mount point and `dir` volume roots when they are missing (for demos and tests;
    /// leave it off in production, where a missing volume root is an error worth stopping for).
    pub create_missing: bool,
    /// Honour setuid and setgid bits of files executed from the mount (`suid`); off by default
    /// (`nosuid`): anyone who can write a volume could otherwise plant a setuid binary.
    pub suid: bool,
    /// Let device nodes on the volume act as devices (`dev`); off by default (`nodev`).
    pub dev: bool,
    /// How long one operation may wait for its volume. Past it the application gets
    /// `op_timeout_errno` while the call finishes on its own worker, and the volume is probed at
    /// once. Keep it under the kernel's FUSE request timeout, if one is set.
    #[serde(with = "duration")]
    pub op_timeout: Duration,
    /// What an operation past `op_timeout` gets (`ETIMEDOUT` or `EIO`, or any errno name).
    pub op_timeout_errno: Errno,
    /// The logical volume's name across the fleet (every node mounting it), as the `fleet` label
    /// of the metrics; default: the first volume's name.
    pub fleet_name: Option<String>,
    /// Where the mount remembers which volume serves, so that a restart after a switch serves
    /// the same volume (see [`crate::state`]): an absolute path, or `"off"`. Default:
    /// `/var/lib/failoverfs/<mount path with / as ->.state`.
    pub state_file: Option<String>,
    /// FUSE passthrough (Linux 6.9+, root): the kernel reads and writes open files of `dir`
    /// volumes directly, at the volume's own speed, but a switch can no longer drain or redirect
    /// them (see [`crate::fuse::passthrough`]). Off by default.
    pub passthrough: bool,
}

impl Default for MountSettings {
    fn default() -> Self {
        Self {
            path: None,
            read_only: false,
            allow_other: false,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            threads: 16,
            create_missing: false,
            suid: false,
            dev: false,
            op_timeout: Duration::from_secs(30),
            op_timeout_errno: Errno(libc::ETIMEDOUT),
            fleet_name: None,
            state_file: None,
            passthrough: false,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A `tracing` filter: `info`, `debug`, or directives such as `info,failoverfs=debug`.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[volumes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    /// A unique name, used in logs and status.
    pub name: String,
    /// Where the data lives.
    pub backend: BackendSettings,
    /// One probe (`probe = { kind = "…", … }`).
    #[serde(default)]
    pub probe: Option<ProbeSettings>,
    /// More probes (`probes = [{ … }, { … }]`); with `probe`, all of them are used.
    #[serde(default)]
    pub probes: Vec<ProbeSettings>,
    /// Per-volume overrides of `[health]`.
    #[serde(default)]
    pub health: HealthOverride,
}

/// `[failover]`: what a confirmed deletion of the active volume does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSettings {
    /// Switch to the next healthy standby, or exit (code 3) at once.
    pub on_delete: OnDelete,
    /// How long in-flight operations may take to finish on the dying volume, and how long new
    /// operations wait for the new route. Keep it well under the kernel's FUSE request timeout.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Let new operations wait for the new route (`true`), or fail them at once with `errno`.
    pub queue: bool,
    /// What an operation that finds no route gets (queueing off, or waited too long).
    pub errno: Errno,
    /// What an open handle whose file is missing on the new volume gets.
    pub stale_errno: Errno,
    /// With no usable standby: unmount and exit 3, or keep the mount fenced (every operation
    /// fails with `fence_errno`) until an operator unmounts it, then exit 3.
    pub leave_mount: LeaveMount,
    /// What every operation gets on a fenced mount.
    pub fence_errno: Errno,
    /// While strong deletion answers about the active volume accumulate (before the verdict),
    /// operations that change data or metadata wait, at most `drain_timeout`, instead of running
    /// on a volume that is probably going away (`suspect`); or they run (`never`).
    pub hold_writes: HoldWrites,
    /// What an open handle that only read must find on the new volume to follow a switch: any
    /// file at its path (`none`), or one with the size and modification time it had when opened
    /// (`size-mtime`); otherwise it turns stale. (A handle that wrote never follows.)
    pub reopen_verify: ReopenVerify,
    /// What to do when the active volume has answered nothing but transient failures (timeouts,
    /// `ENOTCONN`, 5xx, no leader) for `after`. `wait` (default): keep waiting, as for any
    /// outage. `failover`/`exit`: treat it like a confirmed deletion. Beware: a network
    /// partition then makes clients on either side write to different volumes.
    pub on_unavailable: OnUnavailable,
}

/// `on_unavailable = { after = "2m", action = "wait" }`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnUnavailable {
    /// How long the outage must last.
    #[serde(with = "duration")]
    pub after: Duration,
    /// What then.
    pub action: UnavailableAction,
}

impl Default for OnUnavailable {
    fn default() -> Self {
        OnUnavailable {
            after: Duration::from_secs(120),
            action: UnavailableAction::Wait,
        }
    }
}

/// `on_unavailable.action`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnavailableAction {
    /// Switch to the next healthy standby (or exit 3 when there is none).
    Failover,
    /// Exit 3 without trying a standby.
    Exit,
    /// Keep waiting for the volume.
    Wait,
}

/// `reopen_verify`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReopenVerify {
    /// Re-open whatever is at the path.
    None,
    /// Re-open only a file of the same size and modification time.
    SizeMtime,
}

/// `hold_writes`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldWrites {
    /// Hold changes while the active volume is suspected deleted (strong evidence).
    Suspect,
    /// Never hold.
    Never,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            on_delete: OnDelete::Failover,
            drain_timeout: Duration::from_secs(5),
            queue: true,
            errno: Errno(libc::EIO),
            stale_errno: Errno(libc::ESTALE),
            leave_mount: LeaveMount::Unmount,
            fence_errno: Errno(libc::ENODEV),
            hold_writes: HoldWrites::Suspect,
            reopen_verify: ReopenVerify::None,
            on_unavailable: OnUnavailable::default(),
        }
    }
}

/// `on_delete`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Switch to the next healthy standby.
    Failover,
    /// Exit with code 3 without trying a standby.
    Exit,
}

/// `leave_mount`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveMount {
    /// Unmount (lazily when busy), then exit 3.
    Unmount,
    /// Keep the mount and fail every operation until an operator unmounts it, then exit 3.
    Fenced,
}

/// An errno given by name in the configuration (`"EIO"`, `"ESTALE"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

const ERRNO_NAMES: &[(&str, i32)] = &[
    ("EIO", libc::EIO),
    ("ESTALE", libc::ESTALE),
    ("ENOTCONN", libc::ENOTCONN),
    ("ENODEV", libc::ENODEV),
    ("ENXIO", libc::ENXIO),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("EAGAIN", libc::EAGAIN),
    ("EBUSY", libc::EBUSY),
    ("EROFS", libc::EROFS),
    ("EACCES", libc::EACCES),
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ENOMEDIUM", libc::ENOMEDIUM),
    ("ESHUTDOWN", libc::ESHUTDOWN),
];

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ERRNO_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, v)| Errno(*v))
            .ok_or_else(|| {
                let known: Vec<&str> = ERRNO_NAMES.iter().map(|(n, _)| *n).collect();
                serde::de::Error::custom(format!(
                    "unknown errno {name:?}; use one of {}",
                    known.join(", ")
                ))
            })
    }
}

/// `[health]`: probing and the confirmation policy.
///
/// A deletion is *confirmed* after `confirmations` consecutive deletion answers spanning at least
/// `confirm_window` (weak evidence: `weak_confirmations` over `weak_confirm_window`). Any healthy
/// or transient answer resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Probe interval of the active volume.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Probe interval of standby volumes.
    #[serde(with = "duration")]
    pub standby_interval: Duration,
    /// Random spread of each interval, as a fraction of it (0 to 0.5).
    pub jitter: f64,
    /// Longest a probe round may take; past it the answer is Transient(timeout).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Probe interval while deletion answers accumulate toward a confirmation.
    #[serde(with = "duration")]
    pub confirm_interval: Duration,
    /// Consecutive strong deletion answers needed.
    pub confirmations: u32,
    /// Shortest span from the first to the last of them.
    #[serde(with = "duration")]
    pub confirm_window: Duration,
    /// Consecutive deletion answers needed when the evidence is weak (S3 404).
    pub weak_confirmations: u32,
    /// Shortest span for weak evidence.
    #[serde(with = "duration")]
    pub weak_confirm_window: Duration,
    /// Cap of the exponential backoff between probes while answers are transient.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// What a pending deletion (CubeFS delayed mode) means for the active volume.
    pub on_pending_delete: PendingPolicy,
    /// Tolerance when comparing a server's deletion time with the local clock.
    #[serde(with = "duration")]
    pub clock_skew: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_millis(400),
            standby_interval: Duration::from_secs(5),
            jitter: 0.1,
            timeout: Duration::from_secs(3),
            confirm_interval: Duration::from_millis(500),
            confirmations: 3,
            confirm_window: Duration::from_secs(1),
            weak_confirmations: 10,
            weak_confirm_window: Duration::from_secs(30),
            max_backoff: Duration::from_secs(10),
            on_pending_delete: PendingPolicy::Failover,
            clock_skew: Duration::from_secs(30),
        }
    }
}

/// `on_pending_delete`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingPolicy {
    /// An operator asked for the volume to go: treat it like a deletion.
    Failover,
    /// Keep serving until it is really gone.
    Wait,
}

/// Per-volume `health = { … }`: any `[health]` key, overriding it for this volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthOverride {
    /// See [`HealthSettings::interval`].
    #[serde(with = "duration::option")]
    pub interval: Option<Duration>,
    /// See [`HealthSettings::standby_interval`].
    #[serde(with = "duration::option")]
    pub standby_interval: Option<Duration>,
    /// See [`HealthSettings::jitter`].
    pub jitter: Option<f64>,
    /// See [`HealthSettings::timeout`].
    #[serde(with = "duration::option")]
    pub timeout: Option<Duration>,
    /// See [`HealthSettings::confirm_interval`].
    #[serde(with = "duration::option")]
    pub confirm_interval: Option<Duration>,
    /// See [`HealthSettings::confirmations`].
    pub confirmations: Option<u32>,
    /// See [`HealthSettings::confirm_window`].
    #[serde(with = "duration::option")]
    pub confirm_window: Option<Duration>,
    /// See [`HealthSettings::weak_confirmations`].
    pub weak_confirmations: Option<u32>,
    /// See [`HealthSettings::weak_confirm_window`].
    #[serde(with = "duration::option")]
    pub weak_confirm_window: Option<Duration>,
    /// See [`HealthSettings::max_backoff`].
    #[serde(with = "duration::option")]
    pub max_backoff: Option<Duration>,
    /// See [`HealthSettings::on_pending_delete`].
    pub on_pending_delete: Option<PendingPolicy>,
    /// See [`HealthSettings::clock_skew`].
    #[serde(with = "duration::option")]
    pub clock_skew: Option<Duration>,
}

impl HealthSettings {
    /// These settings with a volume's overrides applied.
    pub fn with(&self, o: &HealthOverride) -> HealthSettings {
        HealthSettings {
            interval: o.interval.unwrap_or(self.interval),
            standby_interval: o.standby_interval.unwrap_or(self.standby_interval),
            jitter: o.jitter.unwrap_or(self.jitter),
            timeout: o.timeout.unwrap_or(self.timeout),
            confirm_interval: o.confirm_interval.unwrap_or(self.confirm_interval),
            confirmations: o.confirmations.unwrap_or(self.confirmations),
            confirm_window: o.confirm_window.unwrap_or(self.confirm_window),
            weak_confirmations: o.weak_confirmations.unwrap_or(self.weak_confirmations),
            weak_confirm_window: o.weak_confirm_window.unwrap_or(self.weak_confirm_window),
            max_backoff: o.max_backoff.unwrap_or(self.max_backoff),
            on_pending_delete: o.on_pending_delete.unwrap_or(self.on_pending_delete),
            clock_skew: o.clock_skew.unwrap_or(self.clock_skew),
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // A deleted volume must be noticed in useful time: an interval of years silently turns
        // detection off, so every duration has a ceiling as well as a floor.
        for (key, v, min, max) in [
            ("interval", self.interval, ms(100), s(3600)),
            ("standby_interval", self.standby_interval, ms(100), s(3600)),
            ("timeout", self.timeout, ms(10), s(300)),
            ("confirm_interval", self.confirm_interval, ms(10), s(60)),
            ("max_backoff", self.max_backoff, ms(100), s(3600)),
            (
                "confirm_window",
                self.confirm_window,
                Duration::ZERO,
                s(3600),
            ),
            (
                "weak_confirm_window",
                self.weak_confirm_window,
                Duration::ZERO,
                s(86_400),
            ),
            ("clock_skew", self.clock_skew, Duration::ZERO, s(86_400)),
        ] {
            if v < min || v > max {
                return Err((
                    key,
                    format!(
                        "must be between {} and {}, got {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max),
                        humantime::format_duration(v)
                    ),
                ));
            }
        }
        if self.weak_confirmations > 10_000 {
            return Err(("weak_confirmations", "must be at most 10000".into()));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(("jitter", "must be between 0 and 0.5".into()));
        }
        if self.confirmations == 0 {
            return Err(("confirmations", "must be at least 1".into()));
        }
        if self.weak_confirmations < self.confirmations {
            return Err((
                "weak_confirmations",
                "must be at least `confirmations` (weak evidence never needs less)".into(),
            ));
        }
        if self.weak_confirm_window < self.confirm_window {
            return Err((
                "weak_confirm_window",
                "must be at least `confirm_window`".into(),
            ));
        }
        Ok(())
    }
}

/// `probe = { kind = "…", … }`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeSettings {
    /// The CubeFS master HTTP API (`GET /admin/getVol`).
    Cubefs(CubefsProbeSettings),
    /// A signed S3 HEAD bucket.
    S3(S3ProbeSettings),
    /// An HTTP endpoint with a status → verdict map.
    Http(HttpProbeSettings),
    /// The volume root on a mounted filesystem.
    Dir(DirProbeSettings),
}

impl ProbeSettings {
    fn validate(&self, volume: &VolumeSettings) -> Result<(), (&'static str, String)> {
        match self {
            ProbeSettings::Cubefs(c) => {
                if c.masters.is_empty() {
                    return Err((
                        "masters",
                        "list at least one master as \"host:port\"".into(),
                    ));
                }
                for m in &c.masters {
                    let ok = m.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty()
                            && !h.contains('/')
                            && !h.contains('@')
                            && p.parse::<u16>().is_ok()
                    });
                    if !ok {
                        return Err((
                            "masters",
                            format!("{m:?} is not \"host:port\" (no scheme, no path)"),
                        ));
                    }
                }
                let name = c.volume.as_deref().unwrap_or(&volume.name);
                if !cubefs_volume_name_ok(name) {
                    return Err((
                        if c.volume.is_some() { "volume" } else { "name" },
                        format!(
                            "{name:?} is not a CubeFS volume name (3 to 63 of [a-zA-Z0-9_.-], \
                             starting and ending with a letter or digit); set `volume`"
                        ),
                    ));
                }
                if c.timeout < Duration::from_millis(10) {
                    return Err(("timeout", "must be at least 10ms".into()));
                }
            }
            ProbeSettings::S3(c) => {
                check_url(&c.endpoint).map_err(|m| ("endpoint", m))?;
                if c.bucket.as_deref().is_some_and(str::is_empty) {
                    return Err(("bucket", "must not be empty".into()));
                }
                if let Some(f) = &c.credentials_file
                    && !f.is_absolute()
                {
                    return Err(("credentials_file", "must be an absolute path".into()));
                }
            }
            ProbeSettings::Http(c) => {
                check_url(&c.url).map_err(|m| ("url", m))?;
                for (key, list) in [("healthy", &c.healthy), ("deleted", &c.deleted)] {
                    for pat in list {
                        if StatusPattern::parse(pat).is_none() {
                            return Err((
                                key,
                                format!(
                                    "{pat:?} is not a status, class (\"2xx\") or range (\"500-599\")"
                                ),
                            ));
                        }
                    }
                }
            }
            ProbeSettings::Dir(c) => {
                if let Some(p) = &c.path
                    && !p.is_absolute()
                {
                    return Err(("path", "must be an absolute path".into()));
                }
                if c.path.is_none() && !matches!(volume.backend, BackendSettings::Dir { .. }) {
                    return Err(("path", "required unless the backend is a dir".into()));
                }
                if let Some(m) = &c.marker {
                    let p = Path::new(m);
                    let plain = !m.is_empty()
                        && p.components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)));
                    if !plain {
                        return Err(("marker", "must be a relative path without `..`".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// CubeFS's own rule for volume names (`master/server.go`, `volNameRegexp`).
pub fn cubefs_volume_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-');
    (3..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(inner)
}

fn check_url(u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
            if url.host_str().is_none() {
                Err(format!("{u:?} has no host"))
            } else {
                Ok(())
            }
        }
        Ok(url) => Err(format!(
            "{u:?}: scheme {:?} is not http or https",
            url.scheme()
        )),
        Err(e) => Err(format!("{u:?} is not a URL: {e}")),
    }
}

/// An HTTP status pattern of the `http` probe: `"404"`, `"2xx"` or `"500-599"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPattern {
    lo: u16,
    hi: u16,
}

impl StatusPattern {
    /// Parse a pattern.
    pub fn parse(s: &str) -> Option<StatusPattern> {
        let s = s.trim();
        let code = |t: &str| t.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        if let Some((a, b)) = s.split_once('-') {
            let (lo, hi) = (code(a)?, code(b)?);
            return (lo <= hi).then_some(StatusPattern { lo, hi });
        }
        if s.len() == 3 && s.ends_with("xx") {
            let class = s[..1].parse::<u16>().ok().filter(|c| (1..=5).contains(c))?;
            return Some(StatusPattern {
                lo: class * 100,
                hi: class * 100 + 99,
            });
        }
        code(s).map(|c| StatusPattern { lo: c, hi: c })
    }

    /// Whether `status` matches.
    pub fn matches(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

/// `kind = "cubefs"`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CubefsProbeSettings {
    /// Master addresses, `host:port`.
    pub masters: Vec<String>,
    /// The CubeFS volume name (default: the volume's `name`).
    #[serde(default)]
    pub volume: Option<String>,
    /// Timeout of each request to one master.
    #[serde(default = "one_second", with = "duration")]
    pub timeout: Duration,
    /// Expected cluster name: a deletion answer from a master of another cluster is ignored.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `kind = "s3"`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ProbeSettings {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Bucket (default: the volume's `name`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Region used in signatures.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (MinIO, CubeFS ObjectNode).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Environment variable holding the access key id.
    #[serde(default = "default_access_env")]
    pub access_key_env: String,
    /// Environment variable holding the secret key.
    #[serde(default = "default_secret_env")]
    pub secret_key_env: String,
    /// A file with `access_key = "…"` and `secret_key = "…"`, used instead of the environment.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Request timeout.
    #[serde(default = "two_seconds", with = "duration")]
    pub timeout: Duration,
}

/// `kind = "http"`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeSettings {
    /// The URL to ask.
    pub url: String,
    /// `HEAD` or `GET`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Statuses meaning healthy: codes (`"200"`), classes (`"2xx"`) or ranges (`"200-299"`).
    #[serde(default = "default_healthy")]
    pub healthy: Vec<String>,
    /// Statuses meaning deleted; everything else is transient.
    #[serde(default = "default_deleted")]
    pub deleted: Vec<String>,
    /// Treat deletion answers as weak evidence (the default: a proxy or an ingress answers 404
    /// for a moment while its backend restarts). `false` for an endpoint that is the system of
    /// record.
    #[serde(default = "yes")]
    pub weak: bool,
    /// Request timeout.
    #[serde(default = "two_seconds", with = "duration")]
    pub timeout: Duration,
}

/// HTTP method of the `http` probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `HEAD`
    #[default]
    Head,
    /// `GET`
    Get,
}

/// `kind = "dir"`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirProbeSettings {
    /// The directory to watch (default: the `dir` backend's path).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A file that must exist in it (relative to it).
    #[serde(default)]
    pub marker: Option<String>,
    /// The directory must be a mount point (a different device from its parent), so the empty
    /// directory left by an unmounted network volume is never taken for the volume.
    #[serde(default)]
    pub require_mountpoint: bool,
    /// How long a `stat` may take before the filesystem counts as hung.
    #[serde(default = "two_seconds", with = "duration")]
    pub timeout: Duration,
}

impl Default for DirProbeSettings {
    fn default() -> Self {
        DirProbeSettings {
            path: None,
            marker: None,
            require_mountpoint: false,
            timeout: two_seconds(),
        }
    }
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn yes() -> bool {
    true
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_access_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}
fn default_healthy() -> Vec<String> {
    vec!["2xx".into()]
}
fn default_deleted() -> Vec<String> {
    vec!["404".into(), "410".into()]
}

/// `backend = { kind = "…", … }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendSettings {
    /// A directory on a mounted filesystem (a local disk, an NFS or CubeFS mount, ...).
    Dir {
        /// Absolute path of the volume root.
        path: PathBuf,
    },
}

impl BackendSettings {
    /// Short kind name, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSettings::Dir { .. } => "dir",
        }
    }
}

impl fmt::Display for BackendSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSettings::Dir { path } => write!(f, "dir:{}", path.display()),
        }
    }
}

/// Values given on the command line; each `Some` overrides the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `mount.path`
    pub mount_path: Option<PathBuf>,
    /// `mount.read_only`
    pub read_only: Option<bool>,
    /// `mount.allow_other`
    pub allow_other: Option<bool>,
    /// `mount.threads`
    pub threads: Option<usize>,
    /// `log.level`
    pub log_level: Option<String>,
    /// `log.format`
    pub log_format: Option<LogFormat>,
}

/// A configuration problem: which key, where its value came from, and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("config error in {origin}: key `{key}`: {message}")]
pub struct ConfigError {
    /// Where the offending value came from (the file path, or the environment).
    pub origin: String,
    /// The dotted key (`mount.threads`, `volumes[1].backend.path`), or `-` for the whole file.
    pub key: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl Settings {
    /// Load, layer and validate the configuration.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let file_origin = file.display().to_string();
        let problem = match std::fs::metadata(file) {
            Ok(md) if md.is_file() => None,
            Ok(_) => Some("not a regular file".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("config file not found".to_string())
            }
            // A symlink loop, a permission problem: say which.
            Err(e) => Some(format!("cannot read the config file: {e}")),
        };
        if let Some(message) = problem {
            return Err(ConfigError {
                origin: file_origin,
                key: "-".into(),
                message,
            });
        }
        // The volume table comes from the file only (see `origin_of`): an environment variable
        // that would replace it is refused, not silently applied.
        if let Some(name) = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .find(|k| k.starts_with(&format!("{ENV_PREFIX}VOLUMES")))
        {
            return Err(ConfigError {
                origin: format!("environment ({name})"),
                key: "volumes".into(),
                message: "the volume table comes from the config file only; unset the variable"
                    .into(),
            });
        }
        let figment = figment_for(file, overrides);
        let settings: Settings = figment
            .extract()
            .map_err(|e| from_figment(e, &file_origin))?;
        let origin = |key: &str| origin_of(&figment, key, &file_origin);
        settings.validate(&origin)?;
        Ok(settings)
    }

    /// Check what can be checked without touching the filesystem. `origin` tells, for a dotted
    /// key, where its value came from.
    pub fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            origin: origin(key),
            key: key.to_string(),
            message,
        };
        match &self.mount.path {
            None => {
                return Err(err(
                    "mount.path",
                    "missing: set the mount point in [mount]".into(),
                ));
            }
            Some(p) if !p.is_absolute() => {
                return Err(err(
                    "mount.path",
                    format!("must be an absolute path, got {:?}", p),
                ));
            }
            Some(_) => {}
        }
        if !(1..=256).contains(&self.mount.threads) {
            return Err(err(
                "mount.threads",
                format!("must be between 1 and 256, got {}", self.mount.threads),
            ));
        }
        if let Some(f) = self.mount.state_file.as_deref().map(str::trim)
            && f != "off"
            && !f.starts_with('/')
        {
            return Err(err(
                "mount.state_file",
                format!("{f:?} is neither an absolute path nor \"off\""),
            ));
        }
        if let (Some(state), Some(mount)) = (self.state_path(), self.mount.path.as_deref())
            && state.starts_with(mount)
        {
            return Err(err(
                "mount.state_file",
                format!(
                    "{} is inside the mount point {} (the mount would hide it): set \
                     mount.state_file elsewhere",
                    state.display(),
                    mount.display()
                ),
            ));
        }
        let op = self.mount.op_timeout;
        if op < Duration::from_millis(100) || op > Duration::from_secs(3600) {
            return Err(err(
                "mount.op_timeout",
                "must be between 100ms and 1h".into(),
            ));
        }
        for (key, ttl) in [
            ("mount.attr_ttl", self.mount.attr_ttl),
            ("mount.entry_ttl", self.mount.entry_ttl),
        ] {
            if ttl > Duration::from_secs(3600) {
                return Err(err(key, "must be at most 1h".into()));
            }
        }
        let drain = self.failover.drain_timeout;
        if drain < Duration::from_millis(100) || drain > Duration::from_secs(60) {
            return Err(err(
                "failover.drain_timeout",
                "must be between 100ms and 60s (operations wait this long during a switch)".into(),
            ));
        }
        if let Some(l) = self.admin.listen.as_deref().map(str::trim)
            && l != "off"
            && !l.starts_with('/')
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(err(
                "admin.listen",
                format!(
                    "{l:?} is neither an absolute socket path, an address such as \
                     127.0.0.1:9477, nor \"off\""
                ),
            ));
        }
        let t = self.events.timeout;
        if t < Duration::from_millis(100) || t > Duration::from_secs(300) {
            return Err(err("events.timeout", "must be between 100ms and 5m".into()));
        }
        if let Some(u) = &self.events.webhook {
            match url::Url::parse(u) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                // The value itself is not repeated: it may carry credentials.
                _ => {
                    return Err(err(
                        "events.webhook",
                        "must be an http:// or https:// URL".into(),
                    ));
                }
            }
        }
        let after = self.failover.on_unavailable.after;
        if after < Duration::from_secs(1) || after > Duration::from_secs(86_400) {
            return Err(err(
                "failover.on_unavailable.after",
                "must be between 1s and 24h".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(err("log.level", format!("not a valid filter: {e}")));
        }
        if self.volumes.is_empty() {
            return Err(err(
                "volumes",
                "the volume table is empty: add at least one [[volumes]] entry (the first is the primary)"
                    .into(),
            ));
        }
        if let Err((key, message)) = self.health.validate() {
            return Err(err(&format!("health.{key}"), message));
        }
        let mut names = HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            if let Err((key, message)) = self.health.with(&v.health).validate() {
                return Err(err(&format!("volumes[{i}].health.{key}"), message));
            }
            let probes = v.probe.iter().map(|p| (format!("volumes[{i}].probe"), p));
            let listed = v
                .probes
                .iter()
                .enumerate()
                .map(|(j, p)| (format!("volumes[{i}].probes[{j}]"), p));
            for (key, probe) in probes.chain(listed) {
                if let Err((field, message)) = probe.validate(v) {
                    return Err(err(&format!("{key}.{field}"), message));
                }
            }
            let key = format!("volumes[{i}].name");
            if v.name.is_empty()
                || v.name.len() > 64
                || !v
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(err(
                    &key,
                    format!(
                        "{:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'",
                        v.name
                    ),
                ));
            }
            if !names.insert(v.name.as_str()) {
                return Err(err(&key, format!("duplicate volume name {:?}", v.name)));
            }
            match &v.backend {
                BackendSettings::Dir { path } => {
                    if !path.is_absolute() {
                        return Err(err(
                            &format!("volumes[{i}].backend.path"),
                            format!("must be an absolute path, got {:?}", path),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Check (or, with `mount.create_missing`, create) the mount point and the `dir` volume roots.
    pub fn prepare_paths(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let create = self.mount.create_missing;
        if let Some(path) = &self.mount.path {
            ensure_dir(path, create, true).map_err(|message| ConfigError {
                origin: origin("mount.path"),
                key: "mount.path".into(),
                message,
            })?;
        }
        for (i, v) in self.volumes.iter().enumerate() {
            match &v.backend {
                BackendSettings::Dir { path } => {
                    let key = format!("volumes[{i}].backend.path");
                    volume_root(path, create).map_err(|message| ConfigError {
                        origin: origin(&key),
                        key,
                        message,
                    })?;
                }
            }
        }
        self.refuse_overlaps(origin)
    }

    /// Refuse layouts that cannot work: a mount point inside, equal to or containing a volume
    /// root (failoverfs would serve itself and deadlock, or hide the volume under the mount),
    /// and two volumes that are one directory (the standby would protect nothing). Paths are
    /// compared after resolving symlinks, `.` and `..`.
    fn refuse_overlaps(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        use std::os::unix::fs::MetadataExt;
        // Bounded: a volume root on a hung client must not hang the start (it is compared by
        // its path alone then).
        let real = |p: &Path| {
            bounded_at(p, |p| std::fs::canonicalize(p))
                .and_then(Result::ok)
                .unwrap_or_else(|| p.to_path_buf())
        };
        let id = |p: &Path| {
            stat_bounded(p)
                .and_then(Result::ok)
                .map(|m| (m.dev(), m.ino()))
        };
        // Never stat the mount point itself: a hung FUSE mount there would hang the check. A
        // symlink is found without following it (readlink never reaches a mounted filesystem):
        // the kernel would mount on its target, somewhere the configuration does not name.
        if let Some(m) = self.mount.path.as_deref()
            && let Ok(target) = std::fs::read_link(m)
        {
            return Err(ConfigError {
                origin: origin("mount.path"),
                key: "mount.path".into(),
                message: format!(
                    "{} is a symlink (to {}): name the directory to mount on itself",
                    m.display(),
                    target.display()
                ),
            });
        }
        let mount = self.mount.path.as_deref().map(resolve_parent);
        // The directories above the mount point, by identity: a volume root among them (reached
        // through a bind mount, say) holds the mount point whatever the paths say.
        let above_mount: Vec<(u64, u64)> = mount
            .as_deref()
            .map(|m| m.ancestors().skip(1).filter_map(id).collect())
            .unwrap_or_default();
        // (key, resolved path, device and inode)
        type Root = (String, PathBuf, Option<(u64, u64)>);
        let mut roots: Vec<Root> = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let BackendSettings::Dir { path } = &v.backend;
            let key = format!("volumes[{i}].backend.path");
            let root = real(path);
            let root_id = id(&root);
            let err = |message: String| ConfigError {
                origin: origin(&key),
                key: key.clone(),
                message,
            };
            if let (Some(m), Some(rid)) = (&mount, root_id)
                && above_mount.contains(&rid)
            {
                return Err(err(format!(
                    "{} contains the mount point {} (the same directory by device and inode,                      through another path): a volume root and the mount point must not overlap",
                    root.display(),
                    m.display()
                )));
            }
            if let Some(m) = &mount {
                let relation = if *m == root {
                    Some("is the mount point itself")
                } else if m.starts_with(&root) {
                    Some("contains the mount point")
                } else if root.starts_with(m) {
                    Some("lies inside the mount point")
                } else {
                    None
                };
                if let Some(relation) = relation {
                    return Err(err(format!(
                        "{} {relation} {}: a volume root and the mount point must not overlap",
                        root.display(),
                        m.display()
                    )));
                }
            }
            if let Some((other, _, _)) = roots
                .iter()
                .find(|(_, r, rid)| *r == root || (root_id.is_some() && *rid == root_id))
            {
                return Err(err(format!(
                    "{} is the same directory as {other} (by path, or by device and inode                      through a bind mount): a standby must be another volume",
                    root.display()
                )));
            }
            roots.push((key, root, root_id));
        }
        // The state file, by where its directory really is: never under the mount point
        // (through a symlink into it, say), where the mount would hide it.
        if let (Some(state), Some(m)) = (self.state_path(), &mount) {
            let dir = crate::ownfiles::parent_of(&state);
            let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
            let real_dir = real(existing).join(dir.strip_prefix(existing).unwrap_or(Path::new("")));
            if real_dir.starts_with(m) {
                return Err(ConfigError {
                    origin: origin("mount.state_file"),
                    key: "mount.state_file".into(),
                    message: format!(
                        "{} is inside the mount point {} (through {}): the mount would hide it;                          set mount.state_file elsewhere",
                        state.display(),
                        m.display(),
                        real_dir.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The mount point. Present in every validated configuration.
    pub fn mount_path(&self) -> &Path {
        self.mount.path.as_deref().unwrap_or(Path::new("/"))
    }

    /// The state file's path (`None` when `mount.state_file = "off"`).
    pub fn state_path(&self) -> Option<PathBuf> {
        match self.mount.state_file.as_deref().map(str::trim) {
            Some("off") => None,
            Some(p) => Some(PathBuf::from(p)),
            None => Some(crate::state::default_path(self.mount_path())),
        }
    }

    /// The fleet label: `mount.fleet_name`, or the first volume's name.
    pub fn fleet(&self) -> String {
        self.mount
            .fleet_name
            .clone()
            .or_else(|| self.volumes.first().map(|v| v.name.clone()))
            .unwrap_or_default()
    }
}

/// Load and validate, then check the paths: what `mount` and `check` run before anything else.
pub fn load_and_prepare(file: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let settings = Settings::load(file, overrides)?;
    let figment = figment_for(file, overrides);
    let file_origin = file.display().to_string();
    settings.prepare_paths(&|key| origin_of(&figment, key, &file_origin))?;
    Ok(settings)
}

/// `FAILOVERFS_*` variables, the prefix matched exactly (`failoverfs_mount__path` is not ours,
/// as with any environment variable), `__` separating nested keys.
fn env_settings() -> Env {
    Env::raw()
        .filter_map(|k| k.as_str().strip_prefix(ENV_PREFIX).map(|rest| rest.into()))
        .split("__")
}

fn figment_for(file: &Path, o: &Overrides) -> Figment {
    let mut figment = Figment::new()
        .merge(Toml::file_exact(file))
        .merge(env_settings());
    if let Some(v) = &o.mount_path {
        figment = figment.merge(Serialized::default("mount.path", v));
    }
    if let Some(v) = o.read_only {
        figment = figment.merge(Serialized::default("mount.read_only", v));
    }
    if let Some(v) = o.allow_other {
        figment = figment.merge(Serialized::default("mount.allow_other", v));
    }
    if let Some(v) = o.threads {
        figment = figment.merge(Serialized::default("mount.threads", v));
    }
    if let Some(v) = &o.log_level {
        figment = figment.merge(Serialized::default("log.level", v));
    }
    if let Some(v) = o.log_format {
        figment = figment.merge(Serialized::default("log.format", v));
    }
    figment
}

/// Where a key's value came from: the file, an environment variable, or the command line.
fn origin_of(figment: &Figment, key: &str, file_origin: &str) -> String {
    // `volumes[1].backend.path` is not a figment path; the table itself only comes from the file.
    let lookup = key.split('[').next().unwrap_or(key);
    match figment.find_metadata(lookup) {
        Some(md) if md.name.contains("environment") => format!("environment ({ENV_PREFIX}*)"),
        Some(md) if md.name.contains("TOML") => file_origin.to_string(),
        Some(_) => "command line".to_string(),
        None => file_origin.to_string(),
    }
}

fn from_figment(e: figment::Error, file_origin: &str) -> ConfigError {
    use figment::error::Kind;
    let origin = match &e.metadata {
        Some(md) if md.name.contains("environment") => format!("environment ({ENV_PREFIX}*)"),
        Some(md) if md.name.contains("TOML") || md.source.is_some() => file_origin.to_string(),
        Some(_) => "command line".to_string(),
        None => file_origin.to_string(),
    };
    let mut key = e.path.join(".");
    let message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            key = with_field(&key, field);
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => {
            key = with_field(&key, field);
            "missing".to_string()
        }
        Kind::Message(m) => m.replace('\n', " "),
        other => other.to_string(),
    };
    // figment numbers array elements as plain path segments; show them as indices.
    let key = indexify(&key);
    ConfigError {
        origin,
        key: if key.is_empty() { "-".into() } else { key },
        message,
    }
}

/// figment's error path may or may not already end with the field an error is about.
fn with_field(key: &str, field: &str) -> String {
    if key.is_empty() {
        field.to_string()
    } else if key == field || key.ends_with(&format!(".{field}")) {
        key.to_string()
    } else {
        format!("{key}.{field}")
    }
}

/// `volumes.1.backend` → `volumes[1].backend`.
fn indexify(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, part) in key.split('.').enumerate() {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// `path` with its parent directories resolved (symlinks, `.` and `..`) and its last component
/// left as it is: how `/proc/self/mountinfo` names a mount point, obtained without touching
/// whatever is mounted there. `path` itself when the parent cannot be resolved.
pub fn resolve_parent(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// `path` is a directory (created when missing and `create`). With `dead_mount_ok`, a dead FUSE
/// mount there ("Transport endpoint is not connected") passes: `mount` takes a dead failoverfs
/// mount away and refuses any other FUSE mount (see `fuse::session::detach_dead_mount`).
fn ensure_dir(path: &Path, create: bool, dead_mount_ok: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if dead_mount_ok && e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists but is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist (create it, or set mount.create_missing = true)",
            path.display()
        )),
        Err(e) => Err(format!("cannot access {}: {e}", path.display())),
    }
}

/// A `dir` volume root: a directory (made when missing and `create`). A root that is missing or
/// cannot be reached (a dead FUSE mount: what a deleted network volume's client leaves) is not a
/// configuration error: after a failover it is exactly what the deleted primary leaves behind,
/// and a restart must still serve the standby. Such a volume is unavailable at start (probed on,
/// and used when it comes back); the start decides what that means for the volume it serves.
/// Only a path that exists and is not a directory is refused.
fn volume_root(path: &Path, create: bool) -> Result<(), String> {
    let Some(answer) = stat_bounded(path) else {
        tracing::warn!(
            path = %path.display(),
            waited = ?ROOT_STAT_LIMIT,
            "a volume root does not answer (a hung client?); the volume is unavailable until it does"
        );
        return Ok(());
    };
    match answer {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists but is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))
        }
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "a volume root cannot be reached; the volume is unavailable until it can"
            );
            Ok(())
        }
    }
}

/// How long the start waits for a volume root to answer one `stat` (or `open`).
pub const ROOT_STAT_LIMIT: Duration = Duration::from_secs(2);

/// Paths found hung at start: asked again, they answer `None` at once.
static HUNG: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());

/// Run `f` (a call that may reach a volume root) on a thread of its own, bounded by
/// [`ROOT_STAT_LIMIT`]: a hung filesystem under `path` (a client that stopped answering) blocks
/// that thread only, which is left behind. `None` when it did not answer in time, or when `path`
/// was already found hung.
pub fn bounded_at<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce(&Path) -> T + Send + 'static,
) -> Option<T> {
    if HUNG.lock().iter().any(|h| path.starts_with(h)) {
        return None;
    }
    let owned = path.to_path_buf();
    let answer = crate::backend::bounded("root-check", ROOT_STAT_LIMIT, move || f(&owned));
    if answer.is_none() {
        HUNG.lock().push(path.to_path_buf());
    }
    answer
}

/// `stat` of `path`, bounded (see [`bounded_at`]).
pub fn stat_bounded(path: &Path) -> Option<std::io::Result<std::fs::Metadata>> {
    bounded_at(path, |p| std::fs::metadata(p))
}

/// Serde support for human-readable durations (`"2s"`, `"500ms"`, `"1m 30s"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserialize a duration written as a human string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => humantime::parse_duration(s.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write it like \"2s\" or \"500ms\""
                ))
            }),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "a bare number ({n}) has no unit; write the duration like \"2s\" or \"500ms\""
            ))),
        }
    }

    /// The same, for optional durations.
    pub mod option {
        use std::time::Duration;

        use serde::Deserializer;

        /// Deserialize `Some(duration)`; a missing key is `None` through `#[serde(default)]`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let file = dir.join("cfg.toml");
        std::fs::write(&file, body).unwrap();
        file
    }

    fn good(dir: &Path) -> String {
        format!(
            "[mount]\npath = \"{d}/mnt\"\ncreate_missing = true\nattr_ttl = \"250ms\"\n\n\
             [[volumes]]\nname = \"a\"\nbackend = {{ kind = \"dir\", path = \"{d}/a\" }}\n\n\
             [[volumes]]\nname = \"b\"\nbackend = {{ kind = \"dir\", path = \"{d}/b\" }}\n",
            d = dir.display()
        )
    }

    #[test]
    fn overlapping_mount_point_and_volume_roots_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().display().to_string();
        let cases = [
            // (mount point, volume a, volume b, the key named, what the message says)
            (
                "{d}/a",
                "{d}/a",
                "{d}/b",
                "volumes[0].backend.path",
                "is the mount point itself",
            ),
            (
                "{d}/a/mnt",
                "{d}/a",
                "{d}/b",
                "volumes[0].backend.path",
                "contains the mount point",
            ),
            (
                "{d}/mnt",
                "{d}/mnt/a",
                "{d}/b",
                "volumes[0].backend.path",
                "inside the mount point",
            ),
            (
                "{d}/mnt",
                "{d}/a",
                "{d}/a/",
                "volumes[1].backend.path",
                "same directory",
            ),
            (
                "{d}/mnt",
                "{d}/a",
                "{d}/x/../a",
                "volumes[1].backend.path",
                "same directory",
            ),
        ];
        for (mnt, a, b, key, says) in cases {
            std::fs::create_dir_all(tmp.path().join("x")).unwrap();
            let body = format!(
                "[mount]\npath = \"{mnt}\"\ncreate_missing = true\n\n\
                 [[volumes]]\nname = \"a\"\nbackend = {{ kind = \"dir\", path = \"{a}\" }}\n\n\
                 [[volumes]]\nname = \"b\"\nbackend = {{ kind = \"dir\", path = \"{b}\" }}\n"
            )
            .replace("{d}", &d);
            let file = write(tmp.path(), &body);
            let e = load_and_prepare(&file, &Overrides::default()).unwrap_err();
            assert_eq!(e.key, key, "{mnt} {a} {b}: {e}");
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.to_string().contains("cfg.toml"), "names the file: {e}");
        }
        // A volume beside the mount point is fine.
        let file = write(tmp.path(), &good(tmp.path()));
        load_and_prepare(&file, &Overrides::default()).unwrap();
    }

    #[test]
    fn loads_layers_and_durations() {
        let tmp = tempfile::tempdir().unwrap();
        let file = write(tmp.path(), &good(tmp.path()));
        let o = Overrides {
            threads: Some(3),
            ..Default::default()
        };
        let s = load_and_prepare(&file, &o).unwrap();
        assert_eq!(s.mount.threads, 3);
        assert_eq!(s.mount.attr_ttl, Duration::from_millis(250));
        assert_eq!(s.mount.entry_ttl, Duration::from_secs(1));
        assert_eq!(s.volumes.len(), 2);
        assert_eq!(s.volumes[0].name, "a");
        assert!(
            tmp.path().join("b").is_dir(),
            "create_missing made the roots"
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let body = good(tmp.path()).replace("attr_ttl", "atr_ttl");
        let file = write(tmp.path(), &body);
        let e = Settings::load(&file, &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "mount.atr_ttl");
        assert_eq!(e.origin, file.display().to_string());
        assert!(e.message.contains("unknown key"), "{e}");
    }

    #[test]
    fn unknown_key_inside_backend_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let body = good(tmp.path()).replace("kind = \"dir\", path", "kind = \"dir\", pth");
        let file = write(tmp.path(), &body);
        let e = Settings::load(&file, &Overrides::default()).unwrap_err();
        assert!(e.key.starts_with("volumes[0].backend"), "{e}");
    }

    #[test]
    fn wrong_type_and_bare_number_duration() {
        let tmp = tempfile::tempdir().unwrap();
        let body = good(tmp.path()).replace("attr_ttl = \"250ms\"", "threads = \"many\"");
        let e = Settings::load(&write(tmp.path(), &body), &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "mount.threads", "{e}");
        let body = good(tmp.path()).replace("\"250ms\"", "5");
        let e = Settings::load(&write(tmp.path(), &body), &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "mount.attr_ttl", "{e}");
        assert!(e.message.contains("no unit"), "{e}");
    }

    #[test]
    fn empty_table_and_relative_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let body = format!("[mount]\npath = \"{}\"\n", tmp.path().display());
        let e = Settings::load(&write(tmp.path(), &body), &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "volumes");
        let body = good(tmp.path()).replace(&format!("{}/a", tmp.path().display()), "rel/a");
        let e = Settings::load(&write(tmp.path(), &body), &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "volumes[0].backend.path");
        assert!(e.message.contains("absolute"));
    }

    #[test]
    fn missing_paths_without_create() {
        let tmp = tempfile::tempdir().unwrap();
        let body = good(tmp.path()).replace("create_missing = true", "create_missing = false");
        let file = write(tmp.path(), &body);
        let e = load_and_prepare(&file, &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "mount.path");
        assert!(e.message.contains("does not exist"), "{e}");
        std::fs::create_dir(tmp.path().join("mnt")).unwrap();
        // A missing volume root is an unavailable volume, not a configuration error (what a
        // deleted volume leaves behind must not stop a restart); a file there is refused.
        load_and_prepare(&file, &Overrides::default()).unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();
        let e = load_and_prepare(&file, &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "volumes[0].backend.path");
        assert!(e.message.contains("not a directory"), "{e}");
    }

    #[test]
    fn duplicate_names() {
        let tmp = tempfile::tempdir().unwrap();
        let body = good(tmp.path()).replace("name = \"b\"", "name = \"a\"");
        let e = Settings::load(&write(tmp.path(), &body), &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "volumes[1].name");
    }

    #[test]
    fn probes_and_health_are_parsed_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let with = |extra: &str, health: &str| {
            let body =
                good(tmp.path()).replacen("name = \"a\"\n", &format!("name = \"a\"\n{extra}\n"), 1);
            let body = format!("{body}\n[health]\n{health}\n");
            Settings::load(&write(tmp.path(), &body), &Overrides::default())
        };
        let s = with(
            "probe = { kind = \"cubefs\", masters = [\"10.0.0.1:17010\", \"m2:17010\"], volume = \"vol-1\" }\n\
             probes = [{ kind = \"http\", url = \"http://x/h\", deleted = [\"404\", \"5xx\"] }, { kind = \"dir\", marker = \".vol\" }]\n\
             health = { interval = \"2s\" }",
            "confirmations = 4\non_pending_delete = \"wait\"",
        )
        .unwrap();
        let v = &s.volumes[0];
        assert!(matches!(v.probe, Some(ProbeSettings::Cubefs(_))));
        assert_eq!(v.probes.len(), 2);
        let eff = s.health.with(&v.health);
        assert_eq!(eff.interval, Duration::from_secs(2));
        assert_eq!(eff.confirmations, 4);
        assert_eq!(eff.on_pending_delete, PendingPolicy::Wait);

        let bad = [
            (
                "probe = { kind = \"cubefs\", masters = [] }",
                "",
                "volumes[0].probe.masters",
            ),
            (
                "probe = { kind = \"cubefs\", masters = [\"nohost\"] }",
                "",
                "volumes[0].probe.masters",
            ),
            (
                "probe = { kind = \"cubefs\", masters = [\"m:1\"], volume = \"-bad\" }",
                "",
                "volumes[0].probe.volume",
            ),
            (
                "probe = { kind = \"cubefs\", masters = [\"m:1\"], mastrs = 1 }",
                "",
                "volumes[0].probe",
            ),
            (
                "probe = { kind = \"http\", url = \"ftp://x\" }",
                "",
                "volumes[0].probe.url",
            ),
            (
                "probe = { kind = \"http\", url = \"http://x\", healthy = [\"9xx\"] }",
                "",
                "volumes[0].probe.healthy",
            ),
            (
                "probe = { kind = \"s3\", endpoint = \"not a url\" }",
                "",
                "volumes[0].probe.endpoint",
            ),
            (
                "probe = { kind = \"dir\", marker = \"../x\" }",
                "",
                "volumes[0].probe.marker",
            ),
            ("probe = { kind = \"nfs\" }", "", "volumes[0].probe"),
            ("", "confirmations = 0", "health.confirmations"),
            ("", "weak_confirmations = 1", "health.weak_confirmations"),
            ("", "interval = \"1ms\"", "health.interval"),
            ("health = { jitter = 0.9 }", "", "volumes[0].health.jitter"),
        ];
        for (extra, health, key) in bad {
            let e = with(extra, health).unwrap_err();
            assert!(e.key.starts_with(key), "{extra} {health}: {e}");
        }
    }

    #[test]
    fn cubefs_names() {
        assert!(cubefs_volume_name_ok("vol1"));
        assert!(cubefs_volume_name_ok("a.b-c_d"));
        assert!(!cubefs_volume_name_ok("ab"));
        assert!(!cubefs_volume_name_ok("-ab"));
        assert!(!cubefs_volume_name_ok("ab-"));
        assert!(!cubefs_volume_name_ok("a b c"));
        assert!(!cubefs_volume_name_ok(&"a".repeat(64)));
    }

    #[test]
    fn indexify_paths() {
        assert_eq!(
            indexify("volumes.1.backend.path"),
            "volumes[1].backend.path"
        );
        assert_eq!(indexify("mount.threads"), "mount.threads");
    }
}
