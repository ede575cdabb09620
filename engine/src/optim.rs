//! Optimizers, learning-rate schedules and gradient clipping.
//!
//! [`AdamW`] and [`Sgd`] follow `torch.optim.AdamW` / `torch.optim.SGD` (single-tensor path)
//! operation for operation. They update parameters in place with one fused CPU pass per tensor
//! (`cpu/optim.rs`), or, for parameters on a GPU, one multi-tensor kernel launch for all of them
//! (`kernels/cuda/optim.cu`; one per device, dtype and step count); nothing is recorded in the
//! autograd graph. bf16/f16 parameters are updated
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

use crate::cpu::optim::{fused_update, AdamWRule, LowCopy, SgdRule, UpdateRule};
use crate::cpu::{self, Floats};
use crate::{CpuStorage, DType, Error, GradStore, ParamStore, Result, Storage, Tensor};
use std::borrow::Cow;
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

/// Buffers in the precision the update runs in (f64 for f64 parameters, f32 otherwise).
enum Buffers {
    F32(Vec<Vec<f32>>),
    F64(Vec<Vec<f64>>),
    /// f32 buffers on the parameter's GPU, and the f32 master of a bf16 parameter.
    #[cfg(feature = "cuda")]
    Cuda {
        bufs: Vec<crate::cuda::CudaStorage>,
        master: Option<crate::cuda::CudaStorage>,
    },
}

struct ParamState {
    shape: Vec<usize>,
    step: u64,
    buffers: Buffers,
    /// The f32 master copy of a bf16/f16 parameter.
    master: Option<Vec<f32>>,
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
    /// The device tables of the multi-tensor launches, kept from one step to the next.
    #[cfg(feature = "cuda")]
    cuda_tables: crate::cuda::optim::StepTables,
}

