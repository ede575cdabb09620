//! CPU kernels for the activation family.
