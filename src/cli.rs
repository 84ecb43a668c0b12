//! The command line: clap definitions only, no logic.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{CONFIG_ENV, DEFAULT_CONFIG_PATH};
use crate::sandbox::cli::SandboxArgs;

/// Watches build folders and publishes every dropped game build ZIP to
/// PatchKit: create a version, upload in resumable chunks, wait for
/// processing, check its messages, publish. Exactly once, across restarts.
#[derive(Debug, Parser)]
#[command(name = "patchkit-autopublish", version, about, long_about = None)]
#[command(after_help = "Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the rule folders and publish every build.
    ///
    /// Resumes every unfinished build in the store first, oldest first.
    /// SIGTERM or SIGINT stops it cleanly (a second one at once); SIGHUP
    /// reloads the config.
    Run(RunArgs),
    /// Validate the config file and read the API key; changes nothing.
    ///
    /// Reports every problem of the file with its line and column, then
    /// checks that the API key can be read from where the config says.
    /// With --as-service it reads the key where the systemd service will:
    /// the credential file its unit names in LoadCredential=.
    Check(CheckArgs),
    /// Run a local PatchKit emulator (the sandbox) to try a config without a
    /// PatchKit account.
    ///
    /// It serves the API on two loopback ports (main and upload), prints a
    /// ready-to-paste [patchkit] section, and runs until Ctrl-C.
    Sandbox(SandboxArgs),
    /// See it work: the sandbox, a watch folder and the real daemon
    /// publishing a sample build, with no PatchKit account and no config.
    ///
    /// Prints each stage with its progress. Without --once it keeps
    /// running and prints the folder to drop more ZIPs into.
    Demo(DemoArgs),
    /// Show the builds: id, rule, label, stage, progress, version, attempts
    /// and last error.
    ///
    /// Asks the running daemon over its control socket, or reads the store
    /// when no daemon runs. Shows unfinished builds and those that ended in
    /// the last 24 hours.
    Status(StatusArgs),
    /// Start a failed build again, from a fresh upload (its draft version is
    /// reused).
    Retry(RetryArgs),
    /// Stop a build for good; its file is left where it is.
    Cancel(BuildArg),
    /// Print the completion script for a shell.
    ///
    /// bash: save it as
    /// ~/.local/share/bash-completion/completions/patchkit-autopublish;
    /// zsh: as _patchkit-autopublish in a folder of $fpath; fish: as
    /// ~/.config/fish/completions/patchkit-autopublish.fish. The Debian
    /// package installs all three.
    Completions(CompletionsArgs),
    /// Print the man page (roff) of the program or of one command.
    ///
    /// `man COMMAND` prints the page of that command, named
    /// patchkit-autopublish-COMMAND(1). The Debian package installs them all.
    Man(ManArgs),
    /// Look after the build store (the daemon must be stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Make a store that was refused as damaged usable again, without
    /// publishing anything twice.
    ///
    /// Keeps every record the store still holds (an unreadable database is
    /// moved aside as db.damaged-TIME), marks its unfinished builds and every
    /// file in the rule folders it does not know as failed, and leaves those
    /// files in place. Check them on PatchKit and `retry` the ones that are
    /// not published. Does nothing to a store that is not damaged.
    Recover(ConfigArg),
}

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Read the API key where the systemd service will: the credential
    /// patchkit-api-key named by LoadCredential= in the installed unit and
    /// its drop-ins. Run it as root, as systemd reads credentials as root.
    #[arg(long)]
    pub as_service: bool,
    /// The unit file to read for --as-service (and the drop-ins in
    /// FILE.d/ beside it), instead of the installed one.
    #[arg(long, value_name = "FILE", requires = "as_service")]
    pub unit: Option<PathBuf>,
    /// Check this file as the service's credential patchkit-api-key,
    /// without reading a unit.
    #[arg(long, value_name = "FILE", conflicts_with = "unit")]
    pub credential: Option<PathBuf>,
}

/// Options of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Options of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// A command (`run`, `check`, ...); without it, the program's page.
    pub command: Option<String>,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Take the builds already in the rule folders, finish every build, then
    /// exit (for cron jobs and CI steps) instead of watching.
    #[arg(long)]
    pub once: bool,
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit once the sample build is published (status 0) or failed (1).
    #[arg(long)]
    pub once: bool,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The state directory to read, instead of the config's state_dir.
    /// Without it, a config that does not load still gives its state_dir.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print JSON (one array of builds) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show every build the store holds, not just recent ones.
    #[arg(long)]
    pub all: bool,
}

/// Options of `retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub target: BuildArg,
    /// Retry it even though a build of its app that arrived later is live:
    /// the older build becomes the live one.
    #[arg(long)]
    pub force: bool,
}

/// A build, by the id `status` shows.
#[derive(Debug, Args)]
pub struct BuildArg {
    /// The build id.
    pub build: crate::store::BuildId,
    #[command(flatten)]
    pub config: ConfigArg,
    /// The state directory to use, instead of the config's state_dir.
    /// Without it, a config that does not load still gives its state_dir.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The config file option shared by the commands that read it.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}
