//! Learning benchmark: does a fine-tune in progress slow down inference? Inference latency of
//! the appliance measured in one run for studies that arrive while it is idle and for studies
//! that arrive while `appliance learn now` is fine-tuning (which must yield at its next step).
//!
//! Setup: the reference model, two site studies and the radiologist's SEGs for them (one held
//! out, one to train on), and a fine-tune made long on purpose (60 epochs over up to 100 000
//! sampled pixels per class, several seconds) so that a study can arrive in the middle of it.
//! Then `--rounds N` (default 3) pairs, interleaved: a study sent to the idle appliance, and a
//! study sent once `learn now` reports training epochs. Every study is new (its own UIDs).
//!
//! Latency is the wall time from spawning DCMTK `storescu` to the job's `done` (polled every
//! 50 ms; the study completes after the harness's 1-second quiet period, the same in both
//! arms). The job's own timings (decode, backbone and head) come from its result. For the
//! learning arm, the yield delay is the time from sending the study to `learn now` printing
//! that it yielded (polled the same way). Prints medians and the ratio learning/idle.
//!
//! Run with `scripts/bench.sh learn [--rounds N]`.

use anyhow::{ensure, Context, Result};
use hil_tests::appliance::{set, Appliance};
use hil_tests::peers::storescu;
use hil_tests::site::{radiologist_seg, seg_of, send_label, site_study};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    latency_s: f64,
    decode_ms: f64,
    inference_ms: f64,
    yield_s: Option<f64>,
}

/// A new site study (its files and Study Instance UID).
fn new_study(dir: &Path, tag: &str, index: usize) -> (Vec<PathBuf>, String) {
    let offset = [
        (index % 3) as f64 * 3.0 - 3.0,
        (index % 5) as f64 * 2.0 - 4.0,
        0.0,
    ];
    site_study(dir, tag, offset)
}

/// Send a study and time it to `done`.
fn timed_study(
    app: &Appliance,
    (files, study): (Vec<PathBuf>, String),
    tag: &str,
) -> Result<(Sample, Instant)> {
    let sent = Instant::now();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    ensure!(out.status.success(), "storescu failed for {tag}");
    let deadline = sent + Duration::from_secs(120);
    loop {
        if let Some(job) = app.jobs(&study).first() {
            if job["state"] == "done" {
                let latency_s = sent.elapsed().as_secs_f64();
                let t = &job["result"]["timings"];
                return Ok((
                    Sample {
                        latency_s,
                        decode_ms: t["decode_ms"].as_f64().context("decode_ms")?,
                        inference_ms: t["inference_ms"].as_f64().context("inference_ms")?,
                        yield_s: None,
                    },
                    sent,
                ));
            }
            ensure!(job["state"] != "failed", "job of {tag} failed: {job}");
        }
        ensure!(Instant::now() < deadline, "study {tag} not done in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).context("--rounds N")?.parse()?,
        None => 3,
    };
    let app = Appliance::start_with_model(&|c| {
        set(c, "learning", "min_new_cases", 100_000);
        set(c, "learning", "holdout_every", 2);
        set(c, "learning", "interval_hours", 0);
        set(c, "learning", "epochs", 60);
        set(c, "learning", "pixels_per_class", 100_000);
    });
    let site = tempfile::tempdir()?;
    let dir = site.path();
    // Two labelled cases: the first is held out, the second trains.
    for (n, (tag, offset)) in [("A", [0.0, -10.0, 6.0]), ("B", [6.0, 8.0, -6.0])]
        .into_iter()
        .enumerate()
    {
        let (files, study) = site_study(dir, tag, offset);
        let job = hil_tests::site::infer(&app, &files, &study);
        let seg = dir.join(format!("{tag}-radiologist.dcm"));
        radiologist_seg(dir, tag, &seg_of(&app, &job), &seg, None);
        send_label(&app, &seg, n);
    }

    let mut idle = Vec::new();
    let mut learning = Vec::new();
    for round in 0..rounds {
        let tag = format!("idle{round}");
        let (sample, _) = timed_study(&app, new_study(dir, &tag, round), &tag)?;
        idle.push(sample);

        // Written before the fine-tune starts, so that it arrives while the fine-tune runs.
        let busy_tag = format!("busy{round}");
        let busy_study = new_study(dir, &busy_tag, round + 7);
        let stderr_path = dir.join(format!("learn{round}.stderr"));
        let mut learn = Command::new(hil_tests::appliance::binary())
            .args(["learn", "now", "--json", "--config"])
            .arg(&app.config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()?;
        let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !read().contains("epochs, loss") {
            ensure!(
                Instant::now() < deadline,
                "learn now did not start training: {}",
                read()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The yield is seen by a thread of ours while the study is in flight.
        let watch_path = stderr_path.clone();
        let watcher = std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(120) {
                if std::fs::read_to_string(&watch_path)
                    .unwrap_or_default()
                    .contains("yielded")
                {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        let (mut sample, sent) = timed_study(&app, busy_study, &busy_tag)?;
        sample.yield_s = watcher
            .join()
            .ok()
            .flatten()
            .map(|at| at.duration_since(sent).as_secs_f64());
        let status = learn.wait()?;
        ensure!(status.success(), "learn now failed: {}", read());
        learning.push(sample);
    }

    println!(
        "| arm | studies | latency s (send to done) | decode ms | backbone+head ms | yield s after send |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, arm) in [("idle", &idle), ("during a fine-tune", &learning)] {
        let yields: Vec<f64> = arm.iter().filter_map(|s| s.yield_s).collect();
        println!(
            "| {name} | {} | {:.2} | {:.0} | {:.0} | {} |",
            arm.len(),
            median(arm.iter().map(|s| s.latency_s).collect()),
            median(arm.iter().map(|s| s.decode_ms).collect()),
            median(arm.iter().map(|s| s.inference_ms).collect()),
            if yields.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", median(yields))
            }
        );
    }
    let ratio = |f: fn(&Sample) -> f64| {
        median(learning.iter().map(f).collect()) / median(idle.iter().map(f).collect())
    };
    println!(
        "learning/idle medians: latency {:.3}, backbone+head {:.3} (target: latency ratio <= 1.1)",
        ratio(|s| s.latency_s),
        ratio(|s| s.inference_ms)
    );
    Ok(())
}
