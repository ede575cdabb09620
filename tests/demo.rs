//! The tabletop pipeline end to end (collect → train → evaluate) and the CLI's commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vlm4vla::demo::{
    collect, results_table, run_demo, train, CollectOptions, DemoOptions, LoadedPolicy, PipelineConfig,
};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vlm4vla-test-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlm4vla")).args(args).output().expect("the vlm4vla binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny dataset and a two-step checkpoint at 16 px, for the error-path tests.
fn tiny_run(name: &str) -> (PathBuf, PathBuf) {
    let root = tmp(name);
    let data = root.join("data");
    collect(&data, &CollectOptions { episodes: 4, image_size: 16, ..Default::default() }).unwrap();
    let cfg_path = root.join("train.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "dataset = {:?}\nbackbone = \"paligemma-demo\"\noutput_dir = {:?}\n[policy]\nchunk = 2\n\
             [policy.head]\ntrunk_out = 16\nbranch_hidden = [16]\n[optim]\nlr = 1e-3\n[run]\nsteps = 2\n\
             batch_size = 4\nprogress = false\n",
            data.to_string_lossy(),
            root.join("train").to_string_lossy()
        ),
    )
    .unwrap();
    let out = train(&PipelineConfig::from_file(&cfg_path).unwrap(), None).unwrap();
    (root, out.checkpoint)
}

