//! A host emulation of the device, for testing the kernel sources and the
//! launch code without a GPU: the same `.cu` sources compile with the host
//! C++ compiler (`g++`, or `$CXX`) against `kernels/emulator.h`, which runs
//! each CUDA thread as an OS thread (blocks one after another, barriers for
//! `__syncthreads`, warp shuffles through a slot array, locked atomics).
//! cuBLAS is emulated by a reference column-major strided-batched GEMM.
//!
//! Everything but the PTX-specific f16 conversion instructions (replaced by
//! exact software versions) runs as written. Slow; for tests only.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

use super::source::{Family, COMMON_SOURCE};
use super::{kernel_types, CudaError};
use crate::{DType, FloatDtype};

/// The emulation shim the kernel sources compile against on the host.
pub const EMULATOR_HEADER: &str = include_str!("kernels/emulator.h");

/// `void emu_<kernel>(void** args)`: one kernel, arguments as cuLaunchKernel takes them.
pub(crate) type HostKernel = unsafe extern "C" fn(*mut *mut c_void);
type RunFn = unsafe extern "C" fn(HostKernel, *mut *mut c_void, u32, u32, u32);

#[cfg(unix)]
extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}
#[cfg(unix)]
const RTLD_NOW: c_int = 2;

/// A loaded emulation library (never unloaded), with each kernel's
/// parameter types (to check every launch's arguments against).
struct Lib {
    handle: *mut c_void,
    run: RunFn,
    params: HashMap<String, Vec<String>>,
}

/// What a launch passes for one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgKind {
    /// `int`.
    I32,
    /// `u64`, or a pointer (an address).
    U64,
    /// `double`.
    F64,
    /// `ZfLayout`.
    Layout,
}

/// Whether an argument of kind `k` fits a parameter declared as `ty`.
fn fits(k: ArgKind, ty: &str) -> bool {
    match k {
        ArgKind::I32 => ty == "int",
        ArgKind::U64 => ty == "u64" || ty.ends_with('*'),
        ArgKind::F64 => ty == "double",
        ArgKind::Layout => ty == "ZfLayout",
    }
}
// SAFETY: the handle is only passed to dlsym, which is thread-safe.
unsafe impl Send for Lib {}

/// Compiled emulation libraries, one per dtype (all families together),
/// shared by every emulated device of the process.
static LIBS: Mutex<Option<HashMap<DType, Lib>>> = Mutex::new(None);

/// The host emulation backend of a [`CudaDevice`](super::CudaDevice).
pub(crate) struct Emulator {
    compiler: String,
}

/// The host C++ compiler: `$CXX` or `g++`.
fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".to_string())
}

/// Whether the host C++ compiler runs (the emulator needs it).
pub fn host_compiler_available() -> bool {
    cfg!(unix)
        && std::process::Command::new(compiler())
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// The `extern "C"` kernels of `src` with their parameter types.
pub fn kernel_signatures(src: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(p) = rest.find("ZF_KERNEL ZF_NAME(") {
        rest = &rest[p + "ZF_KERNEL ZF_NAME(".len()..];
        let Some(end) = rest.find(')') else { break };
        let name = rest[..end].to_string();
        rest = &rest[end + 1..];
        let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
            break;
        };
        let params = rest[open + 1..close]
            .split(',')
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|p| !p.is_empty())
            .map(|p| {
                let cut = p.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_');
                cut.trim().to_string()
            })
            .collect();
        rest = &rest[close + 1..];
        out.push((name, params));
    }
    out
}

/// The host source of every family for `dt`: the shim, the templated prelude
/// and families, and one `emu_<kernel>(void** args)` wrapper per kernel.
pub fn emulation_source(dt: DType) -> Result<String, CudaError> {
    let t = kernel_types(dt)
        .ok_or_else(|| CudaError::new("host emulation", format!("{dt} is not a float dtype")))?;
    let mut src = format!(
        "{EMULATOR_HEADER}\n#define ZF_T {}\n#define ZF_ACC {}\n#define ZF_SUFFIX {}\n#define ZF_FROM_ACC zf_from_acc_{}\n{COMMON_SOURCE}\n",
        t.storage, t.acc, t.suffix, t.suffix
    );
    for f in Family::ALL {
        src.push_str(f.source());
        src.push('\n');
    }
    let sigs = kernel_signatures(&src);
    for (name, params) in sigs {
        let args: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("*({ty}*)a[{i}]"))
            .collect();
        src.push_str(&format!(
            "extern \"C\" void emu_{name}_{dt}(void** a) {{ ZF_NAME({name})({}); }}\n",
            args.join(", ")
        ));
    }
    Ok(src)
}

