//! `tools/gpu-check` (the GPU acceptance run) and `tools/gpu-prepare` are valid bash, and the
//! check's phase budgets, as its header states them and as the code applies them, agree and fit the
//! 8-minute time box. The run itself needs a GPU; its CPU stand-in is
//! `GPU_CHECK_DRY_RUN=1 bash tools/gpu-check DIR` (docs/gpu.md).

use std::path::{Path, PathBuf};
use std::process::Command;

fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("tools").join(name)
}

#[test]
fn scripts_parse() {
    for name in ["gpu-check", "gpu-prepare"] {
        let path = tool(name);
        let out = Command::new("bash").arg("-n").arg(&path).output().expect("bash runs");
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn phase_budgets_fit_eight_minutes() {
    let text = std::fs::read_to_string(tool("gpu-check")).unwrap();
    // The header's table: `#   env         25 s  ...`.
    let header: Vec<(String, u32)> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.trim_start_matches('#').split_whitespace();
            let (name, secs, unit) = (w.next()?, w.next()?, w.next()?);
            if unit != "s" || !["env", "suite", "step", "kernels"].contains(&name) {
                return None;
            }
            Some((name.to_string(), secs.parse().ok()?))
        })
        .collect();
    let names: Vec<&str> = header.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["env", "suite", "step", "kernels"], "the header names each phase's budget once");
    let total: u32 = header.iter().map(|(_, s)| s).sum();
    assert!(total + 10 <= 480, "phases take {total} s of the 480 s box, leaving under 10 s to pack");
    // Each `phase_<name>() {` opens with `b=$(budget N)` equal to the header's N.
    for (name, secs) in &header {
        let start = text.find(&format!("phase_{name}() {{")).unwrap_or_else(|| panic!("no phase_{name}"));
        let body = &text[start..];
        let b = body.find("budget ").map(|i| &body[i + 7..]).unwrap();
        let n: u32 = b[..b.find(')').unwrap()].trim().parse().unwrap();
        assert_eq!(n, *secs, "phase {name}: the code's budget differs from the header's");
    }
}
