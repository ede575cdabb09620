//! No run is ever lost: `vlm4vla train` on the committed tiny PaliGemma checkpoint and LeRobot
//! dataset, driven as a hostile but fair user would: a fresh run into a run's directory, a second
//! run while one holds the lock, SIGTERM and SIGINT, SIGKILL at random moments across saves (the
//! `latest` checkpoint must load after every kill, and resume), a closed stdout, and damaged
//! checkpoints, flags and datasets (errors naming the field, file or frame; never a panic).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vlm4vla::finetune::FinetunedPolicy;
use vlm4vla::train::rundir::{self, RunLock};
use vlm4vla::train::Checkpoint;
mod common;
use common::copy_dir;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlm4vla"));
    c.current_dir(root()).args(args);
    c
}

fn run(args: &[&str]) -> Output {
    cmd(args).output().expect("run vlm4vla")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "vlm4vla {args:?} failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failing run's stderr; it must not be a panic.
fn fails(args: &[&str]) -> String {
    let o = run(args);
    let e = stderr(&o);
    assert!(!o.status.success(), "vlm4vla {args:?} should fail");
    // 1: our errors; 2: clap's (a flag out of range).
    assert!(matches!(o.status.code(), Some(1 | 2)), "vlm4vla {args:?}: {e}");
    assert!(!e.contains("panicked"), "vlm4vla {args:?} panicked: {e}");
    e
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm4vla-safety-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// configs/paligemma-tiny.toml with `steps` and `checkpoint_every`, written into `dir`.
fn config(dir: &Path, name: &str, steps: usize, checkpoint_every: usize) -> String {
    let text = std::fs::read_to_string(root().join("configs/paligemma-tiny.toml")).unwrap();
    let text = text
        .replace("steps = 30", &format!("steps = {steps}"))
        .replace("checkpoint_every = 15", &format!("checkpoint_every = {checkpoint_every}"));
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn train<'a>(cfg: &'a str, out: &'a Path, more: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "--config", cfg, "--output-dir", out.to_str().unwrap()];
    a.extend(more);
    a
}

fn metric_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: `kill` on the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Wait until the run has logged `lines` steps (or panic after 60 s).
fn wait_for_steps(child: &mut Child, dir: &Path, lines: usize) {
    let start = Instant::now();
    while metric_lines(dir) < lines {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {lines}");
        assert!(start.elapsed() < Duration::from_secs(60), "no step {lines} after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The output directory's `latest` loads: its config and state parse and the policy's weights
/// load.
fn assert_latest_loads(dir: &Path, when: &str) -> usize {
    let ckpt = Checkpoint::open(dir).unwrap_or_else(|e| panic!("{when}: `latest` does not open: {e}"));
    FinetunedPolicy::open(dir).unwrap_or_else(|e| panic!("{when}: `latest` does not load as a policy: {e}"));
    ckpt.state.step
}

fn png(dir: &Path) -> PathBuf {
    let p = dir.join("image.png");
    std::fs::write(&p, vlm4vla::data::encode_png(&[120u8; 32 * 32 * 3], 32, 32).unwrap()).unwrap();
    p
}

#[test]
fn a_fresh_run_into_a_run_is_refused_and_overwrite_replaces_it() {
    let dir = tmp("guard");
    let cfg = config(&dir, "c.toml", 4, 2);
    let out = dir.join("run");
    ok(&train(&cfg, &out, &[]));
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let model = std::fs::read(out.join("checkpoint-4/model.safetensors")).unwrap();

    let e = fails(&train(&cfg, &out, &[]));
    for want in ["already holds a run", "--resume", "--output-dir", "--overwrite", out.to_str().unwrap()] {
        assert!(e.contains(want), "`{want}` missing from: {e}");
    }
    // Nothing of the old run moved.
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(std::fs::read(out.join("checkpoint-4/model.safetensors")).unwrap(), model);
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap().trim(), "checkpoint-4");

    // A resume of a finished run into its own directory: nothing to do, nothing rewritten.
    ok(&train(&cfg, &out, &["--resume", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(out.join("checkpoint-4/model.safetensors")).unwrap(), model);
    // Resuming into another directory that holds a run is refused too.
    let other = dir.join("other");
    ok(&train(&cfg, &other, &[]));
    let e = fails(&train(&cfg, &other, &["--resume", out.join("checkpoint-2").to_str().unwrap()]));
    assert!(e.contains("already holds a run"), "{e}");

    // --overwrite replaces the run: a 3-step run leaves no trace of the 4-step one.
    let cfg3 = config(&dir, "c3.toml", 3, 0);
    let o = run(&train(&cfg3, &out, &["--overwrite"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--overwrite: removed"), "{}", stderr(&o));
    assert_eq!(metric_lines(&out), 3);
    assert!(!out.join("checkpoint-4").exists() && !out.join("checkpoint-2").exists());
    assert_eq!(assert_latest_loads(&out, "after --overwrite"), 3);
    assert!(!out.join(rundir::LOCK_FILE).exists(), "the lock is removed when the run ends");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_held_lock_refuses_a_second_run_naming_the_holder() {
    let dir = tmp("lock");
    let cfg = config(&dir, "c.toml", 2, 0);
    let out = dir.join("run");
    let lock = RunLock::acquire(&out).unwrap();
    let e = fails(&train(&cfg, &out, &[]));
    assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("run.lock"), "{e}");
    let e = fails(&train(&cfg, &out, &["--overwrite"]));
    assert!(e.contains("in use by another run"), "{e}");
    assert_eq!(metric_lines(&out), 0, "the refused run wrote nothing");
    drop(lock);

    // Two runs started together into one directory: exactly one trains, and the metrics log
    // is one run's.
    let out = dir.join("race");
    let cfg = config(&dir, "c20.toml", 20, 0);
    let a = cmd(&train(&cfg, &out, &[])).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let b = cmd(&train(&cfg, &out, &[])).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.success() as u8 + b.status.success() as u8, 1, "{}\n{}", stderr(&a), stderr(&b));
    let loser = if a.status.success() { &b } else { &a };
    let e = stderr(loser);
    assert!(e.contains("in use by another run") || e.contains("already holds a run"), "{e}");
    assert_eq!(metric_lines(&out), 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_and_sigint_write_a_checkpoint_and_exit_143_and_130() {
    let dir = tmp("signals");
    let cfg = config(&dir, "c.toml", 1_000_000, 0);
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let out = dir.join(format!("run-{sig}"));
        let mut child = cmd(&train(&cfg, &out, &[])).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for_steps(&mut child, &out, 3);
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(code), "signal {sig}: {}", stderr(&o));
        let said = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(said.starts_with("stopped after"), "{said}");
        // Periodic checkpoints are off: the one on disk is the signal's, at the last step taken.
        let step = assert_latest_loads(&out, "after the signal");
        assert!(step >= 3 && said.contains(&format!("after {step} steps")), "step {step}: {said}");
        assert_eq!(metric_lines(&out), step);
        // And the run continues from it.
        let more = config(&dir, "more.toml", step + 2, 0);
        ok(&train(&more, &out, &["--resume", out.to_str().unwrap()]));
        assert_eq!(assert_latest_loads(&out, "after the resume"), step + 2);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGKILL (and now and then two quick SIGTERMs, the second often landing in a save) at random
/// moments of runs that save every step, resuming from `latest` or from an older checkpoint (so
/// existing checkpoints get replaced): after every kill `latest` loads, and at the end the run
/// completes. Bounded to about 40 s.
#[test]
fn kills_at_random_moments_never_lose_the_latest_checkpoint() {
    use rand::{Rng, SeedableRng};
    let dir = tmp("kills");
    let cfg = config(&dir, "c.toml", 1_000_000, 1);
    let out = dir.join("run");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let start = Instant::now();
    let (mut kills, mut double_terms, mut replaying, mut with_checkpoint) = (0, 0, 0, 0);
    let mut notes = 0;
    while start.elapsed() < Duration::from_secs(40) || kills < 10 {
        let resume: Option<PathBuf> = match Checkpoint::open(&out) {
            Err(_) => None,
            Ok(c) => {
                // Half the time from an older checkpoint: the run then saves steps that already
                // have a checkpoint, replacing them.
                let older = (1..c.state.step).rev().map(|s| out.join(format!("checkpoint-{s}"))).find(|p| p.exists());
                match older {
                    Some(p) if rng.gen_bool(0.5) => {
                        replaying += 1;
                        Some(p)
                    }
                    _ => Some(out.clone()),
                }
            }
        };
        let mut args = train(&cfg, &out, &[]);
        let r = resume.as_ref().map(|p| p.to_str().unwrap().to_string());
        if let Some(r) = &r {
            args.extend(["--resume", r.as_str()]);
        } else if out.exists() {
            args.push("--overwrite");
        }
        let mut child = cmd(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let double = rng.gen_bool(0.2);
        if double {
            // The handlers are installed before the run takes its lock.
            let holder = format!("pid {} ", child.id());
            let t = Instant::now();
            while !std::fs::read_to_string(out.join(rundir::LOCK_FILE)).unwrap_or_default().starts_with(&holder) {
                assert!(child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(60));
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..1500)));
        if double {
            signal(&child, libc::SIGTERM);
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
            signal(&child, libc::SIGTERM);
            double_terms += 1;
        } else {
            child.kill().unwrap();
        }
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        kills += 1;
        assert!(!err.contains("panicked"), "{err}");
        notes += err.lines().filter(|l| l.starts_with("note: ")).count();
        if double {
            assert_eq!(status.code(), Some(143), "two SIGTERMs: {err}");
        }
        if out.join("latest").exists() {
            assert_latest_loads(&out, &format!("after kill {kills}"));
            with_checkpoint += 1;
        }
        // Keep the disk use bounded: the newest few checkpoints stay.
        if let Ok(c) = Checkpoint::open(&out) {
            for e in std::fs::read_dir(&out).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<usize>().ok());
                if step.is_some_and(|s| s + 4 < c.state.step) {
                    std::fs::remove_dir_all(out.join(&name)).unwrap();
                }
            }
        }
    }
    // The run finishes from wherever the kills left it, and leaves no leftovers behind.
    let step = assert_latest_loads(&out, "before the last resume");
    let last = config(&dir, "last.toml", step + 3, 1);
    ok(&train(&last, &out, &["--resume", out.to_str().unwrap()]));
    assert_eq!(assert_latest_loads(&out, "at the end"), step + 3);
    let hidden: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "leftovers of killed saves: {hidden:?}");
    eprintln!(
        "{kills} kills ({double_terms} double SIGTERMs, {replaying} while replacing checkpoints), {with_checkpoint} \
         with a checkpoint on disk, all loaded; {notes} repairs noted; finished at step {}",
        step + 3
    );
    assert!(with_checkpoint > kills / 2, "too few kills landed after a save: {with_checkpoint} of {kills}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replaced_checkpoint_is_swapped_whole_and_leftovers_are_repaired() {
    let dir = tmp("swap");
    let cfg = config(&dir, "c.toml", 3, 1);
    let out = dir.join("run");
    ok(&train(&cfg, &out, &[]));
    let write = |step: usize, marker: &str| {
        vlm4vla::train::checkpoint::write_dir(&out, step, |tmp| {
            for f in ["model.safetensors", "optimizer.safetensors", "config.toml", "trainer_state.json"] {
                std::fs::copy(out.join(format!("checkpoint-{step}")).join(f), tmp.join(f)).unwrap();
            }
            std::fs::write(tmp.join("marker"), marker).unwrap();
            Ok(())
        })
        .unwrap()
    };
    let d = write(2, "first");
    assert_eq!(std::fs::read_to_string(d.join("marker")).unwrap(), "first");
    let d = write(2, "second");
    assert_eq!(std::fs::read_to_string(d.join("marker")).unwrap(), "second");
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap().trim(), "checkpoint-2");
    let hidden = |out: &Path| -> Vec<String> {
        std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    };
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));

    // What a kill between the two renames of a swap leaves (on a filesystem without an atomic
    // exchange): the old copy aside, the new one complete, `latest` naming neither.
    std::fs::write(out.join("latest"), "checkpoint-3\n").unwrap();
    std::fs::rename(out.join("checkpoint-3"), out.join(".checkpoint-3.old-1")).unwrap();
    copy_dir(&out.join(".checkpoint-3.old-1"), &out.join(".checkpoint-3.tmp-1"));
    // And a save killed while writing: an incomplete directory.
    std::fs::create_dir(out.join(".checkpoint-4.tmp-2")).unwrap();
    std::fs::write(out.join(".checkpoint-4.tmp-2/model.safetensors"), b"half").unwrap();
    // Readers fall back to the newest complete checkpoint until the repair.
    assert_eq!(Checkpoint::open(&out).unwrap().state.step, 2, "`latest` names the missing checkpoint-3");
    let notes = rundir::recover(&out).unwrap();
    let all = notes.join("\n");
    assert!(all.contains("recovered") && all.contains(".checkpoint-3.tmp-1"), "{all}");
    assert!(all.contains(".checkpoint-4.tmp-2") && all.contains("removed"), "{all}");
    assert_eq!(assert_latest_loads(&out, "after the repair"), 3);
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));

    // `latest` naming a damaged checkpoint is pointed back at the newest complete one, with a
    // line saying so, when the next run takes the directory.
    std::fs::remove_file(out.join("checkpoint-3/trainer_state.json")).unwrap();
    let more = config(&dir, "more.toml", 4, 1);
    let o = run(&train(&more, &out, &["--resume", out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("now names checkpoint-2"), "{}", stderr(&o));
    assert_eq!(assert_latest_loads(&out, "after the resume"), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn predict_into_a_closed_pipe_is_an_error_not_a_panic() {
    let dir = tmp("pipe");
    let cfg = config(&dir, "c.toml", 2, 0);
    let out = dir.join("run");
    ok(&train(&cfg, &out, &[]));
    let image = png(&dir);
    let args = [
        "predict",
        "--checkpoint",
        out.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--instruction",
        "pick up the red block",
        "--state",
        "0,0,0,0,0,0,1",
    ];
    let mut child = cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("broken pipe"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Damaged checkpoints and flags: each an error naming what is wrong; a checkpoint without the
/// optimizer state still predicts (only resuming needs it).
#[test]
fn checkpoints_and_flags_are_checked_where_they_enter() {
    let dir = tmp("inputs");
    let cfg = config(&dir, "c.toml", 2, 0);
    let out = dir.join("run");
    ok(&train(&cfg, &out, &[]));
    let image = png(&dir);
    let ckpt = out.join("checkpoint-2");
    let predict = |ckpt: &Path, state: &str| -> Vec<String> {
        [
            "predict",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--instruction",
            "pick up the red block",
            "--state",
            state,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let refs = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join("\u{0}");
    let go = |v: Vec<String>| -> (bool, String) {
        let o = run(&v.iter().map(String::as_str).collect::<Vec<_>>());
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{}: {e}", refs(&v));
        (o.status.success(), e)
    };
    assert!(go(predict(&ckpt, "0,0,0,0,0,0,1")).0);
    for bad in ["nan,0,0,0,0,0,1", "0,inf,0,0,0,0,1"] {
        let (good, e) = go(predict(&ckpt, bad));
        assert!(!good && e.contains("--state") && e.contains("finite"), "{bad}: {e}");
    }
    let long = "x".repeat(5000);
    let mut v = predict(&ckpt, "0,0,0,0,0,0,1");
    v[6] = long;
    let (good, e) = go(v);
    assert!(!good && e.contains("--instruction"), "{e}");

    // Without optimizer.safetensors: predict and eval work, resume names the file.
    let no_opt = dir.join("no-opt");
    copy_dir(&ckpt, &no_opt);
    std::fs::remove_file(no_opt.join("optimizer.safetensors")).unwrap();
    assert!(go(predict(&no_opt, "0,0,0,0,0,0,1")).0);
    ok(&["eval", "--checkpoint", no_opt.to_str().unwrap(), "--batches", "1", "--batch-size", "2"]);
    let e = fails(&train(&cfg, &dir.join("from-no-opt"), &["--resume", no_opt.to_str().unwrap()]));
    assert!(e.contains("optimizer.safetensors"), "{e}");

    // Damaged trainer states: each names the file and the field.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("extra.normalizer", Box::new(|s| s["extra"]["normalizer"]["high"] = serde_json::json!([1.0]))),
        ("extra.normalizer", Box::new(|s| s["extra"]["normalizer"]["arm_dims"] = serde_json::json!(7))),
        ("below `low`", Box::new(|s| s["extra"]["normalizer"]["high"][0] = serde_json::json!(-5.0))),
        (
            "every arm dimension",
            Box::new(|s| {
                let low = s["extra"]["normalizer"]["low"].clone();
                s["extra"]["normalizer"]["high"] = low;
            }),
        ),
        ("extra.state", Box::new(|s| s["extra"]["state"]["mean"] = serde_json::json!([]))),
        ("`step`", Box::new(|s| s["step"] = serde_json::json!(1u64 << 60))),
    ];
    for (want, edit) in cases {
        let bad = dir.join("bad");
        let _ = std::fs::remove_dir_all(&bad);
        copy_dir(&ckpt, &bad);
        let mut s = state.clone();
        edit(&mut s);
        std::fs::write(bad.join("trainer_state.json"), serde_json::to_string(&s).unwrap()).unwrap();
        let (good, e) = go(predict(&bad, "0,0,0,0,0,0,1"));
        assert!(!good && e.contains("trainer_state.json") && e.contains(want), "{want}: {e}");
        let e = fails(&["eval", "--checkpoint", bad.to_str().unwrap(), "--batches", "1", "--batch-size", "2"]);
        assert!(e.contains("trainer_state.json"), "{want}: {e}");
    }

    // Sizes beyond any real run are refused before anything is allocated.
    for (flag, value) in [("--episodes", "18446744073709551615"), ("--batch-size", "1000000000000")] {
        let e = fails(&["eval", "--checkpoint", ckpt.to_str().unwrap(), flag, value]);
        assert!(e.contains(flag) && e.contains("maximum"), "{flag}: {e}");
    }
    let e = fails(&["collect", "--out", dir.join("c").to_str().unwrap(), "--plan-steps", "99999999999"]);
    assert!(e.contains("--plan-steps"), "{e}");
    for (key, from, to) in [
        ("run.batch_size", "batch_size = 4", "batch_size = 1000000000000"),
        ("policy.latent", "chunk = 4", "chunk = 4\nlatent = 1000000000000"),
    ] {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(from, to);
        let p = dir.join("big.toml");
        std::fs::write(&p, text).unwrap();
        let e = fails(&train(p.to_str().unwrap(), &dir.join("big"), &[]));
        assert!(e.contains(key) && e.contains("maximum"), "{key}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A config error names the line of the file as written (not of a re-serialised copy).
#[test]
fn config_errors_name_the_line_of_the_original_text() {
    let dir = tmp("lines");
    let text = "# a comment\n\nbackbone = \"tests/fixtures/tiny/paligemma\"\noutput_dir = \"x\"\n\n[data]\n\
                dataset = \"tests/fixtures/tiny/lerobot\"\n\n[run]\nsteps = 3\nbatch_sise = 4\n";
    let p = dir.join("f.toml");
    std::fs::write(&p, text).unwrap();
    let e = fails(&["train", "--config", p.to_str().unwrap()]);
    assert!(e.contains("line 11") && e.contains("batch_sise"), "{e}");
    let text = "dataset = \"d\"\n\nbackbone = \"paligemma-demo\"\n[grounding]\nsteps = 2\n\n[optim]\nlr = \"fast\"\n";
    let p = dir.join("p.toml");
    std::fs::write(&p, text).unwrap();
    let e = fails(&["train", "--config", p.to_str().unwrap()]);
    assert!(e.contains("line 8") && e.contains("lr"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A NaN in a dataset is found when the dataset is opened, with the file, the column and the
/// frame named.
#[test]
fn nan_in_a_dataset_is_found_at_load_naming_file_and_frame() {
    use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
    use std::sync::Arc;
    let dir = tmp("nan");
    let data = dir.join("lerobot");
    copy_dir(&root().join("tests/fixtures/tiny/lerobot"), &data);
    let file = data.join("data/chunk-000/file-000.parquet");
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
        .unwrap();
    let schema = b.schema().clone();
    let batches: Vec<RecordBatch> = b.build().unwrap().collect::<Result<_, _>>().unwrap();
    let i = schema.index_of("action").unwrap();
    let col = batches[0].column(i).as_any().downcast_ref::<FixedSizeListArray>().expect("action is a fixed-size list");
    let width = col.value_length() as usize;
    let values = col.values().as_any().downcast_ref::<Float32Array>().unwrap();
    let mut v: Vec<f32> = values.values().to_vec();
    v[5 * width + 2] = f32::NAN;
    let field = match schema.field(i).data_type() {
        arrow_schema::DataType::FixedSizeList(f, _) => f.clone(),
        t => panic!("action is {t}"),
    };
    let list = FixedSizeListArray::new(field, width as i32, Arc::new(Float32Array::from(v)), col.nulls().cloned());
    let mut cols: Vec<ArrayRef> = batches[0].columns().to_vec();
    cols[i] = Arc::new(list);
    let mut out = batches.clone();
    out[0] = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), schema, None).unwrap();
    for b in &out {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    let Err(e) = vlm4vla::data::LeRobotDataset::open(&data) else { panic!("a NaN action must not load") };
    let e = e.to_string();
    assert!(
        e.contains("file-000.parquet") && e.contains("`action`") && e.contains("frame 5") && e.contains("NaN"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

mod fuzz {
    //! Random damage to a checkpoint's trainer state, to configs and to a dataset's
    //! `meta/info.json`: every case is an `Ok` or an `Err`, never a panic or an abort.
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Every JSON pointer in `v`.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| pointers(x, format!("{at}/{k}"), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
            _ => {}
        }
    }

    fn hostile_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop_oneof![Just(0u64), Just(1), Just(u32::MAX as u64), Just(1 << 40), Just(u64::MAX)]
                .prop_map(Value::from),
            (-1e30f64..1e30).prop_map(Value::from),
            prop_oneof![Just(-1.0f64), Just(0.0), Just(1e-30), Just(f64::MAX)].prop_map(Value::from),
            "[a-z0-9_./ -]{0,12}".prop_map(Value::from),
            prop::collection::vec(-3.0f64..3.0, 0..9).prop_map(Value::from),
            Just(serde_json::json!({})),
            Just(serde_json::json!([])),
        ]
    }

    /// Replace the values at up to four random pointers of `base`.
    fn damaged(base: Value) -> impl Strategy<Value = Value> {
        let mut ps = Vec::new();
        pointers(&base, String::new(), &mut ps);
        prop::collection::vec((any::<prop::sample::Index>(), hostile_value()), 1..5).prop_map(move |edits| {
            let mut v = base.clone();
            for (i, x) in edits {
                if let Some(slot) = v.pointer_mut(i.get(ps.as_slice()).as_str()) {
                    *slot = x;
                }
            }
            v
        })
    }

    fn trained(name: &str) -> (PathBuf, PathBuf) {
        let dir = tmp(name);
        let cfg = config(&dir, "c.toml", 2, 0);
        ok(&train(&cfg, &dir.join("run"), &[]));
        let ckpt = dir.join("run/checkpoint-2");
        (dir, ckpt)
    }

    #[test]
    fn damaged_trainer_states_never_panic() {
        let (dir, ckpt) = trained("fuzz-state");
        let base: Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
        let case = dir.join("case");
        copy_dir(&ckpt, &case);
        let errors = std::cell::Cell::new(0);
        proptest!(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() }, |(s in damaged(base.clone()))| {
            std::fs::write(case.join("trainer_state.json"), serde_json::to_string(&s).unwrap()).unwrap();
            if FinetunedPolicy::open(&case).is_err() {
                errors.set(errors.get() + 1);
            }
            let _ = vlm4vla::demo::LoadedPolicy::open(&case);
        });
        eprintln!("128 damaged trainer states: {} refused, none panicked", errors.get());
        assert!(errors.get() > 0, "random damage should be refused at least once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_configs_never_panic() {
        let text = std::fs::read_to_string(root().join("configs/paligemma-tiny.toml")).unwrap();
        let base: Value = serde_json::to_value(text.parse::<toml::Table>().unwrap()).unwrap();
        let origin = Path::new("fuzz.toml");
        proptest!(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }, |(v in damaged(base.clone()), cut in 0usize..2000, junk in "[a-z=\\[\\]\"0-9. \n]{0,40}")| {
            // As TOML (values without a TOML form, e.g. null, make the text unparsable:
            // that is an error case too), and as raw text cut and spliced with junk.
            if let Ok(t) = toml::to_string(&v) {
                let _ = vlm4vla::finetune::FinetuneConfig::from_toml_str(&t, origin);
                let _ = vlm4vla::demo::PipelineConfig::from_toml_str(&format!("dataset = \"d\"\n{t}"), origin);
                let _ = vlm4vla::train::TrainConfig::from_toml_str(&t, origin);
            }
            let cut = text.char_indices().map(|(i, _)| i).nth(cut % text.len()).unwrap_or(0);
            let spliced = format!("{}{junk}{}", &text[..cut], &text[cut..]);
            let _ = vlm4vla::finetune::FinetuneConfig::from_toml_str(&spliced, origin);
            let _ = vlm4vla::demo::PipelineConfig::from_toml_str(&spliced, origin);
        });
        eprintln!("512 damaged configs: none panicked");
    }

    #[test]
    fn damaged_dataset_metadata_never_panics() {
        let dir = tmp("fuzz-info");
        let data = dir.join("lerobot");
        copy_dir(&root().join("tests/fixtures/tiny/lerobot"), &data);
        let info = data.join("meta/info.json");
        let base: Value = serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
        let errors = std::cell::Cell::new(0);
        proptest!(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }, |(v in damaged(base.clone()))| {
            std::fs::write(&info, serde_json::to_string(&v).unwrap()).unwrap();
            if vlm4vla::data::LeRobotDataset::open(&data).is_err() {
                errors.set(errors.get() + 1);
            }
        });
        eprintln!("256 damaged info.json files: {} refused, none panicked", errors.get());
        assert!(errors.get() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A tabletop checkpoint's stored image size is checked against the trainer state it lives in
/// (not blamed on config.toml) and bounded before the model is built.
#[test]
fn a_tabletop_checkpoints_image_size_is_checked_in_its_own_file() {
    use vlm4vla::demo::{collect, train as train_tabletop, CollectOptions, PipelineConfig};
    let dir = tmp("tabletop");
    let data = dir.join("data");
    collect(&data, &CollectOptions { episodes: 4, image_size: 16, ..Default::default() }).unwrap();
    let cfg_path = dir.join("train.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "dataset = {:?}\nbackbone = \"paligemma-demo\"\noutput_dir = {:?}\n[policy]\nchunk = 2\n\
             [policy.head]\ntrunk_out = 16\nbranch_hidden = [16]\n[run]\nsteps = 2\nbatch_size = 4\nprogress = false\n",
            data.to_string_lossy(),
            dir.join("train").to_string_lossy()
        ),
    )
    .unwrap();
    let cfg = PipelineConfig::from_file(&cfg_path).unwrap();
    let ckpt = train_tabletop(&cfg, None).unwrap().checkpoint;
    // The same run again is refused; the library names the way out too.
    let Err(e) = train_tabletop(&cfg, None) else { panic!("a second fresh run into the run must be refused") };
    let e = e.to_string();
    assert!(e.contains("already holds a run") && e.contains("--resume"), "{e}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    for size in [17u64, 1 << 40] {
        let bad = dir.join(format!("bad-{size}"));
        copy_dir(&ckpt, &bad);
        let mut s = state.clone();
        s["extra"]["image_size"] = serde_json::json!(size);
        std::fs::write(bad.join("trainer_state.json"), serde_json::to_string(&s).unwrap()).unwrap();
        let e = fails(&["eval", "--checkpoint", bad.to_str().unwrap(), "--episodes", "4"]);
        assert!(e.contains("trainer_state.json") && e.contains("extra.image_size"), "{size}: {e}");
        assert!(!e.contains("config.toml"), "{size}: {e}");
    }
    let e = fails(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--episodes", &usize::MAX.to_string()]);
    assert!(e.contains("--episodes") && e.contains("maximum"), "{e}");
    // Tabletop --state: positions in [0, 1], the gripper ±1.
    let image = dir.join("i.png");
    vlm4vla::env::save_png(&[128u8; 16 * 16 * 3], 16, &image).unwrap();
    for (state, want) in [("2,0,0,0,0,0,1", "position 0"), ("0,0,0,0,0,0,0.5", "gripper")] {
        let e = fails(&[
            "predict",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--instruction",
            "lift the red block",
            "--state",
            state,
        ]);
        assert!(e.contains("--state") && e.contains(want), "{state}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
