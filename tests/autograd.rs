//! Autograd behaviour: shared subexpressions, accumulation, frozen inputs, no_grad, detach,
//! checkpoint equivalence, missing backward rules.

use std::sync::Arc;
use vlm4vla::engine::{checkpoint, no_grad, DType, Device, GradStore, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

fn close(a: &Tensor, b: &Tensor, tol: f64) {
    let (a, b) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn shared_subexpression_gets_both_contributions() {
    // y = h·h + h with h = tanh(w): dy/dw = (2h + 1)(1 − h²).
    let w = x(&[5], 1).variable();
    let h = w.tanh().unwrap();
    let y = h.mul(&h).unwrap().add(&h).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    let hv = h.to_vec::<f64>().unwrap();
    let want: Vec<f64> = hv.iter().map(|h| (2.0 * h + 1.0) * (1.0 - h * h)).collect();
    close(g.get(&w).unwrap(), &Tensor::from_vec(want, &[5], Device::Cpu).unwrap(), 1e-12);
}

#[test]
fn gradients_accumulate_across_two_backward_calls() {
    let w = x(&[3, 4], 2).variable();
    let a = x(&[2, 3], 3);
    let b = x(&[5, 3], 4);
    let loss = |inp: &Tensor| inp.matmul(&w).unwrap().sqr().unwrap().sum_all().unwrap();
    let mut store = GradStore::new();
    loss(&a).backward_into(&mut store).unwrap();
    loss(&b).backward_into(&mut store).unwrap();
    let ga = loss(&a).backward().unwrap();
    let gb = loss(&b).backward().unwrap();
    let sum = ga.get(&w).unwrap().add(gb.get(&w).unwrap()).unwrap();
    close(store.get(&w).unwrap(), &sum, 1e-12);
    // And equals the gradient of the combined batch.
    let both = loss(&a).add(&loss(&b)).unwrap().backward().unwrap();
    close(store.get(&w).unwrap(), both.get(&w).unwrap(), 1e-12);
}

#[test]
fn frozen_inputs_get_no_gradient_and_record_nothing() {
    let frozen = x(&[4, 4], 5); // not a variable
    let inp = x(&[2, 4], 6);
    let h = inp.matmul(&frozen).unwrap().tanh().unwrap();
    assert!(!h.tracks_grad(), "ops on frozen tensors must not record");
    let w = x(&[4, 1], 7).variable();
    let out = h.matmul(&w).unwrap().sum_all().unwrap();
    let g = out.backward().unwrap();
    assert!(g.get(&frozen).is_none());
    assert!(g.get(&w).is_some());
    assert_eq!(g.len(), 1, "only the trainable variable gets a gradient");
}

#[test]
fn no_grad_and_detach_stop_recording() {
    let w = x(&[3], 8).variable();
    let y = no_grad(|| w.exp().unwrap());
    assert!(!y.tracks_grad());
    assert!(w.exp().unwrap().tracks_grad());
    let d = w.exp().unwrap().detach();
    assert!(!d.tracks_grad());
    let err = d.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("does not require a gradient"), "{err}");
    // Recording resumes after the scope, also when the closure returned an error.
    let _ = no_grad(|| w.reshape(&[7]));
    assert!(w.sin().unwrap().tracks_grad());
}

#[test]
fn checkpoint_gives_the_same_gradients_as_the_plain_path() {
    let w1 = x(&[6, 8], 9).variable();
    let w2 = x(&[8, 6], 10).variable();
    let inp = x(&[4, 6], 11).variable();
    let block = |xs: &[Tensor], w1: &Tensor, w2: &Tensor| -> vlm4vla::engine::Result<Tensor> {
        xs[0].matmul(w1)?.gelu()?.matmul(w2)?.add(&xs[0])
    };
    let plain = block(std::slice::from_ref(&inp), &w1, &w2).unwrap().sqr().unwrap().sum_all().unwrap();
    let gp = plain.backward().unwrap();
    let (c1, c2) = (w1.clone(), w2.clone());
    let ck = checkpoint(Arc::new(move |xs: &[Tensor]| block(xs, &c1, &c2)), std::slice::from_ref(&inp)).unwrap();
    // The checkpointed output holds no graph of the block (only the checkpoint record).
    assert!(ck.tracks_grad());
    let gc = ck.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for t in [&w1, &w2, &inp] {
        close(gc.get(t).unwrap(), gp.get(t).unwrap(), 1e-12);
    }
    // Two checkpointed blocks in a row.
    let (c1, c2) = (w1.clone(), w2.clone());
    let f: vlm4vla::engine::CheckpointFn = Arc::new(move |xs: &[Tensor]| block(xs, &c1, &c2));
    let y = checkpoint(f.clone(), &[checkpoint(f, std::slice::from_ref(&inp)).unwrap()]).unwrap();
    let g2 = y.sum_all().unwrap().backward().unwrap();
    let y_plain = block(&[block(std::slice::from_ref(&inp), &w1, &w2).unwrap()], &w1, &w2).unwrap();
    let gp2 = y_plain.sum_all().unwrap().backward().unwrap();
    for t in [&w1, &w2, &inp] {
        close(g2.get(t).unwrap(), gp2.get(t).unwrap(), 1e-12);
    }
}

#[test]
fn checkpoint_of_frozen_block_records_nothing() {
    let w = x(&[3, 3], 12); // frozen
    let inp = x(&[2, 3], 13);
    let out = checkpoint(Arc::new(move |xs: &[Tensor]| xs[0].matmul(&w)), &[inp]).unwrap();
    assert!(!out.tracks_grad());
}

#[test]
fn comparisons_have_no_gradient_and_stop_the_path() {
    // A mask derived from a variable is a constant: the gradient flows only through `mul`'s
    // other operand.
    let w = x(&[4], 14).variable();
    let m = w.gt(&Tensor::zeros(&[4], DType::F64, Device::Cpu).unwrap()).unwrap().to_dtype(DType::F64).unwrap();
    assert!(!m.tracks_grad());
    let g = w.mul(&m).unwrap().sum_all().unwrap().backward().unwrap();
    close(g.get(&w).unwrap(), &m, 0.0);
}

#[test]
fn deep_graphs_do_not_overflow_the_stack() {
    let w = x(&[2], 15).variable();
    let mut h = w.clone();
    for _ in 0..20_000 {
        h = h.affine(1.0, 0.0).unwrap();
    }
    let g = h.sum_all().unwrap().backward().unwrap();
    close(g.get(&w).unwrap(), &Tensor::ones(&[2], DType::F64, Device::Cpu).unwrap(), 0.0);
}

#[test]
fn reaching_an_op_without_backward_is_an_error() {
    use vlm4vla::engine::{attention, AttentionMask};
    let q = x(&[1, 3, 2, 4], 16).variable();
    let k = x(&[1, 3, 2, 4], 17);
    let v = x(&[1, 3, 2, 4], 18);
    let a = attention(&q, &k, &v, &AttentionMask::Causal, None, 0.5).unwrap();
    // The output has a backward rule ...
    assert!(a.out.sum_all().unwrap().backward().unwrap().get(&q).is_some());
    // ... the log-sum-exp does not: using it must fail loudly, naming the op.
    assert!(a.lse.tracks_grad());
    let err = a.lse.sum_all().unwrap().add(&a.out.sum_all().unwrap()).unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("attention_lse") && err.contains("no backward rule"), "{err}");
}

