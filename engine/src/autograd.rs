//! Reverse-mode automatic differentiation.
//!
//! An op records itself (an [`Op`]) on its output only when gradients are enabled and one of its
//! inputs tracks gradients, so frozen parameters cost no backward work and keep no activations.
//! `backward` sorts the recorded graph topologically, walks it in reverse, and calls each op
//! family's backward rule (one `match` in [`Op::as_backward`]). Rules run with recording off and
//! are written with engine ops, so they work on every device and dtype.

use crate::ops;
use crate::{Error, Result, Tensor, TensorId};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record themselves on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Run `f` with recording switched to `enabled`, restoring the previous state afterwards (also on
/// panic).
pub fn with_grad_enabled<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// Run `f` without recording any op (inference, optimizer updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_grad_enabled(false, f)
}

/// The record an op leaves on its output.
pub(crate) enum Op {
    View(ops::view::ViewOp),
    Unary(ops::unary::UnaryOp),
    Binary(ops::binary::BinaryOp),
    Reduce(ops::reduce::ReduceOp),
    Matmul(ops::matmul::MatmulOp),
    Index(ops::index::IndexOp),
    Norm(ops::norm::NormOp),
    Activation(ops::activation::ActivationOp),
    Rope(ops::rope::RopeOp),
    Attention(ops::attention::AttentionOp),
    Loss(ops::loss::LossOp),
    Checkpoint(CheckpointOp),
    /// An output that depends on tracked inputs but has no backward rule: reaching it while a
    /// gradient flows is an error, never a silent cut.
    NoBackward(NoBackwardOp),
}

/// What every op family implements for the autograd walk.
pub(crate) trait BackwardOp {
    /// The op's name, as listed in [`ops::OP_NAMES`].
    fn name(&self) -> &'static str;
    /// The tensors the op read (gradients may flow to those that track).
    fn inputs(&self) -> Vec<&Tensor>;
    /// Given the gradient of the loss with respect to `out`, add the gradients of the inputs.
    fn backward(&self, out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()>;
}

impl Op {
    pub(crate) fn as_backward(&self) -> &dyn BackwardOp {
        match self {
            Op::View(o) => o,
            Op::Unary(o) => o,
            Op::Binary(o) => o,
            Op::Reduce(o) => o,
            Op::Matmul(o) => o,
            Op::Index(o) => o,
            Op::Norm(o) => o,
            Op::Activation(o) => o,
            Op::Rope(o) => o,
            Op::Attention(o) => o,
            Op::Loss(o) => o,
            Op::Checkpoint(o) => o,
            Op::NoBackward(o) => o,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.as_backward().name()
    }
}

/// Record `op` only when recording is on and some input tracks gradients.
pub(crate) fn record(inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Option<Op> {
    (is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad())).then(op)
}

/// Gradients being accumulated during one backward walk.
pub(crate) struct Grads {
    map: HashMap<TensorId, Tensor>,
    /// Gradients of narrow views not yet added into their base's: joined when the base's gradient
    /// is taken, by one `cat` when they tile the base along one dim (the q|k|v views of one fused
    /// projection), else padded and added one by one.
    pieces: HashMap<TensorId, Pieces>,
}

/// Narrow-view gradients of one tensor (see [`Grads::add_narrow`]).
struct Pieces {
    shape: Vec<usize>,
    dim: usize,
    parts: Vec<(usize, Tensor)>,
}

impl Pieces {
    /// The base-shaped gradient the pieces add up to.
    fn join(mut self) -> Result<Tensor> {
        self.parts.sort_by_key(|(start, _)| *start);
        let mut end = 0;
        let tiles = self.parts.iter().all(|(start, g)| {
            let ok = *start == end;
            end += g.shape()[self.dim];
            ok
        }) && end == self.shape[self.dim];
        if tiles {
            let parts: Vec<&Tensor> = self.parts.iter().map(|(_, g)| g).collect();
            return Tensor::cat(&parts, self.dim);
        }
        let mut sum: Option<Tensor> = None;
        for (start, g) in &self.parts {
            let full = g.pad_into(&self.shape, self.dim, *start)?;
            sum = Some(match sum {
                Some(s) => s.add(&full)?,
                None => full,
            });
        }
        sum.ok_or_else(|| Error::invalid("backward", "no narrow gradients to join"))
    }
}

impl Grads {
    fn new() -> Self {
        Grads { map: HashMap::new(), pieces: HashMap::new() }
    }

