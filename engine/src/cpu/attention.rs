//! CPU kernels for the attention family.
