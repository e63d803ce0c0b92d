//! [`CudaDevice`] (context, stream, module cache, caching allocator) and
//! [`CudaBuffer`] (typed device memory that returns to the cache on drop).

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};

use super::alloc::{round_size, Pool, PoolStats};
use super::dtype::{check_capability, Capability, CudaDtype, BASE_CAPABILITY};
use super::emulator::{ArgKind, Emulator};
use super::error::{cuda_call, guard, CudaError};
use super::profile::Profile;
use super::source::{compile_ptx, kernel_name, Family};
use crate::{DType, Layout, MAX_RANK};

/// The workspace each cuBLAS handle gets (NVIDIA's recommendation for
/// Hopper). Without one set, cuBLAS allocates workspace itself for products
/// that want it, and on an H200 such calls held the host for as long as
/// the GPU's queue took to drain (seen as 1.3 ms of host time in one
/// 16384x384x1152 product per layer).
pub const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Threads per block of the kernels.
pub(crate) const BLOCK: u32 = 256;
/// At most this many blocks per grid (kernels loop over the rest).
const MAX_GRID: u64 = 65_535 * 4;

/// The driver-side state of a real GPU.
struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<(Family, DType), Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// The cuBLAS handle and the workspace it was given (see
    /// [`CUBLAS_WORKSPACE_BYTES`]), made on first use.
    blas: Mutex<Option<(cudarc::cublas::CudaBlas, CudaSlice<u8>)>>,
    /// Per-name GPU time, when `ZERFOO_CUDA_PROFILE` asks for it.
    profile: Option<Mutex<Profile>>,
}

/// Where kernels run.
enum Backend {
    /// A real GPU through cudarc.
    Gpu(Box<Gpu>),
    /// The host emulation (tests without a GPU).
    Host(Emulator),
}

/// One allocation: device memory, or host memory under emulation (u64 words
/// keep every element type aligned).
pub(crate) enum Block {
    /// Device memory.
    Device(CudaSlice<u8>),
    /// Emulated device memory.
    Host(Box<[u64]>),
}

struct Inner {
    ordinal: usize,
    name: String,
    capability: Capability,
    backend: Backend,
    pool: Mutex<Pool<Block>>,
    /// Whether f32 products may use TF32 tensor cores (off unless asked).
    allow_tf32: std::sync::atomic::AtomicBool,
}

/// Locks a mutex, ignoring poisoning (the guarded maps stay consistent: a
/// panic never leaves one half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One NVIDIA GPU: its primary context, a stream every kernel of this
/// device runs on (in order), compiled kernel modules (per family and dtype)
/// and a caching allocator. Cheap to clone (shared).
///
/// [`CudaDevice::emulated`] gives a stand-in that runs the same kernel
/// sources on the host, for tests without a GPU.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "cuda:{} ({}, {})",
            self.inner.ordinal, self.inner.name, self.inner.capability
        )
    }
}

impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Why no CUDA device can be opened here, or `None` if device 0 opens: for
/// tests that skip without a GPU.
pub fn no_device_reason() -> Option<String> {
    CudaDevice::new(0).err().map(|e| e.to_string())
}

