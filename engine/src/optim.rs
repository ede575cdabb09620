//! Optimizers, learning-rate schedules and gradient clipping.
//!
//! [`AdamW`] and [`Sgd`] follow `torch.optim.AdamW` / `torch.optim.SGD` (single-tensor path)
//! operation for operation. The update itself is the backends' optimizer primitive
//! (`backend::Optim`): one fused CPU pass per tensor (`cpu/optim.rs`), or, for parameters on a
//! GPU, one multi-tensor kernel launch for all of them (`cuda/optim.rs`, `kernels/cuda/optim.cu`;
//! one per device, dtype and step count); the state (buffers and masters) are tensors on the
//! parameter's device. Nothing is recorded in the autograd graph. bf16/f16 parameters are updated
//! through an f32 master copy kept in the optimizer state (the parameter receives the rounded
//! master after each step, so updates smaller than a bf16 ulp still accumulate); f32 parameters
//! are their own master with f32 moments; f64 parameters keep f64 state.
//!
//! Optimizer state is keyed by parameter name and can be saved and restored as named tensors
//! ([`AdamW::state_tensors`], [`AdamW::load_state`]): for a parameter `name`, `name.step` (an i64
//! scalar: the number of steps this parameter has taken), the optimizer's buffers (`name.exp_avg`
//! and `name.exp_avg_sq` for AdamW, `name.momentum_buffer` for SGD with momentum) and, for
//! bf16/f16 parameters, `name.master` (f32).
//!
//! ```
//! use vlm4vla_engine::{AdamW, AdamWConfig, Device, DType, LrSchedule, ParamStore, Tensor};
//! let mut ps = ParamStore::new();
//! let w = ps.insert("w", &Tensor::ones(&[3], DType::F32, Device::Cpu).unwrap()).unwrap();
//! let cfg = AdamWConfig { lr: 0.1, ..Default::default() };
//! let mut opt = AdamW::new(cfg).unwrap();
//! let sched = LrSchedule::WarmupCosine { warmup_steps: 2, total_steps: 10, min_ratio: 0.1 };
//! for step in 0..10 {
//!     let loss = ps.get("w").unwrap().sqr().unwrap().sum_all().unwrap();
//!     let grads = loss.backward().unwrap();
//!     opt.step(&ps, &grads, cfg.lr * sched.factor(step)).unwrap();
//! }
//! assert!(w.to_vec::<f32>().unwrap()[0] < 1.0);
//! ```