#[test]
fn quick_demo_learns_the_tabletop_tasks() {
    let out = tmp("quick");
    let mut opts = DemoOptions::quick(&out);
    opts.progress = false;
    let started = std::time::Instant::now();
    let r = run_demo(&opts, &mut |l| eprintln!("{l}")).unwrap();
    let summary = format!("{}quick demo took {:.1} s\n", results_table(&r), started.elapsed().as_secs_f64());
    eprint!("{summary}");
    // For the CI log (`.ci/run` prints it after the tests).
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("quick-demo.txt"), &summary).unwrap();
    // The thresholds: at least 40% of held-out episodes for the trained policy
    // (measured 70% at seed 0; seed 2 reached 65%, and 2.5% before the learning rate was halved
    // after the grounding phase; see the README), at most 10% untrained (0%), and a mismatched
    // instruction down to about chance (a policy that ignores the instruction picks the named
    // object in 1 of 3–4 scenes at best: at most 25%; measured 0%).
    //
    // The loss on held-out (clean, unseen) demonstrations must fall at least 5×: measured 8.4×.
    // It fell only 4.2× when the chunk labels were the recorded next actions of the DART-noised
    // rollouts, which the policy cannot predict; they are now the expert's unperturbed plan
    // (`action_plan`).
    let ratio = r.heldout_loss_untrained / r.heldout_loss_trained;
    assert!(
        ratio >= 5.0,
        "held-out loss fell only {ratio:.2}× ({} → {})",
        r.heldout_loss_untrained,
        r.heldout_loss_trained
    );
    assert!(r.trained.episodes == 40 && r.untrained.episodes == 40 && r.mismatched.episodes == 40);
    assert!(r.trained.results.iter().all(|e| e.seed >= vlm4vla::demo::EVAL_FIRST_SEED));
    assert!(r.trained.success_rate >= 0.4, "trained success {:.3}", r.trained.success_rate);
    assert!(r.untrained.success_rate <= 0.1, "untrained success {:.3}", r.untrained.success_rate);
    assert!(r.mismatched.success_rate <= 0.25, "mismatched success {:.3}", r.mismatched.success_rate);
    assert!(out.join("results.json").is_file() && out.join("train.toml").is_file());
    // The written config trains again through the CLI's parser.
    PipelineConfig::from_file(&out.join("train.toml")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn every_command_has_help() {
    for (cmd, words) in [
        (
            "demo",
            &[
                "--out",
                "--quick",
                "--episodes",
                "--grounding-steps",
                "--decay-steps",
                "--no-state",
                "--plan-steps",
                "results",
            ][..],
        ),
        ("collect", &["--out", "--episodes", "--seed", "--image-size", "--plan-steps"][..]),
        ("train", &["--config", "--resume", "dataset"][..]),
        ("eval", &["--checkpoint", "--episodes", "--mismatched"][..]),
        ("predict", &["--checkpoint", "--image", "--instruction", "--state", "JSON"][..]),
        ("info", &["--model"][..]),
    ] {
        let o = bin(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help failed: {}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        for w in words {
            assert!(text.contains(w), "`{cmd} --help` does not mention {w}:\n{text}");
        }
    }
    let o = bin(&["--help"]);
    let text = String::from_utf8_lossy(&o.stdout);
    for cmd in ["demo", "collect", "train", "eval", "predict", "info"] {
        assert!(text.contains(cmd), "top-level help lacks {cmd}");
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (root, ckpt) = tiny_run("errors");

    // A config naming a dataset that does not exist.
    let missing = root.join("no-such-dataset");
    let cfg = root.join("missing.toml");
    std::fs::write(
        &cfg,
        format!(
            "dataset = {:?}\nbackbone = \"paligemma-demo\"\noutput_dir = \"x\"\n[run]\nsteps = 1\n",
            missing.to_string_lossy()
        ),
    )
    .unwrap();
    let o = bin(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-dataset"), "{}", stderr(&o));

    // An unknown key.
    let cfg = root.join("unknown.toml");
    std::fs::write(
        &cfg,
        "dataset = \"d\"\nbackbone = \"paligemma-demo\"\noutput_dir = \"x\"\n[run]\nsteps = 1\nbogus_knob = 3\n",
    )
    .unwrap();
    let o = bin(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bogus_knob") && e.contains("unknown.toml"), "{e}");

    // An unsupported backbone.
    let cfg = root.join("kosmos.toml");
    std::fs::write(&cfg, "dataset = \"d\"\nbackbone = \"kosmos-2-tiny\"\noutput_dir = \"x\"\n[run]\nsteps = 1\n")
        .unwrap();
    let o = bin(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("kosmos-2-tiny"), "{}", stderr(&o));

    // A checkpoint whose config names another backbone than its weights were trained with.
    let other = root.join("other-ckpt");
    std::fs::create_dir_all(&other).unwrap();
    for f in std::fs::read_dir(&ckpt).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, other.join(f.file_name().unwrap())).unwrap();
    }
    let cfg_text = std::fs::read_to_string(other.join("config.toml")).unwrap();
    std::fs::write(other.join("config.toml"), cfg_text.replace("paligemma-demo", "paligemma-tiny")).unwrap();
    let e = LoadedPolicy::open(&other).err().expect("a mismatched checkpoint must not load").to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    let o = bin(&["eval", "--checkpoint", other.to_str().unwrap(), "--episodes", "4"]);
    assert!(!o.status.success() && stderr(&o).contains("model.safetensors"), "{}", stderr(&o));

    // A nonexistent checkpoint.
    let o = bin(&["eval", "--checkpoint", root.join("nope").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("nope"), "{}", stderr(&o));

    // predict: a missing image, a wrong-size image, then a good one.
    let c = ckpt.to_str().unwrap();
    let o = bin(&["predict", "--checkpoint", c, "--image", "/no/such.png", "--instruction", "lift the red block"]);
    assert!(!o.status.success() && stderr(&o).contains("/no/such.png"), "{}", stderr(&o));
    let big = root.join("big.png");
    vlm4vla::env::save_png(&vec![128u8; 32 * 32 * 3], 32, &big).unwrap();
    let o =
        bin(&["predict", "--checkpoint", c, "--image", big.to_str().unwrap(), "--instruction", "lift the red block"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("32×32") && e.contains("16×16"), "{e}");
    let good = root.join("good.png");
    vlm4vla::env::save_png(&vec![128u8; 16 * 16 * 3], 16, &good).unwrap();
    let o =
        bin(&["predict", "--checkpoint", c, "--image", good.to_str().unwrap(), "--instruction", "lift the red block"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let chunk = v["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2);
    assert!(chunk.iter().all(|a| a.as_array().unwrap().len() == 7));
    let g = good.to_str().unwrap();
    let o =
        bin(&["predict", "--checkpoint", c, "--image", g, "--instruction", "lift the red block", "--state", "0.5,-1"]);
    assert!(!o.status.success() && stderr(&o).contains("--state"), "{}", stderr(&o));

    // eval runs on the checkpoint.
    let o = bin(&["eval", "--checkpoint", c, "--episodes", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("overall"));

    // collect refuses an existing directory.
    let o = bin(&["collect", "--out", root.join("data").to_str().unwrap(), "--episodes", "1"]);
    assert!(!o.status.success() && stderr(&o).contains("already exists"), "{}", stderr(&o));

    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn training_resumes_from_a_checkpoint() {
    let (root, ckpt) = tiny_run("resume");
    let mut cfg = PipelineConfig::from_file(&root.join("train.toml")).unwrap();
    cfg.train.run.steps = Some(4);
    let out = train(&cfg, Some(Path::new(&ckpt))).unwrap();
    assert_eq!(out.steps, 4);
    std::fs::remove_dir_all(&root).unwrap();
}
