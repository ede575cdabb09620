//! Fused projections (DESIGN.md §3, "Linear is one op"): projections that read the same input
//! are held as one parameter, q|k|v as `qkv_proj` and gate|up as `gate_up_proj`, so a layer runs
//! one GEMM where its checkpoint has two or three.
//!
//! Checkpoints keep their own tensors. Each family's `names.rs` has one table of [`Fusion`] rows
//! that says which checkpoint tensors are concatenated along dim 0, in which order, into which
//! fused parameter; [`FusedLayout`] applies it to the family's checkpoint tensor list. The
//! layout merges the parts when a model's store is built ([`FusedLayout::merge`]) and splits
//! fused tensors back into row views under the checkpoint's names wherever tensors are written
//! out or looked up by checkpoint name ([`FusedLayout::split`], [`FusedLayout::split_grads`],
//! [`FusedLayout::slot`]).
//!
//! ```
//! use vlm4vla_engine::{DType, Device, ParamStore, Tensor};
//! use vlm4vla_models::common::fused::{Fusion, FusedLayout};
//! const TABLE: &[Fusion] = &[Fusion { fused: "mlp.gate_up_proj", parts: &["mlp.gate_proj", "mlp.up_proj"] }];
//! let shapes = vec![
//!     ("layers.0.mlp.gate_proj.weight".to_string(), vec![3, 2]),
//!     ("layers.0.mlp.up_proj.weight".to_string(), vec![3, 2]),
//!     ("layers.0.mlp.down_proj.weight".to_string(), vec![2, 3]),
//! ];
//! let layout = FusedLayout::new(TABLE, &shapes).unwrap();
//! assert_eq!(layout.fused_shapes(&shapes)[0], ("layers.0.mlp.gate_up_proj.weight".to_string(), vec![6, 2]));
//! let mut ps = ParamStore::new();
//! for (i, (n, s)) in shapes.iter().enumerate() {
//!     ps.insert(n.clone(), &Tensor::full(i as f64, s, DType::F32, Device::Cpu).unwrap()).unwrap();
//! }
//! let ps = layout.merge(ps).unwrap();
//! assert_eq!(ps.names(), ["layers.0.mlp.gate_up_proj.weight", "layers.0.mlp.down_proj.weight"]);
//! let named: Vec<(String, Tensor)> = ps.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
//! let split = layout.split(&named).unwrap();
//! assert_eq!(split[1].0, "layers.0.mlp.up_proj.weight");
//! assert_eq!(split[1].1.to_vec::<f32>().unwrap(), [1.0; 6]);
//! ```

use std::collections::BTreeMap;
use vlm4vla_engine::{Error, GradStore, ParamStore, Result, Tensor};

const OP: &str = "fused projections";

/// One row of a family's fusion table: in every module that has them, the checkpoint
/// projections `parts` (name stems, without `.weight` / `.bias`) are held as one parameter
/// `fused`, their rows concatenated along dim 0 in this order. A checkpoint tensor
/// `<prefix><part>.<leaf>` (`prefix` empty or ending in `.`, `leaf` `weight` or `bias`) goes to
/// `<prefix><fused>.<leaf>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fusion {
    pub fused: &'static str,
    pub parts: &'static [&'static str],
}

/// Where a checkpoint tensor lives inside its fused parameter: rows `start..start + rows`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub fused: String,
    pub start: usize,
    pub rows: usize,
}

/// A family's fusion table applied to one config's checkpoint tensors: every fused parameter
/// with its parts (checkpoint name and rows, in order), and the way back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FusedLayout {
    fused: BTreeMap<String, Vec<(String, usize)>>,
    slots: BTreeMap<String, Slot>,
}

static NONE: FusedLayout = FusedLayout { fused: BTreeMap::new(), slots: BTreeMap::new() };