impl OptimState {
    fn new(kind: &'static str, buffer_names: &'static [&'static str]) -> Self {
        OptimState {
            kind,
            buffer_names,
            params: BTreeMap::new(),
            #[cfg(feature = "cuda")]
            cuda_tables: Default::default(),
        }
    }

    fn err(&self, name: &str, msg: impl Into<String>) -> Error {
        state_err(self.kind, name, msg)
    }

    /// Update every parameter that has a gradient; `rule(t)` gives the update rule for a
    /// parameter's `t`-th step (1-based).
    fn step<P, R, F>(&mut self, params: &P, grads: &GradStore, lr: f64, rule: F) -> Result<()>
    where
        P: NamedParams + ?Sized,
        R: UpdateRule,
        F: Fn(u64) -> R,
    {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::invalid(self.kind, format!("learning rate {lr} must be finite and non-negative")));
        }
        let params = params.named_params();
        let mut seen = HashSet::new();
        for (name, _) in &params {
            if !seen.insert(name.as_str()) {
                return Err(Error::tensor(self.kind, name, "parameter name given twice"));
            }
        }
        // Every parameter is checked before any is updated (the GPU ones are updated after the loop).
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
            stepped.push((name, p, g));
        }
        // GPU parameters, stepped together after the loop: (step count, name, parameter, gradient).
        #[cfg(feature = "cuda")]
        let mut on_gpu: Vec<(u64, &str, &Tensor, &Tensor)> = Vec::new();
        for (name, p, g) in stepped {
            let kind = self.kind;
            let st = self.prepare(name, p)?;
            st.step += 1;
            #[cfg(feature = "cuda")]
            if matches!(st.buffers, Buffers::Cuda { .. }) {
                on_gpu.push((st.step, name, p, g));
                continue;
            }
            apply(kind, name, p, g, st, &rule(st.step))?;
        }
        #[cfg(feature = "cuda")]
        self.step_cuda(on_gpu, &rule)?;
        Ok(())
    }

    /// One multi-tensor launch per step count (all parameters share one unless some were added
    /// or skipped along the way), device and dtype.
    #[cfg(feature = "cuda")]
    fn step_cuda<R, F>(&mut self, mut on_gpu: Vec<(u64, &str, &Tensor, &Tensor)>, rule: &F) -> Result<()>
    where
        R: UpdateRule,
        F: Fn(u64) -> R,
    {
        on_gpu.sort_by_key(|&(t, ..)| t);
        let mut rest = &on_gpu[..];
        while let Some(&(t, ..)) = rest.first() {
            let n = rest.iter().take_while(|e| e.0 == t).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            let mut slots = Vec::with_capacity(group.len());
            for &(_, name, p, g) in group {
                let Some(ParamState { buffers: Buffers::Cuda { bufs, master }, .. }) = self.params.get(name) else {
                    return Err(self.err(name, "GPU state missing"));
                };
                slots.push(crate::cuda::optim::Slot { param: p, grad: g, bufs, master: master.as_ref() });
            }
            let (kernel, hyper) = rule(t).cuda_params();
            crate::cuda::optim::step(kernel, &slots, hyper, &mut self.cuda_tables)?;
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

    /// The state of `name`, created (zeroed buffers) on its first step and reconciled with the
    /// parameter's dtype: a master copy exists exactly while the parameter is bf16/f16.
    fn prepare(&mut self, name: &str, p: &Tensor) -> Result<&mut ParamState> {
        let (n, nbuf) = (p.elem_count(), self.buffer_names.len());
        let wide = p.dtype() == DType::F64;
        let kind = self.kind;
        #[cfg(feature = "cuda")]
        if p.device().is_cuda() && !self.params.contains_key(name) {
            let dev = crate::cuda::dev_of(kind, p)?;
            let bufs = (0..nbuf).map(|_| dev.zeros(kind, DType::F32, n)).collect::<Result<Vec<_>>>()?;
            let buffers = Buffers::Cuda { bufs, master: None };
            self.params
                .insert(name.to_string(), ParamState { shape: p.shape().to_vec(), step: 0, buffers, master: None });
        }
        let st = self.params.entry(name.to_string()).or_insert_with(|| {
            let buffers =
                if wide { Buffers::F64(vec![vec![0.0; n]; nbuf]) } else { Buffers::F32(vec![vec![0.0; n]; nbuf]) };
            ParamState { shape: p.shape().to_vec(), step: 0, buffers, master: None }
        });
        if st.shape != p.shape() {
            return Err(state_err(
                kind,
                name,
                format!("state has shape {:?}, parameter has {:?}", st.shape, p.shape()),
            ));
        }
        if matches!(st.buffers, Buffers::F64(_)) != wide {
            let msg =
                format!("state precision does not match the {} parameter (dtype changed after a step)", p.dtype());
            return Err(state_err(kind, name, msg));
        }
        #[cfg(feature = "cuda")]
        if let Buffers::Cuda { master, .. } = &mut st.buffers {
            if !p.device().is_cuda() {
                return Err(state_err(kind, name, "state lives on a GPU but the parameter does not"));
            }
            if !is_low(p.dtype()) {
                *master = None;
            } else if master.is_none() {
                *master = Some(crate::cuda::view::convert(kind, p, DType::F32)?);
            }
            return Ok(st);
        }
        #[cfg(feature = "cuda")]
        if p.device().is_cuda() {
            return Err(state_err(kind, name, "state lives on the CPU but the parameter is on a GPU"));
        }
        if !is_low(p.dtype()) {
            st.master = None;
        } else if st.master.is_none() {
            st.master = Some(p.to_vec::<f32>()?);
        }
        Ok(st)
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, st) in &self.params {
            out.push((format!("{name}.step"), Tensor::from_cpu(CpuStorage::I64(vec![st.step as i64]), &[], None)));
            for (k, buf) in self.buffer_names.iter().enumerate() {
                let data = match &st.buffers {
                    Buffers::F32(b) => CpuStorage::F32(b[k].clone()),
                    Buffers::F64(b) => CpuStorage::F64(b[k].clone()),
                    #[cfg(feature = "cuda")]
                    Buffers::Cuda { bufs, .. } => {
                        out.push((format!("{name}.{buf}"), crate::cuda::tensor(bufs[k].clone(), &st.shape)));
                        continue;
                    }
                };
                out.push((format!("{name}.{buf}"), Tensor::from_cpu(data, &st.shape, None)));
            }
            #[cfg(feature = "cuda")]
            if let Buffers::Cuda { master: Some(m), .. } = &st.buffers {
                out.push((format!("{name}.master"), crate::cuda::tensor(m.clone(), &st.shape)));
            }
            if let Some(m) = &st.master {
                out.push((format!("{name}.master"), Tensor::from_cpu(CpuStorage::F32(m.clone()), &st.shape, None)));
            }
        }
        out
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
            let buffers = if p.dtype() == DType::F64 {
                Buffers::F64(parts[..nbuf].iter().map(|k| load(k)?.to_vec::<f64>()).collect::<Result<_>>()?)
            } else {
                Buffers::F32(parts[..nbuf].iter().map(|k| load(k)?.to_vec::<f32>()).collect::<Result<_>>()?)
            };
            #[cfg(feature = "cuda")]
            if p.device().is_cuda() {
                let dev = crate::cuda::dev_of(self.kind, &p)?;
                let mut upload = |k: &String| -> Result<crate::cuda::CudaStorage> {
                    dev.upload(self.kind, &CpuStorage::F32(load(k)?.to_vec::<f32>()?))
                };
                let bufs = parts[..nbuf].iter().map(&mut upload).collect::<Result<Vec<_>>>()?;
                let master = parts.get(nbuf).map(&mut upload).transpose()?;
                let buffers = Buffers::Cuda { bufs, master };
                new.insert(
                    name.clone(),
                    ParamState { shape: p.shape().to_vec(), step: step as u64, buffers, master: None },
                );
                continue;
            }
            let master = match parts.get(nbuf) {
                Some(k) => Some(load(k)?.to_vec::<f32>()?),
                None => None,
            };
            new.insert(name.clone(), ParamState { shape: p.shape().to_vec(), step: step as u64, buffers, master });
        }
        if let Some((stray, _)) = state.iter().find(|(n, _)| !used.contains(n)) {
            return Err(self.err(stray, "optimizer state for no given parameter"));
        }
        self.params = new;
        Ok(())
    }
}

