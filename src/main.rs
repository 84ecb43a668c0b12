//! The binary: logging, signals, CLI dispatch and exit codes. Nothing else.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

use patchkit_autopublish::check::KeyPlace;
use patchkit_autopublish::cli::{
    BuildArg, CheckArgs, Cli, Command, ManArgs, RunArgs, StatusArgs, StoreCommand,
};
use patchkit_autopublish::config::{Config, ConfigError};
use patchkit_autopublish::control::{self, BuildRow, Request};
use patchkit_autopublish::daemon::{self, RunOptions};
use patchkit_autopublish::logging;
use patchkit_autopublish::sandbox;
use patchkit_autopublish::store::{OpenOptions, Store, StoreError};
use signal_hook::consts::SIGHUP;
use tokio::sync::mpsc;

/// Exit code for a failure at run time (network, disk, ...).
const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or an invalid config (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    // `run` sets up logging from its config; the other commands log little.
    let _guard = match &cli.command {
        Command::Run(_) => None,
        // `check` reports every problem itself, once; the client's retry
        // warnings would only repeat them.
        Command::Check(_) => logging::init("error", None).ok(),
        // The other commands print their own results; only problems are
        // logged.
        _ => logging::init("warn", None).ok(),
    };
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Status(args) => status(args).await,
        Command::Retry(args) => control(args.target, Control::Retry { force: args.force }).await,
        Command::Cancel(args) => control(args, Control::Cancel).await,
        Command::Check(args) => check(args).await,
        Command::Completions(args) => completions(args.shell),
        Command::Man(args) => man(args),
        Command::Store(StoreCommand::Recover(args)) => recover(&args.config).await,
        Command::Demo(args) => {
            let shutdown = match signals(None) {
                Ok(token) => token,
                Err(err) => return fail(EXIT_FAILURE, &err),
            };
            match patchkit_autopublish::demo::run(args.once, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(EXIT_FAILURE, &err),
            }
        }
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

async fn check(args: CheckArgs) -> ExitCode {
    let config = match Config::load(&args.config.config) {
        Ok(config) => config,
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    };
    let place = match (args.credential, args.as_service) {
        (Some(path), _) => KeyPlace::Credential(path),
        (None, true) => KeyPlace::Unit(args.unit),
        (None, false) => KeyPlace::Shell,
    };
    let report = patchkit_autopublish::check::check_with(&config, &place).await;
    for line in &report.lines {
        println!("{line}");
    }
    if report.problems == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} problem(s) found; fix them and run `check` again",
            report.problems
        );
        ExitCode::from(EXIT_USAGE)
    }
}

/// `completions`: the completion script for `shell`.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "patchkit-autopublish",
        &mut script,
    );
    if shell == clap_complete::Shell::Bash {
        // clap_complete names the option lists of a hyphenated program's
        // commands "patchkit__subcmd__autopublish__subcmd__NAME" but looks
        // them up as "patchkit__autopublish__subcmd__NAME", so no command's
        // options would complete; give them the name it looks up.
        script = String::from_utf8_lossy(&script)
            .replace("patchkit__subcmd__autopublish", "patchkit__autopublish")
            .into_bytes();
    }
    use std::io::Write;
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    }
}

/// `man`: the roff page of the program, or of one of its commands.
fn man(args: ManArgs) -> ExitCode {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building names each subcommand "patchkit-autopublish-NAME", the title
    // of its page.
    cmd.build();
    let page = match &args.command {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(sub) => sub.clone(),
            None => {
                let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
                return fail(
                    EXIT_USAGE,
                    &anyhow::anyhow!(
                        "there is no command {name:?}; the commands are {}",
                        names.join(", ")
                    ),
                );
            }
        },
    };
    match clap_mangen::Man::new(page).render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    }
}

/// `store recover`: see `patchkit_autopublish::recover`.
async fn recover(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    };
    match patchkit_autopublish::recover::recover(&config).await {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let path = args.config.config;
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => return fail(EXIT_USAGE, &anyhow::Error::new(err)),
    };
    let files = config
        .daemon
        .log_dir
        .as_deref()
        .map(|dir| (dir, config.daemon.log_keep));
    let _guard = match logging::init(&config.daemon.log_level, files) {
        Ok(guard) => guard,
        Err(err) => return fail(EXIT_USAGE, &anyhow::anyhow!(err)),
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
    Retry { force: bool },
    Cancel,
}