use crate::backend::{Clip, OptimCache, OptimSlot};
use crate::kinds::OptimRule;
use crate::{CpuStorage, DType, Device, Error, GradStore, ParamStore, Result, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What an optimizer steps over: `(name, handle)` pairs. Names key the optimizer state; handles
/// are what the gradient store was filled for. A [`ParamStore`] gives its trainable parameters.
pub trait NamedParams {
    fn named_params(&self) -> Vec<(String, Tensor)>;
}

impl NamedParams for ParamStore {
    fn named_params(&self) -> Vec<(String, Tensor)> {
        self.trainable()
    }
}

impl NamedParams for [(String, Tensor)] {
    fn named_params(&self) -> Vec<(String, Tensor)> {
        self.to_vec()
    }
}

impl NamedParams for Vec<(String, Tensor)> {
    fn named_params(&self) -> Vec<(String, Tensor)> {
        self.clone()
    }
}

// ----- per-parameter state shared by the optimizers ----------------------------------------

struct ParamState {
    shape: Vec<usize>,
    step: u64,
    /// The buffers, on the parameter's device, in the precision the update runs in (f64 for f64
    /// parameters, f32 otherwise).
    bufs: Vec<Tensor>,
    /// The f32 master copy of a bf16/f16 parameter, on its device.
    master: Option<Tensor>,
    /// Whether the state is f64 (an f64 parameter's).
    wide: bool,
    device: Device,
}

fn state_err(kind: &str, name: &str, msg: impl Into<String>) -> Error {
    Error::tensor(format!("{kind} state"), name, msg)
}

fn is_low(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// The state of every parameter an optimizer has stepped, by name.
struct OptimState {
    kind: &'static str,
    buffer_names: &'static [&'static str],
    params: BTreeMap<String, ParamState>,
    /// What the backends keep between steps (the CUDA launch tables).
    cache: OptimCache,
}

impl OptimState {
    fn new(kind: &'static str, buffer_names: &'static [&'static str]) -> Self {
        OptimState { kind, buffer_names, params: BTreeMap::new(), cache: None }
    }

    fn err(&self, name: &str, msg: impl Into<String>) -> Error {
        state_err(self.kind, name, msg)
    }

    /// Update every parameter that has a gradient; `rule(t)` gives the update rule for a
    /// parameter's `t`-th step (1-based); `clip` (a gradient norm and the max norm) clips every
    /// gradient inside the update. Every parameter is checked before any is updated; then the
    /// parameters are stepped by their backends, one call per step count and device (the CPU
    /// updates tensor by tensor, a GPU in one multi-tensor launch).
    fn step<P, F>(
        &mut self,
        params: &P,
        grads: &GradStore,
        lr: f64,
        clip: Option<(&GradNorm, f64)>,
        rule: F,
    ) -> Result<()>
    where
        P: NamedParams + ?Sized,
        F: Fn(u64) -> OptimRule,
    {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::invalid(self.kind, format!("learning rate {lr} must be finite and non-negative")));
        }
        if let Some((_, max_norm)) = clip {
            check_max_norm(self.kind, max_norm)?;
        }
        let params = params.named_params();
        let mut seen = HashSet::new();
        for (name, _) in &params {
            if !seen.insert(name.as_str()) {
                return Err(Error::tensor(self.kind, name, "parameter name given twice"));
            }
        }
        let mut stepped = Vec::new();
        for (name, p) in &params {
            let Some(g) = grads.get(p) else { continue };
            self.check_param(name, p)?;
            if g.shape() != p.shape() {
                return Err(Error::tensor(
                    self.kind,
                    name,
                    format!("gradient shape {:?} differs from parameter shape {:?}", g.shape(), p.shape()),
                ));
            }
            stepped.push((name.as_str(), p, g));
        }
        // (step count, device, name, parameter, gradient), in parameter order within a step count.
        let mut work = Vec::with_capacity(stepped.len());
        for (name, p, g) in stepped {
            let st = self.prepare(name, p)?;
            st.step += 1;
            work.push((st.step, p.device(), name, p, g));
        }
        work.sort_by_key(|w| w.0);
        // The norm's sum of squares on each device that steps (moved there if it lives elsewhere).
        let mut sums: Vec<(Device, Tensor)> = Vec::new();
        let mut rest = &work[..];
        while let Some(&(t, device, ..)) = rest.first() {
            let n = rest.iter().take_while(|w| w.0 == t && w.1 == device).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            let mut slots = Vec::with_capacity(group.len());
            for &(_, _, name, p, g) in group {
                let st = self.params.get(name).ok_or_else(|| self.err(name, "state missing"))?;
                slots.push(OptimSlot { name, param: p, grad: g, bufs: &st.bufs, master: st.master.as_ref() });
            }
            let sum = match clip {
                Some((norm, _)) => Some(match sums.iter().find(|(d, _)| *d == device) {
                    Some((_, s)) => s.clone(),
                    None => {
                        let s = norm.sum_sq.to_device(device)?;
                        sums.push((device, s.clone()));
                        s
                    }
                }),
                None => None,
            };
            let clip = clip.zip(sum.as_ref()).map(|((_, max_norm), sum_sq)| Clip { sum_sq, max_norm });
            crate::counters::primitive();
            crate::backend::of(device).optim_step(&rule(t), &slots, clip.as_ref(), &mut self.cache)?;
        }
        Ok(())
    }

    fn check_param(&self, name: &str, p: &Tensor) -> Result<()> {
        if !p.dtype().is_float() {
            return Err(Error::tensor(self.kind, name, format!("cannot optimize a {} parameter", p.dtype())));
        }
        if p.layout().contiguous_range().is_none() {
            return Err(Error::tensor(self.kind, name, "parameter must be contiguous to be updated in place"));
        }
        Ok(())
    }

    /// The state of `name`, created (zeroed buffers on the parameter's device) on its first step
    /// and reconciled with the parameter's dtype: a master copy exists exactly while the parameter
    /// is bf16/f16.
    fn prepare(&mut self, name: &str, p: &Tensor) -> Result<&mut ParamState> {
        let kind = self.kind;
        let wide = p.dtype() == DType::F64;
        if !self.params.contains_key(name) {
            let dtype = if wide { DType::F64 } else { DType::F32 };
            let bufs = (0..self.buffer_names.len())
                .map(|_| Tensor::zeros(p.shape(), dtype, p.device()))
                .collect::<Result<Vec<_>>>()?;
            let st = ParamState { shape: p.shape().to_vec(), step: 0, bufs, master: None, wide, device: p.device() };
            self.params.insert(name.to_string(), st);
        }
        let st = self.params.get_mut(name).ok_or_else(|| state_err(kind, name, "state missing"))?;
        if st.shape != p.shape() {
            return Err(state_err(
                kind,
                name,
                format!("state has shape {:?}, parameter has {:?}", st.shape, p.shape()),
            ));
        }
        if st.wide != wide {
            let msg =
                format!("state precision does not match the {} parameter (dtype changed after a step)", p.dtype());
            return Err(state_err(kind, name, msg));
        }
        if st.device != p.device() {
            let msg = format!("state lives on {} but the parameter is on {}", st.device, p.device());
            return Err(state_err(kind, name, msg));
        }
        if !is_low(p.dtype()) {
            st.master = None;
        } else if st.master.is_none() {
            st.master = Some(crate::no_grad(|| p.detach().to_dtype(DType::F32))?);
        }
        Ok(st)
    }

    /// Copies of the state (a snapshot: later steps do not change them), on the parameters'
    /// devices.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let copy = |t: &Tensor| t.backend().convert(t, t.dtype());
        let mut out = Vec::new();
        for (name, st) in &self.params {
            out.push((format!("{name}.step"), Tensor::from_cpu(CpuStorage::I64(vec![st.step as i64]), &[], None)));
            for (buf, t) in self.buffer_names.iter().zip(&st.bufs) {
                out.push((format!("{name}.{buf}"), copy(t)?));
            }
            if let Some(m) = &st.master {
                out.push((format!("{name}.master"), copy(m)?));
            }
        }
        Ok(out)
    }

    /// Replace the state with `state` (as written by `state_tensors`) for `params`. A parameter
    /// with no `name.step` starts fresh; one with a step needs every buffer (and a master when
    /// bf16/f16) of its shape. Tensors that belong to no given parameter are an error.
    fn load_state<P: NamedParams + ?Sized>(&mut self, params: &P, state: &[(String, Tensor)]) -> Result<()> {
        let by_name: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut used: HashSet<String> = HashSet::new();
        let mut new = BTreeMap::new();
        for (name, p) in params.named_params() {
            let key = |suffix: &str| format!("{name}.{suffix}");
            let mut parts: Vec<String> = self.buffer_names.iter().map(|b| key(b)).collect();
            if is_low(p.dtype()) {
                parts.push(key("master"));
            }
            let step_key = key("step");
            let Some(step_t) = by_name.get(step_key.as_str()) else {
                if let Some(stray) = parts.iter().find(|k| by_name.contains_key(k.as_str())) {
                    return Err(self.err(&step_key, format!("missing, but `{stray}` is present")));
                }
                continue;
            };
            self.check_param(&name, &p)?;
            used.insert(step_key.clone());
            let step = step_t.to_scalar::<f64>().map_err(|e| self.err(&step_key, e.to_string()))?;
            if !(step >= 0.0 && step.fract() == 0.0) {
                return Err(self.err(&step_key, format!("step count {step} is not a non-negative integer")));
            }
            let mut load = |k: &String| -> Result<&Tensor> {
                let t = by_name.get(k.as_str()).ok_or_else(|| self.err(k, "missing"))?;
                if t.shape() != p.shape() {
                    return Err(self.err(k, format!("has shape {:?}, parameter has {:?}", t.shape(), p.shape())));
                }
                if !t.dtype().is_float() {
                    return Err(self.err(k, format!("has dtype {}, expected a float dtype", t.dtype())));
                }
                used.insert(k.clone());
                Ok(t)
            };
            let nbuf = self.buffer_names.len();
            let wide = p.dtype() == DType::F64;
            let dtype = if wide { DType::F64 } else { DType::F32 };
            // A fresh copy in the state's precision on the parameter's device.
            let mut place = |k: &String| -> Result<Tensor> {
                let t = load(k)?;
                Tensor::from_cpu(t.to_dtype(dtype)?.to_cpu_storage()?, t.shape(), None).to_device(p.device())
            };
            let bufs = parts[..nbuf].iter().map(&mut place).collect::<Result<Vec<_>>>()?;
            let master = parts.get(nbuf).map(&mut place).transpose()?;
            let st =
                ParamState { shape: p.shape().to_vec(), step: step as u64, bufs, master, wide, device: p.device() };
            new.insert(name.clone(), st);
        }
        if let Some((stray, _)) = state.iter().find(|(n, _)| !used.contains(n)) {
            return Err(self.err(stray, "optimizer state for no given parameter"));
        }
        self.params = new;
        Ok(())
    }
}