    /// Add the gradient `grad` of the view `t.narrow(dim, start, len)` to `t`'s gradient.
    pub(crate) fn add_narrow(&mut self, t: &Tensor, grad: Tensor, dim: usize, start: usize) -> Result<()> {
        if !t.tracks_grad() {
            return Ok(());
        }
        if let Some(p) = self.pieces.get_mut(&t.id()) {
            if p.dim == dim {
                p.parts.push((start, grad));
                return Ok(());
            }
            let joined = self.pieces.remove(&t.id()).map(Pieces::join).transpose()?;
            if let Some(j) = joined {
                self.add_by_id(t.id(), j)?;
            }
        }
        self.pieces.insert(t.id(), Pieces { shape: t.shape().to_vec(), dim, parts: vec![(start, grad)] });
        Ok(())
    }

    /// The whole gradient of `id` (pending narrow pieces joined in), removed from the walk.
    fn take(&mut self, id: TensorId) -> Result<Option<Tensor>> {
        if let Some(p) = self.pieces.remove(&id) {
            let j = p.join()?;
            self.add_by_id(id, j)?;
        }
        Ok(self.map.remove(&id))
    }

    /// Every gradient, pending pieces joined.
    fn finish(mut self) -> Result<HashMap<TensorId, Tensor>> {
        let ids: Vec<TensorId> = self.pieces.keys().copied().collect();
        for id in ids {
            if let Some(g) = self.take(id)? {
                self.map.insert(id, g);
            }
        }
        Ok(self.map)
    }

    /// Add `grad` to the gradient of `t` (ignored if `t` does not track gradients). The first
    /// gradient is moved in; later ones are added.
    pub(crate) fn add(&mut self, t: &Tensor, grad: Tensor) -> Result<()> {
        if !t.tracks_grad() {
            return Ok(());
        }
        if grad.shape() != t.shape() {
            return Err(Error::shapes_note(
                "backward",
                &[t.shape(), grad.shape()],
                "gradient shape differs from its tensor",
            ));
        }
        self.add_by_id(t.id(), grad)
    }

    fn add_by_id(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let g = match self.map.remove(&id) {
            Some(prev) => prev.add(&grad)?,
            None => grad,
        };
        self.map.insert(id, g);
        Ok(())
    }
}

/// Gradients of variables, keyed by tensor id.
#[derive(Default)]
pub struct GradStore {
    map: HashMap<TensorId, Tensor>,
}

impl std::fmt::Debug for GradStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GradStore({} gradients)", self.map.len())
    }
}

impl GradStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The gradient of variable `t`, if any reached it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.map.get(&id)
    }

    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }

    pub fn insert(&mut self, t: &Tensor, grad: Tensor) {
        self.map.insert(t.id(), grad);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &TensorId> {
        self.map.keys()
    }

    /// Add every gradient of `other` into this store (micro-batch accumulation).
    pub fn accumulate(&mut self, other: GradStore) -> Result<()> {
        for (id, g) in other.map {
            let g = match self.map.remove(&id) {
                Some(prev) => crate::no_grad(|| prev.add(&g))?,
                None => g,
            };
            self.map.insert(id, g);
        }
        Ok(())
    }
}

