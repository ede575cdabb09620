//! The parameter store: a model's tensors by checkpoint name (e.g.
//! `model.layers.0.mlp.up_proj.weight`), in insertion order, each with a `requires_grad` flag.
//!
//! Every parameter keeps two handles over the same storage: a variable (a leaf that requires a
//! gradient) and a detached one. [`ParamStore::get`] hands out the variable while the parameter
//! is trainable and the detached handle while it is frozen, so ops on a frozen parameter record
//! nothing and it never receives a gradient. Both handles are created once, so the handle for a
//! name stays the same across calls (and `GradStore` lookups by it keep working) as long as its
//! flag is unchanged; unfreezing hands the same variable out again.

use crate::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};

const STORE: &str = "ParamStore";

#[derive(Clone)]
struct Param {
    variable: Tensor,
    detached: Tensor,
    requires_grad: bool,
}

impl Param {
    fn new(t: &Tensor) -> Result<Param> {
        let detached = t.detach().contiguous()?;
        Ok(Param { variable: detached.variable(), requires_grad: detached.dtype().is_float(), detached })
    }

    fn handle(&self) -> &Tensor {
        if self.requires_grad {
            &self.variable
        } else {
            &self.detached
        }
    }
}

/// Named parameters with per-parameter `requires_grad` flags.
///
/// ```
/// use vlm4vla_engine::{Device, DType, ParamStore, Tensor};
/// let mut ps = ParamStore::new();
/// let w = ps.insert("vision.proj.weight", &Tensor::ones(&[2, 2], DType::F32, Device::Cpu).unwrap()).unwrap();
/// ps.insert("lm.head.weight", &Tensor::ones(&[2, 3], DType::F32, Device::Cpu).unwrap()).unwrap();
/// assert_eq!(ps.freeze_prefix("vision."), 1);
/// assert!(!ps.get("vision.proj.weight").unwrap().tracks_grad());
/// assert_eq!(ps.num_trainable(), 6);
/// assert!(w.is_variable());
/// ```
#[derive(Clone, Default)]
pub struct ParamStore {
    order: Vec<String>,
    params: HashMap<String, Param>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a parameter under `name` and return its handle (what [`get`](Self::get) returns).
    /// The store shares `t`'s storage (copying only when `t` is not contiguous), so optimizer
    /// updates are visible through `t` too. Float parameters start trainable; other dtypes (integer buffers)
    /// start frozen and cannot be made trainable. Errors if `name` is already present.
    pub fn insert(&mut self, name: impl Into<String>, t: &Tensor) -> Result<Tensor> {
        let name = name.into();
        if self.params.contains_key(&name) {
            return Err(Error::tensor(STORE, name, "a parameter with this name is already present"));
        }
        let p = Param::new(t)?;
        let handle = p.handle().clone();
        self.order.push(name.clone());
        self.params.insert(name, p);
        Ok(handle)
    }

    /// The handle of parameter `name`: a variable when trainable, a non-tracking tensor when frozen.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        Ok(self.param(name)?.handle().clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Parameter names in insertion order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn requires_grad(&self, name: &str) -> Result<bool> {
        Ok(self.param(name)?.requires_grad)
    }

    /// Make `name` trainable or frozen. Errors if it is missing, or when asked to train a
    /// non-float parameter.
    pub fn set_requires_grad(&mut self, name: &str, requires_grad: bool) -> Result<()> {
        let p = self.params.get_mut(name).ok_or_else(|| missing(name))?;
        if requires_grad && !p.detached.dtype().is_float() {
            return Err(Error::tensor(
                STORE,
                name,
                format!("a {} parameter cannot require a gradient", p.detached.dtype()),
            ));
        }
        p.requires_grad = requires_grad;
        Ok(())
    }

    /// Freeze every parameter whose name starts with `prefix`; returns how many matched.
    pub fn freeze_prefix(&mut self, prefix: &str) -> usize {
        self.set_prefix(prefix, false)
    }

    /// Make every float parameter whose name starts with `prefix` trainable; returns how many
    /// matched (non-float parameters stay frozen and are not counted).
    pub fn unfreeze_prefix(&mut self, prefix: &str) -> usize {
        self.set_prefix(prefix, true)
    }

    fn set_prefix(&mut self, prefix: &str, requires_grad: bool) -> usize {
        let mut n = 0;
        for (name, p) in self.params.iter_mut() {
            if name.starts_with(prefix) && (!requires_grad || p.detached.dtype().is_float()) {
                p.requires_grad = requires_grad;
                n += 1;
            }
        }
        n
    }

    /// `(name, handle)` of every parameter, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.order.iter().map(move |n| (n.as_str(), self.params[n].handle()))
    }

    /// `(name, variable)` of the trainable parameters, in insertion order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.iter().filter(|(_, t)| t.is_variable()).map(|(n, t)| (n.to_string(), t.clone())).collect()
    }

    /// The variables of the trainable parameters, in insertion order (e.g. for
    /// [`clip_grad_norm`](crate::optim::clip_grad_norm)).
    pub fn trainable_tensors(&self) -> Vec<Tensor> {
        self.iter().filter(|(_, t)| t.is_variable()).map(|(_, t)| t.clone()).collect()
    }

    /// Total number of elements over all parameters.
    pub fn num_params(&self) -> usize {
        self.params.values().map(|p| p.detached.elem_count()).sum()
    }

    /// Number of elements over the trainable parameters.
    pub fn num_trainable(&self) -> usize {
        self.params.values().filter(|p| p.requires_grad).map(|p| p.detached.elem_count()).sum()
    }

    /// Element counts summed per group, where `group_of` maps a parameter name to its group (e.g.
    /// `|n| n.split('.').next().unwrap_or("").to_string()`).
    pub fn counts_by_group(&self, group_of: impl Fn(&str) -> String) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (name, t) in self.iter() {
            *out.entry(group_of(name)).or_insert(0) += t.elem_count();
        }
        out
    }

    /// Convert every float parameter to `dtype` (a copy; integer buffers are left as they are).
    /// Handles change: fetch them again with [`get`](Self::get) afterwards. Flags are kept.
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        if !dtype.is_float() {
            return Err(Error::dtype("ParamStore::to_dtype", dtype, "parameters must be converted to a float dtype"));
        }
        for name in &self.order {
            let p = self.params.get_mut(name).ok_or_else(|| missing(name))?;
            if p.detached.dtype().is_float() && p.detached.dtype() != dtype {
                let flag = p.requires_grad;
                *p = Param::new(&p.detached.to_dtype(dtype)?)?;
                p.requires_grad = flag;
            }
        }
        Ok(())
    }

    fn param(&self, name: &str) -> Result<&Param> {
        self.params.get(name).ok_or_else(|| missing(name))
    }
}

fn missing(name: &str) -> Error {
    Error::tensor(STORE, name, "no parameter with this name")
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}
