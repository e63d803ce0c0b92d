//! [`CudaError`]: what failed on the CUDA side, never a panic.

use core::fmt;

pub use crate::device::DeviceError;

/// A failed CUDA operation: which call (a driver, NVRTC or cuBLAS function,
/// or a check made before one) and why. The same type as every device's
/// [`DeviceError`].
///
/// ```
/// use zerfoo_kernels::cuda::CudaError;
/// let e = CudaError::new("cuInit", "CUDA_ERROR_NO_DEVICE");
/// assert_eq!(e.to_string(), "device call `cuInit` failed: CUDA_ERROR_NO_DEVICE");
/// ```
pub type CudaError = DeviceError;

/// Runs `f`, turning a panic inside cudarc (a missing library or symbol under
/// dynamic loading) into a [`CudaError`] naming `call`.
pub(crate) fn guard<R>(call: &str, f: impl FnOnce() -> R) -> Result<R, CudaError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_string());
        CudaError::new(call, msg)
    })
}

/// Runs a cudarc call: its error, or a panic inside it (a missing symbol
/// under dynamic loading), becomes a [`CudaError`] naming `call`.
pub(crate) fn cuda_call<R, E: fmt::Display>(
    call: &str,
    f: impl FnOnce() -> Result<R, E>,
) -> Result<R, CudaError> {
    guard(call, f)?.map_err(|e| CudaError::from_call(call, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_panics_into_errors() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r: Result<(), _> = guard("cuInit", || panic!("Unable to dynamically load"));
        std::panic::set_hook(prev);
        let e = r.unwrap_err();
        assert_eq!(e.call, "cuInit");
        assert!(e.reason.contains("dynamically load"));
        assert_eq!(guard("x", || 3).unwrap(), 3);
    }
}
