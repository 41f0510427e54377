//! The `appliance` command: the daemon (`serve`) and the operator's tools.

use anyhow::Context;
use appliance::config::{BackendKind, Config, LogFormat};
use appliance::db::OutboxState;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "appliance",
    version,
    about = "Radiant Edge: DICOM AI appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Configuration file (TOML). Without it, the embedded default is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Use this data directory instead of the configuration's `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::embedded_default()?,
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Serve(ConfigArgs),
    /// Validate a configuration file and explain each problem by key.
    CheckConfig(ConfigArgs),
    /// Check everything the appliance needs (configuration, data folder, disk, models and
    /// their runtime, a C-ECHO to every destination) and say how to fix what is wrong; exit
    /// status 1 when something is.
    Doctor {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        json: bool,
    },
    /// Accounts of the web console.
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
    /// The tamper-evident audit trail (associations, deliveries, administrative actions).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the DICOM Conformance Statement (PS3.2) of this build, as Markdown.
    Conformance {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Studies received by the appliance.
    Studies {
        #[command(subcommand)]
        command: StudiesCommand,
    },
    /// Inference results of a study.
    Results {
        #[command(subcommand)]
        command: ResultsCommand,
    },
    /// Result objects (SEG, SR) queued for delivery to the destinations.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Labelled cases (radiologists' SEGs) for fine-tuning.
    Cases {
        #[command(subcommand)]
        command: CasesCommand,
    },
    /// Fine-tuning of the model's head on the labelled cases.
    Learn {
        #[command(subcommand)]
        command: LearnCommand,
    },
    /// Head versions of a model (fine-tuned here) and the champion inference uses.
    Heads {
        #[command(subcommand)]
        command: HeadsCommand,
    },
    /// Installed model packages.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Run a model on one folder of DICOM files (one series), without the daemon; prints JSON.
    Infer {
        /// Folder holding the series' files.
        path: PathBuf,
        /// Installed model id (its active version), or the folder of a model package.
        #[arg(long)]
        model: String,
        #[arg(long, value_enum, default_value_t = BackendChoice::Tract)]
        backend: BackendChoice,
        /// ONNX Runtime shared library (libonnxruntime.so.1.x); defaults to $ORT_DYLIB_PATH.
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_library: Option<PathBuf>,
        /// Also write the label of every source voxel to this file, one byte each, in the
        /// series' voxel order (slices sorted along their normal, then rows, then columns).
        #[arg(long)]
        label_map: Option<PathBuf>,
        /// Also write the result's SEG and SR (checked as the daemon checks them) under
        /// DIR/results/0/.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The clinical self-test of this binary: a golden study through the SCP, inference, the
    /// SEG and SR and the outbox to a loopback sink, compared with the golden result; on
    /// loopback daemons with their own data, never the site's. Exit status 1 when it fails.
    SelfTest {
        /// The site's configuration.
        #[arg(long)]
        config: PathBuf,
        /// The golden folder: study/*.dcm and expected.json.
        #[arg(long)]
        golden: PathBuf,
        /// Most seconds from sending the study to the SEG and SR at the sink.
        #[arg(long, default_value_t = 120.0)]
        budget_seconds: f64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackendChoice {
    /// Pure-Rust tract on the CPU (always available).
    Tract,
    /// ONNX Runtime from its shared library (--ort-library or ORT_DYLIB_PATH); the CUDA
    /// execution provider when it starts, the CPU otherwise.
    Ort,
    /// ONNX Runtime on the CPU only.
    OrtCpu,
}

#[derive(Subcommand)]
enum ResultsCommand {
    /// Jobs and results of one study (one JSON object per job and line with --json).
    Show {
        study_uid: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum CasesCommand {
    /// Take SEG files (a file or a folder of them) in as labelled cases of the configured
    /// model; each one is accepted or refused with the reason.
    Import {
        path: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Every case, accepted or refused (one JSON object per line with --json).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum LearnCommand {
    /// Fine-tune now (features of new cases, fine-tune, validation gate), with a progress bar;
    /// waits while inference is busy or another learning run (the daemon's) is in progress. Prints the gate's decision (as JSON with --json).
    Now {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Create an account or set its role and password; the password (at least 12
    /// characters) is read from the first line of standard input.
    SetUser {
        name: String,
        /// viewer (reads every page) or admin (also rolls back heads).
        #[arg(long, default_value = "viewer")]
        role: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Remove an account (its open sessions end).
    RemoveUser {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The accounts and their roles.
    Users {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that every record chains to the one before; exit status 1 at the first break.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        json: bool,
    },
    /// The newest records, oldest first.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// How many (all when 0).
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
}

#[derive(Subcommand)]
enum HeadsCommand {
    /// Every head version of the configured model (or --model), the global head first, with
    /// lineage, cases, metrics and which one is the champion (one JSON object per line with
    /// --json).
    List {
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Make the champion's parent the champion again (or --to HEAD, "global" for the head the
    /// package shipped). Takes effect with the next study; survives restarts.
    Rollback {
        /// Installed model id.
        model: String,
        #[arg(long)]
        to: Option<appliance::heads::Target>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Every entry with its state (pending, sent, failed), attempts and last error; one JSON
    /// object per line with --json.
    List {
        /// Only entries in this state.
        #[arg(long, value_parser = outbox_state_parser())]
        state: Option<OutboxState>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Queue failed entries again (after fixing what the destination refused).
    Retry {
        /// One entry id; without it, every failed entry.
        id: Option<i64>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List installed models and versions (JSON lines with --json).
    List {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        json: bool,
    },
    /// Check every installed version against its manifest's SHA-256.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Make an installed version the active one (the daemon takes it at its next job).
    Activate {
        id: String,
        version: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Verify and install a model package folder.
    Install {
        /// The package folder (manifest.toml, backbone, head, card).
        path: PathBuf,
        /// Make this version active even if another one is.
        #[arg(long)]
        activate: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum StudiesCommand {
    /// List studies: one JSON object per line with --json.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        json: bool,
    },
    /// Mark a study complete now, without waiting for its quiet period.
    Complete {
        #[command(flatten)]
        config: ConfigArgs,
        /// Study Instance UID.
        study_uid: String,
    },
    /// Protect a study from retention (it may not be in the spool yet: it is protected when
    /// it arrives). Labelled cases keep their labels and features either way.
    Protect {
        #[command(flatten)]
        config: ConfigArgs,
        /// Study Instance UID.
        study_uid: String,
        #[arg(long)]
        json: bool,
    },
    /// Lift an operator's protection; retention may purge the study again.
    Unprotect {
        #[command(flatten)]
        config: ConfigArgs,
        /// Study Instance UID.
        study_uid: String,
    },
    /// Run one retention round now (`[retention]` policy: age and watermarks) and print what
    /// went; one JSON object per study and line with --json.
    Purge {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only show what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Every study retention may purge, whatever its age and the disk (never one
        /// unfinished, protected or needed by the learner).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Logging for a command that prints its result: warnings (such as a CUDA fallback) to
/// stderr, at `RUST_LOG` or warn; the result alone goes to stdout.
fn init_tool_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            init_logging(&config);
            appliance::daemon::serve(config)
        }
        Command::CheckConfig(args) => {
            let config = args.load()?;
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            check_routed_models(&config)?;
            check_learning_model(&config)?;
            println!(
                "configuration is valid: AE title {} on {}:{}, {} peer(s), data_dir {}",
                config.dicom.ae_title,
                config.dicom.bind,
                config.dicom.port,
                config.dicom.peers.len(),
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Console { command } => console_command(command),
        Command::Audit { command } => audit_command(command),
        Command::Conformance { output } => {
            let config = appliance::config::Config::embedded_default()?;
            let doc = appliance::conformance::render(&config);
            match output {
                Some(path) => std::fs::write(&path, doc)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{doc}"),
            }
            Ok(())
        }
        Command::Doctor { config, json } => {
            let findings = appliance::doctor::examine(config.load());
            use appliance::doctor::Verdict;
            for f in &findings {
                if json {
                    println!("{}", serde_json::to_string(f)?);
                } else {
                    let mark = match f.verdict {
                        Verdict::Ok => "ok     ",
                        Verdict::Warning => "WARNING",
                        Verdict::Problem => "PROBLEM",
                    };
                    println!("{mark}  {}: {}", f.check, f.detail);
                    if let Some(fix) = &f.fix {
                        println!("         fix: {fix}");
                    }
                }
            }
            let problems = findings
                .iter()
                .filter(|f| f.verdict == Verdict::Problem)
                .count();
            if problems > 0 {
                if !json {
                    eprintln!("{problems} problem(s)");
                }
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Models { command } => models_command(command),
        Command::Outbox { command } => outbox_command(command),
        Command::Cases { command } => cases_command(command),
        Command::Learn {
            command: LearnCommand::Now { json, config },
        } => learn_now(config.load()?, json),
        Command::Heads { command } => heads_command(command),
        Command::Results {
            command:
                ResultsCommand::Show {
                    study_uid,
                    json,
                    config,
                },
        } => {
            let jobs = appliance::jobs::show(&config.load()?.data_dir, &study_uid)?;
            anyhow::ensure!(!jobs.is_empty(), "no inference job for study {study_uid}");
            for job in jobs {
                if json {
                    println!("{}", serde_json::to_string(&job)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&job)?);
                }
            }
            Ok(())
        }
        Command::SelfTest {
            config,
            golden,
            budget_seconds,
        } => {
            anyhow::ensure!(
                budget_seconds.is_finite() && (1.0..=3600.0).contains(&budget_seconds),
                "--budget-seconds must be between 1 and 3600"
            );
            let outcome = appliance::self_test::run(
                &config,
                &golden,
                std::time::Duration::from_secs_f64(budget_seconds),
            )?;
            println!("{}", serde_json::to_string(&outcome)?);
            if !outcome.passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Infer {
            path,
            model,
            backend,
            ort_library,
            label_map,
            export,
            config,
        } => {
            init_tool_logging();
            let outputs = InferOutputs { label_map, export };
            infer_command(path, model, backend, ort_library, outputs, config)
        }
        Command::Studies { command } => match command {
            StudiesCommand::List { config, json } => {
                let config = config.load()?;
                let lines = appliance::studies::list(&config.data_dir)?;
                for line in lines {
                    if json {
                        println!("{}", serde_json::to_string(&line)?);
                    } else {
                        println!(
                            "{:<64} {:<9} {:>5} inst {:>3} series  from {:<16} {}",
                            line.study_uid,
                            line.state,
                            line.instances,
                            line.series,
                            line.calling_ae,
                            line.received_at
                        );
                    }
                }
                Ok(())
            }
            StudiesCommand::Complete { config, study_uid } => {
                let config = config.load()?;
                let changed =
                    pacs_bridge::store::studies::complete_now(&config.data_dir, &study_uid)
                        .context("cannot complete the study")?;
                if changed == 0 {
                    anyhow::bail!("no study {study_uid} is receiving");
                }
                println!("study {study_uid} marked complete ({changed} sender group(s))");
                Ok(())
            }
            StudiesCommand::Protect {
                config,
                study_uid,
                json,
            } => {
                let config = config.load()?;
                let detail = serde_json::json!({ "study": radiant_core::log_tag(&study_uid) });
                let p = audited(&config, "study.protect", detail, || {
                    appliance::retention::protect(&config.data_dir, &study_uid)
                        .context("cannot protect the study")
                })?;
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else if p.purged_before {
                    println!("study {study_uid} protected, but retention had already purged it");
                } else if p.in_spool {
                    println!("study {study_uid} protected");
                } else {
                    println!("study {study_uid} protected (not in the spool yet)");
                }
                Ok(())
            }
            StudiesCommand::Unprotect { config, study_uid } => {
                let config = config.load()?;
                let detail = serde_json::json!({ "study": radiant_core::log_tag(&study_uid) });
                audited(&config, "study.unprotect", detail, || {
                    if !appliance::retention::unprotect(&config.data_dir, &study_uid)
                        .context("cannot unprotect the study")?
                    {
                        anyhow::bail!("study {study_uid} is not protected");
                    }
                    Ok(())
                })?;
                println!("study {study_uid} no longer protected");
                Ok(())
            }
            StudiesCommand::Purge {
                config,
                dry_run,
                all,
                json,
            } => {
                let config = config.load()?;
                init_tool_logging();
                if dry_run {
                    return purge_command(&config, dry_run, all, json);
                }
                let detail = serde_json::json!({ "all_eligible": all });
                audited(&config, "retention.purge_now", detail, || {
                    purge_command(&config, dry_run, all, json)
                })
            }
        },
    }
}

fn purge_command(config: &Config, dry_run: bool, all: bool, json: bool) -> anyhow::Result<()> {
    use appliance::retention::{Mode, Retention};
    let mut retention = Retention::open(config).context("cannot open the spool for retention")?;
    let mode = if all { Mode::AllEligible } else { Mode::Policy };
    let round = retention.round(appliance::db::now_ms(), mode, dry_run)?;
    let verb = if dry_run { "would purge" } else { "purged" };
    for line in &round.purged {
        if json {
            println!("{}", serde_json::to_string(line)?);
        } else {
            println!(
                "{verb} {:<64} from {:<16} {:>5} inst {:>12} bytes  ({})",
                line.study_uid,
                line.calling_ae,
                line.instances,
                line.bytes,
                line.reason.as_str()
            );
        }
    }
    if !json {
        let bytes: u64 = round.purged.iter().map(|l| l.bytes).sum();
        let disk = round
            .usage
            .map(|u| format!("{:.1}%", u.used_percent()))
            .unwrap_or_else(|| "unknown".into());
        let policy = retention.policy();
        println!(
            "{} studies, {bytes} bytes {verb}; disk used {disk} (high watermark {}%, low {}%)",
            round.purged.len(),
            policy.high_watermark_percent,
            policy.low_watermark_percent
        );
    }
    Ok(())
}

fn cases_command(command: CasesCommand) -> anyhow::Result<()> {
    match command {
        CasesCommand::Import { path, config } => {
            let config = config.load()?;
            let package = learnable_model(&config, &config.inference.model)?;
            let conn = appliance::db::open(&config.data_dir)?;
            let files: Vec<PathBuf> = if path.is_dir() {
                let mut f: Vec<PathBuf> = std::fs::read_dir(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                f.sort();
                f
            } else {
                vec![path]
            };
            let mut refused = 0;
            for file in files {
                match appliance::cases::ingest(
                    &conn,
                    &config.data_dir,
                    &package,
                    &file,
                    appliance::db::CaseOrigin::Import,
                )? {
                    Ok(case) => println!(
                        "accepted {}: case {} of series {}",
                        file.display(),
                        case.id,
                        case.series_uid.as_deref().unwrap_or("?")
                    ),
                    Err(e) => {
                        refused += 1;
                        println!("refused  {}: {e}", file.display());
                    }
                }
            }
            if refused > 0 {
                anyhow::bail!("{refused} file(s) refused");
            }
            Ok(())
        }
        CasesCommand::List { json, config } => {
            let conn = appliance::db::open(&config.load()?.data_dir)?;
            for c in appliance::cases::list(&conn)? {
                if json {
                    println!("{}", serde_json::to_string(&c)?);
                } else {
                    println!(
                        "{:>5} {:<9} {:<7} {}",
                        c.id,
                        c.state,
                        c.origin,
                        c.reason
                            .or_else(|| c.label_voxels.map(|v| format!("voxels per label {v:?}")))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

fn learn_now(config: Config, json: bool) -> anyhow::Result<()> {
    use appliance::jobs::inference_busy;
    use appliance::learn::{Learner, NotRun, Progress};
    use std::io::{IsTerminal, Write};
    anyhow::ensure!(
        config.learning.enabled,
        "learning is disabled in the configuration (learning.enabled = false)"
    );
    init_tool_logging();
    let mut learner = Learner::new(&config)?;
    let metrics = appliance::metrics::ApplianceMetrics::default();
    let conn = appliance::db::open(&config.data_dir)?;
    let terminal = std::io::stderr().is_terminal();
    // A bar redrawn in place on a terminal; one line per step otherwise (logs, CI).
    let mut draw = |p: Progress| {
        let line = match &p {
            Progress::Features { done, total } => {
                format!("features {} {done}/{total} cases", bar(*done, *total))
            }
            Progress::Started {
                train,
                holdout,
                epochs,
            } => format!(
                "fine-tune {} 0/{epochs} epochs ({train} training, {holdout} held-out cases)",
                bar(0, *epochs)
            ),
            Progress::Epoch {
                epoch,
                epochs,
                loss,
            } => format!(
                "fine-tune {} {epoch}/{epochs} epochs, loss {loss:.4}",
                bar(*epoch, *epochs)
            ),
            Progress::Validating => "validating on held-out cases and the reference set".into(),
            Progress::Yielded => {
                "yielded to inference; starting over when its queue is idle".into()
            }
        };
        let mut err = std::io::stderr();
        if terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            if !matches!(p, Progress::Epoch { .. } | Progress::Features { .. }) {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    };
    let mut said_busy = false;
    let report = loop {
        while inference_busy(&conn)? {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        match learner.run("learn now", &metrics, &mut draw)? {
            Ok(report) => break report,
            Err(NotRun::Yielded) => continue,
            // The daemon's learner is storing features or fine-tuning: wait for it.
            Err(NotRun::Busy) => {
                if !said_busy {
                    eprintln!("waiting: another learning run holds the learning lock");
                    said_busy = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(other) => anyhow::bail!("{other}"),
        }
    };
    if terminal {
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} head {} (from {}): {} training, {} held-out, {} reference cases; fine-tune {:.1} s",
            report.outcome,
            report
                .head_id
                .map(|h| h.to_string())
                .unwrap_or_else(|| "-".into()),
            appliance::heads::describe(report.parent),
            report.train_cases,
            report.holdout_cases,
            report.reference_cases,
            report.fine_tune_seconds
        );
        if let Some(d) = &report.decision {
            println!(
                "  held-out mean Dice: champion {:.4}, candidate {:.4}",
                d.local_champion, d.local_candidate
            );
            println!(
                "  reference Dice per label: global {:?}, candidate {:?}",
                d.reference_baseline, d.reference_candidate
            );
        }
        for reason in &report.reasons {
            println!("  {}: {reason}", report.outcome);
        }
    }
    anyhow::ensure!(
        report.outcome != appliance::db::LearnOutcome::Failed,
        "the fine-tune failed: {}",
        report.reasons.join("; ")
    );
    Ok(())
}

/// `[#####.....]` for `done` of `total`.
fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

/// The active version of installed model `id`, as learning sees it; an error when it has no
/// trainable part.
fn learnable_model(
    config: &appliance::config::Config,
    id: &str,
) -> anyhow::Result<models::learnable::Learnable> {
    let package = models::registry::Registry::new(&config.data_dir).open_active_any(id)?;
    models::learnable::Learnable::of(&package).with_context(|| {
        format!(
            "model {id} has no trainable part (a contract-2 package without \
             [stages.trainable]): it has no cases or heads"
        )
    })
}

fn heads_command(command: HeadsCommand) -> anyhow::Result<()> {
    match command {
        HeadsCommand::List {
            model,
            json,
            config,
        } => {
            let config = config.load()?;
            let model = model.unwrap_or_else(|| config.inference.model.clone());
            let package = learnable_model(&config, &model)?;
            let conn = appliance::db::open(&config.data_dir)?;
            for h in appliance::heads::list(&conn, &package)? {
                if json {
                    println!("{}", serde_json::to_string(&h)?);
                } else {
                    let gate = &h.metrics["gate"];
                    // The paired bootstrap's lower bound of the gain, when there was one.
                    let bound = match (
                        gate["bootstrap"]["mean_lower"].as_f64(),
                        gate["bootstrap"]["confidence"].as_f64(),
                    ) {
                        (Some(lower), Some(confidence)) => {
                            format!(" (gain >= {lower:+.4} at {confidence})")
                        }
                        _ => String::new(),
                    };
                    println!(
                        "{:<7} {:<8} parent {:<7} {:<9} {:<3} cases {:<3} held-out Dice {}{bound} {}",
                        appliance::heads::describe(h.id),
                        h.state,
                        if h.id.is_some() {
                            appliance::heads::describe(h.parent)
                        } else {
                            "-".into()
                        },
                        if h.champion { "champion" } else { "" },
                        h.trained_on.len(),
                        h.held_out.len(),
                        match (
                            gate["local_champion"].as_f64(),
                            gate["local_candidate"].as_f64()
                        ) {
                            (Some(a), Some(b)) => format!("{a:.4} -> {b:.4}"),
                            _ => "-".into(),
                        },
                        h.reasons.join("; ")
                    );
                }
            }
            Ok(())
        }
        HeadsCommand::Rollback { model, to, config } => {
            let config = config.load()?;
            let package = learnable_model(&config, &model)?;
            let conn = appliance::db::open(&config.data_dir)?;
            let before = appliance::heads::champion(&conn, &package.id, &package.version)?;
            let detail = serde_json::json!({
                "model": package.id, "version": package.version, "from_head": appliance::heads::describe(before),
                "to_head": match to {
                    Some(appliance::heads::Target::Global) => "global".to_string(),
                    Some(appliance::heads::Target::Head(h)) => h.to_string(),
                    None => "the previous champion".to_string(),
                },
            });
            let after = audited(&config, "head.rollback", detail, || {
                appliance::heads::rollback(&conn, &package, to)
            })?;
            println!(
                "{} {}: champion head {} (was {}); the next study uses it",
                package.id,
                package.version,
                appliance::heads::describe(after),
                appliance::heads::describe(before)
            );
            Ok(())
        }
    }
}

fn console_command(command: ConsoleCommand) -> anyhow::Result<()> {
    use appliance::console::users;
    match command {
        ConsoleCommand::SetUser { name, role, config } => {
            let config = config.load()?;
            let role: users::Role = role.parse()?;
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            match users::set_password(&config.data_dir, &name, role, password)? {
                users::Change::Created => println!("account {name} created ({role})"),
                users::Change::Updated => println!("account {name} updated ({role})"),
            }
            Ok(())
        }
        ConsoleCommand::RemoveUser { name, config } => {
            let config = config.load()?;
            if !users::remove_user(&config.data_dir, &name)? {
                anyhow::bail!("no account {name}");
            }
            println!("account {name} removed");
            Ok(())
        }
        ConsoleCommand::Users { config } => {
            for (name, role) in users::list(&config.load()?.data_dir)? {
                println!("{name:<24} {role}");
            }
            Ok(())
        }
    }
}

fn audit_command(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { config, json } => {
            let log = appliance::audit::AuditLog::new(&config.load()?.data_dir);
            let verified = log.verify()?;
            if json {
                println!("{}", serde_json::to_string(&verified)?);
            }
            match verified.broken {
                None => {
                    if !json {
                        println!(
                            "audit trail {}: {} records, chain intact",
                            log.path().display(),
                            verified.records
                        );
                    }
                    Ok(())
                }
                Some(b) => anyhow::bail!(
                    "audit trail {}: broken at line {}: {} ({} records chain intact before it)",
                    log.path().display(),
                    b.line,
                    b.reason,
                    verified.records
                ),
            }
        }
        AuditCommand::List { config, last } => {
            let log = appliance::audit::AuditLog::new(&config.load()?.data_dir);
            for record in log.tail((last > 0).then_some(last))? {
                println!("{}", serde_json::to_string(&record)?);
            }
            Ok(())
        }
    }
}

/// Run an administrative action of the CLI and put it, with its outcome, in the audit trail.
fn audited<T>(
    config: &Config,
    action: &str,
    detail: serde_json::Value,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let result = run();
    let outcome = match &result {
        Ok(_) => "success".to_string(),
        Err(e) => format!("failure: {e:#}"),
    };
    appliance::audit::record(
        &appliance::audit::AuditLog::of(config),
        appliance::audit::Event {
            action: action.into(),
            actor: appliance::audit::cli_actor(),
            outcome,
            dicom: Some(appliance::audit::DicomEvent::SecurityAlert),
            detail,
        },
    );
    result
}

/// `outbox list --state`: one of the outbox's states, each listed in `--help`.
fn outbox_state_parser() -> impl clap::builder::TypedValueParser<Value = OutboxState> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(OutboxState::ALL.iter().map(|s| s.as_str()))
        .try_map(|s| s.parse::<OutboxState>())
}

fn outbox_command(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::List {
            state,
            json,
            config,
        } => {
            let conn = appliance::db::open(&config.load()?.data_dir)?;
            for e in appliance::outbox::list(&conn, state)? {
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!(
                        "{:>6} {:<8} {:<4} {:<16} job {:<6} attempts {:<3} {}",
                        e.id,
                        e.state,
                        e.kind,
                        e.destination,
                        e.job_id,
                        e.attempts,
                        e.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        OutboxCommand::Retry { id, config } => {
            let config = config.load()?;
            let conn = appliance::db::open(&config.data_dir)?;
            let n = audited(
                &config,
                "outbox.retry",
                serde_json::json!({ "entry": id }),
                || match appliance::outbox::retry(&conn, id, appliance::db::now_ms())? {
                    0 => anyhow::bail!("no failed outbox entry to retry"),
                    n => Ok(n),
                },
            )?;
            println!("{n} entr{} queued again", if n == 1 { "y" } else { "ies" });
            Ok(())
        }
    }
}

fn models_command(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List { config, json } => {
            let config = config.load()?;
            let registry = models::registry::Registry::new(&config.data_dir);
            for m in registry.list()? {
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    let active = if m.active { "active" } else { "" };
                    println!("{:<24} {:<10} {:<28} {active}", m.id, m.version, m.task);
                }
            }
            let router = appliance::routes::Router::new(&config.routes, &config.inference.model)
                .map_err(|e| anyhow::anyhow!("routes: {e}"))?;
            if json {
                for route in router.routes() {
                    println!("{}", serde_json::json!({ "route": route }));
                }
            } else if config.routes.is_empty() {
                println!(
                    "routes: none; {} takes every series of its modality",
                    config.inference.model
                );
            } else {
                println!("routes (a series goes to every model one of its routes takes it to):");
                for (i, route) in router.routes().enumerate() {
                    println!("  {i:<3} {:<24} {}", route.model, describe_route(route));
                }
            }
            Ok(())
        }
        ModelsCommand::Verify { config } => {
            let registry = models::registry::Registry::new(&config.load()?.data_dir);
            let mut failed = 0;
            for (m, result) in registry.verify_all()? {
                match result {
                    Ok(()) => println!("ok      {} {}", m.id, m.version),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED  {} {}: {e}", m.id, m.version);
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} installed model version(s) failed verification");
            }
            Ok(())
        }
        ModelsCommand::Activate {
            id,
            version,
            config,
        } => {
            let config = config.load()?;
            let registry = models::registry::Registry::new(&config.data_dir);
            let detail = serde_json::json!({ "model": id, "version": version });
            audited(&config, "model.activate", detail, || {
                Ok(registry.activate(&id, &version)?)
            })?;
            println!("activated {id} {version}");
            Ok(())
        }
        ModelsCommand::Install {
            path,
            activate,
            config,
        } => {
            let config = config.load()?;
            let registry = models::registry::Registry::new(&config.data_dir);
            let detail =
                serde_json::json!({ "package": path.display().to_string(), "activate": activate });
            let installed = audited(&config, "model.install", detail, || {
                Ok(registry.install(&path, activate)?)
            })?;
            println!(
                "installed {} {}{}",
                installed.id,
                installed.version,
                if installed.active { " (active)" } else { "" }
            );
            Ok(())
        }
    }
}

/// Every model `[[routes]]` names must be installed (its active version verifies) and take a
/// modality the route allows; without routes, `[inference] model` not being installed is only
/// a warning (inference stays off until it is).
fn check_routed_models(config: &appliance::config::Config) -> anyhow::Result<()> {
    if !config.inference.enabled {
        return Ok(());
    }
    let registry = models::registry::Registry::new(&config.data_dir);
    if config.routes.is_empty() {
        if let Err(e) = registry.open_active_any(&config.inference.model) {
            eprintln!("warning: inference.model: {e}; inference stays off until it is installed");
        }
        return Ok(());
    }
    let mut problems = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        match registry.open_active_any(&route.model) {
            Err(e) => problems.push(format!("routes[{i}].model: {e}")),
            Ok(package) => {
                if let Some(m) = &route.modality {
                    if !m.eq_ignore_ascii_case(package.modality()) {
                        problems.push(format!(
                            "routes[{i}].modality: {m} series never reach {}, which takes {}",
                            route.model,
                            package.modality()
                        ));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// `[learning] class_weights`, when given, must weigh every class of the model that learns
/// (background and its labels): the reference head-CT model's three weights do not fit a
/// brain mask's two.
fn check_learning_model(config: &appliance::config::Config) -> anyhow::Result<()> {
    if !config.learning.enabled {
        return Ok(());
    }
    let registry = models::registry::Registry::new(&config.data_dir);
    let Ok(package) = registry.open_active_any(&config.inference.model) else {
        return Ok(());
    };
    let Some(model) = models::learnable::Learnable::of(&package) else {
        return Ok(());
    };
    if !config.retention.keep_pixel_data_of_cases {
        eprintln!(
            "warning: retention.keep_pixel_data_of_cases = false: model {} scores its held-out \
             cases (and fits its study classifier) on their series again, so a purged case's study \
             fails every fine-tune until that case is pruned",
            model.id
        );
    }
    if config.learning.pixels_per_class > model.samples_per_class {
        eprintln!(
            "warning: learning.pixels_per_class = {}, but a case of model {} keeps {} of each \
             class (its package's samples_per_class): a fine-tune takes at most those",
            config.learning.pixels_per_class, model.id, model.samples_per_class
        );
    }
    let weights = config.learning.class_weights.len();
    if weights > 0 {
        anyhow::ensure!(
            weights == model.classes(),
            "learning.class_weights: {weights} weights, but model {} has {} classes \
             (background and its labels); give one weight per class, or none",
            model.id,
            model.classes()
        );
    }
    Ok(())
}

/// A route's conditions as `key=value` words ("any series" when it has none).
fn describe_route(route: &appliance::routes::RouteConfig) -> String {
    let value = serde_json::to_value(route).unwrap_or_default();
    let words: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| *k != "model" && !v.is_null())
        .map(|(k, v)| match v.as_str() {
            Some(s) => format!("{k}={s}"),
            None => format!("{k}={v}"),
        })
        .collect();
    if words.is_empty() {
        "any series".into()
    } else {
        words.join(" ")
    }
}

/// What `appliance infer` writes besides its JSON.
struct InferOutputs {
    label_map: Option<PathBuf>,
    export: Option<PathBuf>,
}

fn infer_command(
    path: PathBuf,
    model: String,
    backend: BackendChoice,
    ort_library: Option<PathBuf>,
    outputs: InferOutputs,
    config: ConfigArgs,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let package_dir = PathBuf::from(&model);
    let package = if package_dir.join("manifest.toml").is_file() {
        models::registry::AnyPackage::open(&package_dir)?
    } else {
        models::registry::Registry::new(&config.load()?.data_dir).open_active_any(&model)?
    };
    let kind = match backend {
        BackendChoice::Tract => BackendKind::Tract,
        BackendChoice::Ort => BackendKind::Ort,
        BackendChoice::OrtCpu => BackendKind::OrtCpu,
    };
    let mut loaded =
        appliance::loaded::Loaded::load_with(kind.choice(), ort_library.as_deref(), &package)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let dicom = is_part10(p);
            if !dicom {
                eprintln!("skipping {}: not a DICOM Part 10 file", p.display());
            }
            dicom
        })
        .collect();
    files.sort();
    let t = std::time::Instant::now();
    let series = pacs_bridge::volume::build(&files, &pacs_bridge::volume::Limits::default())?;
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    let result = loaded.run(&series.volume)?;
    if let Some(out) = &outputs.label_map {
        std::fs::write(out, &result.label_map)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let mut json = serde_json::to_value(&result)?;
    if let Some(dir) = &outputs.export {
        let t = std::time::Instant::now();
        let exported = appliance::export::export(
            dir,
            0,
            &series,
            &result,
            package.outputs(),
            &appliance::config::ResultsConfig::default(),
            &format!("infer|{}", series.series_uid),
            &|_| true,
        )?;
        json["timings"]["export_ms"] = (t.elapsed().as_secs_f64() * 1e3).into();
        json["objects"] = serde_json::to_value(&exported.objects)?;
        json["negative"] = exported.negative.into();
    }
    json["series_uid"] = series.series_uid.into();
    json["slices"] = series.volume.slices.into();
    json["timings"]["decode_ms"] = decode_ms.into();
    json["timings"]["model_load_ms"] = load_ms.into();
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// Whether `path` starts with a Part 10 preamble and the "DICM" prefix.
fn is_part10(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head[128..] == b"DICM")
        .unwrap_or(false)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A CLI whose output is piped into `head` or `grep -q` ends quietly when the reader
        // goes away, as other Unix tools do; the daemon keeps SIGPIPE ignored for its sockets.
        // SAFETY: signal(2) with the default action, before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