impl CudaDevice {
    /// Opens GPU `ordinal`. Fails with a [`CudaError`] naming the call (never
    /// panics) when the driver library is missing, there is no such GPU, or
    /// its capability is below [`BASE_CAPABILITY`].
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only tries to open the driver library by name.
        let present = guard("driver library lookup", || unsafe {
            cudarc::driver::sys::is_culib_present()
        })?;
        if !present {
            return Err(CudaError::new(
                "cuInit",
                "the CUDA driver library (libcuda.so) could not be loaded: no NVIDIA driver on this machine",
            ));
        }
        let count = cuda_call("cuInit/cuDeviceGetCount", CudaContext::device_count)?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::new(
                "cuDeviceGet",
                format!("no CUDA device {ordinal}: the driver reports {count} device(s)"),
            ));
        }
        let ctx = cuda_call("cuDevicePrimaryCtxRetain", || CudaContext::new(ordinal))?;
        // One stream per device: ordering is the stream's, no per-buffer events.
        // SAFETY: called before any allocation on this context; we use one stream.
        unsafe { ctx.disable_event_tracking() };
        let name = cuda_call("cuDeviceGetName", || ctx.name())?;
        let (major, minor) = cuda_call("cuDeviceGetAttribute", || ctx.compute_capability())?;
        let capability = Capability::new(major as u32, minor as u32);
        if capability < BASE_CAPABILITY {
            return Err(CudaError::new(
                "capability check",
                format!("GPU `{name}` is {capability}; zerfoo's kernels need {BASE_CAPABILITY}+"),
            ));
        }
        let stream = cuda_call("cuStreamCreate", || ctx.new_stream())?;
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                ordinal,
                name,
                capability,
                backend: Backend::Gpu(Box::new(Gpu {
                    ctx,
                    stream,
                    modules: Mutex::new(HashMap::new()),
                    functions: Mutex::new(HashMap::new()),
                    blas: Mutex::new(None),
                    profile: Profile::from_env().map(Mutex::new),
                })),
                pool: Mutex::new(Pool::new()),
                allow_tf32: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// A host emulation of a GPU of capability `capability`: the same kernel
    /// sources, compiled with the host C++ compiler (`g++` or `$CXX`) and
    /// run with one OS thread per CUDA thread; cuBLAS by a reference GEMM.
    /// For testing kernels and launch code without a GPU (slow). Fails when
    /// no host compiler runs, or when the environment variable
    /// `ZERFOO_CUDA_EMULATION` is `0` (so a run on a real GPU can leave the
    /// slow emulated half of the tests out).
    pub fn emulated(capability: Capability) -> Result<Self, CudaError> {
        if std::env::var("ZERFOO_CUDA_EMULATION").is_ok_and(|v| v == "0") {
            return Err(CudaError::new(
                "host emulation",
                "turned off by ZERFOO_CUDA_EMULATION=0",
            ));
        }
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                ordinal: 0,
                name: "host emulation".to_string(),
                capability,
                backend: Backend::Host(Emulator::new()?),
                pool: Mutex::new(Pool::new()),
                allow_tf32: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Whether this is the host emulation.
    pub fn is_emulated(&self) -> bool {
        matches!(self.inner.backend, Backend::Host(_))
    }

    fn gpu(&self) -> Option<&Gpu> {
        match &self.inner.backend {
            Backend::Gpu(g) => Some(g),
            Backend::Host(_) => None,
        }
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }
    /// The GPU's name (`NVIDIA H200`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The GPU's compute capability.
    pub fn capability(&self) -> Capability {
        self.inner.capability
    }
    /// Lets the typed ops' f32 matrix products on this device use TF32
    /// tensor cores (10-bit mantissa inputs; PyTorch's
    /// `allow_tf32 = True`). Off by default: f32 products are exact f32.
    pub fn set_allow_tf32(&self, allow: bool) {
        self.inner
            .allow_tf32
            .store(allow, std::sync::atomic::Ordering::Relaxed);
    }
    /// Whether f32 products may use TF32 ([`CudaDevice::set_allow_tf32`]).
    pub fn allow_tf32(&self) -> bool {
        self.inner
            .allow_tf32
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    /// The stream every kernel of this device runs on (`None` when emulated).
    pub fn stream(&self) -> Option<&Arc<CudaStream>> {
        self.gpu().map(|g| &g.stream)
    }
    /// The cudarc context (`None` when emulated).
    pub fn context(&self) -> Option<&Arc<CudaContext>> {
        self.gpu().map(|g| &g.ctx)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        match self.gpu() {
            Some(g) => cuda_call("cuStreamSynchronize", || g.stream.synchronize()),
            None => Ok(()),
        }
    }

    /// Runs `f` (work queued on this device's stream), charging its GPU
    /// time to `name()` when the device is profiled; else just runs it.
    pub(crate) fn profiled<R>(
        &self,
        name: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        match self.gpu() {
            Some(Gpu {
                stream,
                profile: Some(p),
                ..
            }) => lock(p).time(stream, name(), f),
            _ => f(),
        }
    }

    /// With `ZERFOO_CUDA_PROFILE=1` set when this device was opened: the GPU
    /// time of every kernel, cuBLAS product and copy so far, summed per
    /// name, busiest first (waits for queued work). `None` when the device
    /// is not profiled (or is the host emulation).
    ///
    /// ```
    /// # use zerfoo_kernels::cuda::CudaDevice;
    /// if let Ok(dev) = CudaDevice::new(0) {
    ///     // ... train ...
    ///     if let Some(table) = dev.profile_report().unwrap() {
    ///         println!("{table}");
    ///     }
    /// }
    /// ```
    pub fn profile_report(&self) -> Result<Option<String>, CudaError> {
        match self.gpu().and_then(|g| g.profile.as_ref()) {
            Some(p) => lock(p).report().map(Some),
            None => Ok(None),
        }
    }

    /// Checks that this GPU can run `op` in `dt` (bf16 needs sm_80+, fp8 sm_89+).
    pub fn check(&self, op: &str, dt: DType) -> Result<(), CudaError> {
        check_capability(op, dt, &self.inner.name, self.inner.capability)
    }

    /// The allocator's counters.
    pub fn pool_stats(&self) -> PoolStats {
        lock(&self.inner.pool).stats()
    }

    /// Frees every cached (unused) block.
    pub fn empty_cache(&self) {
        let blocks = lock(&self.inner.pool).drain();
        drop(blocks);
    }

    /// Raw memory of at least `bytes`, from the cache when a block of the
    /// same size class is free. On out-of-memory the cache is emptied and
    /// the allocation retried once.
    fn alloc_raw(&self, bytes: usize) -> Result<(Block, usize), CudaError> {
        let class = round_size(bytes);
        if let Some(b) = lock(&self.inner.pool).take(class) {
            return Ok((b, class));
        }
        let block = match self.gpu() {
            None => Block::Host(vec![0u64; class / 8].into_boxed_slice()),
            Some(g) => {
                // SAFETY: u8 device memory; every buffer is written before it
                // is read (kernels write their whole output, or callers zero it).
                let alloc =
                    || cuda_call("cuMemAllocAsync", || unsafe { g.stream.alloc::<u8>(class) });
                Block::Device(match alloc() {
                    Ok(b) => b,
                    Err(_) => {
                        self.empty_cache();
                        alloc()?
                    }
                })
            }
        };
        lock(&self.inner.pool).note_new(class);
        Ok((block, class))
    }

    /// An uninitialized buffer of `len` elements (every kernel writes its
    /// whole output).
    pub(crate) fn alloc<E: CudaDtype>(&self, len: usize) -> Result<CudaBuffer<E>, CudaError> {
        let (block, class) = self.alloc_raw(len * core::mem::size_of::<E>())?;
        Ok(CudaBuffer {
            block: Some(block),
            len,
            class,
            dev: self.clone(),
            _e: PhantomData,
        })
    }

    /// A buffer of `len` zeros.
    pub fn zeros<E: CudaDtype>(&self, len: usize) -> Result<CudaBuffer<E>, CudaError> {
        let mut b = self.alloc::<E>(len)?;
        let bytes = b.num_bytes();
        if bytes > 0 {
            match (b.block.as_mut().expect("live"), self.gpu()) {
                (Block::Device(s), Some(g)) => {
                    let mut view = s.slice_mut(..bytes);
                    cuda_call("cuMemsetD8Async", || g.stream.memset_zeros(&mut view))?;
                }
                (Block::Host(h), _) => h.fill(0),
                (Block::Device(_), None) => unreachable!("device memory on an emulated device"),
            }
        }
        Ok(b)
    }

    /// Copies host data to a new device buffer.
    pub fn to_device<E: CudaDtype>(&self, host: &[E]) -> Result<CudaBuffer<E>, CudaError> {
        let mut b = self.alloc::<E>(host.len())?;
        let bytes = as_bytes(host);
        if !bytes.is_empty() {
            match (b.block.as_mut().expect("live"), self.gpu()) {
                (Block::Device(s), Some(g)) => {
                    let mut view = s.slice_mut(..bytes.len());
                    self.profiled(
                        || "copy host to device".into(),
                        || {
                            cuda_call("cuMemcpyHtoDAsync", || {
                                g.stream.memcpy_htod(bytes, &mut view)
                            })
                        },
                    )?;
                }
                (Block::Host(h), _) => host_bytes_mut(h)[..bytes.len()].copy_from_slice(bytes),
                (Block::Device(_), None) => unreachable!("device memory on an emulated device"),
            }
        }
        Ok(b)
    }

    /// A launch of kernel `base` of `family` for `dt`, compiling and loading
    /// the module on first use (cached per device). Checks the capability
    /// `dt` needs, naming `op` in the error.
    pub(crate) fn launch(
        &self,
        op: &str,
        family: Family,
        dt: DType,
        base: &str,
    ) -> Result<Launch<'_>, CudaError> {
        self.check(op, dt)?;
        let sym = kernel_name(base, dt);
        let func = match self.gpu() {
            None => None,
            Some(g) => Some(self.function(g, family, dt, &sym)?),
        };
        Ok(Launch {
            dev: self,
            op: op.to_string(),
            dt,
            func,
            sym,
            args: Vec::new(),
        })
    }

    fn function(
        &self,
        g: &Gpu,
        family: Family,
        dt: DType,
        sym: &str,
    ) -> Result<CudaFunction, CudaError> {
        if let Some(f) = lock(&g.functions).get(sym) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = lock(&g.modules);
            match modules.get(&(family, dt)) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile_ptx(family, dt, self.inner.capability)?;
                    let call = format!("cuModuleLoadData({}_{dt})", family.name());
                    let m = cuda_call(&call, || g.ctx.load_module(ptx)).map_err(|e| {
                        CudaError::new(
                            call.clone(),
                            format!("{} (a driver older than the NVRTC that made the PTX reports an unsupported PTX version)", e.reason),
                        )
                    })?;
                    modules.insert((family, dt), m.clone());
                    m
                }
            }
        };
        let f = cuda_call(&format!("cuModuleGetFunction({sym})"), || {
            module.load_function(sym)
        })?;
        lock(&g.functions).insert(sym.to_string(), f.clone());
        Ok(f)
    }

    /// Runs `f` with this device's cuBLAS handle (created on first use);
    /// `None` on the host emulation.
    pub(crate) fn with_blas<R>(
        &self,
        f: impl FnOnce(Option<&cudarc::cublas::CudaBlas>) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let Some(g) = self.gpu() else { return f(None) };
        let mut blas = lock(&g.blas);
        if blas.is_none() {
            // SAFETY: only tries to open the cuBLAS library by name.
            let present = guard("cublas library lookup", || unsafe {
                cudarc::cublas::sys::is_culib_present()
            })?;
            if !present {
                return Err(CudaError::new(
                    "cublasCreate",
                    "the cuBLAS library (libcublas.so) could not be loaded; add its folder to LD_LIBRARY_PATH",
                ));
            }
            let stream = g.stream.clone();
            let b = guard("cublasCreate", move || {
                cudarc::cublas::CudaBlas::new(stream)
            })?
            .map_err(|e| CudaError::from_call("cublasCreate", e))?;
            // SAFETY: device memory of this context, kept alive beside the
            // handle; every product runs on the same stream, so the
            // workspace is never used by two at once.
            let workspace = cuda_call("cuMemAlloc(cuBLAS workspace)", || unsafe {
                g.stream.alloc::<u8>(CUBLAS_WORKSPACE_BYTES)
            })?;
            let ptr = workspace.device_ptr(&g.stream).0;
            cuda_call("cublasSetWorkspace", || unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *b.handle(),
                    ptr as *mut c_void,
                    CUBLAS_WORKSPACE_BYTES,
                )
                .result()
            })?;
            *blas = Some((b, workspace));
        }
        f(blas.as_ref().map(|(b, _)| b))
    }
}