fn check_hyper(kind: &'static str, what: &str, v: f64, ok: bool) -> Result<()> {
    if ok && v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(kind, format!("invalid {what}: {v}")))
    }
}

// ----- AdamW -------------------------------------------------------------------------------

/// AdamW hyper-parameters; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// The base learning rate (a schedule's factor multiplies it; [`AdamW::step`] takes the
    /// learning rate of each step explicitly).
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameter by `1 - lr·weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// Adam with decoupled weight decay, exactly as `torch.optim.AdamW` (no amsgrad, no maximize):
///
/// `p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
///  p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)`, with `t` the parameter's own step count.
pub struct AdamW {
    config: AdamWConfig,
    state: OptimState,
}

impl AdamW {
    /// Errors on a negative or non-finite learning rate, eps or weight decay, or betas outside
    /// `[0, 1)`.
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        let (b1, b2) = config.betas;
        check_hyper("AdamW", "lr", config.lr, config.lr >= 0.0)?;
        check_hyper("AdamW", "beta1", b1, (0.0..1.0).contains(&b1))?;
        check_hyper("AdamW", "beta2", b2, (0.0..1.0).contains(&b2))?;
        check_hyper("AdamW", "eps", config.eps, config.eps >= 0.0)?;
        check_hyper("AdamW", "weight_decay", config.weight_decay, config.weight_decay >= 0.0)?;
        Ok(AdamW { config, state: OptimState::new("AdamW", &["exp_avg", "exp_avg_sq"]) })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// One step with learning rate `lr` over every parameter of `params` that has a gradient in
    /// `grads` (the others are skipped and keep their step count). Parameters are updated in
    /// place; they must be contiguous float tensors with gradients of their shape.
    pub fn step<P: NamedParams + ?Sized>(&mut self, params: &P, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(params, grads, lr, None)
    }

