//! Action normalisation: the three modes, exact inverses on the unclipped range, the
//! constant-dimension guard, the gripper, and serialisation for checkpoints.

use proptest::prelude::*;
use vlm4vla::models::vla::{ActionNormalizer, ActionStats, NormalizationMode};

fn stats(min: Vec<f32>, max: Vec<f32>) -> ActionStats {
    let mean: Vec<f32> = min.iter().zip(&max).map(|(a, b)| 0.5 * (a + b)).collect();
    let q01: Vec<f32> = min.iter().zip(&max).map(|(a, b)| a + 0.1 * (b - a)).collect();
    let q99: Vec<f32> = min.iter().zip(&max).map(|(a, b)| b - 0.1 * (b - a)).collect();
    ActionStats { std: vec![1.0; min.len()], mean, min, max, q01, q99 }
}

#[test]
fn fixed_bounds_clips_then_scales() {
    let n = ActionNormalizer::fixed_bounds(0.65, 6).unwrap();
    let raw = [0.65, -0.65, 0.325, 2.0, -3.0, 0.0, -1.0];
    let y = n.normalize_actions(&raw).unwrap();
    let want = [1.0, -1.0, 0.5, 1.0, -1.0, 0.0, 0.0];
    for (a, b) in y.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{y:?}");
    }
    let back = n.denormalize_arm(&y[..6]).unwrap();
    assert!((back[2] - 0.325).abs() < 1e-6 && (back[3] - 0.65).abs() < 1e-6, "clipped values come back at the bound");
    assert!(ActionNormalizer::fixed_bounds(0.0, 6).is_err());
    assert!(n.normalize_actions(&[0.0; 8]).is_err());
}

#[test]
fn percentile_saturates_outside_the_central_range() {
    let s = stats(vec![-1.0, 0.0], vec![1.0, 10.0]);
    let s = ActionStats { min: vec![-1.0, 0.0, -1.0], max: vec![1.0, 10.0, 1.0], ..stats_with_gripper(s) };
    let n = ActionNormalizer::from_stats(NormalizationMode::Percentile, &s).unwrap();
    assert_eq!(n.arm_dims, 2);
    // q01 = -0.8, q99 = 0.8 in dim 0.
    let y = n.normalize_arm(&[-0.8, 1.0, 0.8, 9.0, 0.95, 5.0]).unwrap();
    assert!((y[0] + 1.0).abs() < 1e-6 && (y[2] - 1.0).abs() < 1e-6 && y[4] == 1.0, "{y:?}");
    assert!((y[1] + 1.0).abs() < 1e-6 && (y[3] - 1.0).abs() < 1e-6 && y[5].abs() < 1e-6, "{y:?}");
}

fn stats_with_gripper(s: ActionStats) -> ActionStats {
    let push = |mut v: Vec<f32>, g: f32| {
        v.push(g);
        v
    };
    ActionStats {
        min: push(s.min, -1.0),
        max: push(s.max, 1.0),
        mean: push(s.mean, 0.0),
        std: push(s.std, 1.0),
        q01: push(s.q01, -1.0),
        q99: push(s.q99, 1.0),
    }
}

