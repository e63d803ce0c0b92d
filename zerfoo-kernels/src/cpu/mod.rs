//! CPU kernels. Each takes typed slices plus [`Layout`](crate::Layout)s, reads any strides,
//! and writes contiguous row-major output. Work is split over rayon threads
//! above [`PAR_THRESHOLD`] elements; the split never changes results (each
//! output element is computed by exactly one thread, in a fixed order).

pub mod attention;
pub mod binary;
pub mod conv;
pub mod elementwise;
pub mod index;
pub mod loss;
pub mod mask;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod profile;
pub mod reduce;
pub mod rotary;
pub mod shape;
pub mod simd;
pub mod softmax;
pub mod threads;
pub mod unary;

pub use threads::WarmWorkers;

/// Below this many elements a kernel runs on the calling thread.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// Elements per parallel chunk of an elementwise kernel.
pub const CHUNK: usize = 1 << 13;

/// Runs `body((chunk_index, chunk))` over [`CHUNK`]-sized pieces of `out`,
/// on rayon's pool when `out` has at least [`PAR_THRESHOLD`] elements.
/// Each element belongs to exactly one chunk, so results never depend on
/// the thread count.
pub fn for_each_chunk<O: Send>(out: &mut [O], body: impl Fn((usize, &mut [O])) + Sync + Send) {
    if out.len() >= PAR_THRESHOLD {
        threads::for_each_chunk_mut(out, CHUNK, body);
    } else {
        out.chunks_mut(CHUNK).enumerate().for_each(body);
    }
}

pub use elementwise::{map, map_into, to_contiguous, zip3_map, zip_map};

/// A vector of `n` values not initialized yet. The kernels' tasks write (or
/// [default-fill](init_defaults)) the parts they compute: in parallel, and
/// in the cache of the thread that then uses them, where a zeroed `vec!`
/// would have one thread clear the whole output first.
pub(crate) fn uninit_vec<O>(n: usize) -> Vec<core::mem::MaybeUninit<O>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` values need no initialization.
    unsafe { v.set_len(n) };
    v
}

/// `part` filled with `O::default()`, as initialized values.
pub(crate) fn init_defaults<O: Copy + Default>(part: &mut [core::mem::MaybeUninit<O>]) -> &mut [O] {
    part.fill(core::mem::MaybeUninit::new(O::default()));
    // SAFETY: every element was just written, and `MaybeUninit<O>` has
    // `O`'s layout.
    unsafe { &mut *(part as *mut [core::mem::MaybeUninit<O>] as *mut [O]) }
}

/// `len` default values (zeros for the float dtypes), written in
/// [`CHUNK`]-long parts by the pool's threads when `len` reaches
/// [`PAR_THRESHOLD`]: the first touch of a large buffer is shared out
/// instead of one thread clearing it all.
///
/// ```
/// assert_eq!(zerfoo_kernels::cpu::zeros::<f32>(70_000), vec![0.0; 70_000]);
/// ```
pub fn zeros<O: Copy + Default + Send>(len: usize) -> Vec<O> {
    let mut v = uninit_vec::<O>(len);
    for_each_chunk(&mut v, |(_, part)| {
        init_defaults(part);
    });
    // SAFETY: every chunk was default-filled.
    unsafe { assume_init_vec(v) }
}

/// `v` as the initialized values it holds.
///
/// # Safety
/// Every element of `v` has been written.
pub(crate) unsafe fn assume_init_vec<O>(v: Vec<core::mem::MaybeUninit<O>>) -> Vec<O> {
    let mut v = core::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, length and capacity; `MaybeUninit<O>` has
    // `O`'s layout, and the caller guarantees every element is initialized.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<O>(), v.len(), v.capacity()) }
}