    /// [`step`](Self::step) with the gradients clipped to a global norm of at most `max_norm`
    /// inside the update, from `norm` (theirs, [`GradNorm::of`]) as it lies on the device:
    /// `clip_grad_norm(grads, params, max_norm)` then `step`, in one pass and with no host read
    /// (when the parameters live on the norm's device; another device gets a copy of it). On the
    /// CPU the result is bit for bit that of clipping first.
    ///
    /// ```
    /// use vlm4vla_engine::{AdamW, AdamWConfig, Device, GradNorm, Tensor};
    /// let w = Tensor::from_vec(vec![3f32, 4.], &[2], Device::Cpu).unwrap().variable();
    /// let grads = w.sqr().unwrap().sum_all().unwrap().backward().unwrap(); // grad = [6, 8]
    /// let norm = GradNorm::of(&grads, &[w.clone()]).unwrap();
    /// let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }).unwrap();
    /// opt.step_clipped(&vec![("w".to_string(), w.clone())], &grads, 0.1, &norm, 1.0).unwrap();
    /// assert!((norm.read().unwrap() - 10.0).abs() < 1e-6);
    /// ```
    pub fn step_clipped<P: NamedParams + ?Sized>(
        &mut self,
        params: &P,
        grads: &GradStore,
        lr: f64,
        norm: &GradNorm,
        max_norm: f64,
    ) -> Result<()> {
        self.step_with(params, grads, lr, Some((norm, max_norm)))
    }

