//! [`DeviceError`]: what failed on a device, never a panic.

use core::fmt;

/// A failed device operation: which call (for CUDA a driver, NVRTC or
/// cuBLAS function, or a check made before one) and why.
///
/// ```
/// use zerfoo_kernels::DeviceError;
/// let e = DeviceError::new("cuInit", "CUDA_ERROR_NO_DEVICE");
/// assert_eq!(e.to_string(), "device call `cuInit` failed: CUDA_ERROR_NO_DEVICE");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceError {
    /// The call that failed (`cuInit`, `nvrtcCompileProgram`, `cublasGemmStridedBatchedEx`, ...).
    pub call: String,
    /// What went wrong: the status name and message, a compile log, or the
    /// check that did not pass.
    pub reason: String,
}

impl DeviceError {
    /// An error from `call` with `reason`.
    pub fn new(call: impl Into<String>, reason: impl Into<String>) -> Self {
        DeviceError {
            call: call.into(),
            reason: reason.into(),
        }
    }

    /// Wraps a library error (or anything printable) from `call`.
    pub fn from_call(call: &str, e: impl fmt::Display) -> Self {
        DeviceError::new(call, e.to_string())
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device call `{}` failed: {}", self.call, self.reason)
    }
}

impl std::error::Error for DeviceError {}
