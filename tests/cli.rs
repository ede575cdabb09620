//! The `vlm4vla` binary's commands behave as documented.

use std::process::Command;

fn vlm4vla(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vlm4vla")).args(args).output().expect("run vlm4vla")
}

#[test]
fn info_prints_version_features_and_devices() {
    let out = vlm4vla(&["info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(&format!("vlm4vla {}", env!("CARGO_PKG_VERSION"))), "{s}");
    assert!(s.contains("features: cpu"), "{s}");
    assert!(s.contains("device: cpu"), "{s}");
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = vlm4vla(&["definitely-not-a-command"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn info_model_prints_exact_parameter_counts_of_the_real_configs() {
    for (name, total) in [
        ("qwen2.5-vl-3b", "3,754,622,976"),
        ("paligemma-3b-pt-224", "2,923,466,480"),
        ("kosmos-2-patch14-224", "1,664,485,376"),
    ] {
        let out = vlm4vla(&["info", "--model", name]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let s = String::from_utf8_lossy(&out.stdout);
        let total_line = s.lines().find(|l| l.trim_start().starts_with("total")).unwrap_or_default();
        assert!(total_line.contains(total), "{name}: {s}");
        for group in ["vision", "connector", "language_model", "embeddings"] {
            assert!(s.contains(group), "{name}: no {group} line in {s}");
        }
    }
}

#[test]
fn info_model_reads_a_checkpoint_directory() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/paligemma");
    let out = vlm4vla(&["info", "--model", dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("family paligemma") && s.contains("stored dtype: f32"), "{s}");
}

#[test]
fn info_model_errors_name_the_problem() {
    let out = vlm4vla(&["info", "--model", "no-such-model"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no-such-model") && e.contains("qwen2.5-vl-3b"), "{e}");
    let dir = std::env::temp_dir().join(format!("vlm4vla-info-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llava"}"#).unwrap();
    let out = vlm4vla(&["info", "--model", dir.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("model_type") && e.contains("llava"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_backbone_builds_every_family_from_names_and_directories() {
    use vlm4vla::engine::DType;
    use vlm4vla::models::registry::load_backbone;
    for (spec, family) in
        [("qwen2.5-vl-tiny", "qwen2_5_vl"), ("paligemma-tiny", "paligemma"), ("kosmos-2-tiny", "kosmos2")]
    {
        let bb = load_backbone(spec, DType::F32, 0).unwrap();
        assert_eq!(bb.family(), family);
        assert!(bb.params().num_params() > 0);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/paligemma");
    let bb = load_backbone(dir, DType::F32, 0).unwrap();
    assert_eq!(bb.family(), "paligemma");
    let err = load_backbone("nobody/no-such-model", DType::F32, 0).err().expect("an error").to_string();
    assert!(err.contains("nobody/no-such-model"), "{err}");
}
