//! CUDA launcher of `optim.cu`: the fused AdamW / SGD step of many parameter tensors in one
//! launch per device and dtype. Each tensor is a slot of a device-resident table (fp32 master or
//! parameter, gradient, fp32 moments, and the bf16 copy written in the same pass); the table is
//! kept between steps and rewritten only when an address or size in it changes.

use super::launch::{ADAMW, SGD};
use super::{contig, dev_of, ptr, Cuda, CudaDevice, CudaStorage, Geometry};
use crate::backend::{self, OptimCache, OptimSlot as Slot};
use crate::kinds::OptimRule;
use crate::{DType, Error, Result, Tensor};
use std::sync::Arc;
use vlm4vla_kernels::params::{OptimParams, OptimSlot, EW_THREADS, OPTIM_CHUNK};

/// The device tables of one launch (slots, then cumulative chunk counts), as last written.
#[derive(Default)]
struct Table {
    host: Vec<i64>,
    dev: Option<CudaStorage>,
}

impl Table {
    /// The device address of `host` on `dev`: the buffer of the last step, rewritten (in stream
    /// order) only when its contents change; reallocated only when its size or device does.
    fn sync(&mut self, dev: &Arc<CudaDevice>, op: &'static str, host: Vec<i64>) -> Result<u64> {
        let fits = self.dev.as_ref().is_some_and(|d| d.ordinal() == dev.ordinal && d.len() == host.len());
        if !fits {
            self.dev = Some(dev.alloc(op, DType::I64, host.len())?);
        }
        let buf = self.dev.as_ref().ok_or_else(|| Error::invalid(op, "optimizer table missing"))?;
        if !fits || self.host != host {
            buf.write(op, bytemuck::cast_slice(&host))?;
            self.host = host;
        }
        Ok(buf.ptr_at(0))
    }
}

/// The tables of every launch of a step, reused step after step (launch k of a step uses table
/// k), so a training loop whose tensors keep their addresses uploads nothing per step.
#[derive(Default)]
struct StepTables {
    tables: Vec<Table>,
}