/// One kernel argument, stored until the launch.
enum Arg {
    I32(i32),
    U64(u64),
    F64(f64),
    Layout(DevLayout),
}

/// A kernel launch being assembled: arguments in the kernel's order.
pub(crate) struct Launch<'a> {
    dev: &'a CudaDevice,
    op: String,
    dt: DType,
    func: Option<CudaFunction>,
    sym: String,
    args: Vec<Arg>,
}

impl Launch<'_> {
    /// A buffer's address (an input).
    pub(crate) fn ptr<E: CudaDtype>(&mut self, b: &CudaBuffer<E>) -> &mut Self {
        self.args.push(Arg::U64(b.addr()));
        self
    }
    /// A buffer's address (an output).
    pub(crate) fn ptr_mut<E: CudaDtype>(&mut self, b: &mut CudaBuffer<E>) -> &mut Self {
        self.args.push(Arg::U64(b.addr()));
        self
    }
    /// An `int`.
    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.args.push(Arg::I32(v));
        self
    }
    /// A `u64` (`unsigned long long`).
    pub(crate) fn u64(&mut self, v: usize) -> &mut Self {
        self.args.push(Arg::U64(v as u64));
        self
    }
    /// A `u64` given as 64 bits (a seed, an `i64`'s bits).
    pub(crate) fn bits(&mut self, v: u64) -> &mut Self {
        self.args.push(Arg::U64(v));
        self
    }
    /// A `double`.
    pub(crate) fn f64(&mut self, v: f64) -> &mut Self {
        self.args.push(Arg::F64(v));
        self
    }
    /// A layout (`ZfLayout`, by value).
    pub(crate) fn layout(&mut self, l: &Layout) -> &mut Self {
        self.args.push(Arg::Layout(DevLayout::new(l)));
        self
    }
    /// A layout that the kernel ignores (an absent operand).
    pub(crate) fn no_layout(&mut self) -> &mut Self {
        self.args.push(Arg::Layout(DevLayout::default()));
        self
    }

    /// Queues the kernel on the device's stream (runs it, when emulated).
    pub(crate) fn run(&mut self, cfg: LaunchConfig) -> Result<(), CudaError> {
        let call = format!("cuLaunchKernel({})", self.sym);
        match (&self.func, self.dev.gpu()) {
            (Some(f), Some(g)) => {
                let mut b = g.stream.launch_builder(f);
                for a in &self.args {
                    match a {
                        Arg::I32(v) => b.arg(v),
                        Arg::U64(v) => b.arg(v),
                        Arg::F64(v) => b.arg(v),
                        Arg::Layout(v) => b.arg(v),
                    };
                }
                // SAFETY: the argument list follows the kernel's parameters
                // (the host emulation checks the same lists), buffers are
                // live allocations of this device and layouts were checked
                // against their lengths.
                let launch = || cuda_call(&call, || unsafe { b.launch(cfg) }).map(|_| ());
                self.dev
                    .profiled(|| format!("{}/{}", self.op, self.sym), launch)
            }
            _ => {
                let Backend::Host(emu) = &self.dev.inner.backend else {
                    unreachable!("a GPU launch has a function")
                };
                let kinds: Vec<ArgKind> = self
                    .args
                    .iter()
                    .map(|a| match a {
                        Arg::I32(_) => ArgKind::I32,
                        Arg::U64(_) => ArgKind::U64,
                        Arg::F64(_) => ArgKind::F64,
                        Arg::Layout(_) => ArgKind::Layout,
                    })
                    .collect();
                let mut ptrs: Vec<*mut c_void> = self
                    .args
                    .iter_mut()
                    .map(|a| match a {
                        Arg::I32(v) => (v as *mut i32).cast(),
                        Arg::U64(v) => (v as *mut u64).cast(),
                        Arg::F64(v) => (v as *mut f64).cast(),
                        Arg::Layout(v) => (v as *mut DevLayout).cast(),
                    })
                    .collect();
                emu.launch(
                    self.dt,
                    &self.sym,
                    &kinds,
                    &mut ptrs,
                    (cfg.grid_dim.0, cfg.grid_dim.1),
                    cfg.block_dim.0,
                )
            }
        }
    }
}

