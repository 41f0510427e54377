//! Randomised power cuts over the appliance's durable paths (`scripts/crashcheck.sh`).
//!
//! For each path: prepare, record the work's syncs, then run `--cuts` trials whose cut points
//! stride over that trace (every window between two syncs once `--cuts` reaches its length),
//! each with its own seed for the file system's reordering and tearing. Prints one line per
//! trial, then per path the cut points explored and every violated invariant with the command
//! that replays it. Exit status 1 when any invariant broke.

use anyhow::{bail, Context, Result};
use hil_tests::power_cut::{DurablePath, Explorer, Unsynced};
use std::collections::BTreeSet;

const USAGE: &str = "usage: crashcheck [--path NAME|all] [--cuts N] [--seed S] [--cut K]
  --path   ingest, completion, learning, purge, model-install, update, federated-round or
           all (default all)
  --cuts   trials per path (default 125)
  --seed   first seed (default 1); trial i uses seed S+i
  --cut    replay one trial: cut after sync K of the work, with seed S
  --show-trace   print the syncs of the run without a cut, numbered as the cut points
  --ignore-syncs CLASS   answer the syncs of instance-files, spool-folders or index without
           performing them, to measure whether the invariants need them";

struct Options {
    paths: Vec<DurablePath>,
    cuts: u64,
    seed: u64,
    cut: Option<u64>,
    ignored: Option<Unsynced>,
    show_trace: bool,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("crashcheck: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool> {
    let options = parse_options()?;
    let mut clean = true;
    for path in &options.paths {
        let started = std::time::Instant::now();
        let mut explorer = Explorer::ignoring(*path, options.ignored)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("preparing {}", path.name()))?;
        println!(
            "{}: the work makes {} syncs; {} cut points (1..={})",
            path.name(),
            explorer.trace,
            explorer.trace + 1,
            explorer.trace + 1
        );
        if options.show_trace {
            for (i, name) in explorer.trace_names.iter().enumerate() {
                println!("  sync {}: {name}", i + 1);
            }
        }
        let trials: Vec<(u64, u64)> = match options.cut {
            Some(k) => vec![(k, options.seed)],
            None => (0..options.cuts)
                .map(|i| {
                    let seed = options.seed + i;
                    (explorer.cut_point(i, options.cuts, options.seed), seed)
                })
                .collect(),
        };
        let mut explored = BTreeSet::new();
        let mut broken = Vec::new();
        for (k, seed) in trials {
            let report = explorer.trial(k, seed);
            explored.insert(k);
            let s = &report.summary;
            println!(
                "{} cut after sync {k} seed {seed}: {} in {:.1} s; {}{} acknowledged; {} of {} pending directory operations applied, {} files unsynced, torn {:?}",
                path.name(),
                if report.violations.is_empty() { "ok" } else { "VIOLATED" },
                report.seconds,
                if report.reached { "" } else { "cut after the work; " },
                report.acknowledged,
                s.dir_ops_applied,
                s.dir_ops_pending,
                s.files_unsynced,
                s.torn,
            );
            for v in &report.violations {
                println!("  {v}");
            }
            if !report.violations.is_empty() {
                broken.push((k, seed, report.violations));
            }
        }
        println!(
            "{}: {} trials, {} distinct cut points explored of {} in {:.0} s: {}",
            path.name(),
            options.cut.map_or(options.cuts, |_| 1),
            explored.len(),
            explorer.trace + 1,
            started.elapsed().as_secs_f64(),
            compact(&explored)
        );
        if broken.is_empty() {
            println!("{}: no invariant broken", path.name());
        }
        for (k, seed, violations) in &broken {
            clean = false;
            println!(
                "{}: BROKEN at cut {k} seed {seed} ({} violations); replay: target/release/crashcheck --path {} --cut {k} --seed {seed}",
                path.name(),
                violations.len(),
                path.name()
            );
        }
    }
    Ok(clean)
}

/// "1-5,7,9-12"
fn compact(points: &BTreeSet<u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for &p in points {
        run = match run {
            Some((a, b)) if p == b + 1 => Some((a, p)),
            Some((a, b)) => {
                out.push(range(a, b));
                Some((p, p))
            }
            None => Some((p, p)),
        };
    }
    if let Some((a, b)) = run {
        out.push(range(a, b));
    }
    out.join(",")
}

fn range(a: u64, b: u64) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        paths: DurablePath::ALL.to_vec(),
        cuts: 125,
        seed: 1,
        cut: None,
        ignored: None,
        show_trace: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--path" => {
                let name = value()?;
                options.paths = if name == "all" {
                    DurablePath::ALL.to_vec()
                } else {
                    vec![DurablePath::parse(&name)
                        .with_context(|| format!("no durable path named {name}\n{USAGE}"))?]
                };
            }
            "--cuts" => options.cuts = value()?.parse().context("--cuts")?,
            "--seed" => options.seed = value()?.parse().context("--seed")?,
            "--show-trace" => options.show_trace = true,
            "--cut" => options.cut = Some(value()?.parse().context("--cut")?),
            "--ignore-syncs" => {
                let name = value()?;
                options.ignored = Some(
                    Unsynced::parse(&name)
                        .with_context(|| format!("no sync class named {name}\n{USAGE}"))?,
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if options.cuts == 0 {
        bail!("--cuts must be at least 1");
    }
    Ok(options)
}