/// Retries or cancels a build: through the running daemon's socket, or on
/// the store when no daemon runs.
async fn control(args: BuildArg, what: Control) -> ExitCode {
    let dir = match state_dir(&args.config.config, args.state_dir) {
        Ok(dir) => dir,
        Err(err) => return fail(EXIT_USAGE, &err),
    };
    let request = match what {
        Control::Retry { force } => Request::Retry {
            build: args.build.to_string(),
            force,
        },
        Control::Cancel => Request::Cancel {
            build: args.build.to_string(),
        },
    };
    let store = match reach(&dir, &request).await {
        Ok(Reached::Daemon(response)) => {
            return match (response.ok, response.builds.first()) {
                (true, Some(row)) => {
                    println!(
                        "build {}: {}",
                        row.id,
                        patchkit_autopublish::text::escaped(&row.detail)
                    );
                    ExitCode::SUCCESS
                }
                _ => fail(
                    EXIT_FAILURE,
                    &anyhow::anyhow!(response.error.unwrap_or_else(|| "no answer".into())),
                ),
            };
        }
        Ok(Reached::Store(store)) => store,
        Err(err) => return fail(EXIT_FAILURE, &err),
    };
    let result = match what {
        Control::Retry { force } => {
            patchkit_autopublish::control::retry_build(&store, args.build, force).await
        }
        Control::Cancel => patchkit_autopublish::control::cancel_build(&store, args.build).await,
    };
    let retried = matches!(what, Control::Retry { .. });
    if let (true, Ok(build), Ok(config)) = (retried, &result, Config::load(&args.config.config))
        && let Some(rule) = config.rule(&build.rule)
    {
        // No daemon runs: move a file `on_failure` moved away back now, so
        // the next start finds it where the build reads it.
        patchkit_autopublish::dispose::bring_back(rule, build).await;
    }
    match result {
        Ok(build) => {
            println!(
                "build {}: {}",
                build.id,
                patchkit_autopublish::text::escaped(&build.state.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(EXIT_FAILURE, &anyhow::Error::new(err)),
    }
}

/// The state directory `status`, `retry` and `cancel` work on: `--state-dir`,
/// else the config's. They need nothing else from the config, so a config
/// that does not load (an edit in progress, while the daemon runs on the
/// old one) still gives its `state_dir`, with a warning.
fn state_dir(
    config: &std::path::Path,
    given: Option<std::path::PathBuf>,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    match Config::load(config) {
        Ok(loaded) => Ok(loaded.daemon.state_dir),
        Err(err) => match patchkit_autopublish::config::state_dir_leniently(config) {
            Some(dir) => {
                eprintln!(
                    "warning: {err}\nwarning: using the state directory it names, {}",
                    dir.display()
                );
                Ok(dir)
            }
            None => Err(anyhow::Error::new(err)
                .context("cannot tell the state directory; give it with --state-dir DIR")),
        },
    }
}

/// How long `status`, `retry` and `cancel` wait for a store locked by a
/// daemon that is starting: its socket answers once it is up, within seconds.
const STARTING_DAEMON_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Who answers a CLI command.
enum Reached {
    /// The running daemon, over its socket.
    Daemon(control::Response),
    /// No daemon runs: the store itself, held for the command's few
    /// milliseconds (a daemon starting meanwhile waits for it).
    Store(Store),
}

/// Asks the running daemon, or opens the store when none runs. A store
/// locked by a daemon whose socket is not up yet is asked again until the
/// socket answers.
async fn reach(dir: &std::path::Path, request: &Request) -> anyhow::Result<Reached> {
    let deadline = std::time::Instant::now() + STARTING_DAEMON_WAIT;
    loop {
        if let Some(response) = control::ask(dir, request).await? {
            return Ok(Reached::Daemon(response));
        }
        let path = dir.to_path_buf();
        let opened =
            tokio::task::spawn_blocking(move || Store::open_with(path, &OpenOptions::default()))
                .await?;
        match opened {
            Ok(store) => return Ok(Reached::Store(store)),
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// `status`: from the daemon when it runs, from the store when not.
async fn status(args: StatusArgs) -> ExitCode {
    // `status --json | head` and the like: a reader that goes away ends the
    // command quietly, as it does any other tool's, instead of a panic on
    // the next line printed. Only for this command: the daemon keeps
    // ignoring SIGPIPE, so a peer closing a socket stays an error it handles.
    // SAFETY: setting a signal's disposition to its default touches no
    // memory; nothing else in this process handles SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let dir = match state_dir(&args.config.config, args.state_dir) {
        Ok(dir) => dir,
        Err(err) => return fail(EXIT_USAGE, &err),
    };
    let request = Request::Status { all: args.all };
    let rows = if !dir.join("db").exists()
        && control::ask(&dir, &request).await.ok().flatten().is_none()
    {
        // Nothing ever ran here: no builds, and nothing to create. Said on
        // stderr: a mistyped `--state-dir` looks just like this.
        eprintln!(
            "no build store in {}: no daemon has run with this state directory (check \
             state_dir in the config, or --state-dir)",
            dir.display()
        );
        Vec::new()
    } else {
        match reach(&dir, &request).await {
            Ok(Reached::Daemon(response)) if response.ok => response.builds,
            Ok(Reached::Daemon(response)) => {
                return fail(
                    EXIT_FAILURE,
                    &anyhow::anyhow!(response.error.unwrap_or_else(|| "no answer".into())),
                );
            }
            Ok(Reached::Store(store)) => {
                // Said on stderr, so `--json` output stays one JSON value.
                eprintln!(
                    "no daemon is running: the builds as last recorded in {}",
                    dir.display()
                );
                match control::status_rows(&store, None, args.all) {
                    Ok(rows) => rows,
                    Err(err) => return fail(EXIT_FAILURE, &anyhow::Error::new(err)),
                }
            }
            Err(err) => return fail(EXIT_FAILURE, &err),
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(text) => println!("{text}"),
            Err(err) => return fail(EXIT_FAILURE, &anyhow::Error::new(err)),
        }
    } else {
        print_table(&rows);
    }
    ExitCode::SUCCESS
}

fn print_table(rows: &[BuildRow]) {
    if rows.is_empty() {
        println!("no builds");
        return;
    }
    let progress = |r: &BuildRow| {
        let mut s = r
            .progress_percent
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_default();
        if let Some(rate) = r.bytes_per_second {
            s.push_str(&format!(" {:.1} MiB/s", rate / (1024.0 * 1024.0)));
        }
        if let Some(eta) = r.eta_seconds {
            s.push_str(&format!(
                " ETA {}",
                humantime::format_duration(std::time::Duration::from_secs(eta as u64))
            ));
        }
        s
    };
    let error = |r: &BuildRow| {
        let now = patchkit_autopublish::clock::now_ms();
        // Whole seconds, or milliseconds for a wait shorter than one.
        let next_try = |at: u64| {
            let ms = at.saturating_sub(now);
            let wait = if ms >= 1000 {
                std::time::Duration::from_secs(ms / 1000)
            } else {
                std::time::Duration::from_millis(ms)
            };
            humantime::format_duration(wait).to_string()
        };
        // A request failing right now says more than the step's last error.
        if let Some(retry) = &r.request_retry {
            return format!(
                "attempt {} of {}, last error: {}; next try in {}",
                retry.attempt,
                retry.endpoint,
                retry.last_error,
                next_try(retry.next_try_at)
            );
        }
        let mut text = r
            .reason
            .clone()
            .or_else(|| r.waiting.clone())
            .or_else(|| r.last_error.clone())
            .unwrap_or_default();
        // A retry time already passed means the step is running again.
        if let Some(at) = r
            .next_attempt_at
            .filter(|at| r.reason.is_none() && *at > now)
        {
            text.push_str(&format!("; next try in {}", next_try(at)));
        }
        // Channels not yet live are named; a failed one's reason is the
        // build's reason already.
        let open: Vec<String> = r
            .channels
            .iter()
            .filter(|c| c.step != "published" && c.step != "failed")
            .map(|c| match c.version_id {
                Some(v) => format!("{} {} v{v}", c.channel, c.step),
                None => format!("{} {}", c.channel, c.step),
            })
            .collect();
        if !open.is_empty() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&format!("channels: {}", open.join(", ")));
        }
        text
    };
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.rule.clone(),
                r.label.clone(),
                r.state.clone(),
                progress(r),
                r.version_id.map(|v| v.to_string()).unwrap_or_default(),
                r.attempts.to_string(),
                error(r),
            ]
            // Labels and errors may carry a file name's control characters:
            // each row stays one line.
            .map(|cell| patchkit_autopublish::text::escaped(&cell).into_owned())
        })
        .collect();
    let header = [
        "ID",
        "RULE",
        "LABEL",
        "STATE",
        "PROGRESS",
        "VERSION",
        "ATTEMPTS",
        "LAST ERROR",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &table {
        for (i, cell) in row.iter().enumerate().take(7) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 7 {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        println!("{}", out.trim_end());
    };
    line(&header.map(String::from));
    for row in &table {
        line(row);
    }
    // Uploads run ahead of their build's turn on the app, bounded by
    // `workers`: how many are in flight, and how many builds wait with
    // their upload done.
    let in_flight = rows
        .iter()
        .filter(|r| r.state == "uploading" && r.worker.is_some())
        .count();
    let ahead = rows
        .iter()
        .filter(|r| r.state == "uploading" && r.worker.as_deref() == Some("ahead"))
        .count();
    let awaiting_turn = rows
        .iter()
        .filter(|r| r.state == "uploaded" && r.version_id.is_none() && r.worker.is_none())
        .count();
    if in_flight + awaiting_turn > 0 {
        println!(
            "\nuploads in flight: {in_flight} ({ahead} ahead of their build's turn); uploaded and \
             waiting for their turn: {awaiting_turn}"
        );
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
                    // Armed before it is announced: whoever reads the line
                    // may send the second signal at once.
                    force.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!("shutdown requested; a second signal stops at once");
                    cancel.cancel();
                }
            }
        }
    });
    Ok(token)
}

fn fail(code: u8, err: &anyhow::Error) -> ExitCode {
    let text = format!("error: {err:#}");
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd each line is a journal entry of its own; without the
        // error priority, why the service did not start (a refused config,
        // one problem per line) would be filed as info.
        for line in text.lines() {
            eprintln!("<3>{line}");
        }
    } else {
        eprintln!("{text}");
    }
    ExitCode::from(code)
}
