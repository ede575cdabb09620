//! The vlm4vla engine: tensors with strided views, a reverse-mode autograd, a CPU backend (the
//! reference), a CUDA backend (feature `cuda`), optimizers, safetensors I/O and the layer building
//! blocks the models share ([`nn`]).
//!
//! ```
//! use vlm4vla_engine::{Device, DType, Tensor};
//! let x = Tensor::rand_normal(0., 1., &[3, 4], DType::F64, Device::Cpu, 7).unwrap().variable();
//! let loss = x.tanh().unwrap().sqr().unwrap().sum_all().unwrap();
//! let grads = loss.backward().unwrap();
//! assert_eq!(grads.get(&x).unwrap().shape(), &[3, 4]);
//! ```

pub mod autograd;
pub(crate) mod backend;
pub mod counters;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod io;
pub mod kinds;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod shape;
pub mod storage;
pub mod tensor;

mod device;

pub use autograd::{checkpoint, is_grad_enabled, no_grad, with_grad_enabled, CheckpointFn, GradStore};
pub use device::Device;
pub use dtype::{DType, Float, WithDType};
pub use error::{Error, Result};
pub use io::{LoadOptions, SafeTensorsFile};
pub use kinds::{AttentionMask, CmpKind, Reduction, RmsNormKind};
pub use ops::{attention, attention_with, AttentionKeys, AttentionOutput};
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, GradNorm, LrSchedule, NamedParams, Sgd, SgdConfig};
pub use params::ParamStore;
pub use shape::{Dim, Layout};
pub use storage::{CpuStorage, Storage};
pub use tensor::{Tensor, TensorId};

/// The features this build was compiled with.
pub fn enabled_features() -> Vec<&'static str> {
    let mut f = vec!["cpu"];
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    f
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_unavailable_reason() -> String {
    "this build has no CUDA support (rebuild with `--features cuda`)".into()
}
