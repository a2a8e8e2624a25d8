//! `ytcaption-chaos`: the chaos harness (issue 5). It starts N real `ytcaption serve`
//! processes on 127.0.0.1 whose cluster links all run through proxies it owns, a media server
//! that is also the webhook receiver, an SMTP sink and (with `--storage s3`) SeaweedFS; it
//! submits jobs like a real client while a seeded RNG injects faults (or a scripted scenario
//! runs), then heals everything, waits for a quiet period and lets the oracle check every
//! acknowledged job. It prints a summary, writes a JSON report (`--report`), prints the
//! command that replays the run and exits non-zero when an invariant broke.
//!
//! Modules: [`world`] (processes, proxies, receivers, fault primitives), [`proxy`] (the link
//! proxies), [`faults`] (fault kinds and the random schedule), [`workload`] (the client),
//! [`scenario`] (scripted scenarios), [`oracle`] (the checks), [`report`] (table and JSON).

mod faults;
mod oracle;
mod proxy;
mod report;
mod rng;
mod scenario;
mod workload;
mod world;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::rng::{parse_duration, Rng};
use crate::workload::{JobSpec, Jobs};
use crate::world::{Storage, World};

/// Chaos runs against a real ytcaption cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "ytcaption-chaos", version)]
pub struct Cli {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Jobs the workload submits (random mode).
    #[arg(long, default_value_t = 15)]
    jobs: usize,
    /// Stop after this many faults (random mode).
    #[arg(long)]
    faults: Option<usize>,
    /// Inject faults for this long (`90s`, `10m`, `1h`); the default with neither is 5 faults.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// RNG seed (random when absent; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault weights over the defaults, `kill=4,lose=1,pause=2,isolate=2,partition=1,
    /// slow-link=1,restart-all=1,garbage=1,smtp-outage=1,webhook-outage=1` (0 disables).
    #[arg(long)]
    weights: Option<String>,
    /// Blob storage of the nodes.
    #[arg(long, value_enum, default_value_t = Storage::Local)]
    storage: Storage,
    /// A scripted scenario from the scenarios directory instead of random faults.
    #[arg(long)]
    scenario: Option<String>,
    /// Where scenarios live.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
    scenarios_dir: PathBuf,
    /// The ytcaption binary (default: `ytcaption` next to this binary, else
    /// `target/release/ytcaption`).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Write the machine-readable report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Per-job WER threshold.
    #[arg(long, default_value_t = 0.25)]
    wer: f64,
    /// Longest wait, after healing, for every job to end.
    #[arg(long, value_parser = parse_duration, default_value = "180s")]
    quiet: Duration,
    /// Keep the nodes' logs in this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("ytcaption-chaos: {error:#}");
            std::process::exit(2);
        }
    }
}

