//! CPU kernels for the loss family.
