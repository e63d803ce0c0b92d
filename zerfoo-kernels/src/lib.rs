//! Element types, storage layouts and compute kernels for zerfoo.
//!
//! This crate never sees a static shape: every kernel takes plain `&[usize]`
//! shapes and strides (a [`Layout`]) and typed slices. The typed DSL lives in
//! the `zerfoo` crate, which checks shapes at compile time and then calls here.
//!
//! Floating-point kernels are generic over [`FloatDtype`]; low-precision types
//! (f8, f16, bf16) compute in `f32` and round once on store, `f64` computes in
//! `f64`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod f8;
pub mod fastmath;
pub mod layout;
pub mod rng;

pub use dtype::{DType, Dtype, FloatDtype, IntDtype, PlainData, Real};
pub use f8::{F8E4M3, F8E5M2};
pub use half::{bf16, f16};
pub use layout::{Layout, MAX_RANK};

pub use device::{Backend, Cpu, Device, DeviceError};