fn binary(cli: &Cli) -> anyhow::Result<PathBuf> {
    let path = match &cli.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("ytcaption")))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from("target/release/ytcaption")),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p ytcaption` or pass --binary",
        path.display()
    );
    Ok(std::fs::canonicalize(path)?)
}

/// The command line that replays this run.
fn replay(cli: &Cli, seed: u64) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--seed") {
        args.drain(i..(i + 2).min(args.len()));
    }
    args.retain(|a| !a.starts_with("--seed="));
    args.push("--seed".into());
    args.push(seed.to_string());
    if cli.scenario.is_none() && cli.faults.is_none() && cli.duration.is_none() {
        args.push("--faults".into());
        args.push("5".into());
    }
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:,".contains(c))
            {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run() -> anyhow::Result<bool> {
    let mut cli = Cli::parse();
    let script = match &cli.scenario {
        Some(name) => {
            let script = scenario::Script::load(&cli.scenarios_dir.join(name).join("scenario"))
                .map_err(anyhow::Error::msg)?;
            if let Some(args) = &script.args {
                // A kept seed: its options, under this command's binary/report/dirs.
                let mut merged = cli.clone();
                let parsed = Cli::try_parse_from(
                    std::iter::once("ytcaption-chaos".to_owned()).chain(args.iter().cloned()),
                )?;
                merged.nodes = parsed.nodes;
                merged.jobs = parsed.jobs;
                merged.faults = parsed.faults;
                merged.duration = parsed.duration;
                merged.seed = parsed.seed;
                merged.weights = parsed.weights;
                merged.storage = parsed.storage;
                cli = merged;
            }
            if let Some(nodes) = script.nodes {
                cli.nodes = nodes;
            }
            if script.storage.as_deref() == Some("s3") {
                cli.storage = Storage::S3;
            }
            Some(script)
        }
        None => None,
    };
    let seed = cli.seed.unwrap_or_else(|| {
        ytcaption_protocol::time::now_ms() ^ u64::from(std::process::id()).rotate_left(32)
    });
    let weights = faults::parse_weights(cli.weights.as_deref()).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(cli.nodes >= 2, "--nodes must be at least 2");
    let binary = binary(&cli)?;
    // The node harness reads the binary from here (edition 2021: set before any thread).
    std::env::set_var("YTCAPTION_BIN", &binary);
    let replay = replay(&cli, seed);
    eprintln!("ytcaption-chaos: seed {seed}; replay with: {replay}");
    let fixtures = ytcaption_tests::text::fixtures();

    let started = Instant::now();
    let world = World::start(cli.nodes, cli.storage, fixtures)?;
    world.say(&format!(
        "{} nodes up ({:?} storage)",
        cli.nodes, cli.storage
    ));
    let jobs = Jobs::default();
    let mut violations = Vec::new();
    if world.wait_mesh(Duration::from_secs(30)) {
        world.say("full mesh");
        run_faults(
            &world,
            &jobs,
            &cli,
            script.as_ref(),
            seed,
            &weights,
            &mut violations,
        );
    } else {
        // A liveness failure of the system, not of the harness: a violation like any other,
        // with the report and (under --keep-logs) the node logs that explain it.
        let views: Vec<String> = (0..world.len())
            .map(|i| format!("{} sees {:?}", world.names[i], world.members(i)))
            .collect();
        world.say(&format!("no full mesh: {}", views.join("; ")));
        violations.push(format!(
            "the cluster did not form a full mesh within 30 s of start-up ({})",
            views.join("; ")
        ));
    }
    world.say("checking");
    let mut verdict = oracle::check(&world, &jobs.snapshot(), cli.wer);
    violations.append(&mut verdict.violations);
    verdict.violations = violations;
    if let Some(dir) = &cli.keep_logs {
        std::fs::create_dir_all(dir)?;
        for i in 0..world.len() {
            std::fs::write(
                dir.join(format!("{}.log", world.names[i])),
                world.node_log(i),
            )?;
        }
    }
    let elapsed = started.elapsed();
    let report = report::Report {
        cli: &cli,
        seed,
        replay: &replay,
        world: &world,
        verdict: &verdict,
        elapsed,
    };
    println!("{}", report.table());
    if let Some(path) = &cli.report {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(verdict.violations.is_empty())
}

/// The run proper, once the cluster is meshed: the workload tracker, the faults (scripted or
/// random), healing and the quiet period in which the jobs finish.
fn run_faults(
    world: &World,
    jobs: &Jobs,
    cli: &Cli,
    script: Option<&scenario::Script>,
    seed: u64,
    weights: &[u32],
    violations: &mut Vec<String>,
) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                workload::track(world, jobs);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        match script {
            Some(script) if script.args.is_none() => {
                if let Err(error) = scenario::run(world, jobs, script, seed) {
                    world.say(&format!("scenario step failed: {error}"));
                    violations.push(format!("scenario: {error}"));
                }
            }
            _ => random_run(world, jobs, cli, seed, weights),
        }
        world.say("faults over: healing");
        world.heal();
        if !world.wait_mesh(Duration::from_secs(60)) {
            violations
                .push("the cluster did not re-form a full mesh within 60 s of healing".into());
        }
        world.say("healed; quiet period");
        let deadline = Instant::now() + cli.quiet;
        while !workload::all_terminal(jobs) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
        }
        // Late notifications (a resend after a takeover) land within this.
        std::thread::sleep(Duration::from_secs(3));
        done.store(true, Ordering::SeqCst);
    });
}

/// Random mode: the workload thread submits while this thread injects faults.
fn random_run(world: &World, jobs: &Jobs, cli: &Cli, seed: u64, weights: &[u32]) {
    let fault_count = match (cli.faults, cli.duration) {
        (None, None) => Some(5),
        (count, _) => count,
    };
    // Spread submissions over the expected fault period.
    let period = cli
        .duration
        .unwrap_or_else(|| Duration::from_secs(7 * fault_count.unwrap_or(5) as u64));
    let gap = period / (cli.jobs.max(1) as u32);
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut rng = Rng::new(seed ^ 0x5EED_0FC0_FFEE);
            // Cancels draw from their own sequence, so the jobs stay those of earlier versions.
            let mut cancels = Rng::new(seed ^ 0x000C_A9CE_15ED);
            std::thread::scope(|cancelling| {
                for k in 0..cli.jobs {
                    // Every tenth job is the long clip, which the nodes split across the
                    // cluster; another tenth is cancelled by the client while it runs.
                    let mut spec = if k % 10 == 1 {
                        JobSpec::new("long.wav")
                    } else {
                        JobSpec::random(&mut rng)
                    };
                    if k % 10 == 6 {
                        spec.download_delay_ms = cancels.range(0, 3000);
                        spec.cancel_after_ms = Some(cancels.range(100, 5000));
                    }
                    let nodes: Vec<usize> = (0..world.len())
                        .filter(|&i| world.health(i) != world::Health::Lost)
                        .collect();
                    let node = nodes[rng.index(nodes.len())];
                    let key = format!("r{seed:x}-{k}");
                    let label = format!("j{k}");
                    let cancel_after = spec.cancel_after_ms;
                    workload::submit(world, jobs, &key, &label, spec, node);
                    if let Some(after) = cancel_after {
                        let mut rng = Rng::new(cancels.next_u64());
                        cancelling.spawn(move || {
                            std::thread::sleep(Duration::from_millis(after));
                            workload::cancel(world, jobs, &label, &mut rng);
                        });
                    }
                    std::thread::sleep(gap.mul_f64(0.5 + rng.range(0, 100) as f64 / 100.0));
                }
            });
        });
        let mut rng = Rng::new(seed);
        let mut injected = 0;
        std::thread::sleep(Duration::from_secs(2));
        loop {
            if fault_count.is_some_and(|n| injected >= n)
                || cli.duration.is_some_and(|d| started.elapsed() >= d)
            {
                break;
            }
            faults::random_fault(world, &mut rng, weights);
            injected += 1;
            std::thread::sleep(Duration::from_millis(rng.range(1000, 4000)));
        }
    });
}