/// Views host elements as bytes.
fn as_bytes<E: CudaDtype>(v: &[E]) -> &[u8] {
    // SAFETY: CudaDtype types are plain bit patterns without padding.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}

fn host_bytes(h: &[u64]) -> &[u8] {
    // SAFETY: u64 words viewed as their bytes.
    unsafe { core::slice::from_raw_parts(h.as_ptr().cast::<u8>(), h.len() * 8) }
}
fn host_bytes_mut(h: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 words viewed as their bytes.
    unsafe { core::slice::from_raw_parts_mut(h.as_mut_ptr().cast::<u8>(), h.len() * 8) }
}

/// `len` elements of `E` in device memory, from a [`CudaDevice`]'s caching
/// allocator; dropping it returns the memory to that cache.
pub struct CudaBuffer<E> {
    block: Option<Block>,
    len: usize,
    class: usize,
    dev: CudaDevice,
    _e: PhantomData<E>,
}

impl<E> core::fmt::Debug for CudaBuffer<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "CudaBuffer({} elements on {:?})", self.len, self.dev)
    }
}

impl<E> Drop for CudaBuffer<E> {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            lock(&self.dev.inner.pool).give(self.class, b);
        }
    }
}

impl<E: CudaDtype> CudaBuffer<E> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Size of the elements in bytes.
    pub fn num_bytes(&self) -> usize {
        self.len * core::mem::size_of::<E>()
    }
    /// The device holding this buffer.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }
    /// The underlying cudarc allocation (may be longer than
    /// [`CudaBuffer::num_bytes`]); `None` on the host emulation.
    pub fn raw(&self) -> Option<&CudaSlice<u8>> {
        match self.block.as_ref() {
            Some(Block::Device(s)) => Some(s),
            _ => None,
        }
    }
    /// The address of the first element (a device address, or a host
    /// address on the emulation), for kernels and libraries.
    pub fn addr(&self) -> u64 {
        match (
            self.block.as_ref().expect("a live buffer holds its block"),
            self.dev.gpu(),
        ) {
            (Block::Device(s), Some(g)) => s.device_ptr(&g.stream).0,
            (Block::Host(h), _) => h.as_ptr() as u64,
            (Block::Device(_), None) => unreachable!("device memory on an emulated device"),
        }
    }

    /// Copies the elements back to the host (waits for queued work).
    pub fn to_host(&self) -> Result<Vec<E>, CudaError> {
        let mut out = vec![E::default(); self.len];
        let bytes = self.num_bytes();
        if bytes > 0 {
            // SAFETY: E is a plain bit pattern; the device wrote valid values.
            let dst =
                unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), bytes) };
            match (self.block.as_ref().expect("live"), self.dev.gpu()) {
                (Block::Device(s), Some(g)) => {
                    let view = s.slice(..bytes);
                    self.dev.profiled(
                        || "copy device to host".into(),
                        || cuda_call("cuMemcpyDtoHAsync", || g.stream.memcpy_dtoh(&view, dst)),
                    )?;
                }
                (Block::Host(h), _) => dst.copy_from_slice(&host_bytes(h)[..bytes]),
                (Block::Device(_), None) => unreachable!("device memory on an emulated device"),
            }
        }
        self.dev.synchronize()?;
        Ok(out)
    }
}

