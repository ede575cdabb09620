//! CPU kernels for the rope family.
