//! CPU kernels for the index family.