    fn step_with<P>(&mut self, params: &P, grads: &GradStore, lr: f64, clip: Option<(&GradNorm, f64)>) -> Result<()>
    where
        P: NamedParams + ?Sized,
    {
        let c = self.config;
        let (beta1, beta2) = c.betas;
        self.state.step(params, grads, lr, clip, |t| OptimRule::AdamW {
            decay: 1.0 - lr * c.weight_decay,
            beta1,
            beta2,
            eps: c.eps,
            step_size: lr / (1.0 - beta1.powf(t as f64)),
            bias_correction2_sqrt: (1.0 - beta2.powf(t as f64)).powf(0.5),
        })
    }

    /// How many steps parameter `name` has taken (None before its first).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.state.params.get(name).map(|s| s.step)
    }

    /// The state as named tensors (see the module docs for the names), sorted by name.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.state.state_tensors()
    }

    /// Replace the state with tensors written by [`state_tensors`](Self::state_tensors). Errors
    /// name the missing, mis-shaped or unexpected tensor; on error the state is unchanged.
    pub fn load_state<P: NamedParams + ?Sized>(&mut self, params: &P, state: &[(String, Tensor)]) -> Result<()> {
        self.state.load_state(params, state)
    }
}

// ----- SGD ---------------------------------------------------------------------------------

/// SGD hyper-parameters; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// The base learning rate (the step's learning rate is given to [`Sgd::step`]).
    pub lr: f64,
    pub momentum: f64,
    /// L2 penalty added to the gradient (`g + wd·p`), as in `torch.optim.SGD`.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, weight_decay: 0.0 }
    }
}

/// Stochastic gradient descent with momentum, as `torch.optim.SGD` with dampening 0 and no
/// Nesterov: `d = g + wd·p;  b = d (first step) or μ·b + d;  p ← p − lr·b` (`b = d` without
/// momentum, and then no buffer is kept).
pub struct Sgd {
    config: SgdConfig,
    state: OptimState,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Result<Sgd> {
        check_hyper("Sgd", "lr", config.lr, config.lr >= 0.0)?;
        check_hyper("Sgd", "momentum", config.momentum, config.momentum >= 0.0)?;
        check_hyper("Sgd", "weight_decay", config.weight_decay, config.weight_decay >= 0.0)?;
        let buffers: &'static [&'static str] = if config.momentum != 0.0 { &["momentum_buffer"] } else { &[] };
        Ok(Sgd { config, state: OptimState::new("Sgd", buffers) })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// One step with learning rate `lr` (see [`AdamW::step`] for which parameters are updated).
    pub fn step<P: NamedParams + ?Sized>(&mut self, params: &P, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(params, grads, lr, None)
    }

    /// [`step`](Self::step) with the gradients clipped inside the update (see
    /// [`AdamW::step_clipped`]).
    pub fn step_clipped<P: NamedParams + ?Sized>(
        &mut self,
        params: &P,
        grads: &GradStore,
        lr: f64,
        norm: &GradNorm,
        max_norm: f64,
    ) -> Result<()> {
        self.step_with(params, grads, lr, Some((norm, max_norm)))
    }

    fn step_with<P>(&mut self, params: &P, grads: &GradStore, lr: f64, clip: Option<(&GradNorm, f64)>) -> Result<()>
    where
        P: NamedParams + ?Sized,
    {
        let c = self.config;
        self.state.step(params, grads, lr, clip, |t| OptimRule::Sgd {
            lr,
            momentum: c.momentum,
            weight_decay: c.weight_decay,
            first: t == 1,
        })
    }

    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.state.params.get(name).map(|s| s.step)
    }

    /// The state as named tensors (`name.step`, `name.momentum_buffer`, `name.master`).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.state.state_tensors()
    }

    /// Replace the state with tensors written by [`state_tensors`](Self::state_tensors).
    pub fn load_state<P: NamedParams + ?Sized>(&mut self, params: &P, state: &[(String, Tensor)]) -> Result<()> {
        self.state.load_state(params, state)
    }
}

