//! Errors are values that name the op, the shapes and the tensor involved.

use crate::{DType, Device};

/// Every fallible engine call returns this.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two or more operands whose shapes cannot be combined by `op`.
    #[error("{op}: incompatible shapes {shapes:?}{}", fmt_note(.note))]
    ShapeMismatch { op: &'static str, shapes: Vec<Vec<usize>>, note: String },

    /// A dimension index out of range for a tensor of `rank`.
    #[error("{op}: dimension {dim} out of range for a rank-{rank} tensor of shape {shape:?}")]
    DimOutOfRange { op: &'static str, dim: i64, rank: usize, shape: Vec<usize> },

    /// An argument that is invalid for reasons other than shape.
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },

    /// Operands of different dtypes, or a dtype the op does not support.
    #[error("{op}: unsupported dtype {got}{}", fmt_note(.note))]
    DType { op: &'static str, got: DType, note: String },

    /// Operands that live on different devices.
    #[error("{op}: operands on different devices ({a} and {b})")]
    DeviceMismatch { op: &'static str, a: Device, b: Device },

    /// A device that is not available in this build or on this machine.
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: Device, reason: String },

    /// The CUDA driver, cuBLASLt or a kernel reported an error while running `op`.
    #[error("{op}: CUDA: {msg}")]
    Cuda { op: &'static str, msg: String },

    /// A gradient is needed through an op that has no backward rule.
    #[error("backward: op `{op}` has no backward rule but a gradient flows through it")]
    NoBackward { op: &'static str },

    /// A problem with a file: a checkpoint, a config or a dataset.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },

    /// A named tensor is missing, unexpected or malformed in a file or a parameter store.
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor { path: String, name: String, msg: String },

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn fmt_note(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(" ({note})")
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shapes(op: &'static str, shapes: &[&[usize]]) -> Self {
        Error::ShapeMismatch { op, shapes: shapes.iter().map(|s| s.to_vec()).collect(), note: String::new() }
    }

    pub fn shapes_note(op: &'static str, shapes: &[&[usize]], note: impl Into<String>) -> Self {
        Error::ShapeMismatch { op, shapes: shapes.iter().map(|s| s.to_vec()).collect(), note: note.into() }
    }

    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }

    pub fn dtype(op: &'static str, got: DType, note: impl Into<String>) -> Self {
        Error::DType { op, got, note: note.into() }
    }

    pub fn file(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().display().to_string(), msg: msg.into() }
    }

    pub fn tensor(path: impl AsRef<std::path::Path>, name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().display().to_string(), name: name.into(), msg: msg.into() }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