/// A [`Layout`] as kernels read it (`struct ZfLayout` in `common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevLayout {
    shape: [u64; MAX_RANK],
    strides: [u64; MAX_RANK],
    offset: u64,
    rank: u32,
    contiguous: u32,
}

// SAFETY: repr(C) plain integers, the same layout as `struct ZfLayout`.
unsafe impl DeviceRepr for DevLayout {}

impl DevLayout {
    /// The kernel-side form of `l`.
    pub fn new(l: &Layout) -> Self {
        let mut d = DevLayout {
            shape: [1; MAX_RANK],
            rank: l.rank() as u32,
            offset: l.offset as u64,
            contiguous: u32::from(l.is_contiguous()),
            ..Default::default()
        };
        for (i, (&n, &s)) in l.shape().iter().zip(l.strides()).enumerate() {
            d.shape[i] = n as u64;
            d.strides[i] = s as u64;
        }
        d
    }
}

/// The largest storage index `l` reaches, `None` when it selects nothing.
pub fn max_index(l: &Layout) -> Option<usize> {
    if l.numel() == 0 {
        return None;
    }
    Some(
        l.offset
            + l.shape()
                .iter()
                .zip(l.strides())
                .map(|(&n, &s)| (n - 1) * s)
                .sum::<usize>(),
    )
}

