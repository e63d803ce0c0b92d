//! The CUDA device layer (cargo feature `cuda`): cudarc with dynamic loading,
//! so this builds with no CUDA toolkit and fails with a [`CudaError`] (never
//! a panic) where no driver or GPU is present.
//!
//! Kernel sources are embedded ([`Family`]) and compiled at run time with
//! NVRTC, one module per (family, dtype), cached per device. Floats compute
//! in `f32` (`f64` for `f64`) and round once on store, like the CPU kernels.
//! Matmul goes through cuBLAS.

mod dtype;
mod error;
mod source;

pub use dtype::{
    check_capability, kernel_types, min_capability, Capability, CudaDtype, KernelTypes,
    BASE_CAPABILITY, FLOAT_DTYPES,
};
pub use error::CudaError;
pub use source::{compile_ptx, kernel_name, kernel_source, nvrtc_available, Family, COMMON_SOURCE};

mod alloc;
mod device;
mod emulator;

pub use alloc::{round_size, Pool, PoolStats};
pub use device::{max_index, no_device_reason, CudaBuffer, CudaDevice, DevLayout};
pub use emulator::{emulation_source, host_compiler_available, kernel_signatures, EMULATOR_HEADER};

pub mod ops;

pub use ops::CudaFloat;

#[cfg(test)]
mod tests;
