//! Small-product probe: time per call and GFLOP/s of `gemm_batched` at the
//! tiny GPT shapes (single products and 48-way batched attention products),
//! on 1 and 2 threads.
//!
//! ```text
//! cargo run --release -p zerfoo-kernels --example gemm_small_probe
//! ```

use std::time::Instant;
use zerfoo_kernels::{cpu::matmul::gemm_batched, Layout};
fn main() {
    for &(bt, m, k, n) in &[
        (1usize, 64usize, 64usize, 32usize),
        (1, 768, 128, 384),
        (48, 64, 32, 64),
        (48, 64, 64, 32),
    ] {
        let a = vec![0.5f32; bt * m * k];
        let b = vec![0.25f32; bt * k * n];
        let (la, lb) = (
            Layout::contiguous(&[bt, m, k]),
            Layout::contiguous(&[bt, k, n]),
        );
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let reps = (200_000_000 / (bt * m * n * k)).max(3);
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = Instant::now();
                pool.install(|| {
                    for _ in 0..reps {
                        std::hint::black_box(gemm_batched(&a, &la, &b, &lb));
                    }
                });
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "{bt}x({m}x{k}x{n}) t{threads}: {:.2} us, {:.1} GFLOP/s",
                best * 1e6,
                2.0 * (bt * m * n * k) as f64 / best / 1e9
            );
        }
    }
}
