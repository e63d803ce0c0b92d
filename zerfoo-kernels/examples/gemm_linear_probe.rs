//! Linear-layer probe: GFLOP/s of the three products of a `Linear` layer in
//! training at the Shakespeare GPT's shapes (`rows = 12 x 64` tokens) and
//! the larger GPT's (`rows = 8 x 256`, width 384), on 1 and 2 threads: forward `x · Wᵀ`, input gradient `dY · W`, and weight
//! gradient `dYᵀ · x` (a batch-summed product).
//!
//! ```text
//! cargo run --release -p zerfoo-kernels --example gemm_linear_probe
//! ```

use std::time::Instant;
use zerfoo_kernels::{
    cpu::matmul::{gemm, gemm_batch_sum},
    Layout,
};

fn time(threads: usize, macs: usize, f: &(dyn Fn() + Sync)) -> (f64, f64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let reps = (100_000_000 / macs).max(3);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        pool.install(|| (0..reps).for_each(|_| f()));
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    (best * 1e6, 2.0 * macs as f64 / best / 1e9)
}

fn main() {
    let shapes = [
        (768usize, 128usize, 128usize),
        (768, 128, 512),
        (768, 512, 128),
        (768, 128, 65),
        (2048, 384, 384),
        (2048, 384, 1536),
        (2048, 1536, 384),
    ];
    for &(rows, i, o) in &shapes {
        let x = vec![0.5f32; rows * i];
        let w = vec![0.25f32; o * i];
        let dy = vec![0.125f32; rows * o];
        let lx = Layout::contiguous(&[rows, i]);
        let lw = Layout::contiguous(&[o, i]);
        let ldy = Layout::contiguous(&[rows, o]);
        let wt = lw.permute(&[1, 0]);
        let dyt = Layout::contiguous(&[1, rows, o]).permute(&[0, 2, 1]);
        let x3 = Layout::contiguous(&[1, rows, i]);
        let macs = rows * i * o;
        for threads in [1, 2] {
            let f = time(threads, macs, &|| {
                std::hint::black_box(gemm(&x, &lx, &w, &wt));
            });
            let di = time(threads, macs, &|| {
                std::hint::black_box(gemm(&dy, &ldy, &w, &lw));
            });
            let dw = time(threads, macs, &|| {
                std::hint::black_box(gemm_batch_sum(&dy, &dyt, &x, &x3));
            });
            println!(
                "{rows}x{i}->{o} t{threads}: forward {:.1} us {:.0} GFLOP/s | dx {:.1} us {:.0} GFLOP/s | dw {:.1} us {:.0} GFLOP/s",
                f.0, f.1, di.0, di.1, dw.0, dw.1
            );
        }
    }
}