fn as_f32<'a>(g: &'a Floats<'_>) -> Cow<'a, [f32]> {
    match g {
        Floats::F32(v) => Cow::Borrowed(&v[..]),
        Floats::F64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
    }
}

fn as_f64<'a>(g: &'a Floats<'_>) -> Cow<'a, [f64]> {
    match g {
        Floats::F64(v) => Cow::Borrowed(&v[..]),
        Floats::F32(v) => Cow::Owned(v.iter().map(|&x| x as f64).collect()),
    }
}

/// One fused update of parameter `p` with gradient `g`, in place.
fn apply<R: UpdateRule>(
    kind: &'static str,
    name: &str,
    p: &Tensor,
    g: &Tensor,
    st: &mut ParamState,
    rule: &R,
) -> Result<()> {
    let range = p
        .layout()
        .contiguous_range()
        .ok_or_else(|| Error::tensor(kind, name, "parameter must be contiguous to be updated in place"))?;
    // A gradient sharing the parameter's storage is copied first (we hold its write lock below).
    let g_copy;
    let g = if g.same_storage(p) {
        g_copy = Tensor::from_cpu(g.to_cpu_storage()?, g.shape(), None);
        &g_copy
    } else {
        g
    };
    g.with_cpu(|gs, gl| {
        let gf = cpu::floats(gs, gl);
        let mut guard = p.write_storage();
        #[allow(irrefutable_let_patterns)] // a CUDA arm exists with the `cuda` feature
        let Storage::Cpu(ps) = &mut *guard
        else {
            return Err(Error::tensor(kind, name, "the parameter is not on the CPU"));
        };
        match (ps, &mut st.buffers, &mut st.master) {
            (CpuStorage::F64(v), Buffers::F64(b), _) => {
                fused_update(&mut v[range], &as_f64(&gf), b, LowCopy::None, rule)
            }
            (CpuStorage::F32(v), Buffers::F32(b), _) => {
                fused_update(&mut v[range], &as_f32(&gf), b, LowCopy::None, rule)
            }
            (CpuStorage::BF16(v), Buffers::F32(b), Some(m)) => {
                fused_update(m, &as_f32(&gf), b, LowCopy::Bf16(&mut v[range]), rule)
            }
            (CpuStorage::F16(v), Buffers::F32(b), Some(m)) => {
                fused_update(m, &as_f32(&gf), b, LowCopy::F16(&mut v[range]), rule)
            }
            (ps, _, _) => {
                return Err(Error::tensor(
                    kind,
                    name,
                    format!("no update for a {} parameter with this state", ps.dtype()),
                ))
            }
        }
        Ok(())
    })
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
        let c = self.config;
        let (beta1, beta2) = c.betas;
        self.state.step(params, grads, lr, |t| AdamWRule {
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
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
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
        let c = self.config;
        self.state.step(params, grads, lr, |t| SgdRule {
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
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
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

/// The global L2 norm of the gradients of `params` (accumulated in f64; parameters without a
/// gradient, or listed twice, count once or not at all).
pub fn grad_norm(grads: &GradStore, params: &[Tensor]) -> Result<f64> {
    let mut seen = HashSet::new();
    let mut sum = 0.0;
    for p in params {
        if !seen.insert(p.id()) {
            continue;
        }
        if let Some(g) = grads.get(p) {
            #[cfg(feature = "cuda")]
            if g.device().is_cuda() {
                let sq = crate::no_grad(|| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f64>())?;
                sum += sq;
                continue;
            }
            sum += g.with_cpu(|s, l| {
                Ok(match cpu::floats(s, l) {
                    Floats::F32(v) => cpu::optim::sum_sq(&v),
                    Floats::F64(v) => cpu::optim::sum_sq(&v),
                })
            })?;
        }
    }
    Ok(sum.sqrt())
}

/// Clip the gradients of `params` to a global L2 norm of at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: when `max_norm / (norm + 1e-6) < 1` every gradient is
/// multiplied by that ratio. Returns the norm before clipping (non-finite if a gradient is; then
/// the step should be skipped).
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
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::invalid("clip_grad_norm", format!("max_norm {max_norm} must be positive")));
    }
    let norm = grad_norm(grads, params)?;
    let coef = max_norm / (norm + 1e-6);
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
