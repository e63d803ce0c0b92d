//! Counter-based random numbers (see [`zerfoo_kernels::rng`]).

pub(crate) use zerfoo_kernels::rng::{bits, mix, normal, uniform};