/// Checks that `l` stays inside a buffer of `len` elements (a kernel reading
/// past it would fault the GPU).
pub(crate) fn check_layout(op: &str, l: &Layout, len: usize) -> Result<(), CudaError> {
    match max_index(l) {
        Some(m) if m >= len => Err(CudaError::new(
            format!("layout check for `{op}`"),
            format!("layout {l:?} reaches element {m} of a buffer of {len}"),
        )),
        _ => Ok(()),
    }
}

/// Checks that all buffers live on the same device.
pub(crate) fn same_device(op: &str, a: &CudaDevice, b: &CudaDevice) -> Result<(), CudaError> {
    if a == b {
        Ok(())
    } else {
        Err(CudaError::new(
            format!("device check for `{op}`"),
            format!("operands on {a:?} and {b:?}"),
        ))
    }
}

/// A grid-stride launch over `n` items.
pub(crate) fn grid_for(n: usize) -> LaunchConfig {
    let blocks = (n as u64).div_ceil(BLOCK as u64).clamp(1, MAX_GRID) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `tiles` blocks of `threads` threads (at most [`MAX_GRID`] blocks; kernels loop).
pub(crate) fn tiles_grid(tiles: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((tiles as u64).clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row over `rows` rows (at most [`MAX_GRID`] blocks; kernels loop).
pub(crate) fn rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u64).clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_layout_mirrors_the_host_layout() {
        let l = Layout::contiguous(&[2, 3, 4])
            .permute(&[2, 0, 1])
            .narrow(0, 1, 2);
        let d = DevLayout::new(&l);
        assert_eq!(d.rank, 3);
        assert_eq!(&d.shape[..3], &[2, 2, 3]);
        assert_eq!(&d.strides[..3], &[1, 12, 4]);
        assert_eq!(d.offset, 1);
        assert_eq!(d.contiguous, 0);
        assert_eq!(core::mem::size_of::<DevLayout>(), 12 * 8 + 8 + 8);
        assert_eq!(max_index(&l), Some(1 + 1 + 12 + 8));
        assert_eq!(max_index(&l), l.offsets().into_iter().max());
        assert!(check_layout("x", &l, 23).is_ok());
        assert!(check_layout("x", &l, 22).is_err());
        assert_eq!(max_index(&Layout::contiguous(&[0, 3])), None);
    }

    #[test]
    fn devices_and_buffers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CudaDevice>();
        check::<CudaBuffer<f32>>();
    }

    #[test]
    fn new_returns_an_error_without_a_gpu() {
        match CudaDevice::new(0) {
            Ok(d) => println!("found {d:?}"),
            Err(e) => {
                assert!(!e.call.is_empty());
                println!("skipped: no CUDA device ({e})");
            }
        }
        // an absurd ordinal is an error either way, never a panic
        assert!(CudaDevice::new(1 << 20).is_err());
    }
}
