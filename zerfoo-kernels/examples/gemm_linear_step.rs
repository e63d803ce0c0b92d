//! The GEMMs of one linear layer's training step, as zerfoo's `Linear`
//! issues them: `y = x·Wᵀ` (W read transposed in place), `dx = dy·W`,
//! `dWᵀ = xᵀ·dy` and `dW = dyᵀ·x` — time per call and GFLOP/s, 1 and 2 threads.
//!
//! ```text
//! cargo run --release -p zerfoo-kernels --example gemm_linear_step -- 768 128 384
//! ```

use std::time::Instant;
use zerfoo_kernels::{cpu::matmul::gemm, Layout};

fn time(threads: usize, flops: f64, f: impl Fn() + Sync) -> (f64, f64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let reps = ((2e9 / flops) as usize).max(3);
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t = Instant::now();
        pool.install(|| (0..reps).for_each(|_| f()));
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    (best * 1e6, flops / best / 1e9)
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (m, k, n) = (a[0], a[1], a[2]);
    let x = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let dy = vec![0.125f32; m * n];
    let lx = Layout::contiguous(&[m, k]);
    let mut lwt = Layout::contiguous(&[n, k]);
    lwt.swap_axes(0, 1);
    let lw = Layout::contiguous(&[n, k]);
    let ldy = Layout::contiguous(&[m, n]);
    let mut lxt = lx;
    lxt.swap_axes(0, 1);
    let flops = 2.0 * (m * k * n) as f64;
    for threads in [1, 2] {
        let f = time(threads, flops, || {
            std::hint::black_box(gemm(&x, &lx, &w, &lwt));
        });
        let d = time(threads, flops, || {
            std::hint::black_box(gemm(&dy, &ldy, &w, &lw));
        });
        let g = time(threads, flops, || {
            std::hint::black_box(gemm(&x, &lxt, &dy, &ldy));
        });
        let mut ldyt = ldy;
        ldyt.swap_axes(0, 1);
        let h = time(threads, flops, || {
            std::hint::black_box(gemm(&dy, &ldyt, &x, &lx));
        });
        println!(
            "{m}x{k}x{n} t{threads}: fwd {:.1}us {:.0} GF | dx {:.1}us {:.0} GF | dwT {:.1}us {:.0} GF | dw {:.1}us {:.0} GF",
            f.0, f.1, d.0, d.1, g.0, g.1, h.0, h.1
        );
    }
}