// ----- learning-rate schedules ---------------------------------------------------------------

/// A learning-rate multiplier per optimizer step.
///
/// Step convention (as transformers' `LambdaLR` schedules under the `Trainer`): `factor(k)` is
/// the multiplier for the optimizer step with 0-based index `k`, i.e. after `k` steps have been
/// taken. With warmup the very first step therefore has factor 0.
///
/// ```
/// use vlm4vla_engine::LrSchedule;
/// let s = LrSchedule::WarmupCosine { warmup_steps: 10, total_steps: 110, min_ratio: 0.1 };
/// assert_eq!(s.factor(0), 0.0);
/// assert_eq!(s.factor(5), 0.5);
/// assert_eq!(s.factor(10), 1.0);
/// assert!((s.factor(60) - 0.55).abs() < 1e-12);
/// assert!((s.factor(110) - 0.1).abs() < 1e-12);
/// assert!((s.factor(500) - 0.1).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// Factor 1 throughout.
    Constant,
    /// `k / warmup_steps` for `k < warmup_steps`, then 1 (transformers'
    /// `get_constant_schedule_with_warmup`).
    WarmupConstant { warmup_steps: usize },
    /// Linear warmup `k / warmup_steps`, then a half cosine from 1 at `warmup_steps` down to
    /// `min_ratio` at `total_steps`, flat at `min_ratio` after (transformers'
    /// `get_cosine_with_min_lr_schedule_with_warmup` with `min_lr_rate = min_ratio`, which agrees
    /// up to `total_steps` and rises again after it).
    WarmupCosine { warmup_steps: usize, total_steps: usize, min_ratio: f64 },
    /// Warmup-stable-decay: linear warmup, factor 1 until `decay_start`, then the half cosine
    /// from 1 down to `min_ratio` at `total_steps`, flat after. `decay_start <= warmup_steps` is
    /// [`WarmupCosine`](Self::WarmupCosine). Useful where learning has a plateau whose end
    /// cannot be scheduled: the rate stays high until the final stretch.
    WarmupStableCosine { warmup_steps: usize, decay_start: usize, total_steps: usize, min_ratio: f64 },
}

impl LrSchedule {
    /// The multiplier for the step with 0-based index `step`.
    pub fn factor(&self, step: usize) -> f64 {
        let warmup = |w: usize| step as f64 / w.max(1) as f64;
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::WarmupConstant { warmup_steps } => {
                if step < warmup_steps {
                    warmup(warmup_steps)
                } else {
                    1.0
                }
            }
            LrSchedule::WarmupCosine { warmup_steps, total_steps, min_ratio } => {
                LrSchedule::WarmupStableCosine { warmup_steps, decay_start: warmup_steps, total_steps, min_ratio }
                    .factor(step)
            }
            LrSchedule::WarmupStableCosine { warmup_steps, decay_start, total_steps, min_ratio } => {
                if step < warmup_steps {
                    return warmup(warmup_steps);
                }
                let start = decay_start.max(warmup_steps);
                if step < start {
                    return 1.0;
                }
                let span = total_steps.saturating_sub(start).max(1);
                let progress = ((step - start) as f64 / span as f64).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (cosine * (1.0 - min_ratio) + min_ratio).max(0.0)
            }
        }
    }

    /// `base_lr · factor(step)`.
    pub fn lr(&self, base_lr: f64, step: usize) -> f64 {
        base_lr * self.factor(step)
    }
}

// ----- gradient clipping ----------------------------------------------------------------------

/// The global L2 norm of a set of gradients, kept on their device as `Σ g²`: one multi-tensor
/// reduction ([`GradNorm::of`]) with no host read, which an optimizer step can clip by where it
/// runs ([`AdamW::step_clipped`]), and which is read to the host only when asked
/// ([`GradNorm::read`]).
#[derive(Clone, Debug)]
pub struct GradNorm {
    sum_sq: Tensor,
}