impl FusedLayout {
    /// The layout of a model without fused parameters.
    pub fn none() -> &'static FusedLayout {
        &NONE
    }

    /// Apply `table` to the checkpoint tensors `shapes` (`(name, shape)`). Every group the table
    /// starts must be complete (all parts present), and its parts must agree on every dim but
    /// the first; errors name the tensor.
    pub fn new(table: &[Fusion], shapes: &[(String, Vec<usize>)]) -> Result<FusedLayout> {
        // fused name -> one (part name, shape) slot per part of its row
        type Named = (String, Vec<usize>);
        let mut groups: BTreeMap<String, Vec<Option<Named>>> = BTreeMap::new();
        for (name, shape) in shapes {
            let Some((fused, i, n)) = match_part(table, name) else { continue };
            let slots = groups.entry(fused).or_insert_with(|| vec![None; n]);
            slots[i] = Some((name.clone(), shape.clone()));
        }
        let mut layout = FusedLayout::default();
        for (fused, slots) in groups {
            let mut parts = Vec::with_capacity(slots.len());
            let mut start = 0;
            for (i, slot) in slots.iter().enumerate() {
                let Some((name, shape)) = slot else {
                    let have = slots.iter().flatten().next().map(|(n, _)| n.as_str()).unwrap_or_default();
                    return Err(Error::tensor(OP, &fused, format!("part {i} is missing (have `{have}`)")));
                };
                let first = slots[0].as_ref().map(|(_, s)| s.as_slice()).unwrap_or_default();
                if shape.is_empty() || shape[1..] != first[1..] {
                    return Err(Error::tensor(
                        OP,
                        name,
                        format!("shape {shape:?} cannot be stacked on {first:?} along dim 0 into `{fused}`"),
                    ));
                }
                layout.slots.insert(name.clone(), Slot { fused: fused.clone(), start, rows: shape[0] });
                parts.push((name.clone(), shape[0]));
                start += shape[0];
            }
            layout.fused.insert(fused, parts);
        }
        Ok(layout)
    }

    /// Whether the layout fuses nothing.
    pub fn is_empty(&self) -> bool {
        self.fused.is_empty()
    }

    /// Whether `name` is a fused parameter.
    pub fn is_fused(&self, name: &str) -> bool {
        self.fused.contains_key(name)
    }

    /// Where checkpoint tensor `name` lives, when it is part of a fused parameter.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name)
    }

    /// Checkpoint tensor `name` in a `store` this layout merged: the parameter itself, or the
    /// (detached) row view of the fused parameter that holds it, which writes through
    /// ([`Tensor::assign`]) to the parameter.
    pub fn get(&self, store: &ParamStore, name: &str) -> Result<Tensor> {
        match self.slots.get(name) {
            Some(slot) if !store.contains(name) => store.get(&slot.fused)?.detach().narrow(0, slot.start, slot.rows),
            _ => store.get(name),
        }
    }

    /// The checkpoint names a parameter stands for: its parts when fused, else itself.
    pub fn checkpoint_names(&self, name: &str) -> Vec<String> {
        match self.fused.get(name) {
            Some(parts) => parts.iter().map(|(n, _)| n.clone()).collect(),
            None => vec![name.to_string()],
        }
    }

    /// The fused store's `(name, shape)` list for checkpoint tensors `shapes`: each group's first
    /// part replaced by the fused parameter, its other parts dropped, the rest in order.
    pub fn fused_shapes(&self, shapes: &[(String, Vec<usize>)]) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            match self.slots.get(name) {
                Some(slot) if slot.start == 0 => {
                    let rows = self.fused[&slot.fused].iter().map(|(_, r)| r).sum();
                    let mut s = shape.clone();
                    s[0] = rows;
                    out.push((slot.fused.clone(), s));
                }
                Some(_) => {}
                None => out.push((name.clone(), shape.clone())),
            }
        }
        out
    }

    /// `shapes` as a store spelled by `names` holds them: fused when any of `names` is a fused
    /// parameter, the checkpoint's own list otherwise.
    pub fn expected_shapes<'a>(
        &self,
        shapes: Vec<(String, Vec<usize>)>,
        mut names: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, Vec<usize>)> {
        if names.any(|n| self.is_fused(n)) {
            self.fused_shapes(&shapes)
        } else {
            shapes
        }
    }

    /// The store with every group of checkpoint tensors replaced by its fused parameter (a
    /// copy, at the first part's place; the `requires_grad` flag of the parts, which must agree),
    /// everything else shared as it is. A store without parts comes back unchanged. Errors name
    /// a part whose group is incomplete in the store, or whose parts disagree in dtype, device or
    /// flag.
    pub fn merge(&self, store: ParamStore) -> Result<ParamStore> {
        if !store.names().iter().any(|n| self.slots.contains_key(n)) {
            return Ok(store);
        }
        let mut out = ParamStore::new();
        for name in store.names() {
            let Some(slot) = self.slots.get(name) else {
                out.insert(name.clone(), &store.get(name)?)?;
                out.set_requires_grad(name, store.requires_grad(name)?)?;
                continue;
            };
            if out.contains(&slot.fused) {
                continue;
            }
            let parts = &self.fused[&slot.fused];
            let mut tensors = Vec::with_capacity(parts.len());
            let flag = store.requires_grad(name)?;
            for (part, _) in parts {
                if !store.contains(part) {
                    return Err(Error::tensor(
                        OP,
                        part,
                        format!("missing, but `{name}` is there: `{}` needs all its parts", slot.fused),
                    ));
                }
                if store.requires_grad(part)? != flag {
                    return Err(Error::tensor(
                        OP,
                        part,
                        format!("trainable differs from `{name}`: the parts of `{}` train together", slot.fused),
                    ));
                }
                tensors.push(store.get(part)?.detach());
            }
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let merged = vlm4vla_engine::no_grad(|| Tensor::cat(&refs, 0))
                .map_err(|e| Error::tensor(OP, &slot.fused, format!("cannot merge its parts: {e}")))?;
            out.insert(slot.fused.clone(), &merged)?;
            out.set_requires_grad(&slot.fused, flag)?;
        }
        Ok(out)
    }

    /// `named` with every fused entry replaced by its parts, in order, each a detached row view
    /// (no copy) under its checkpoint name; other entries unchanged. For weights and gradients
    /// alike (anything shaped as its parameter).
    pub fn split(&self, named: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(named.len());
        for (name, t) in named {
            match self.fused.get(name) {
                Some(parts) => {
                    let mut start = 0;
                    for (part, rows) in parts {
                        out.push((part.clone(), t.detach().narrow(0, start, *rows)?));
                        start += rows;
                    }
                }
                None => out.push((name.clone(), t.clone())),
            }
        }
        Ok(out)
    }

    /// Per-parameter state keyed `<parameter>.<suffix>` (an optimizer's `state_tensors`: moments
    /// and master copies shaped as their parameter, scalar step counts) under checkpoint names:
    /// a fused parameter's tensors split into its parts' rows, its scalars given to every part.
    pub fn split_state(&self, state: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(state.len());
        for (key, t) in state {
            let Some((parts, suffix)) = key.rsplit_once('.').and_then(|(p, s)| Some((self.fused.get(p)?, s))) else {
                out.push((key.clone(), t.clone()));
                continue;
            };
            let mut start = 0;
            for (part, rows) in parts {
                let v = if t.rank() == 0 { t.clone() } else { t.detach().narrow(0, start, *rows)? };
                out.push((format!("{part}.{suffix}"), v));
                start += rows;
            }
        }
        Ok(out)
    }

    /// The inverse of [`split_state`](Self::split_state): state written under checkpoint names
    /// keyed by the fused parameters again (rows concatenated in part order; a scalar must be
    /// the same for every part). Errors name a part whose state is missing or disagrees.
    pub fn merge_state(&self, state: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        let by_key: BTreeMap<&str, &Tensor> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut out = Vec::with_capacity(state.len());
        let mut done = std::collections::BTreeSet::new();
        for (key, t) in &state {
            let Some((slot, suffix)) = key.rsplit_once('.').and_then(|(p, s)| Some((self.slots.get(p)?, s))) else {
                out.push((key.clone(), t.clone()));
                continue;
            };
            let fused_key = format!("{}.{suffix}", slot.fused);
            if !done.insert(fused_key.clone()) {
                continue;
            }
            let mut tensors = Vec::new();
            for (part, _) in &self.fused[&slot.fused] {
                let k = format!("{part}.{suffix}");
                let p = by_key.get(k.as_str()).ok_or_else(|| {
                    Error::tensor(OP, &k, format!("missing, but `{key}` is there: `{fused_key}` needs every part"))
                })?;
                tensors.push(*p);
            }
            let merged = if t.rank() == 0 {
                let v = t.to_vec::<f64>()?;
                for (part, p) in self.fused[&slot.fused].iter().zip(&tensors) {
                    if p.rank() != 0 || p.to_vec::<f64>()? != v {
                        return Err(Error::tensor(OP, format!("{}.{suffix}", part.0), format!("differs from `{key}`")));
                    }
                }
                t.clone()
            } else {
                Tensor::cat(&tensors, 0)?
            };
            out.push((fused_key, merged));
        }
        Ok(out)
    }

    /// The gradient of every parameter of `store` that has one in `grads`, by checkpoint name
    /// (fused gradients split into their parts' rows).
    pub fn split_grads(&self, store: &ParamStore, grads: &GradStore) -> Result<BTreeMap<String, Tensor>> {
        let named: Vec<(String, Tensor)> =
            store.iter().filter_map(|(n, p)| grads.get(p).map(|g| (n.to_string(), g.clone()))).collect();
        Ok(self.split(&named)?.into_iter().collect())
    }
}

