//! `ytcaption serve`: load and check the configuration (every problem reported at once, exit
//! 2, before any port is bound), set up logging, start the node, serve HTTP, and stop
//! gracefully on SIGTERM or SIGINT (a second signal stops at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use ytcaption_actors::node::Node;
use ytcaption_config::{Config, LogFormat};

use crate::http::auth::{Authenticator, RateLimiter};
use crate::http::internal::ClusterSecret;
use crate::http::server::{self, ServerParams};
use crate::http::service::{ApiParams, App};

/// Exit status of a configuration error.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML); `YTCAPTION_*` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address, overriding http.listen (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Node name, overriding node_name.
    #[arg(long)]
    node_name: Option<String>,
    /// Seconds in-flight requests may run after SIGTERM before the node stops anyway.
    #[arg(long, default_value_t = 25, value_name = "SECONDS")]
    shutdown_grace: u64,
}

/// Directory overrides from the global flags.
#[derive(Debug, Default)]
pub struct DirOverrides {
    pub data_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
}

fn print_errors(errors: &impl std::fmt::Display) {
    for line in errors.to_string().lines() {
        eprintln!("error: {line}");
    }
}

/// The configuration: file, environment, then the command line; validated as a whole.
fn load_config(args: &Args, dirs: DirOverrides) -> Result<Config, ExitCode> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars()).map_err(|errors| {
        print_errors(&errors);
        ExitCode::from(EXIT_CONFIG)
    })?;
    if let Some(listen) = args.http {
        config.http.listen = listen;
    }
    if let Some(name) = &args.node_name {
        config.node_name = name.clone();
    }
    if dirs.data_dir.is_some() {
        config.data_dir = dirs.data_dir;
    }
    if dirs.models_dir.is_some() {
        config.models_dir = dirs.models_dir;
    }
    config.validate().map_err(|errors| {
        print_errors(&errors);
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok(config)
}

/// Structured logs on stderr: human or JSON lines; `RUST_LOG` overrides `log.level`.
fn init_logging(config: &Config) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()) {
        Some(directives) => {
            EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        None => EnvFilter::try_new(&config.log.level).map_err(|e| format!("log.level: {e}"))?,
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

pub fn run(dirs: DirOverrides, args: Args) -> ExitCode {
    let config = match load_config(&args, dirs) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(error) = init_logging(&config) {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let grace = Duration::from_secs(args.shutdown_grace);
    let code = runtime.block_on(serve(config, grace));
    // A transcription still running on a blocking thread is abandoned: its job resumes from
    // the job log at the next start.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn serve(mut config: Config, grace: Duration) -> ExitCode {
    let listener = match TcpListener::bind(config.http.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", config.http.listen);
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(config.http.listen);
    // With port 0 the links must carry the port actually bound.
    config.http.listen = bound;
    let models_dir = match config.models_dir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let auth = Authenticator::new(&config.auth);
    if auth.is_open() {
        tracing::warn!(
            "serving on loopback without API keys: every request acts as the anonymous admin"
        );
    }
    let server_params = ServerParams {
        max_connections: config.http.max_connections,
        header_read_timeout: config.http.request_timeout,
        max_buf_size: config.http.max_header_bytes,
        shutdown_grace: grace,
    };
    let params = ApiParams::from_config(&config);
    let base_url = config.public_url();
    let node_name = config.node_name.clone();
    let cluster_secret = ClusterSecret::from_config(&config);
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("error: cannot start the node: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (stop, stopped) = watch::channel(false);
    let signalled = Arc::new(std::sync::OnceLock::new());
    spawn_signal_handler(stop, signalled.clone());
    let app = Arc::new(App {
        node: node.clone(),
        auth,
        limiter: RateLimiter::default(),
        params,
        base_url: base_url.clone(),
        models_dir,
        shutdown: stopped.clone(),
        cluster_secret,
    });
    tracing::info!(node = %node_name, listen = %bound, url = %base_url, "serving");
    let cut = server::run(listener, app, server_params, stopped).await;
    let since_signal = signalled.get().map_or(Duration::ZERO, Instant::elapsed);
    let left = grace
        .saturating_sub(since_signal)
        .max(Duration::from_secs(1));
    tracing::info!(cut_connections = cut, "stopping the node");
    node.shutdown(left).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit now.
fn spawn_signal_handler(stop: watch::Sender<bool>, signalled: Arc<std::sync::OnceLock<Instant>>) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = wait_for_signal().await;
            if first {
                first = false;
                let _ = signalled.set(Instant::now());
                tracing::info!(
                    signal = name,
                    "shutting down; send it again to stop at once"
                );
                let _ = stop.send(true);
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
