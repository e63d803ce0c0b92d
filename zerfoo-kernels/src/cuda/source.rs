//! Embedded kernel sources, templated per dtype, and their NVRTC compilation.
//!
//! Each family (`kernels/<family>.cu`) is compiled once per float dtype: the
//! host prepends `#define`s naming the storage type, the compute type, the
//! kernel-name suffix and the rounding function, then the shared prelude
//! (`kernels/common.cuh`: exact conversions, layouts, block reductions), then
//! the family. The sources include no header, so any NVRTC compiles them.

use cudarc::nvrtc::{CompileOptions, Ptx};

use super::dtype::{kernel_types, Capability};
use super::error::{guard, CudaError};
use crate::DType;

/// The shared prelude of every kernel module.
pub const COMMON_SOURCE: &str = include_str!("kernels/common.cuh");

/// A group of kernels compiled together (one `.cu` file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Strided unary maths, forward and backward.
    Unary,
    /// Binary maths with broadcast strides, forward and backward.
    Binary,
    /// Sum and max/min over axes, and the max/min backward.
    Reduce,
    /// Softmax / log-softmax along an axis, forward and backward.
    Softmax,
    /// Layer norm and RMS norm, forward and backward.
    Norm,
    /// Embedding lookup and its scatter-add backward.
    Index,
    /// Cross-entropy, forward and backward.
    Loss,
    /// Fused AdamW / SGD updates, sum of squares and in-place scaling.
    Optim,
    /// Copying a range, concatenation and adding into a narrowed slice.
    Shape,
    /// Where/select, masked fill, triangles and seeded dropout.
    Mask,
    /// Rotary position embedding: tables and rotation.
    Rotary,
    /// Fused (flash-style) attention, forward and backward.
    FusedAttention,
    /// 2-D convolution, pooling and batch normalization.
    Conv,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 13] = [
        Family::Unary,
        Family::Binary,
        Family::Reduce,
        Family::Softmax,
        Family::Norm,
        Family::Index,
        Family::Loss,
        Family::Optim,
        Family::Shape,
        Family::Mask,
        Family::Rotary,
        Family::FusedAttention,
        Family::Conv,
    ];

    /// The family's file name without extension.
    pub fn name(self) -> &'static str {
        match self {
            Family::Unary => "unary",
            Family::Binary => "binary",
            Family::Reduce => "reduce",
            Family::Softmax => "softmax",
            Family::Norm => "norm",
            Family::Index => "index",
            Family::Loss => "loss",
            Family::Optim => "optim",
            Family::Shape => "shape",
            Family::Mask => "mask",
            Family::Rotary => "rotary",
            Family::FusedAttention => "attention",
            Family::Conv => "conv",
        }
    }

    /// The family's embedded source.
    pub fn source(self) -> &'static str {
        match self {
            Family::Unary => include_str!("kernels/unary.cu"),
            Family::Binary => include_str!("kernels/binary.cu"),
            Family::Reduce => include_str!("kernels/reduce.cu"),
            Family::Softmax => include_str!("kernels/softmax.cu"),
            Family::Norm => include_str!("kernels/norm.cu"),
            Family::Index => include_str!("kernels/index.cu"),
            Family::Loss => include_str!("kernels/loss.cu"),
            Family::Optim => include_str!("kernels/optim.cu"),
            Family::Shape => include_str!("kernels/shape.cu"),
            Family::Mask => include_str!("kernels/mask.cu"),
            Family::Rotary => include_str!("kernels/rotary.cu"),
            Family::FusedAttention => include_str!("kernels/attention.cu"),
            Family::Conv => include_str!("kernels/conv.cu"),
        }
    }

    /// Base names of the `extern "C"` kernels this family's module holds
    /// (the prelude's conversion kernels included); the symbol of one is
    /// [`kernel_name`]`(base, dtype)`.
    pub fn kernels(self) -> Vec<&'static str> {
        let mut names = vec!["round_from_acc", "to_f32", "from_f32", "copy_strided"];
        for line in self.source().lines() {
            if let Some(rest) = line.strip_prefix("ZF_KERNEL ZF_NAME(") {
                if let Some(end) = rest.find(')') {
                    names.push(&rest[..end]);
                }
            }
        }
        names
    }
}

/// The symbol of kernel `base` instantiated for `dt`: `softmax_fwd_bf16`.
pub fn kernel_name(base: &str, dt: DType) -> String {
    format!("{base}_{dt}")
}

