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
    /// The ordered volume table: primary first, then standbys.
    #[serde(default)]
    pub volumes: Vec<VolumeSettings>,
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
        if !file.is_file() {
            return Err(ConfigError {
                origin: file_origin,
                key: "-".into(),
                message: if file.exists() {
                    "not a regular file".into()
                } else {
                    "config file not found".into()
                },
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
        for (key, ttl) in [
            ("mount.attr_ttl", self.mount.attr_ttl),
            ("mount.entry_ttl", self.mount.entry_ttl),
        ] {
            if ttl > Duration::from_secs(3600) {
                return Err(err(key, "must be at most 1h".into()));
            }
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
        let mut names = HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
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
            ensure_dir(path, create).map_err(|message| ConfigError {
                origin: origin("mount.path"),
                key: "mount.path".into(),
                message,
            })?;
        }
        for (i, v) in self.volumes.iter().enumerate() {
            match &v.backend {
                BackendSettings::Dir { path } => {
                    let key = format!("volumes[{i}].backend.path");
                    ensure_dir(path, create).map_err(|message| ConfigError {
                        origin: origin(&key),
                        key,
                        message,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The mount point. Present in every validated configuration.
    pub fn mount_path(&self) -> &Path {
        self.mount.path.as_deref().unwrap_or(Path::new("/"))
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

fn figment_for(file: &Path, o: &Overrides) -> Figment {
    let mut figment = Figment::new()
        .merge(Toml::file_exact(file))
        .merge(Env::prefixed(ENV_PREFIX).split("__"));
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

fn ensure_dir(path: &Path, create: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
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
        let e = load_and_prepare(&file, &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "volumes[0].backend.path");
    }

    #[test]
    fn duplicate_names() {
        let tmp = tempfile::tempdir().unwrap();
        let body = good(tmp.path()).replace("name = \"b\"", "name = \"a\"");
        let e = Settings::load(&write(tmp.path(), &body), &Overrides::default()).unwrap_err();
        assert_eq!(e.key, "volumes[1].name");
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