/// Nodes reachable from `root` through recorded ops, inputs before outputs.
fn topo_sort(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS (graphs of deep models overflow a recursive one).
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let Some(op) = t.op() else { continue };
        let inputs: Vec<Tensor> = op.as_backward().inputs().into_iter().filter(|i| i.op().is_some()).cloned().collect();
        stack.push((t, true));
        for i in inputs {
            if !seen.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    order
}

pub(crate) fn backward(root: &Tensor) -> Result<GradStore> {
    let mut store = GradStore::new();
    backward_into(root, &mut store)?;
    Ok(store)
}

/// Reverse-mode differentiation from `root` seeded with `grad` (of `root`'s shape, dtype and
/// device) instead of ones: the gradient of `sum(root * grad)` for every variable, as torch's
/// `root.backward(grad)`. Benchmarks use it to time an op's backward for a given upstream
/// gradient.
///
/// ```
/// use vlm4vla_engine::{autograd::backward_with_grad, Device, Tensor};
/// let x = Tensor::from_vec(vec![1f64, 2.], &[2], Device::Cpu).unwrap().variable();
/// let y = x.sqr().unwrap();
/// let g = Tensor::from_vec(vec![10f64, 1.], &[2], Device::Cpu).unwrap();
/// let grads = backward_with_grad(&y, &g).unwrap();
/// assert_eq!(grads.get(&x).unwrap().to_vec::<f64>().unwrap(), vec![20., 4.]);
/// ```
pub fn backward_with_grad(root: &Tensor, grad: &Tensor) -> Result<GradStore> {
    let op = "backward_with_grad";
    if grad.dtype() != root.dtype() {
        return Err(Error::invalid(op, format!("gradient is {}, the tensor {}", grad.dtype(), root.dtype())));
    }
    if grad.device() != root.device() {
        return Err(Error::DeviceMismatch { op, a: root.device(), b: grad.device() });
    }
    let mut store = GradStore::new();
    backward_with_seed(root, grad.detach(), &mut store)?;
    Ok(store)
}

pub(crate) fn backward_into(root: &Tensor, store: &mut GradStore) -> Result<()> {
    let seed = root.ones_like()?;
    backward_with_seed(root, seed, store)
}

/// The walk: seed the root's gradient, visit recorded ops in reverse topological order, and leave
/// the gradients of variables in `store` (added to what it already holds).
pub(crate) fn backward_with_seed(root: &Tensor, seed: Tensor, store: &mut GradStore) -> Result<()> {
    if !root.tracks_grad() {
        return Err(Error::invalid("backward", format!("tensor {:?} does not require a gradient", root.shape())));
    }
    let order = topo_sort(root);
    let mut grads = Grads::new();
    grads.add(root, seed)?;
    let map = crate::no_grad(|| -> Result<HashMap<TensorId, Tensor>> {
        for node in order.iter().rev() {
            let Some(op) = node.op() else { continue };
            // Intermediate gradients are released as soon as they have been propagated.
            let Some(grad) = grads.take(node.id())? else { continue };
            op.as_backward().backward(node, &grad, &mut grads)?;
        }
        grads.finish()
    })?;
    let mut out = GradStore { map };
    std::mem::swap(&mut out, store);
    store.accumulate(out)
}

/// A function whose activations are recomputed during backward instead of being kept.
pub type CheckpointFn = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

pub(crate) struct CheckpointOp {
    f: CheckpointFn,
    inputs: Vec<Tensor>,
}

/// Activation checkpointing: run `f(inputs)` now without keeping its activations, and re-run it
/// during backward to get gradients for `inputs` and for every variable `f` uses.
///
/// ```
/// use std::sync::Arc;
/// use vlm4vla_engine::{checkpoint, Device, DType, Tensor};
/// let w = Tensor::rand_normal(0., 1., &[4, 4], DType::F64, Device::Cpu, 0).unwrap().variable();
/// let x = Tensor::rand_normal(0., 1., &[2, 4], DType::F64, Device::Cpu, 1).unwrap();
/// let w2 = w.clone();
/// let y = checkpoint(Arc::new(move |xs| xs[0].matmul(&w2)?.tanh()), &[x]).unwrap();
/// let g = y.sum_all().unwrap().backward().unwrap();
/// assert!(g.get(&w).is_some());
/// ```
pub fn checkpoint(f: CheckpointFn, inputs: &[Tensor]) -> Result<Tensor> {
    if !is_grad_enabled() {
        return f(inputs);
    }
    // Run with recording on to learn whether anything inside needs a gradient, then drop the graph
    // (and with it every activation) by keeping only a detached output.
    let out = f(inputs)?;
    if !out.tracks_grad() {
        return Ok(out);
    }
    let detached = out.detach();
    drop(out);
    let op = Op::Checkpoint(CheckpointOp { f, inputs: inputs.to_vec() });
    Ok(detached.view_with(detached.layout().clone(), Some(op)))
}

impl BackwardOp for CheckpointOp {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn inputs(&self) -> Vec<&Tensor> {
        self.inputs.iter().collect()
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        // Fresh leaves over the same storage stand in for the inputs during the re-run.
        let fresh: Vec<Tensor> =
            self.inputs.iter().map(|t| if t.tracks_grad() { t.variable() } else { t.detach() }).collect();
        let out = with_grad_enabled(true, || (self.f)(&fresh))?;
        if !out.tracks_grad() {
            return Ok(());
        }
        let mut inner = GradStore::new();
        backward_with_seed(&out, grad.clone(), &mut inner)?;
        for (orig, f) in self.inputs.iter().zip(&fresh) {
            if let Some(g) = inner.map.remove(&f.id()) {
                grads.add(orig, g)?;
            }
        }
        // What remains are the variables used inside `f`.
        for (id, g) in inner.map {
            grads.add_by_id(id, g)?;
        }
        Ok(())
    }
}

/// The record of an output without a backward rule (e.g. attention's log-sum-exp).
pub(crate) struct NoBackwardOp {
    pub(crate) name: &'static str,
    pub(crate) inputs: Vec<Tensor>,
}

impl BackwardOp for NoBackwardOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn inputs(&self) -> Vec<&Tensor> {
        self.inputs.iter().collect()
    }

    fn backward(&self, _out: &Tensor, _grad: &Tensor, _grads: &mut Grads) -> Result<()> {
        Err(Error::NoBackward { op: self.name })
    }
}
