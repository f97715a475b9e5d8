//! `quiver-bench`: Quiver's load generator and benchmark orchestrator.
//!
//! - `quiver-bench run` starts every server (Quiver, the bare wtransport peer, nats-server,
//!   Socket.IO), runs the workloads against each from generator processes pinned to another
//!   core (the repeated maxima round by round across the targets), and writes the report
//!   (Markdown, JSON, PNG plots).
//! - `quiver-bench neighbour` measures one tenant's latency beside another tenant flooding
//!   past its quota (`quiver-bench flood`, a generator like the ones below).
//! - `quiver-bench load | hol | connections` is one generator process running one workload
//!   against one target; it prints its result as JSON. `run` calls these.

mod clock;
mod nats_ports;
mod orchestrate;
mod payload;
mod plot;
mod procstat;
mod recorder;
mod relay;
mod report;
mod scrape;
mod socketio_wire;
mod target;
mod workload;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use target::Spec;

#[derive(Parser)]
#[command(name = "quiver-bench", version, about = "Quiver benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole benchmark and write the report.
    Run(orchestrate::RunArgs),
    /// Rewrite PREFIX.md and the plots from PREFIX.json (after editing the report code).
    Report {
        /// The output prefix of an earlier run (PREFIX.json must exist).
        prefix: std::path::PathBuf,
        /// An earlier run's JSON: its figures become the "no regression" reference.
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    /// Fan-out / many-rooms load against one target (JSON result on stdout).
    Load {
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        params: workload::load::LoadParams,
    },
    /// Quiet-room latency next to a busy room on one connection (JSON result on stdout).
    Hol {
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        params: workload::hol::HolParams,
    },
    /// Relay UDP with a fixed delay each way (the head-of-line test's round-trip time).
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// One-way delay in milliseconds.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60)]
        max_secs: u64,
    },
    /// Open idle sessions, print the connect rate, hold them until stdin closes.
    Connections {
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        params: workload::connections::ConnParams,
    },
    /// One tenant at its publication quota beside another tenant: the other's latency (issue 10).
    Neighbour(orchestrate::neighbour::NeighbourArgs),
    /// Scrape a Quiver server's /metrics for a while and plot the dashboard's main panels.
    Scrape(scrape::ScrapeArgs),
    /// The noisy tenant: publish far over the quota, count refusals, until stdin closes.
    Flood {
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        params: workload::neighbour::FloodParams,
    },
}

#[derive(clap::Args)]
struct TargetArg {
    /// The target as JSON (see `target::Spec`).
    #[arg(long)]
    spec: String,
    /// Server process to sample CPU time from during the measured window.
    #[arg(long)]
    server_pid: Option<u32>,
}

impl TargetArg {
    fn spec(&self) -> Result<Spec> {
        serde_json::from_str(&self.spec).context("--spec is not a valid target JSON")
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_open_files_limit();
    match cli.command {
        Cmd::Run(args) => orchestrate::run(args),
        Cmd::Report { prefix, baseline } => {
            let mut json = prefix.clone().into_os_string();
            json.push(".json");
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.to_string_lossy()))?;
            let mut report: report::Report = serde_json::from_str(&text)?;
            if let Some(path) = baseline {
                report.reference = Some(report::targets::Reference::read(&path)?);
            }
            report::write(&report, &prefix)
        }
        Cmd::Load { target, params } => {
            let spec = target.spec()?;
            let result =
                runtime()?.block_on(workload::load::run(&spec, &params, target.server_pid))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Cmd::Hol { target, params } => {
            let spec = target.spec()?;
            let result = runtime()?.block_on(workload::hol::run(&spec, &params))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Cmd::Relay {
            listen,
            upstream,
            delay_ms,
            max_secs,
        } => runtime()?.block_on(relay::run(
            listen,
            upstream,
            std::time::Duration::from_millis(delay_ms),
            std::time::Duration::from_secs(max_secs),
        )),
        Cmd::Connections { target, params } => {
            let spec = target.spec()?;
            runtime()?.block_on(workload::connections::run(&spec, &params))
        }
        Cmd::Neighbour(args) => orchestrate::neighbour::run(args),
        Cmd::Scrape(args) => runtime()?.block_on(scrape::run(&args)),
        Cmd::Flood { target, params } => {
            let spec = target.spec()?;
            runtime()?.block_on(workload::neighbour::run(&spec, &params))
        }
    }
}

/// Thousands of sessions need thousands of sockets, in the generator and (inherited from the
/// orchestrator) in the servers: lift the soft limit on open files to the hard one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, owned rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A runtime with one worker per core this process may run on (the orchestrator pins
/// generators to one core, so usually one).
fn runtime() -> Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?)
}
