//! Element-wise maths table: nanoseconds per value of zerfoo's
//! `cpu::unary::unary_forward` for each unary op, f32, on 1 and 2 rayon
//! threads, over 1 Mi values (4 MiB: past L2, inside L3), median of many
//! runs. `bench/unary_vs_pytorch.py` prints it next to PyTorch's.
//!
//! ```text
//! cargo run --release -p zerfoo-kernels --example unary_table [-- --json]
//! ```
//!
//! Output (stable format): one row per (op, threads), `op threads ns/value`;
//! with `--json`, each row is also printed as one JSON line prefixed `JSON `.

use std::hint::black_box;
use std::time::Instant;

use zerfoo_kernels::cpu::unary::{
    unary_forward, Abs, Cos, Exp, GeluErf, GeluTanh, Log, Neg, Relu, Rsqrt, Sigmoid, Silu, Sin,
    Sqrt, Square, Tanh, UnaryOp,
};
use zerfoo_kernels::cpu::WarmWorkers;
use zerfoo_kernels::Layout;

/// Values per run.
const LEN: usize = 1 << 20;

/// Median nanoseconds per value of `op` over `x` on the current pool.
fn ns_per_value<O: UnaryOp>(op: O, x: &[f32], layout: &Layout) -> f64 {
    let mut runs: Vec<f64> = (0..60)
        .map(|_| {
            let t = Instant::now();
            black_box(unary_forward(op, black_box(x), layout));
            t.elapsed().as_secs_f64() * 1e9 / x.len() as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// The op's name as its tape and the tables know it.
fn name_of<O: UnaryOp>(_: &O) -> &'static str {
    O::NAME
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    // Positive values in (0, 5]: every op's domain (log, sqrt, rsqrt).
    let x: Vec<f32> = (0..LEN)
        .map(|i| ((i * 7919) % 1000 + 1) as f32 / 200.0)
        .collect();
    let layout = Layout::contiguous(&[LEN]);
    println!("{:>10} {:>7} {:>9}", "op", "threads", "ns/value");
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool");
        pool.install(|| {
            let _warm = WarmWorkers::start();
            let row = |name: &str, ns: f64| {
                println!("{name:>10} {threads:>7} {ns:>9.3}");
                if json {
                    println!("JSON {{\"op\":\"{name}\",\"threads\":{threads},\"ns\":{ns}}}");
                }
            };
            macro_rules! ops {
                ($($op:expr),*) => {$(row(name_of(&$op), ns_per_value($op, &x, &layout));)*};
            }
            ops!(
                Neg, Abs, Square, Relu, Sqrt, Rsqrt, Exp, Log, Sin, Cos, Tanh, Sigmoid, Silu,
                GeluErf, GeluTanh
            );
        });
    }
}
