//! The binary: logging, signals, CLI dispatch and exit codes. Nothing else.

use std::process::ExitCode;

use clap::Parser;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

use patchkit_autopublish::cli::{BuildArg, Cli, Command, RunArgs};
use patchkit_autopublish::config::{Config, ConfigError};
use patchkit_autopublish::daemon::{self, RunOptions};
use patchkit_autopublish::sandbox;
use patchkit_autopublish::store::Store;
use signal_hook::consts::SIGHUP;
use tokio::sync::mpsc;

/// Exit code for a failure at run time (network, disk, ...).
const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or an invalid config (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Retry(args) => control(args, Control::Retry).await,
        Command::Cancel(args) => control(args, Control::Cancel).await,
        Command::Check(args) => check(&args.config),
        Command::Sandbox(args) => {
            let shutdown = match signals(None) {
                Ok(token) => token,
                Err(err) => return fail(EXIT_FAILURE, &err),
            };
            match sandbox::cli::run(args, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(EXIT_FAILURE, &err),
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    };
    println!(
        "config {}: ok ({} rules)",
        path.display(),
        config.rules.len()
    );
    match config.patchkit.load_key() {
        Ok((_, origin)) => println!("API key: read from {origin}"),
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    }
    for rule in &config.rules {
        println!(
            "rule {}: {} matching {:?} -> app {}",
            rule.name,
            rule.folder.display(),
            rule.pattern,
            rule.app_secret
        );
    }
    ExitCode::SUCCESS
}

async fn run(args: RunArgs) -> ExitCode {
    let path = args.config.config;
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    };
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let shutdown = match signals(Some((path, reload_tx))) {
        Ok(token) => token,
        Err(err) => return fail(EXIT_FAILURE, &err),
    };
    let opts = RunOptions {
        once: args.once,
        commands: None,
        reloads: Some(reload_rx),
        ..RunOptions::default()
    };
    match daemon::run(config, opts, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    }
}

enum Control {
    Retry,
    Cancel,
}

async fn control(args: BuildArg, what: Control) -> ExitCode {
    let config = match Config::load(&args.config.config) {
        Ok(config) => config,
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    };
    let dir = config.daemon.state_dir.clone();
    let store = match tokio::task::spawn_blocking(move || Store::open(dir)).await {
        Ok(Ok(store)) => store,
        Ok(Err(err)) => return fail(EXIT_FAILURE, &anyhow::Error::new(err)),
        Err(err) => return fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    };
    let result = match what {
        Control::Retry => daemon::retry_build(&store, args.build).await,
        Control::Cancel => daemon::cancel_build(&store, args.build).await,
    };
    match result {
        Ok(build) => {
            println!("build {}: {}", build.id, build.state);
            ExitCode::SUCCESS
        }
        Err(err) => fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    }
}

/// A token cancelled by the first SIGTERM or SIGINT; a second one exits at
/// once with code 1, for an operator who does not want to wait. With a
/// config path, SIGHUP loads the config again and sends the result.
fn signals(
    reload: Option<(
        std::path::PathBuf,
        mpsc::Sender<Result<Config, ConfigError>>,
    )>,
) -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let force = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag the handler below sets on
        // the first signal and exits on the second.
        signal_hook::flag::register_conditional_shutdown(sig, 1, force.clone())?;
    }
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let cancel = token.clone();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGHUP => {
                    if let Some((path, tx)) = &reload {
                        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                        let _ = tx.send(Config::load(path)).await;
                    }
                }
                _ => {
                    tracing::info!("shutdown requested; a second signal stops at once");
                    force.store(true, std::sync::atomic::Ordering::SeqCst);
                    cancel.cancel();
                }
            }
        }
    });
    Ok(token)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // journald adds its own timestamps and does not render colours.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!under_journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if under_journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn fail(code: u8, err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(code)
}
