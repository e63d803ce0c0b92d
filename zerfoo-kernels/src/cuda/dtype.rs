//! Element types on the device: their names in kernel source and the GPU
//! capabilities they need.

use half::{bf16, f16};

use super::CudaError;
use crate::{DType, Dtype, F8E4M3, F8E5M2};

/// An element type that can live in device memory.
///
/// # Safety
///
/// Implementors are plain bit patterns (no padding, no pointers, every byte
/// pattern the device writes is a valid value), `size_of::<Self>()` is
/// `Self::DTYPE.size_in_bytes()`, and [`CudaDtype::C_TYPE`] has the same
/// size and layout in kernel source.
pub unsafe trait CudaDtype: Dtype {
    /// The storage type in kernel source (`float`, `zf_bf16`, ...).
    const C_TYPE: &'static str;
}

// SAFETY: IEEE floats, half's repr(transparent) u16 types, the repr(transparent)
// u8 f8 types and plain integers are all plain bit patterns of their size.
unsafe impl CudaDtype for f32 {
    const C_TYPE: &'static str = "float";
}
unsafe impl CudaDtype for f64 {
    const C_TYPE: &'static str = "double";
}
unsafe impl CudaDtype for f16 {
    const C_TYPE: &'static str = "zf_f16";
}
unsafe impl CudaDtype for bf16 {
    const C_TYPE: &'static str = "zf_bf16";
}
unsafe impl CudaDtype for F8E4M3 {
    const C_TYPE: &'static str = "zf_f8e4m3";
}
unsafe impl CudaDtype for F8E5M2 {
    const C_TYPE: &'static str = "zf_f8e5m2";
}
unsafe impl CudaDtype for u32 {
    const C_TYPE: &'static str = "u32";
}
unsafe impl CudaDtype for i64 {
    const C_TYPE: &'static str = "i64";
}
// SAFETY: one byte; the host uploads only `false`/`true` (0/1), kernels read
// masks as bytes and never write a `bool` buffer, and `zeros` is `false`.
unsafe impl CudaDtype for bool {
    const C_TYPE: &'static str = "bool";
}

/// The float element types kernels are instantiated for, in a fixed order.
pub const FLOAT_DTYPES: [DType; 6] = [
    DType::F8E4M3,
    DType::F8E5M2,
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::F64,
];

/// How a float dtype appears in kernel source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTypes {
    /// Storage type (`ZF_T`).
    pub storage: &'static str,
    /// Compute type (`ZF_ACC`): `float`, or `double` for f64.
    pub acc: &'static str,
    /// Kernel-name suffix (`ZF_SUFFIX`), the dtype's display name: `f32`, `bf16`, `f8e4m3`.
    pub suffix: &'static str,
}

/// The kernel-source names of a float dtype; `None` for integers and bool.
///
/// ```
/// use zerfoo_kernels::{cuda::kernel_types, DType};
/// let t = kernel_types(DType::BF16).unwrap();
/// assert_eq!((t.storage, t.acc, t.suffix), ("zf_bf16", "float", "bf16"));
/// assert!(kernel_types(DType::I64).is_none());
/// ```
pub fn kernel_types(dt: DType) -> Option<KernelTypes> {
    let (storage, suffix) = match dt {
        DType::F8E4M3 => (F8E4M3::C_TYPE, "f8e4m3"),
        DType::F8E5M2 => (F8E5M2::C_TYPE, "f8e5m2"),
        DType::F16 => (f16::C_TYPE, "f16"),
        DType::BF16 => (bf16::C_TYPE, "bf16"),
        DType::F32 => (f32::C_TYPE, "f32"),
        DType::F64 => (f64::C_TYPE, "f64"),
        DType::I64 | DType::U32 | DType::Bool => return None,
    };
    let acc = if dt == DType::F64 { "double" } else { "float" };
    Some(KernelTypes {
        storage,
        acc,
        suffix,
    })
}

