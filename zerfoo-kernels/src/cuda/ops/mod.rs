//! Host-side launch functions, one module per kernel family. Each mirrors the
//! CPU kernel of the same name in [`crate::cpu`]: device buffers plus
//! [`Layout`](crate::Layout)s in, a contiguous device buffer out, errors as
//! [`CudaError`](super::CudaError).

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod index;
pub mod loss;
pub mod mask;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod rotary;
pub mod shape;
pub mod softmax;

use super::CudaDtype;
use crate::FloatDtype;

/// A float element type kernels are instantiated for, whose compute type
/// (`f32`/`f64`) can also live on the device (statistics, optimizer state).
pub trait CudaFloat: FloatDtype<Acc: CudaDtype> + CudaDtype {}
impl<T: FloatDtype<Acc: CudaDtype> + CudaDtype> CudaFloat for T {}