/// Narrow views of one tensor: their gradients are joined by one `cat` when they tile it (the
/// q|k|v views of a fused projection), padded and summed when they overlap, leave gaps or cut
/// along different dims; every case equals the gradient computed by hand.
#[test]
fn narrow_view_gradients_join_into_their_base() {
    let base = x(&[2, 3, 10], 7).variable();
    let w = x(&[2, 3, 10], 8);
    // Weighted sum of views (each view's gradient is the matching slice of `w`), so the base's
    // gradient is `w` summed over every view covering an element.
    let run = |views: &[(usize, usize, usize)]| -> Vec<f64> {
        let mut loss: Option<Tensor> = None;
        for &(dim, start, len) in views {
            let v = base.narrow(dim, start, len).unwrap();
            let term = v.mul(&w.narrow(dim, start, len).unwrap()).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                Some(l) => l.add(&term).unwrap(),
                None => term,
            });
        }
        let g = loss.unwrap().backward().unwrap();
        g.get(&base).unwrap().to_vec::<f64>().unwrap()
    };
    let wv = w.to_vec::<f64>().unwrap();
    let want = |views: &[(usize, usize, usize)]| -> Vec<f64> {
        let mut g = vec![0.0; 60];
        for (i, gi) in g.iter_mut().enumerate() {
            let idx = [i / 30, (i / 10) % 3, i % 10];
            for &(dim, start, len) in views {
                if idx[dim] >= start && idx[dim] < start + len {
                    *gi += wv[i];
                }
            }
        }
        g
    };
    for views in [
        vec![(2, 0, 6), (2, 6, 2), (2, 8, 2)], // tiles the last dim, like q|k|v
        vec![(2, 8, 2), (2, 0, 6), (2, 6, 2)], // the same, recorded out of order
        vec![(2, 0, 6), (2, 4, 6)],            // overlapping
        vec![(2, 0, 3), (2, 5, 2)],            // with gaps
        vec![(1, 0, 2), (2, 3, 4), (1, 2, 1)], // along two dims
        vec![(0, 1, 1)],                       // a single view
    ] {
        let got = run(&views);
        let w = want(&views);
        for (a, b) in got.iter().zip(&w) {
            assert!((a - b).abs() < 1e-12, "views {views:?}: {a} vs {b}");
        }
    }
}