/// Update every tensor of `slots` in place with `kernel` (`adamw` or `sgd`) and the
/// hyper-parameters of this step in `p` (its table fields are filled in here): one launch per
/// device and dtype, f32 parameters by `{kernel}_fwd_f32`, bf16 ones (with a master) by
/// `{kernel}_fwd_bf16`.
fn step(kernel: &'static str, slots: &[Slot<'_>], p: OptimParams, tables: &mut StepTables) -> Result<()> {
    let op = kernel;
    let set = match kernel {
        "adamw" => ADAMW,
        "sgd" => SGD,
        other => return Err(Error::invalid(op, format!("no CUDA optimizer kernel {other}"))),
    };
    // (device, dtype) groups in first-seen order, so launch k of a step keeps meeting table k.
    let mut groups: Vec<((usize, DType), Vec<&Slot<'_>>)> = Vec::new();
    for s in slots {
        let key = (dev_of(op, s.param)?.ordinal, s.param.dtype());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    for (k, ((_, dtype), group)) in groups.into_iter().enumerate() {
        if tables.tables.len() <= k {
            tables.tables.push(Table::default());
        }
        launch(op, set.at(op, dtype)?, &group, p, &mut tables.tables[k])?;
    }
    Ok(())
}

/// One launch over `group` (one device, one parameter dtype).
fn launch(
    op: &'static str,
    kernel: vlm4vla_kernels::KernelId,
    group: &[&Slot<'_>],
    mut p: OptimParams,
    table: &mut Table,
) -> Result<()> {
    let dev = dev_of(op, group[0].param)?;
    // Gradients in the parameter's dtype, alive until the launch is queued.
    let mut grads = Vec::with_capacity(group.len());
    let words = std::mem::size_of::<OptimSlot>() / 8;
    let mut host: Vec<i64> = Vec::with_capacity(group.len() * (words + 1) + 1);
    let mut starts: Vec<i64> = vec![0];
    for s in group {
        let n = s.param.elem_count();
        let (target, copy) = match (s.param.dtype(), s.master) {
            (DType::F32, None) => (ptr(op, s.param)?, 0),
            (DType::BF16, Some(m)) => (ptr(op, m)?, ptr(op, s.param)?),
            (other, _) => {
                return Err(Error::dtype(
                    op,
                    other,
                    "the CUDA optimizer steps f32 parameters and bf16 ones with an f32 master",
                ))
            }
        };
        let g = contig(&s.grad.to_dtype(s.param.dtype())?)?;
        let slot = OptimSlot {
            p: target,
            g: ptr(op, &g)?,
            m: s.bufs.first().map(|b| ptr(op, b)).transpose()?.unwrap_or(0),
            v: s.bufs.get(1).map(|b| ptr(op, b)).transpose()?.unwrap_or(0),
            copy,
            n: n as i64,
        };
        host.extend([slot.p as i64, slot.g as i64, slot.m as i64, slot.v as i64, slot.copy as i64, slot.n]);
        starts.push(starts[starts.len() - 1] + n.div_ceil(OPTIM_CHUNK) as i64);
        grads.push(g);
    }
    let chunks = starts[starts.len() - 1] as usize;
    host.extend(starts);
    let base = table.sync(&dev, op, host)?;
    p.slots = base;
    p.chunk_start = base + (group.len() * std::mem::size_of::<OptimSlot>()) as u64;
    p.n_slots = group.len() as i32;
    let geometry = Geometry::new([chunks.clamp(1, 65535) as u32, 1, 1], EW_THREADS);
    // SAFETY: {adamw,sgd}_fwd_{dtype}(p): the table holds an OptimSlot (five device pointers and
    // a length, 48 bytes) per tensor followed by the n_slots + 1 cumulative chunk counts, and
    // stays allocated in `table`; every pointer in a slot addresses n elements (f32 target and
    // buffers, gradient and copy in the kernel's dtype) that live until the kernel has run
    // (frees are stream-ordered).
    unsafe { dev.launch(op, kernel, geometry, p, []) }?;
    drop(grads);
    Ok(())
}

/// The kernel and its hyper-parameters for `rule`.
fn kernel_params(rule: &OptimRule) -> (&'static str, OptimParams) {
    match *rule {
        OptimRule::AdamW { decay, beta1, beta2, eps, step_size, bias_correction2_sqrt } => {
            // The kernel decays by 1 - lr·wd: lr 1 and wd 1 - decay give this step's factor.
            let p = OptimParams {
                lr: 1.0,
                weight_decay: (1.0 - decay) as f32,
                beta1: beta1 as f32,
                beta2: beta2 as f32,
                eps: eps as f32,
                step_size: step_size as f32,
                bc2_sqrt: bias_correction2_sqrt as f32,
                ..Default::default()
            };
            ("adamw", p)
        }
        OptimRule::Sgd { lr, momentum, weight_decay, first } => {
            let p = OptimParams {
                lr: lr as f32,
                beta1: momentum as f32,
                weight_decay: weight_decay as f32,
                first: first as i32,
                ..Default::default()
            };
            ("sgd", p)
        }
    }
}

impl backend::Optim for Cuda {
    fn optim_step(&self, rule: &OptimRule, slots: &[Slot<'_>], cache: &mut OptimCache) -> Result<()> {
        let tables = cache.get_or_insert_with(|| Box::new(StepTables::default()));
        let tables = tables
            .downcast_mut::<StepTables>()
            .ok_or_else(|| Error::invalid("optimizer", "the optimizer's launch tables belong to another backend"))?;
        let (kernel, hyper) = kernel_params(rule);
        step(kernel, slots, hyper, tables)
    }

    fn sum_sq(&self, xs: &[&Tensor]) -> Result<f64> {
        if xs.is_empty() {
            return Ok(0.0);
        }
        // One f32 sum per tensor on the device, gathered and read back once.
        let parts = crate::no_grad(|| -> Result<Tensor> {
            let sums = xs
                .iter()
                .map(|x| x.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?.reshape(&[1]))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&sums.iter().collect::<Vec<_>>(), 0)
        })?;
        Ok(parts.to_vec::<f32>()?.iter().map(|&s| s as f64).sum())
    }
}
