//! The `switchboard` binary: command line, configuration, telemetry, then `app::run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use switchboard::{app, config::Config, telemetry};

/// Exit status for a configuration that does not validate (EX_CONFIG-like, as linkerd uses).
const EXIT_BAD_CONFIG: u8 = 64;
/// The configuration file used when `--config` is not given and it exists.
const DEFAULT_CONFIG: &str = "config/switchboard.toml";

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "WebSocket edge and fan-out server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Validate a configuration file (with environment overrides) and print the effective
    /// configuration.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Ask the local node's control API (`control.listen`'s address, loopback when it is
    /// 0.0.0.0; HTTPS trusting `control.tls.cert_file` when TLS is on) for `path`: exit 0 on
    /// 200, 1 otherwise. For container health checks, where the image has no HTTP client.
    Probe {
        /// The path to GET.
        #[arg(default_value = "/readyz")]
        path: String,
    },
    /// Start draining the local node (`POST /v1/drain` on its control API, with the first
    /// of `control.api_keys`): exit 0 when a drain runs. For a Kubernetes preStop hook.
    Drain,
    /// Print a token signed with the configuration's HMAC key (`[[auth.keys]]`: HS256,
    /// HS384 or HS512), with `iss`/`aud` when `[auth]` sets them: for development and
    /// tests. Refuses public-key configurations (their tokens are signed by the private
    /// key).
    Token(TokenArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct TokenArgs {
    /// The user (`sub`).
    #[arg(long)]
    sub: String,
    /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Channel patterns the token may subscribe to (`channels` claim), comma-separated.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Channel patterns it may publish to (`publish` claim), comma-separated.
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Channels the server subscribes the connection to (`subs` claim), comma-separated.
    #[arg(long, value_delimiter = ',')]
    subs: Vec<String>,
    /// The `info` claim, as JSON (e.g. '{"name":"Ada"}').
    #[arg(long)]
    info: Option<String>,
    /// Sign with the key of this `kid` (default: the first HMAC key).
    #[arg(long)]
    kid: Option<String>,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct ServeArgs {
    /// TOML configuration file [default: config/switchboard.toml when it exists].
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Public WebSocket listener address (overrides server.listen).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Control API listener address (overrides control.listen).
    #[arg(long, global = true)]
    control: Option<SocketAddr>,
    /// Log level or filter, e.g. `debug` (overrides log.level).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Redis URL that turns clustering on (overrides cluster.redis).
    #[arg(long, global = true)]
    redis: Option<String>,
    /// This node's id (overrides server.node_id; generated when absent).
    #[arg(long, global = true)]
    node_id: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Probe { path }) => local_request(&cli.serve, "GET", &path),
        Some(Command::Drain) => local_request(&cli.serve, "POST", "/v1/drain"),
        Some(Command::Token(args)) => token(&cli.serve, &args),
        Some(Command::Serve(args)) => serve(&args),
        None => serve(&cli.serve),
    }
}

fn load(args: &ServeArgs) -> Result<Config, String> {
    let default = PathBuf::from(DEFAULT_CONFIG);
    let path = args
        .config
        .clone()
        .or_else(|| default.exists().then_some(default));
    let mut config =
        Config::load(path.as_deref(), std::env::vars()).map_err(|err| err.to_string())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(control) = args.control {
        config.control.listen = control;
    }
    if let Some(level) = &args.log_level {
        config.log.level.clone_from(level);
    }
    if let Some(redis) = &args.redis {
        config.cluster.redis = switchboard::config::RedisTarget::Url(redis.clone());
    }
    if let Some(node_id) = &args.node_id {
        config.server.node_id.clone_from(node_id);
    }
    config.validate().map_err(|err| err.to_string())
}

/// One request to the local node's control API (`control::local`: the address of
/// `control.listen`, HTTPS with `[control.tls]`): exit 0 on a 2xx answer, or on 409 for a
/// drain (one already runs), 1 otherwise; the answer's body goes to stdout.
fn local_request(args: &ServeArgs, method: &str, path: &str) -> ExitCode {
    if !path.starts_with('/') || path.len() > 1024 || path.bytes().any(|b| !b.is_ascii_graphic()) {
        eprintln!("switchboard: the path must start with / and hold no spaces or control bytes");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let config = match load(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("switchboard: invalid configuration: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let answer = match switchboard::control::local::request(&config, method, path) {
        Ok(answer) => answer,
        Err(err) => {
            eprintln!("switchboard: {err}");
            return ExitCode::FAILURE;
        }
    };
    if !answer.body.is_empty() {
        println!("{}", answer.body);
    }
    let ok = (200..300).contains(&answer.status) || (method == "POST" && answer.status == 409);
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("switchboard: {method} {path}: status {}", answer.status);
        ExitCode::FAILURE
    }
}

fn token(serve: &ServeArgs, args: &TokenArgs) -> ExitCode {
    let config = match load(serve) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("switchboard: invalid configuration: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let info = match args.info.as_deref().map(serde_json::from_str).transpose() {
        Ok(info) => info,
        Err(err) => {
            eprintln!("switchboard: --info is not JSON: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let request = switchboard::auth::mint::TokenRequest {
        sub: args.sub.clone(),
        ttl: args.ttl,
        channels: args.channels.clone(),
        publish: args.publish.clone(),
        subs: args.subs.clone(),
        info,
        kid: args.kid.clone(),
    };
    match switchboard::auth::mint::mint(&config.auth, &request) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("switchboard: {err}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(Some(file), std::env::vars()) {
        Ok(config) => {
            if let Err(err) = app::preflight(&config) {
                eprintln!("switchboard: invalid configuration: {err:#}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            println!("# {}: valid; effective configuration:", file.display());
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("switchboard: invalid configuration: {err}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match load(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("switchboard: invalid configuration: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Err(err) = app::preflight(&config) {
        eprintln!("switchboard: invalid configuration: {err:#}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    if let Err(err) = telemetry::init_tracing(
        &config.log.level,
        config.log.format == switchboard::config::LogFormat::Json,
    ) {
        eprintln!("switchboard: {err:#}");
        return ExitCode::FAILURE;
    }
    telemetry::install_panic_hook();
    for var in &config.ignored_env {
        tracing::debug!(
            var,
            "Environment variable ignored: not SWITCHBOARD_<SECTION>__<KEY> (e.g. a Kubernetes service link)"
        );
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.server.worker_threads > 0 {
        builder.worker_threads(config.server.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switchboard: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(app::run(config, shutdown_signal()));
    // Tasks left after the grace period are dropped here, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "Switchboard failed");
            eprintln!("switchboard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(error = %err, "Cannot listen for SIGTERM; only SIGINT will stop");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
