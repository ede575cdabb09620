//! CUDA launcher of `optim.cu`: the fused AdamW / SGD step of many parameter tensors in one
//! launch per device and dtype, clipping the gradients by a sum of squares it reads on the
//! device, and the multi-tensor sum of squares itself (the gradient norm: one launch per dtype
//! and one that adds the partial sums). Each tensor is a slot of a device-resident table (fp32
//! master or parameter, gradient, fp32 moments, and the bf16 copy written in the same pass); the
//! tables are kept between steps and rewritten only when an address or size in them changes.

use super::launch::{ADAMW, SGD, SUM_SQ, SUM_SQ_TOTAL};
use super::{contig, dev_of, ptr, tensor, Cuda, CudaDevice, CudaStorage, Geometry};
use crate::backend::{self, Clip, OptimCache, OptimSlot as Slot};
use crate::kinds::OptimRule;
use crate::{DType, Device, Error, Result, Tensor};
use std::sync::{Arc, Mutex};
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

impl StepTables {
    fn at(&mut self, k: usize) -> &mut Table {
        while self.tables.len() <= k {
            self.tables.push(Table::default());
        }
        &mut self.tables[k]
    }
}

/// The slot table of `slots` (each slot's words, then the n_slots + 1 cumulative chunk counts)
/// and the number of chunks.
fn slot_table(slots: &[OptimSlot]) -> (Vec<i64>, usize) {
    let words = std::mem::size_of::<OptimSlot>() / 8;
    let mut host: Vec<i64> = Vec::with_capacity(slots.len() * (words + 1) + 1);
    let mut starts: Vec<i64> = vec![0];
    for s in slots {
        host.extend([s.p as i64, s.g as i64, s.m as i64, s.v as i64, s.copy as i64, s.n]);
        starts.push(starts[starts.len() - 1] + (s.n as usize).div_ceil(OPTIM_CHUNK) as i64);
    }
    let chunks = starts[starts.len() - 1] as usize;
    host.extend(starts);
    (host, chunks)
}

/// Point `p` at the table of `n_slots` slots synced to `table` on `dev`.
fn place_table(
    p: &mut OptimParams,
    dev: &Arc<CudaDevice>,
    op: &'static str,
    table: &mut Table,
    host: Vec<i64>,
    n_slots: usize,
) -> Result<()> {
    let base = table.sync(dev, op, host)?;
    p.slots = base;
    p.chunk_start = base + (n_slots * std::mem::size_of::<OptimSlot>()) as u64;
    p.n_slots = n_slots as i32;
    Ok(())
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
        launch(op, set.at(op, dtype)?, &group, p, tables.at(k))?;
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
    let mut slots = Vec::with_capacity(group.len());
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
        slots.push(slot);
        grads.push(g);
    }
    let (host, chunks) = slot_table(&slots);
    place_table(&mut p, &dev, op, table, host, group.len())?;
    let geometry = Geometry::new([chunks.clamp(1, 65535) as u32, 1, 1], EW_THREADS);
    // SAFETY: {adamw,sgd}_fwd_{dtype}(p): the table holds an OptimSlot (five device pointers and
    // a length, 48 bytes) per tensor followed by the n_slots + 1 cumulative chunk counts, and
    // stays allocated in `table`; every pointer in a slot addresses n elements (f32 target and
    // buffers, gradient and copy in the kernel's dtype) that live until the kernel has run
    // (frees are stream-ordered); `clip_sum_sq`, when set, addresses one f32 on this device
    // that the caller keeps alive.
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

/// The tables of the sum-of-squares launches (launch k uses table k), kept between calls like
/// the optimizer's.
static SUM_SQ_TABLES: Mutex<StepTables> = Mutex::new(StepTables { tables: Vec::new() });

