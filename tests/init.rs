//! Random initialisation draws every tensor from its own seed on the rayon pool: the weights do
//! not depend on the number of threads.

use vlm4vla::engine::DType;
use vlm4vla::models::registry::load_backbone;

#[test]
fn random_weights_do_not_depend_on_the_thread_count() {
    for name in ["paligemma-tiny", "qwen2.5-vl-tiny", "kosmos-2-tiny"] {
        let build = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let b = load_backbone(name, DType::F32, 11).unwrap();
                b.params().iter().map(|(n, t)| (n.to_string(), t.to_vec::<f32>().unwrap())).collect::<Vec<_>>()
            })
        };
        let (one, four) = (build(1), build(4));
        assert_eq!(one.len(), four.len(), "{name}");
        for ((n1, a), (n2, b)) in one.iter().zip(&four) {
            assert_eq!(n1, n2, "{name}: order");
            assert!(a == b, "{name}: `{n1}` differs between 1 and 4 threads");
        }
        assert!(one.iter().any(|(_, v)| v.iter().any(|&x| x != 0.0 && x != 1.0)), "{name}: random values drawn");
    }
}
