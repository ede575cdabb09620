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