/// `Σ x²` of every tensor of `xs` (on one device) into a fresh f32 `[1]` on `device`: per dtype
/// one launch writing a partial sum per chunk, then one block adding the partials in order.
fn sum_sq(xs: &[&Tensor], device: Device) -> Result<CudaStorage> {
    let op = "grad_norm";
    let Device::Cuda(ordinal) = device else {
        return Err(Error::invalid(op, format!("the CUDA backend cannot reduce on {device}")));
    };
    let dev = super::device::device(ordinal)?;
    // Contiguous f32 / bf16 copies where needed, alive until the launches are queued.
    let mut held = Vec::new();
    let mut groups: Vec<(DType, Vec<OptimSlot>)> = Vec::new();
    for x in xs {
        let x = match x.dtype() {
            DType::F32 | DType::BF16 => contig(x)?,
            _ => contig(&x.to_dtype(DType::F32)?)?,
        };
        if dev_of(op, &x)?.ordinal != ordinal {
            return Err(Error::DeviceMismatch { op, a: device, b: x.device() });
        }
        let slot = OptimSlot { g: ptr(op, &x)?, n: x.elem_count() as i64, ..Default::default() };
        match groups.iter_mut().find(|(d, _)| *d == x.dtype()) {
            Some((_, g)) => g.push(slot),
            None => groups.push((x.dtype(), vec![slot])),
        }
        held.push(x);
    }
    let tables: Vec<(DType, Vec<i64>, usize, usize)> = groups
        .into_iter()
        .map(|(dtype, slots)| {
            let (host, chunks) = slot_table(&slots);
            (dtype, host, chunks, slots.len())
        })
        .collect();
    let total: usize = tables.iter().map(|t| t.2).sum();
    let out = dev.zeros(op, DType::F32, 1)?;
    if total == 0 {
        return Ok(out);
    }
    let partials = dev.alloc(op, DType::F32, total)?;
    let mut cache = SUM_SQ_TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let mut offset = 0;
    for (k, (dtype, host, chunks, n_slots)) in tables.into_iter().enumerate() {
        let mut p = OptimParams::default();
        place_table(&mut p, &dev, op, cache.at(k), host, n_slots)?;
        let geometry = Geometry::new([chunks.clamp(1, 65535) as u32, 1, 1], EW_THREADS);
        // SAFETY: sum_sq_fwd_{dtype}(p, partials): the table holds n_slots OptimSlots whose `g`
        // addresses `n` elements of the kernel's dtype (alive in `held`) and the cumulative chunk
        // counts; `partials + offset` has room for this table's `chunks` partial sums.
        unsafe { dev.launch(op, SUM_SQ.at(op, dtype)?, geometry, p, [partials.ptr_at(offset)]) }?;
        offset += chunks;
    }
    let p = OptimParams { n_slots: total as i32, ..Default::default() };
    // SAFETY: sum_sq_total_fwd_f32(p, partials, out): one block reads the n_slots = `total` f32
    // partials and writes out[0].
    unsafe {
        dev.launch(
            op,
            SUM_SQ_TOTAL.at(op, DType::F32)?,
            Geometry::new([1, 1, 1], EW_THREADS),
            p,
            [partials.ptr_at(0), out.ptr_at(0)],
        )
    }?;
    drop(held);
    Ok(out)
}

impl backend::Optim for Cuda {
    fn optim_step(
        &self,
        rule: &OptimRule,
        slots: &[Slot<'_>],
        clip: Option<&Clip<'_>>,
        cache: &mut OptimCache,
    ) -> Result<()> {
        let tables = cache.get_or_insert_with(|| Box::new(StepTables::default()));
        let tables = tables
            .downcast_mut::<StepTables>()
            .ok_or_else(|| Error::invalid("optimizer", "the optimizer's launch tables belong to another backend"))?;
        let (kernel, mut hyper) = kernel_params(rule);
        // The sum of squares as one contiguous f32 on the device, alive until the launches are queued.
        let sum = clip.map(|c| contig(&c.sum_sq.to_dtype(DType::F32)?)).transpose()?;
        if let (Some(c), Some(s)) = (clip, &sum) {
            if s.elem_count() != 1 {
                return Err(Error::shapes_note("optimizer step", &[s.shape()], "the clip norm must be one element"));
            }
            hyper.clip_sum_sq = ptr(kernel, s)?;
            hyper.max_norm = c.max_norm as f32;
        }
        step(kernel, slots, hyper, tables)
    }

    fn sum_sq(&self, xs: &[&Tensor], device: Device) -> Result<Tensor> {
        Ok(tensor(sum_sq(xs, device)?, &[1]))
    }
}