/// The full source of `family` instantiated for float dtype `dt`.
///
/// ```
/// use zerfoo_kernels::{cuda::{kernel_source, Family}, DType};
/// let src = kernel_source(Family::Unary, DType::F16).unwrap();
/// assert!(src.starts_with("#define ZF_T zf_f16\n#define ZF_ACC float\n"));
/// assert!(src.contains("ZF_NAME(unary_fwd)"));
/// assert!(kernel_source(Family::Unary, DType::I64).is_err());
/// ```
pub fn kernel_source(family: Family, dt: DType) -> Result<String, CudaError> {
    let t = kernel_types(dt).ok_or_else(|| {
        CudaError::new(
            format!("kernel source for `{}`", family.name()),
            format!("{dt} is not a float dtype; kernels are instantiated for floats only"),
        )
    })?;
    let prelude = format!(
        "#define ZF_T {}\n#define ZF_ACC {}\n#define ZF_SUFFIX {}\n#define ZF_FROM_ACC zf_from_acc_{}\n",
        t.storage, t.acc, t.suffix, t.suffix
    );
    Ok(format!(
        "{prelude}// ---- common.cuh ----\n{COMMON_SOURCE}\n// ---- {}.cu ----\n{}",
        family.name(),
        family.source()
    ))
}

/// Whether the NVRTC library can be loaded (by cudarc's name rules: the
/// loader searches `libnvrtc.so`, `libnvrtc.so.13`, `libnvrtc.so.12`, ... on
/// the usual library path, `LD_LIBRARY_PATH` included).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library by name.
    guard("nvrtc library lookup", || unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    })
    .unwrap_or(false)
}

/// Compiles `family` for `dt` to PTX for the virtual architecture of `cc`
/// (no GPU needed). Errors carry NVRTC's log.
pub fn compile_ptx(family: Family, dt: DType, cc: Capability) -> Result<Ptx, CudaError> {
    const CALL: &str = "nvrtcCompileProgram";
    if !nvrtc_available() {
        return Err(CudaError::new(
            CALL,
            "the NVRTC library (libnvrtc.so) could not be loaded; add its folder to LD_LIBRARY_PATH",
        ));
    }
    let src = kernel_source(family, dt)?;
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture={}", cc.compute_arch()),
            "--std=c++14".to_string(),
        ],
        name: Some(format!("{}_{dt}.cu", family.name())),
        ..Default::default()
    };
    match guard(CALL, || cudarc::nvrtc::compile_ptx_with_opts(&src, opts))? {
        Ok(ptx) => Ok(ptx),
        Err(cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. }) => Err(CudaError::new(
            CALL,
            format!(
                "{nvrtc} compiling `{}` for {dt} ({}):\n{}",
                family.name(),
                cc.compute_arch(),
                log.to_string_lossy()
            ),
        )),
        Err(e) => Err(CudaError::from_call(CALL, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::FLOAT_DTYPES;

    #[test]
    fn every_family_lists_its_kernels() {
        assert!(Family::Unary.kernels().contains(&"unary_bwd"));
        assert!(Family::Norm.kernels().contains(&"norm_bwd_wb_partial"));
        for f in Family::ALL {
            assert!(f.kernels().len() > 4, "{}", f.name());
        }
        assert_eq!(kernel_name("softmax_fwd", DType::BF16), "softmax_fwd_bf16");
    }

    #[test]
    fn sources_are_templated_per_dtype() {
        for dt in FLOAT_DTYPES {
            let s = kernel_source(Family::Softmax, dt).unwrap();
            let t = kernel_types(dt).unwrap();
            assert!(s.contains(&format!("#define ZF_T {}\n", t.storage)));
            assert!(s.contains(&format!("#define ZF_FROM_ACC zf_from_acc_{dt}\n")));
            assert!(s.contains("struct ZfLayout"));
            assert!(!s.contains("#include"), "kernels must need no header");
        }
    }

    /// Compiles every family for every dtype to PTX with NVRTC (no GPU
    /// needed): the proof that the `.cu` sources are valid. Skips when the
    /// NVRTC library cannot be loaded.
    #[test]
    fn nvrtc_compiles_every_kernel_for_every_dtype() {
        if !nvrtc_available() {
            println!("skipped: NVRTC library not found (set LD_LIBRARY_PATH to the folder of libnvrtc.so.13 or .12)");
            return;
        }
        let mut failures = Vec::new();
        let mut compiled = 0;
        for f in Family::ALL {
            for dt in FLOAT_DTYPES {
                match compile_ptx(f, dt, Capability::new(9, 0)) {
                    Ok(ptx) => {
                        let text = ptx.to_src();
                        for k in f.kernels() {
                            let sym = kernel_name(k, dt);
                            assert!(
                                text.contains(&format!(".entry {sym}(")),
                                "{sym} missing from the PTX of {}",
                                f.name()
                            );
                        }
                        compiled += 1;
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        println!(
            "compiled {compiled} modules ({} families x 6 dtypes) for compute_90",
            Family::ALL.len()
        );
    }
}
