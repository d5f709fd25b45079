//! The `failoverfs` binary: parse the command line, load the configuration, run, and turn the
//! outcome into an exit code (see [`failoverfs::exit::Exit`] and the README).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use failoverfs::config::{self, LogFormat, LogSettings, Overrides, Settings};
use failoverfs::exit::Exit;

/// A FUSE client that keeps one mount alive across the deletion of its volume by failing over
/// to a standby volume.
#[derive(Parser, Debug)]
#[command(name = "failoverfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount the logical volume and serve it in the foreground until SIGINT or SIGTERM.
    ///
    /// Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error,
    /// 3 volume deleted and no usable standby (do not restart).
    Mount(MountArgs),
    /// Validate the configuration, open each volume once, print a table, and exit 0 only when
    /// the primary is usable (1 when it is not, 2 on a configuration error).
    Check(CommonArgs),
    /// Show a running mount's state: the volume serving, every volume's health, counters and
    /// recent switches (from its admin server). Exit 1 when the mount cannot be reached.
    Status(StatusArgs),
    /// Switch a running mount to another volume by hand (maintenance, failback), through the
    /// same drain and swap as an automatic switch. Exit 0 when it switched, 1 otherwise.
    Switch(SwitchArgs),
    /// Internal: the mount guard (see `failoverfs::fuse::guard`), started by `mount`.
    #[command(name = "__guard", hide = true)]
    Guard(GuardArgs),
}

#[derive(Args, Debug)]
struct GuardArgs {
    #[arg(long)]
    pid: i32,
    #[arg(long)]
    connection: u64,
    #[arg(long)]
    path: PathBuf,
}

#[derive(Args, Debug)]
struct AdminArgs {
    /// The mount's configuration file: its [admin] section says where the admin server is.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "socket"
    )]
    config: Option<PathBuf>,
    /// The admin server's Unix socket or TCP address, instead of the configuration's.
    #[arg(long, value_name = "PATH|ADDR")]
    socket: Option<String>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the JSON document as the server sends it.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SwitchArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The volume to serve (its name in the volume table).
    #[arg(long, value_name = "NAME")]
    to: String,
    /// Switch even when the target's probes do not say healthy.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// The TOML configuration file (see config/local.toml). Keys can also be set with
    /// FAILOVERFS_<SECTION>__<KEY> environment variables, e.g. FAILOVERFS_MOUNT__THREADS=8.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Log filter, overriding log.level (e.g. "info" or "info,failoverfs=debug").
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format, overriding log.format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
}

#[derive(Args, Debug)]
struct MountArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Mount point, overriding mount.path.
    #[arg(long, value_name = "DIR")]
    mountpoint: Option<PathBuf>,
    /// Mount read-only, overriding mount.read_only.
    #[arg(long)]
    read_only: bool,
    /// Let every user access the mount (FUSE allow_other), overriding mount.allow_other.
    #[arg(long)]
    allow_other: bool,
    /// FUSE worker threads, overriding mount.threads.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

fn overrides(common: &CommonArgs, mount: Option<&MountArgs>) -> Overrides {
    Overrides {
        mount_path: mount.and_then(|m| m.mountpoint.clone()),
        read_only: mount.and_then(|m| m.read_only.then_some(true)),
        allow_other: mount.and_then(|m| m.allow_other.then_some(true)),
        threads: mount.and_then(|m| m.threads),
        log_level: common.log_level.clone(),
        log_format: common.log_format.map(Into::into),
    }
}

fn init_logging(log: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn load(common: &CommonArgs, mount: Option<&MountArgs>) -> Result<Settings, Exit> {
    config::load_and_prepare(&common.config, &overrides(common, mount)).map_err(|e| {
        eprintln!("failoverfs: {e}");
        Exit::Usage
    })
}

/// The admin server's address and token, from the flags or the configuration.
fn admin_target(a: &AdminArgs) -> Result<(config::AdminAddress, Option<String>), Exit> {
    let settings = match &a.config {
        Some(file) => Some(Settings::load(file, &Overrides::default()).map_err(|e| {
            eprintln!("failoverfs: {e}");
            Exit::Usage
        })?),
        None => None,
    };
    let token = match &settings {
        Some(s) => s.admin.token().map_err(|e| {
            eprintln!("failoverfs: {e}");
            Exit::Usage
        })?,
        None => None,
    };
    let address = match (&a.socket, &settings) {
        (Some(s), _) => config::AdminSettings {
            listen: Some(s.clone()),
            token_file: None,
        }
        .address(std::path::Path::new("/")),
        (None, Some(s)) => s.admin.address(s.mount_path()),
        (None, None) => return Err(Exit::Usage),
    };
    Ok((address, token))
}

fn ask(a: &AdminArgs, method: &str, path: &str) -> Result<(u16, String), Exit> {
    let (address, token) = admin_target(a)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("failoverfs: {e}");
            Exit::Failure
        })?;
    rt.block_on(failoverfs::admin::request(
        &address,
        method,
        path,
        token.as_deref(),
    ))
    .map_err(|e| {
        eprintln!("failoverfs: {e}");
        Exit::Failure
    })
}

fn status(args: &StatusArgs) -> Exit {
    let (code, body) = match ask(&args.admin, "GET", "/status") {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    if code != 200 {
        eprintln!(
            "failoverfs: the admin server answered {code}: {}",
            body.trim()
        );
        return Exit::Failure;
    }
    if args.json {
        print!("{body}");
        return Exit::Clean;
    }
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => {
            print!("{}", failoverfs::admin::status_table(&v));
            Exit::Clean
        }
        Err(e) => {
            eprintln!("failoverfs: unreadable status: {e}");
            Exit::Failure
        }
    }
}

fn switch(args: &SwitchArgs) -> Exit {
    let to: String = url::form_urlencoded::byte_serialize(args.to.as_bytes()).collect();
    let path = format!(
        "/switch?to={to}{}",
        if args.force { "&force=true" } else { "" }
    );
    match ask(&args.admin, "POST", &path) {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            println!(
                "switched: now serving {} (generation {})",
                v["active"].as_str().unwrap_or("?"),
                v["generation"]
            );
            Exit::Clean
        }
        Ok((code, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            eprintln!(
                "failoverfs: not switched ({code}): {}",
                v["message"].as_str().unwrap_or(body.trim())
            );
            Exit::Failure
        }
        Err(exit) => exit,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let exit = match &cli.command {
        Command::Guard(g) => {
            return ExitCode::from(failoverfs::fuse::guard::run(g.pid, g.connection, &g.path));
        }
        Command::Mount(args) => match load(&args.common, Some(args)) {
            Ok(settings) => {
                init_logging(&settings.log);
                match std::env::current_exe() {
                    Ok(me) => failoverfs::fuse::guard::set_program(me),
                    Err(e) => {
                        tracing::warn!(error = %e, "no mount guard: cannot find our own binary")
                    }
                }
                match failoverfs::app::App::start(&settings) {
                    Ok(app) => app.run(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start");
                        e.exit
                    }
                }
            }
            Err(exit) => exit,
        },
        Command::Status(args) => status(args),
        Command::Switch(args) => switch(args),
        Command::Check(common) => match load(common, None) {
            Ok(settings) => {
                init_logging(&settings.log);
                let rows = failoverfs::check::check(&settings);
                let _ = failoverfs::check::print(&mut std::io::stdout(), &rows);
                failoverfs::check::exit_code(&rows)
            }
            Err(exit) => exit,
        },
    };
    exit.into()
}
