//! The `iptgate` binary: CLI, logging, exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use iptgate::config::Config;

/// mimalloc: the proxy allocates per request (headers, bodies); glibc malloc showed up as
/// ~9% of CPU under load. Its v2 line (the `v2` feature): v3 takes an over-allocating aligned
/// path for most sizes the global allocator asks for, hyper's 8 KiB read buffers included.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "iptgate",
    version,
    about = "Reverse-proxy authentication gateway: IP-bound tokens, IP policy and rate limits in front of any web app"
)]
struct Cli {
    /// Log format (default: pretty on a terminal, json otherwise); level from RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// The config file of every command that reads one (default ./gateway.toml).
    #[arg(long, global = true, env = "IPTGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the default command).
    Run,
    /// Validate the config: print every error with its key path, or the resolved route table.
    Check,
    /// Run the gateway and a built-in sample app; create a dev certificate and secret when missing.
    Demo,
    /// Mint or verify tokens as the gateway would.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Say what the gateway would do with one request, phase by phase.
    Explain(iptgate::explain::Args),
    /// Write a self-signed development certificate and key (PEM).
    Cert {
        /// Folder to write gateway.crt and gateway.key into.
        #[arg(long)]
        out: PathBuf,
        /// Host names or IPs for the certificate (default: localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace a certificate or key already in DIR.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a token as the gateway would mint it.
    Mint {
        /// The client IP the token is bound to.
        #[arg(long)]
        ip: String,
        /// The subject (`sub` claim).
        #[arg(long)]
        sub: Option<String>,
        /// Extra claim as key=value (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime, e.g. "15m" (default: token.ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// The device id to bind the token to (needed when token.device_binding is set).
        #[arg(long)]
        device: Option<String>,
    },
    /// Verify a token as a protected route would; print its claims or the error code.
    Verify {
        /// The client IP the token is presented from.
        #[arg(long)]
        ip: String,
        /// The device id the request would carry (needed when token.device_binding is set).
        #[arg(long)]
        device: Option<String>,
        /// The token (JWT) to verify.
        token: String,
    },
}

fn init_logs(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
                eprintln!("RUST_LOG: `{v}` is not a log filter ({e}); logging at info");
                tracing_subscriber::EnvFilter::new("info")
            })
        }
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    // The HTTP/2 library logs a malformed request's path (its query too) and authority at
    // debug, and nothing an operator needs above: silent, unless RUST_LOG names it.
    let names_h2 = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("h2"));
    let filter = match "h2=off".parse() {
        Ok(d) if !names_h2 => filter.add_directive(d),
        _ => filter,
    };
    let tty = std::io::stderr().is_terminal();
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !tty,
    };
    // Colour codes only on a terminal: a file or a pipe gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(tty)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).with_current_span(false).init();
    } else {
        b.init();
    }
}

fn config_path(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| PathBuf::from("gateway.toml"))
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// The async runtime: `workers = 1` runs everything on the main thread (tokio's
/// current-thread scheduler: no work-stealing queues, no cross-thread wake-ups), any other
/// value a multi-thread scheduler with that many workers (0: one per core).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let path = config_path(cli.config);
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::Run => match load(&path) {
            Ok(cfg) => run_gateway(cfg, false),
            Err(code) => code,
        },
        Cmd::Demo => match iptgate::demo::prepare(&path) {
            Ok(cfg) => run_gateway(cfg, true),
            Err(e) => {
                eprintln!("{e}");
                match e {
                    iptgate::demo::PrepareError::Config(_) => ExitCode::from(2),
                    iptgate::demo::PrepareError::Io(_) => ExitCode::from(1),
                }
            }
        },
        Cmd::Check => iptgate::check::run(&path),
        Cmd::Cert { out, hosts, force } => match iptgate::tls::check_hosts(&hosts) {
            Err(e) => {
                eprintln!("cert: --host {e}");
                ExitCode::from(2)
            }
            Ok(()) => {
                // A key in place may be the one a gateway serves with: never replaced unasked.
                let there = ["gateway.crt", "gateway.key"]
                    .map(|f| out.join(f))
                    .into_iter()
                    .find(|p| p.exists());
                match there {
                    Some(p) if !force => {
                        eprintln!("cert: {} exists; pass --force to replace it", p.display());
                        ExitCode::from(2)
                    }
                    _ => write_cert(&out, &hosts),
                }
            }
        },
        Cmd::Token { cmd } => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cmd {
                TokenCmd::Mint {
                    ip,
                    sub,
                    claims,
                    ttl,
                    device,
                } => iptgate::cli_token::mint(
                    &cfg,
                    &ip,
                    device.as_deref(),
                    sub,
                    &claims,
                    ttl.as_deref(),
                ),
                TokenCmd::Verify { ip, device, token } => {
                    iptgate::cli_token::verify(&cfg, &ip, device.as_deref(), &token)
                }
            }
        }
        Cmd::Explain(args) => match load(&path) {
            Ok(cfg) => iptgate::explain::run(cfg, args),
            Err(code) => code,
        },
    }
}

fn write_cert(out: &std::path::Path, hosts: &[String]) -> ExitCode {
    match iptgate::tls::write_dev_cert(out, hosts) {
        Ok((c, k)) => {
            iptgate::print_stdout(&format!("wrote {} and {}\n", c.display(), k.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cert: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_gateway(cfg: Config, demo: bool) -> ExitCode {
    for w in &cfg.warnings {
        tracing::warn!(file = %cfg.source.display(), "config: {w}");
    }
    let rt = match runtime(cfg.server.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let demo_app = if demo {
            match iptgate::demo::start_app(&cfg).await {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("demo: cannot start the sample app: {e}");
                    return ExitCode::from(1);
                }
            }
        } else {
            None
        };
        let running = match iptgate::server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        if demo {
            iptgate::demo::print_walkthrough(&running);
        }
        iptgate::reload::on_sighup(running.state.clone());
        wait_for_stop().await;
        tracing::info!("shutting down: draining in-flight requests (a second signal stops at once)");
        tokio::select! {
            () = running.shutdown() => {}
            () = wait_for_stop() => {
                tracing::warn!("second stop signal: stopping now, without waiting for in-flight requests");
                return ExitCode::from(1);
            }
        }
        drop(demo_app);
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
