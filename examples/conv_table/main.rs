//! Convolution timing table: zerfoo's CPU `conv2d` forward and backward
//! at the layers of a ResNet (and one image at inference), on 1 and 2
//! rayon threads, f32. `bench/conv_vs_pytorch.py` runs it next to
//! PyTorch's `F.conv2d` and prints the ratios.
//!
//! ```text
//! cargo run --release -p zerfoo --example conv_table [-- --json] [--quick] [--shape N,C,H,W,O,K,S,P] [--list]
//! ```
//!
//! A shape is batch `N`, input channels `C`, height `H`, width `W`, output
//! channels `O`, a square `K x K` kernel, stride `S` and padding `P`. The
//! backward computes the input and weight gradients (no bias), as
//! `torch.autograd.grad` of the output with respect to both does.
//!
//! Output (stable format): one row per (shape, threads) with the forward
//! and backward ms (median of several runs) and the forward's GFLOP/s.
//! With `--json`, each row is also printed as one JSON line prefixed `JSON `.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use zerfoo_kernels::cpu::conv::{conv2d_backward, conv2d_forward, Window2d};
use zerfoo_kernels::cpu::WarmWorkers;
use zerfoo_kernels::Layout;

/// The shapes measured: `[N, C, H, W, O, K, S, P]`.
const SHAPES: &[[usize; 8]] = &[
    [8, 3, 224, 224, 64, 7, 2, 3],
    [8, 64, 56, 56, 64, 3, 1, 1],
    [8, 256, 56, 56, 64, 1, 1, 0],
    [8, 128, 28, 28, 128, 3, 1, 1],
    [8, 256, 14, 14, 256, 3, 1, 1],
    [8, 256, 14, 14, 512, 1, 2, 0],
    [8, 512, 7, 7, 512, 3, 1, 1],
    [1, 64, 56, 56, 64, 3, 1, 1],
];

#[derive(Parser)]
#[command(about = "conv2d forward and backward ms at ResNet layer shapes, 1 and 2 threads")]
struct Args {
    /// Also print each row as a JSON line prefixed `JSON `.
    #[arg(long)]
    json: bool,
    /// Fewer runs per row.
    #[arg(long)]
    quick: bool,
    /// Only this shape, `N,C,H,W,O,K,S,P`.
    #[arg(long)]
    shape: Option<String>,
    /// Print the shapes and exit.
    #[arg(long)]
    list: bool,
}

/// Median ms of `runs` timings of `f` (each repeated to ~30 ms).
fn measure(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.03 / once).ceil() as usize).clamp(1, 1000);
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Deterministic values in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() {
    let args = Args::parse();
    zerfoo::retain_freed_memory();
    let shapes: Vec<[usize; 8]> = match &args.shape {
        Some(s) => {
            let v: Vec<usize> = s
                .split(',')
                .map(|x| x.trim().parse().expect("--shape: eight integers"))
                .collect();
            vec![v.try_into().expect("--shape: N,C,H,W,O,K,S,P")]
        }
        None => SHAPES.to_vec(),
    };
    if args.list {
        for s in &shapes {
            let s: Vec<String> = s.iter().map(|v| v.to_string()).collect();
            println!("{}", s.join(","));
        }
        return;
    }
    let runs = if args.quick { 3 } else { 7 };
    println!(
        "{:>26} {:>2} {:>9} {:>9} {:>8}",
        "N,C,H,W,O,K,S,P", "t", "fwd ms", "bwd ms", "GFLOP/s"
    );
    for &[n, c, h, w, o, k, stride, pad] in &shapes {
        let win = Window2d {
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            dilation: [1, 1],
        };
        let [oh, ow] = win
            .out_dims([h, w])
            .expect("the kernel fits the padded image");
        let (lx, lw) = (
            Layout::contiguous(&[n, c, h, w]),
            Layout::contiguous(&[o, c, k, k]),
        );
        let (x, wt, gy) = (
            data(n * c * h * w, 1),
            data(o * c * k * k, 2),
            data(n * o * oh * ow, 3),
        );
        let flops = 2.0 * (n * o * oh * ow * c * k * k) as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            let (fwd, bwd) = pool.install(|| {
                let _warm = WarmWorkers::start();
                let fwd = measure(runs, || {
                    black_box(conv2d_forward(&x, &lx, &wt, &lw, None, 1, &win));
                });
                let bwd = measure(runs, || {
                    black_box(conv2d_backward(&x, &lx, &wt, &lw, false, 1, &win, &gy));
                });
                (fwd, bwd)
            });
            let name = format!("{n},{c},{h},{w},{o},{k},{stride},{pad}");
            let gflops = flops / fwd / 1e6;
            println!("{name:>26} {threads:>2} {fwd:>9.2} {bwd:>9.2} {gflops:>8.1}");
            if args.json {
                println!(
                    "JSON {{\"shape\":\"{name}\",\"threads\":{threads},\"fwd_ms\":{fwd:.4},\"bwd_ms\":{bwd:.4}}}"
                );
            }
        }
    }
}
