//! # zerfoo
//!
//! A deep-learning framework whose tensors carry their dimensions and dtype in
//! their type. A shape mismatch is a compile error that names the operation
//! and the dims:
//!
//! ```compile_fail
//! use zerfoo::prelude::*;
//! dim!(Batch = 4);
//! dim!(Hidden = 768);
//! dim!(Ffn = 3072);
//! let x: Tensor<(Batch, Hidden), f32> = Tensor::zeros((Batch, Hidden));
//! let w: Tensor<(Ffn, Hidden), f32> = Tensor::zeros((Ffn, Hidden));
//! let _ = x.matmul(w); // error: shape error in `Matmul`: `Hidden` does not match `Ffn`
//! ```
//!
//! Dynamic dims ([`Dyn`](shape::Dyn)) are checked at run time: every fallible
//! op has a `try_*` form returning [`Error::ShapeMismatch`].
//!
//! Crate map: [`shape`] (dims, shapes, shape rules), [`tensor`] ([`Tensor`]
//! and its creation), [`ops`] (every op with its backward), [`autograd`]
//! (tapes, gradients). Kernels live in [`kernels`] (`zerfoo-kernels`).

extern crate self as zerfoo;

pub mod autograd;
pub mod data;
pub mod error;
pub mod io;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod shape;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use tensor::Tensor;
pub use typenum;
pub use zerfoo_kernels as kernels;
pub use zerfoo_kernels::cpu::profile;
pub use zerfoo_kernels::cpu::WarmWorkers;
pub use zerfoo_kernels::{Backend, Cpu, Device};

/// An NVIDIA GPU as a tensor device (cargo feature `cuda`):
/// `Tensor<S, E, Cuda>`. Open one with `Cuda::new(0)`; `Cuda::emulated`
/// runs the same kernels on the host, for tests without a GPU.
#[cfg(feature = "cuda")]
pub use zerfoo_kernels::cuda::CudaDevice as Cuda;
pub use zerfoo_macros::dim;

/// Sets up the CPU thread pool with the calling thread as one of its
/// workers, and returns the pool's thread count.
///
/// Kernels run on rayon's global pool. Left to itself, rayon builds that
/// pool on first use with threads of its own, and every parallel kernel
/// called from `main` then hands its work to the pool and puts `main` to
/// sleep until it is done: a wake-up and a sleep per op, which costs a
/// small model several percent of its step time. Called first thing in
/// `main`, this makes `main` a worker, so kernels start on it directly.
///
/// `threads`: the pool size (`None`: the `RAYON_NUM_THREADS` environment
/// variable, else one per CPU). Fails if the pool was already built (a
/// kernel or another call got there first); the pool keeps working then,
/// only without the calling thread.
///
/// ```
/// let n = zerfoo::init_cpu_threads(Some(2)).unwrap_or(0);
/// assert!(n == 2 || n == 0);
/// ```
pub fn init_cpu_threads(threads: Option<usize>) -> Result<usize> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .use_current_thread()
        .build_global()
        .map_err(|e| Error::InvalidArgument {
            op: "init_cpu_threads",
            reason: format!("the CPU thread pool is already running: {e}"),
        })?;
    Ok(rayon::current_num_threads())
}

/// Asks the C allocator to keep freed memory for reuse instead of handing
/// it back to the kernel; returns whether it agreed (glibc on Linux; a
/// no-op returning `false` elsewhere).
///
/// Every kernel allocates its output, and a training step frees its
/// activations at the end. glibc serves large blocks with `mmap` and
/// returns the top of its heap once enough is free, so each step maps the
/// same memory again: page faults, zeroing and (with several threads)
/// TLB-shootdown interrupts, about a tenth of the step of a 10M-parameter
/// GPT on 2 threads. This raises glibc's `mmap` threshold to its largest
/// value (32 MiB) and turns heap trimming off, so after the first step the
/// blocks come back from the heap. Peak memory does not grow; the memory
/// stays with the process until it exits.
///
/// ```
/// let kept = zerfoo::retain_freed_memory();
/// assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            /// glibc's `int mallopt(int param, int value)`.
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: `mallopt` only changes allocator settings; both values are
        // in the ranges glibc documents (it returns 0 and changes nothing
        // otherwise).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Everything a model file usually needs.
pub mod prelude {
    pub use crate::autograd::{Gradients, NoTape, Tape, TensorId};
    pub use crate::dim;
    pub use crate::ops::ConcatWith;
    pub use crate::shape::{
        Axes2, Axes3, Axes4, Axes5, Axes6, Axis, ConstShape, Dim, Dyn, Perm2, Perm3, Perm4, Perm5,
        Rank0, Rank1, Rank2, Rank3, Rank4, Rank5, Rank6, Shape,
    };
    pub use crate::tensor::Tensor;
    #[cfg(feature = "cuda")]
    pub use crate::Cuda;
    pub use crate::{Error, Result};
    pub use typenum::consts::*;
    pub use zerfoo_kernels::{
        bf16, f16, Backend, Cpu, DType, Device, Dtype, FloatDtype, F8E4M3, F8E5M2,
    };
}

/// The README's examples, compiled and run as doctests so they never rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
