//! CPU kernels. Each takes typed slices plus [`Layout`]s, reads any strides,
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
