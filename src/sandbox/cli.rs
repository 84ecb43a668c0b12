//! The standalone sandbox runner behind the binary's `sandbox` command.
//!
//! Owns the command-line flags and what is printed for a human: the two URLs,
//! the key and a `[patchkit]` snippet to paste into a config. The binary owns
//! signals and passes a cancellation token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{FaultConfig, Sandbox, SandboxConfig, Variant};

/// Runs a PatchKit sandbox until interrupted.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address both listeners bind to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Port of the main API (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub main_port: u16,
    /// Port of the chunk upload host (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub upload_port: u16,
    /// The API key of the one account.
    #[arg(long, default_value = "sandbox-key")]
    pub api_key: String,
    /// An app secret owned by the key (repeatable).
    #[arg(long = "app", value_name = "SECRET")]
    pub apps: Vec<String>,
    /// How long processing jobs take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub job_duration: Duration,
    /// How long publishing takes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub publish_duration: Duration,
    /// Where uploads are assembled (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the fault RNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Probability of a 500 or 503 answer.
    #[arg(long = "fail-5xx", value_name = "P", default_value_t = 0.0)]
    pub fail_5xx: f64,
    /// Probability of a dropped connection (half before, half after the
    /// request is applied).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub drop: f64,
    /// Probability of a 412 answer to a good chunk.
    #[arg(long = "chunk-412", value_name = "P", default_value_t = 0.0)]
    pub chunk_412: f64,
    /// Latency added to every API request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Answer as PatchKit plausibly might where its documentation is silent
    /// (repeatable). `forgetful` takes effect on `POST /_sandbox/restart`.
    #[arg(long = "variant", value_name = "NAME", value_enum)]
    pub variants: Vec<Variant>,
    /// A channel app owned by the key, as CHANNEL=GROUP (repeatable); the
    /// group app is created too. The channel takes no direct uploads.
    #[arg(long = "channel-app", value_name = "CHANNEL=GROUP")]
    pub channel_apps: Vec<String>,
    /// How long an owner of PatchKit's global lock keeps its place without
    /// asking again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90s")]
    pub lock_timeout: Duration,
}

/// Starts the sandbox, prints how to reach it and runs until `shutdown`.
pub async fn run(args: SandboxArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    for (name, p) in [
        ("--fail-5xx", args.fail_5xx),
        ("--drop", args.drop),
        ("--chunk-412", args.chunk_412),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&p),
            "{name} must be between 0 and 1, got {p}"
        );
    }
    let mut config = SandboxConfig::new(args.api_key.clone())
        .job_duration(args.job_duration)
        .publish_duration(args.publish_duration)
        .lock_timeout(args.lock_timeout)
        .faults(FaultConfig {
            seed: args.seed,
            fail_5xx: args.fail_5xx,
            drop_before: args.drop / 2.0,
            drop_after: args.drop / 2.0,
            chunk_412: args.chunk_412,
            latency: args.latency,
            jitter: Duration::ZERO,
        });
    for app in &args.apps {
        config = config.with_app(app.clone());
    }
    for variant in &args.variants {
        config = config.variant(*variant);
    }
    let mut channels = Vec::new();
    for spec in &args.channel_apps {
        let (channel, group) = spec
            .split_once('=')
            .filter(|(c, g)| !c.is_empty() && !g.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--channel-app takes CHANNEL=GROUP, got {spec:?}"))?;
        channels.push((channel.to_owned(), group.to_owned()));
    }
    if let Some(dir) = &args.data_dir {
        config = config.data_dir(dir.clone());
    }
    let handle = Sandbox::start_on(
        config,
        SocketAddr::new(args.bind, args.main_port),
        SocketAddr::new(args.bind, args.upload_port),
    )
    .await?;
    for (channel, group) in &channels {
        handle.add_channel_app(&args.api_key, channel, group, false);
    }

    println!("PatchKit sandbox running");
    println!("  api:    {}", handle.main_url());
    println!("  upload: {}", handle.upload_url());
    println!("  key:    {}", args.api_key);
    for app in &args.apps {
        println!("  app:    {app}");
    }
    for (channel, group) in &channels {
        println!("  app:    {channel} (channel of {group}, no direct uploads)");
    }
    for variant in &args.variants {
        println!("  variant: {}", variant.name());
    }
    println!("  state:  {}/_sandbox/state", handle.main_url());
    println!();
    println!("[patchkit]");
    println!("api_url = \"{}\"", handle.main_url());
    println!("upload_url = \"{}\"", handle.upload_url());
    if !args.bind.is_loopback() {
        println!("allow_insecure_http = true");
    }

    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}
