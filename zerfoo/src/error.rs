//! The one error type of zerfoo.

use core::fmt;

/// Everything that can go wrong at run time.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that an op needs to agree do not (a `Dyn` dim checked at run time).
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The left (or only) operand's dims.
        lhs: Vec<usize>,
        /// The right operand's dims (or the expected dims).
        rhs: Vec<usize>,
    },
    /// Run-time dims do not fit a shape type with static dims (`realize`, `from_vec`).
    StaticShape {
        /// The operation.
        op: &'static str,
        /// The run-time dims.
        got: Vec<usize>,
        /// The shape type's pattern, `?` where dynamic: `[?, 128]`.
        expected: String,
    },
    /// A buffer's length does not equal the shape's element count.
    LengthMismatch {
        /// The operation.
        op: &'static str,
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// An index (token id, gather index, slice bound) is out of range.
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The valid range is `0..size`.
        size: usize,
    },
    /// An argument is invalid (a probability outside [0, 1), a zero split size, ...).
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        reason: String,
    },
    /// A file is malformed or truncated (safetensors, JSON, ONNX, ...).
    Format {
        /// What was being read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint does not fit the module: a missing, unexpected,
    /// mis-shaped or wrong-dtype tensor.
    Checkpoint {
        /// The tensor's dotted path.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A dtype that the device or operation cannot handle.
    Dtype {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A CUDA call failed (or a check made before one: capability, layout).
    Cuda {
        /// The call (`cuInit`, `nvrtcCompileProgram`, `cublasGemmStridedBatchedEx`, ...).
        call: String,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { op, lhs, rhs } => {
                write!(f, "shape error in `{op}`: {lhs:?} does not match {rhs:?}")
            }
            Error::StaticShape { op, got, expected } => write!(
                f,
                "shape error in `{op}`: dims {got:?} do not fit the shape type {expected}"
            ),
            Error::LengthMismatch { op, expected, got } => write!(
                f,
                "length error in `{op}`: the shape holds {expected} elements but {got} were given"
            ),
            Error::IndexOutOfRange { op, index, size } => write!(
                f,
                "index error in `{op}`: index {index} is out of range for size {size}"
            ),
            Error::InvalidArgument { op, reason } => {
                write!(f, "invalid argument to `{op}`: {reason}")
            }
            Error::Dtype { op, reason } => write!(f, "dtype error in `{op}`: {reason}"),
            Error::Io { path, reason } => write!(f, "i/o error on `{path}`: {reason}"),
            Error::Format { what, reason } => write!(f, "malformed {what}: {reason}"),
            Error::Checkpoint { tensor, reason } => {
                write!(f, "checkpoint error for tensor `{tensor}`: {reason}")
            }
            Error::Cuda { call, reason } => write!(f, "CUDA error in `{call}`: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<zerfoo_kernels::DeviceError> for Error {
    fn from(e: zerfoo_kernels::DeviceError) -> Self {
        Error::Cuda {
            call: e.call,
            reason: e.reason,
        }
    }
}

/// `Result` with zerfoo's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Unwraps a `try_*` result in the panicking twin, with the same message.
#[track_caller]
pub(crate) fn or_panic<T>(r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod device_error_tests {
    use super::*;

    #[test]
    fn device_errors_convert_keeping_the_call() {
        let e: Error = zerfoo_kernels::DeviceError::new("cuInit", "no driver").into();
        assert_eq!(e.to_string(), "CUDA error in `cuInit`: no driver");
    }
}
