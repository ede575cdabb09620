//! CPU kernels for the norm family.