impl Emulator {
    /// An emulator, if the host C++ compiler runs.
    pub(crate) fn new() -> Result<Self, CudaError> {
        if !host_compiler_available() {
            return Err(CudaError::new(
                "host emulation",
                format!(
                    "no host C++ compiler (`{}`) to build the emulated kernels",
                    compiler()
                ),
            ));
        }
        Ok(Emulator {
            compiler: compiler(),
        })
    }

    #[cfg(unix)]
    fn load(&self, dt: DType) -> Result<Lib, CudaError> {
        let call = "host emulation: compile";
        let src = emulation_source(dt)?;
        let dir = std::env::temp_dir();
        let stem = format!("zerfoo_cuda_emu_{}_{dt}", std::process::id());
        let cpp = dir.join(format!("{stem}.cpp"));
        let so = dir.join(format!("{stem}.so"));
        std::fs::write(&cpp, src).map_err(|e| CudaError::from_call(call, e))?;
        let out = std::process::Command::new(&self.compiler)
            .args([
                "-std=c++17",
                "-O1",
                "-shared",
                "-fPIC",
                "-pthread",
                "-w",
                "-o",
            ])
            .arg(&so)
            .arg(&cpp)
            .output()
            .map_err(|e| CudaError::from_call(call, e))?;
        if !out.status.success() {
            return Err(CudaError::new(
                call,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let path = CString::new(so.to_string_lossy().as_bytes()).expect("no NUL in a temp path");
        // SAFETY: dlopen of the library we just built; dlerror reads a static message.
        let handle = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
        let _ = std::fs::remove_file(&cpp);
        let _ = std::fs::remove_file(&so);
        if handle.is_null() {
            // SAFETY: dlerror returns a NUL-terminated message or null.
            let msg = unsafe {
                let m = dlerror();
                if m.is_null() {
                    "unknown".to_string()
                } else {
                    std::ffi::CStr::from_ptr(m).to_string_lossy().into_owned()
                }
            };
            return Err(CudaError::new("host emulation: dlopen", msg));
        }
        let run = sym(handle, "zf_emu_run")?;
        // SAFETY: zf_emu_run has the RunFn signature (emulator.h).
        let run: RunFn = unsafe { std::mem::transmute::<*mut c_void, RunFn>(run) };
        let params = kernel_signatures(&emulation_source(dt)?)
            .into_iter()
            .map(|(name, p)| (format!("{name}_{dt}"), p))
            .collect();
        Ok(Lib {
            handle,
            run,
            params,
        })
    }

    #[cfg(not(unix))]
    fn load(&self, _dt: DType) -> Result<Lib, CudaError> {
        Err(CudaError::new("host emulation", "needs dlopen (unix)"))
    }

    /// Runs kernel `sym` (for `dt`) over a `grid` of `block`-thread blocks,
    /// after checking the arguments' kinds against its declared parameters.
    pub(crate) fn launch(
        &self,
        dt: DType,
        sym: &str,
        kinds: &[ArgKind],
        args: &mut [*mut c_void],
        grid: (u32, u32),
        block: u32,
    ) -> Result<(), CudaError> {
        let (kernel, run) = {
            let mut guard = LIBS.lock().unwrap_or_else(|e| e.into_inner());
            let libs = guard.get_or_insert_with(HashMap::new);
            let lib = match libs.entry(dt) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(self.load(dt)?),
            };
            let params = lib
                .params
                .get(sym)
                .ok_or_else(|| CudaError::new("host emulation", format!("no kernel {sym}")))?;
            let ok =
                params.len() == kinds.len() && kinds.iter().zip(params).all(|(&k, p)| fits(k, p));
            if !ok {
                return Err(CudaError::new(
                    format!("cuLaunchKernel({sym})"),
                    format!("arguments {kinds:?} do not fit the parameters {params:?}"),
                ));
            }
            let k = sym_of(lib.handle, &format!("emu_{sym}"))?;
            // SAFETY: every emu_ wrapper has the HostKernel signature.
            (
                unsafe { std::mem::transmute::<*mut c_void, HostKernel>(k) },
                lib.run,
            )
        };
        // SAFETY: the arguments match the kernel's parameters (the wrapper
        // reads each through the declared type), pointers are host buffers.
        unsafe { run(kernel, args.as_mut_ptr(), grid.0, grid.1, block) };
        Ok(())
    }
}

#[cfg(unix)]
fn sym_of(handle: *mut c_void, name: &str) -> Result<*mut c_void, CudaError> {
    sym(handle, name)
}
#[cfg(not(unix))]
fn sym_of(_handle: *mut c_void, name: &str) -> Result<*mut c_void, CudaError> {
    Err(CudaError::new("host emulation", format!("no {name}")))
}

#[cfg(unix)]
fn sym(handle: *mut c_void, name: &str) -> Result<*mut c_void, CudaError> {
    let c = CString::new(name).expect("no NUL in a symbol");
    // SAFETY: a live handle from dlopen.
    let p = unsafe { dlsym(handle, c.as_ptr()) };
    if p.is_null() {
        Err(CudaError::new(
            "host emulation: dlsym",
            format!("no symbol {name}"),
        ))
    } else {
        Ok(p)
    }
}

/// cuBLAS's `gemm_strided_batched` on host memory, column-major:
/// `C_b = op(A_b) · op(B_b)` (`m x n`, depth `k`), accumulating in the
/// compute type and rounding once.
///
/// # Safety
///
/// The pointers address host buffers large enough for the given sizes,
/// leading dimensions and strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided_batched<E: FloatDtype, C>(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: (*const E, usize, usize),
    b: (*const E, usize, usize),
    c: (*mut C, usize, usize),
    store: impl Fn(E::Acc) -> C,
    batch: usize,
) {
    for bi in 0..batch {
        let (pa, pb, pc) = (a.0.add(bi * a.2), b.0.add(bi * b.2), c.0.add(bi * c.2));
        for j in 0..n {
            for i in 0..m {
                let mut s = <E::Acc as num_traits::Zero>::zero();
                for l in 0..k {
                    let av = if trans.0 {
                        *pa.add(l + i * a.1)
                    } else {
                        *pa.add(i + l * a.1)
                    };
                    let bv = if trans.1 {
                        *pb.add(j + l * b.1)
                    } else {
                        *pb.add(l + j * b.1)
                    };
                    s += av.to_acc() * bv.to_acc();
                }
                *pc.add(i + j * c.1) = store(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_signatures_are_parsed() {
        let sigs = kernel_signatures(Family::Unary.source());
        let (name, params) = &sigs[0];
        assert_eq!(name, "unary_fwd");
        assert_eq!(
            params,
            &["int", "double", "double", "const T*", "ZfLayout", "T*", "u64"]
        );
        let all = emulation_source(DType::F32).unwrap();
        assert!(all.contains("extern \"C\" void emu_softmax_fwd_f32(void** a)"));
        assert!(
            fits(ArgKind::U64, "const T*")
                && fits(ArgKind::U64, "u64")
                && !fits(ArgKind::I32, "u64")
        );
        assert!(
            fits(ArgKind::Layout, "ZfLayout")
                && fits(ArgKind::F64, "double")
                && !fits(ArgKind::F64, "int")
        );
    }

    #[test]
    fn emulated_gemm_reads_transposes() {
        // column-major A (2x3), B (3x2); C = A·B and Aᵀ-stored variants
        let a = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]; // [[1,2,3],[4,5,6]]
        let b = [1.0f64, 0.0, 1.0, 0.0, 1.0, 0.0]; // [[1,0],[0,1],[1,0]]
        let mut c = [0.0f64; 4];
        unsafe {
            gemm_strided_batched(
                (false, false),
                (2, 2, 3),
                (a.as_ptr(), 2, 0),
                (b.as_ptr(), 3, 0),
                (c.as_mut_ptr(), 2, 0),
                |x| x,
                1,
            )
        };
        assert_eq!(c, [4.0, 10.0, 2.0, 5.0]);
        let at = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]; // A stored transposed (3x2, ld 3)
        let mut c2 = [0.0f64; 4];
        unsafe {
            gemm_strided_batched(
                (true, false),
                (2, 2, 3),
                (at.as_ptr(), 3, 0),
                (b.as_ptr(), 3, 0),
                (c2.as_mut_ptr(), 2, 0),
                |x| x,
                1,
            )
        };
        assert_eq!(c2, c);
    }
}