#[test]
fn constant_dimensions_map_to_zero_and_back_to_the_mean() {
    let mut s = stats(vec![-1.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0], vec![1.0, 0.3, 1.0, 1.0, 1.0, 1.0, 1.0]);
    s.mean[1] = 0.3;
    s.q01[1] = 0.3;
    s.q99[1] = 0.3 + 1e-9;
    for mode in [NormalizationMode::MinMax, NormalizationMode::Percentile] {
        let n = ActionNormalizer::from_stats(mode, &s).unwrap();
        let y = n.normalize_arm(&[0.5, 0.3, 0.5, 0.5, 0.5, 0.5]).unwrap();
        assert_eq!(y[1], 0.0, "{mode:?}");
        assert!(y.iter().all(|v| v.is_finite()));
        let x = n.denormalize_arm(&[0.0, 0.7, 0.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(x[1], 0.3, "{mode:?}");
    }
}

#[test]
fn gripper_targets_and_commands() {
    let n = ActionNormalizer::fixed_bounds(0.65, 6).unwrap();
    assert_eq!((n.gripper_target(1.0), n.gripper_target(-1.0)), (1.0, 0.0));
    assert_eq!((n.gripper_from_logit(0.3), n.gripper_from_logit(-0.3), n.gripper_from_logit(0.0)), (1.0, -1.0, -1.0));
    assert_eq!(n.gripper_from_probability(0.6, 0.5), 1.0);
    // A {0, 1} gripper in the data: threshold at 0.5, commands back in {0, 1}.
    let mut s = stats(vec![-1.0; 7], vec![1.0; 7]);
    s.min[6] = 0.0;
    let n = ActionNormalizer::from_stats(NormalizationMode::MinMax, &s).unwrap();
    assert_eq!((n.gripper_target(1.0), n.gripper_target(0.0), n.gripper_target(0.4)), (1.0, 0.0, 0.0));
    assert_eq!((n.gripper_from_logit(2.0), n.gripper_from_logit(-2.0)), (1.0, 0.0));
    let out = n.denormalize_actions(&[0.0; 12], &[1.0, -1.0]).unwrap();
    assert_eq!((out.len(), out[6], out[13]), (14, 1.0, 0.0));
    assert!(n.denormalize_actions(&[0.0; 12], &[1.0]).is_err());
}

#[test]
fn serialises_for_checkpoints() {
    let s = stats(vec![-0.5, -1.0, -2.0, -0.1, -0.2, -0.3, -1.0], vec![0.5, 1.0, 2.0, 0.1, 0.2, 0.3, 1.0]);
    for mode in
        [NormalizationMode::FixedBounds { clip: 0.65 }, NormalizationMode::MinMax, NormalizationMode::Percentile]
    {
        let n = ActionNormalizer::from_stats(mode, &s).unwrap();
        let back = ActionNormalizer::from_json(&n.to_json()).unwrap();
        assert_eq!(back, n);
    }
    let json = ActionNormalizer::fixed_bounds(0.65, 6).unwrap().to_json();
    assert!(json.contains("\"fixed_bounds\"") && json.contains("0.65"), "{json}");
    let e = ActionNormalizer::from_json("{\"mode\": 3}").unwrap_err().to_string();
    assert!(e.contains("malformed"), "{e}");
    let broken = json.replacen("\"arm_dims\": 6", "\"arm_dims\": 5", 1);
    let e = ActionNormalizer::from_json(&broken).unwrap_err().to_string();
    assert!(e.contains("`low` has 6 values for 5 arm dims"), "{e}");
}

#[test]
fn reads_lerobot_stats_json() {
    let v: serde_json::Value = serde_json::json!({
        "action": {"min": [-1, -2, -1], "max": [1, 2, 1], "mean": [0, 0, 0], "std": [1, 1, 1], "count": [10],
                   "q01": [-0.9, -1.5, -1], "q99": [0.9, 1.5, 1]}
    });
    let s = ActionStats::from_stats_json(&v, "action").unwrap();
    assert_eq!(s.q99, vec![0.9, 1.5, 1.0]);
    let n = ActionNormalizer::from_stats(NormalizationMode::Percentile, &s).unwrap();
    assert_eq!((n.arm_dims, n.low.clone()), (2, vec![-0.9, -1.5]));
    let e = ActionStats::from_stats_json(&v, "observation.state").unwrap_err().to_string();
    assert!(e.contains("observation.state"), "{e}");
    let bad = serde_json::json!({"action": {"min": [0, 0], "max": [1], "mean": [0, 0], "std": [1, 1]}});
    let e = ActionStats::from_stats_json(&bad, "action").unwrap_err().to_string();
    assert!(e.contains("`max` has 1 values"), "{e}");
}

fn arb_case() -> impl Strategy<Value = (Vec<(f32, f32)>, Vec<f32>)> {
    prop::collection::vec((-5.0f32..5.0, 0.01f32..4.0), 6).prop_flat_map(|bounds| {
        let xs: Vec<_> = bounds.iter().map(|&(lo, w)| lo..lo + w).collect();
        (Just(bounds), xs)
    })
}

proptest! {
    /// denormalize(normalize(x)) == x for x inside the unclipped range, in every mode.
    #[test]
    fn round_trip_is_exact_on_the_unclipped_range((bounds, x) in arb_case(), t in 0.0f32..1.0) {
        let mut min: Vec<f32> = bounds.iter().map(|b| b.0).collect();
        let mut max: Vec<f32> = bounds.iter().map(|b| b.0 + b.1).collect();
        min.push(-1.0);
        max.push(1.0);
        let s = ActionStats { mean: vec![0.0; 7], std: vec![1.0; 7], q01: min.clone(), q99: max.clone(), min, max };
        for mode in [NormalizationMode::MinMax, NormalizationMode::Percentile] {
            let n = ActionNormalizer::from_stats(mode, &s).unwrap();
            let y = n.normalize_arm(&x).unwrap();
            prop_assert!(y.iter().all(|v| (-1.0..=1.0).contains(v)));
            let back = n.denormalize_arm(&y).unwrap();
            for d in 0..6 {
                let tol = 1e-5 * (bounds[d].1 + bounds[d].0.abs() + 1.0);
                prop_assert!((back[d] - x[d]).abs() <= tol, "{:?} dim {}: {} -> {} -> {}", mode, d, x[d], y[d], back[d]);
            }
        }
        let f = ActionNormalizer::fixed_bounds(0.65, 6).unwrap();
        let xin: Vec<f32> = (0..6).map(|d| (2.0 * t - 1.0) * 0.65 * (d as f32 + 1.0) / 6.0).collect();
        let back = f.denormalize_arm(&f.normalize_arm(&xin).unwrap()).unwrap();
        for d in 0..6 {
            prop_assert!((back[d] - xin[d]).abs() <= 1e-6);
        }
    }
}

#[test]
fn mean_std_maps_a_band_of_sigmas_to_the_unit_range() {
    // Arm dims 0 and 1, then the gripper.
    let s = ActionStats {
        min: vec![-9.0, -9.0, -1.0],
        max: vec![9.0, 9.0, 1.0],
        mean: vec![1.0, -2.0, 0.0],
        std: vec![0.5, 2.0, 1.0],
        q01: vec![-9.0, -9.0, -1.0],
        q99: vec![9.0, 9.0, 1.0],
    };
    let n = ActionNormalizer::from_stats(NormalizationMode::MeanStd { sigmas: 2.0 }, &s).unwrap();
    // mean + 1 std is half the band; mean − 2 std its low end; beyond saturates.
    let y = n.normalize_arm(&[1.5, -6.0, 3.0, 100.0]).unwrap();
    for (a, b) in y.iter().zip([0.5, -1.0, 1.0, 1.0]) {
        assert!((a - b).abs() < 1e-6, "{y:?}");
    }
    let back = n.denormalize_arm(&[0.5, -1.0]).unwrap();
    assert!((back[0] - 1.5).abs() < 1e-6 && (back[1] + 6.0).abs() < 1e-6, "{back:?}");
    for bad in [0.0, -1.0, f32::NAN] {
        assert!(ActionNormalizer::from_stats(NormalizationMode::MeanStd { sigmas: bad }, &s).is_err(), "{bad}");
    }
}