/// `(fused name, part index, part count)` of a checkpoint tensor name under `table`.
fn match_part(table: &[Fusion], name: &str) -> Option<(String, usize, usize)> {
    let (stem, leaf) = name.rsplit_once('.')?;
    if leaf != "weight" && leaf != "bias" {
        return None;
    }
    for row in table {
        for (i, part) in row.parts.iter().enumerate() {
            let Some(prefix) = stem.strip_suffix(part) else { continue };
            if prefix.is_empty() || prefix.ends_with('.') {
                return Some((format!("{prefix}{}.{leaf}", row.fused), i, row.parts.len()));
            }
        }
    }
    None
}

/// The heads of a fused projection's output `x: [B, L, (Σ heads)·head_dim]`: one
/// `[B, L, heads[i], head_dim]` view per part (q, k, v as [`Tensor::attention`] takes them),
/// without a copy.
pub fn split_heads<const N: usize>(x: &Tensor, heads: [usize; N], head_dim: usize) -> Result<[Tensor; N]> {
    let s = x.shape();
    let total: usize = heads.iter().sum();
    if s.len() != 3 || s[2] != total * head_dim {
        return Err(Error::shapes_note(
            "split_heads",
            &[s],
            format!("expected [B, L, {total}·{head_dim}] for heads {heads:?}"),
        ));
    }
    let all = x.reshape(&[s[0], s[1], total, head_dim])?;
    let mut start = 0;
    let mut parts = Vec::with_capacity(N);
    for h in heads {
        parts.push(all.narrow(2, start, h)?);
        start += h;
    }
    parts.try_into().map_err(|_| Error::invalid("split_heads", "one view per part"))
}