impl GradNorm {
    /// The norm of the gradients of `params` (parameters without a gradient, or listed twice,
    /// count once or not at all): one reduction per device, tensor by tensor in parameter order.
    /// Sums of several devices are added on the first one (moving them there reads them).
    pub fn of(grads: &GradStore, params: &[Tensor]) -> Result<GradNorm> {
        let mut seen = HashSet::new();
        // The gradients by device, in parameter order.
        let mut groups: Vec<(Device, Vec<&Tensor>)> = Vec::new();
        for p in params {
            if !seen.insert(p.id()) {
                continue;
            }
            if let Some(g) = grads.get(p) {
                match groups.iter_mut().find(|(d, _)| *d == g.device()) {
                    Some((_, gs)) => gs.push(g),
                    None => groups.push((g.device(), vec![g])),
                }
            }
        }
        if groups.is_empty() {
            groups.push((Device::Cpu, Vec::new()));
        }
        let mut total: Option<Tensor> = None;
        for (device, gs) in &groups {
            crate::counters::primitive();
            let s = crate::backend::of(*device).sum_sq(gs, *device)?;
            total = Some(match total {
                None => s,
                Some(t) => crate::no_grad(|| t.add(&s.to_dtype(t.dtype())?.to_device(t.device())?))?,
            });
        }
        let sum_sq = total.ok_or_else(|| Error::invalid("grad_norm", "no device to reduce on"))?;
        Ok(GradNorm { sum_sq })
    }

    /// `Σ g²` as a one-element tensor `[1]` on the gradients' device: f64 on the CPU (accumulated
    /// tensor by tensor in order), f32 on a GPU.
    pub fn sum_sq(&self) -> &Tensor {
        &self.sum_sq
    }

    /// The norm, read to the host (one host read; non-finite if a gradient is).
    pub fn read(&self) -> Result<f64> {
        Ok(self.sum_sq.to_scalar::<f64>()?.sqrt())
    }
}

fn check_max_norm(op: &'static str, max_norm: f64) -> Result<()> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::invalid(op, format!("max_norm {max_norm} must be positive")));
    }
    Ok(())
}

/// The global L2 norm of the gradients of `params`, read to the host ([`GradNorm::of`] then
/// [`GradNorm::read`]).
pub fn grad_norm(grads: &GradStore, params: &[Tensor]) -> Result<f64> {
    GradNorm::of(grads, params)?.read()
}

/// Clip the gradients of `params` to a global L2 norm of at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: when `max_norm / (norm + 1e-6) < 1` every gradient is
/// multiplied by that ratio. Returns the norm before clipping (non-finite if a gradient is; then
/// the step should be skipped). A training step clips inside the optimizer instead
/// ([`AdamW::step_clipped`]): the same result with no host read and no scaled copies.
///
/// ```
/// use vlm4vla_engine::{clip_grad_norm, Device, DType, Tensor};
/// let w = Tensor::from_vec(vec![3f64, 4.], &[2], Device::Cpu).unwrap().variable();
/// let mut grads = w.sqr().unwrap().sum_all().unwrap().backward().unwrap(); // grad = [6, 8]
/// let norm = clip_grad_norm(&mut grads, &[w.clone()], 1.0).unwrap();
/// assert!((norm - 10.0).abs() < 1e-12);
/// let g = grads.get(&w).unwrap().to_vec::<f64>().unwrap();
/// assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
/// ```
pub fn clip_grad_norm(grads: &mut GradStore, params: &[Tensor], max_norm: f64) -> Result<f64> {
    check_max_norm("clip_grad_norm", max_norm)?;
    let norm = grad_norm(grads, params)?;
    let coef = max_norm / (norm + crate::backend::CLIP_EPS);
    if coef < 1.0 {
        let mut seen = HashSet::new();
        for p in params {
            if !seen.insert(p.id()) {
                continue;
            }
            let Some(g) = grads.get(p) else { continue };
            let scaled = crate::no_grad(|| g.scale(coef))?;
            grads.insert(p, scaled);
        }
    }
    Ok(norm)
}
