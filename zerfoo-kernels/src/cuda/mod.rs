//! The CUDA device layer (cargo feature `cuda`): cudarc with dynamic loading,
//! so this builds with no CUDA toolkit and fails with a [`CudaError`] (never
//! a panic) where no driver or GPU is present.
//!
//! - [`CudaDevice`]: a GPU's context and stream, a cache of compiled kernel
//!   modules and a caching allocator ([`Pool`]); [`CudaBuffer`] is typed
//!   device memory that returns to that cache on drop.
//! - Kernel sources are embedded ([`Family`], `kernels/*.cu`) and compiled at
//!   run time with NVRTC, one module per (family, dtype), cached per device.
//!   Floats compute in `f32` (`f64` for `f64`) and round once on store, with
//!   the CPU's exact rounding, so results match [`crate::cpu`] to within the
//!   compute type's error. bf16 needs sm_80+, fp8 sm_89+ ([`check_capability`]).
//! - [`ops`]: one launch function per CPU kernel (same arguments, device
//!   buffers instead of slices); matmul through cuBLAS.
//! - [`CudaDevice::emulated`]: the same sources compiled with the host C++
//!   compiler and run on the CPU, so kernels and launch code are tested on
//!   machines without a GPU.
//!
//! ```
//! use zerfoo_kernels::cuda::{ops::elementwise::unary_forward, CudaDevice};
//! use zerfoo_kernels::{cpu::unary::Exp, Layout};
//! match CudaDevice::new(0) {
//!     Ok(dev) => {
//!         let x = dev.to_device(&[0.0f32, 1.0]).unwrap();
//!         let y = unary_forward(Exp, &x, &Layout::contiguous(&[2])).unwrap();
//!         assert!((y.to_host().unwrap()[1] - 1f32.exp()).abs() < 1e-6);
//!     }
//!     Err(e) => println!("no GPU: {e}"),
//! }
//! ```

#![warn(missing_docs)]

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
mod profile;

pub use alloc::{round_size, Pool, PoolStats, LARGE_STEP, SMALL_LIMIT, SMALL_STEP};
pub use device::{
    max_index, no_device_reason, CudaBuffer, CudaDevice, DevLayout, CUBLAS_WORKSPACE_BYTES,
};
pub use emulator::{emulation_source, host_compiler_available, kernel_signatures, EMULATOR_HEADER};

pub mod ops;

pub use ops::CudaFloat;

#[cfg(test)]
mod tests;