/// A GPU's compute capability (`major.minor`, e.g. 9.0 for H100/H200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl Capability {
    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Capability { major, minor }
    }

    /// The NVRTC virtual architecture for this capability (`compute_90`).
    pub fn compute_arch(self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

impl core::fmt::Display for Capability {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// The lowest capability at which the kernels run at all (f64 atomics, fp16
/// conversions): sm_60.
pub const BASE_CAPABILITY: Capability = Capability::new(6, 0);

/// The capability a dtype needs: bf16 arithmetic sm_80+, fp8 sm_89+, the
/// rest [`BASE_CAPABILITY`].
///
/// ```
/// use zerfoo_kernels::{cuda::{min_capability, Capability}, DType};
/// assert_eq!(min_capability(DType::BF16), Capability::new(8, 0));
/// assert_eq!(min_capability(DType::F8E5M2), Capability::new(8, 9));
/// ```
pub fn min_capability(dt: DType) -> Capability {
    match dt {
        DType::BF16 => Capability::new(8, 0),
        DType::F8E4M3 | DType::F8E5M2 => Capability::new(8, 9),
        _ => BASE_CAPABILITY,
    }
}

/// Checks that GPU `gpu` (capability `have`) can run `op` in `dt`; the error
/// names the op, the dtype, the GPU and both capabilities.
///
/// ```
/// use zerfoo_kernels::{cuda::{check_capability, Capability}, DType};
/// let e = check_capability("softmax", DType::BF16, "Tesla V100", Capability::new(7, 0)).unwrap_err();
/// assert!(e.reason.contains("softmax") && e.reason.contains("bf16") && e.reason.contains("Tesla V100"));
/// assert!(check_capability("softmax", DType::BF16, "H200", Capability::new(9, 0)).is_ok());
/// ```
pub fn check_capability(op: &str, dt: DType, gpu: &str, have: Capability) -> Result<(), CudaError> {
    let need = min_capability(dt);
    if have >= need {
        return Ok(());
    }
    Err(CudaError::new(
        format!("capability check for `{op}`"),
        format!(
            "`{op}` in {dt} needs compute capability {}.{}+ ({need}); GPU `{gpu}` is {}.{} ({have})",
            need.major, need.minor, have.major, have.minor
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_type_names_match_sizes_and_suffixes() {
        for dt in FLOAT_DTYPES {
            let t = kernel_types(dt).unwrap();
            assert_eq!(t.suffix, dt.to_string());
            assert_eq!(t.acc == "double", dt == DType::F64);
        }
        assert_eq!(
            core::mem::size_of::<F8E4M3>(),
            DType::F8E4M3.size_in_bytes()
        );
        assert_eq!(core::mem::size_of::<bf16>(), DType::BF16.size_in_bytes());
        assert!(kernel_types(DType::Bool).is_none());
    }

    #[test]
    fn capabilities_gate_bf16_and_fp8() {
        let v100 = Capability::new(7, 0);
        let a100 = Capability::new(8, 0);
        let ada = Capability::new(8, 9);
        let h100 = Capability::new(9, 0);
        for (cc, bf, f8) in [
            (v100, false, false),
            (a100, true, false),
            (ada, true, true),
            (h100, true, true),
        ] {
            assert_eq!(check_capability("add", DType::BF16, "gpu", cc).is_ok(), bf);
            assert_eq!(
                check_capability("add", DType::F8E4M3, "gpu", cc).is_ok(),
                f8
            );
            assert_eq!(
                check_capability("add", DType::F8E5M2, "gpu", cc).is_ok(),
                f8
            );
            assert!(check_capability("add", DType::F32, "gpu", cc).is_ok());
        }
        assert!(check_capability("add", DType::F64, "old", Capability::new(5, 2)).is_err());
        let e = check_capability("matmul", DType::F8E4M3, "NVIDIA A100", a100).unwrap_err();
        assert_eq!(e.call, "capability check for `matmul`");
        assert!(
            e.reason.contains("sm_89") && e.reason.contains("sm_80") && e.reason.contains("f8e4m3")
        );
        assert_eq!(h100.compute_arch(), "compute_90");
        assert_eq!(h100.to_string(), "sm_90");
    }
}
