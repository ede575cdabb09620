//! Gradcheck of every differentiable op against central finite differences in f64, one module
//! per op family, plus a test that fails when an op exists without a gradcheck entry.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod attention;
mod autograd;
mod binary;
mod index;
mod loss;
mod matmul;
mod norm;
mod reduce;
mod rope;
mod unary;
mod view;

/// One gradcheck case: the op it covers and a body that panics on failure.
pub struct Case {
    pub op: &'static str,
    pub run: fn(),
}

fn families() -> Vec<(&'static str, Vec<Case>)> {
    vec![
        ("view", view::cases()),
        ("unary", unary::cases()),
        ("binary", binary::cases()),
        ("reduce", reduce::cases()),
        ("matmul", matmul::cases()),
        ("index", index::cases()),
        ("norm", norm::cases()),
        ("activation", activation::cases()),
        ("rope", rope::cases()),
        ("attention", attention::cases()),
        ("loss", loss::cases()),
        ("autograd", autograd::cases()),
    ]
}

#[test]
fn every_op_has_a_gradcheck_entry() {
    let covered: std::collections::HashSet<&str> = families().into_iter().flat_map(|(_, c)| c).map(|c| c.op).collect();
    let missing: Vec<&str> = vlm4vla::engine::ops::op_names().into_iter().filter(|n| !covered.contains(n)).collect();
    assert!(missing.is_empty(), "ops without a gradcheck entry: {missing:?}");
    let unknown: Vec<&&str> = covered.iter().filter(|n| !vlm4vla::engine::ops::op_names().contains(n)).collect();
    assert!(unknown.is_empty(), "gradcheck entries for ops not in ops::op_names(): {unknown:?}");
}

macro_rules! family_test {
    ($name:ident, $fam:ident) => {
        #[test]
        fn $name() {
            for case in $fam::cases() {
                (case.run)();
            }
        }
    };
}
family_test!(gradcheck_view, view);
family_test!(gradcheck_unary, unary);
family_test!(gradcheck_binary, binary);
family_test!(gradcheck_reduce, reduce);
family_test!(gradcheck_matmul, matmul);
family_test!(gradcheck_index, index);
family_test!(gradcheck_norm, norm);
family_test!(gradcheck_activation, activation);
family_test!(gradcheck_rope, rope);
family_test!(gradcheck_attention, attention);
family_test!(gradcheck_loss, loss);
family_test!(gradcheck_autograd, autograd);
