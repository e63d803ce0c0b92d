//! GEMM throughput table: zerfoo's `cpu::matmul::gemm` against the `gemm`
//! crate, at a fixed list of shapes, on 1 and 2 rayon threads, in f32, f16
//! and bf16, next to the machine's measured single-core f32 FMA peak.
//!
//! ```text
//! cargo run --release -p zerfoo-kernels --example gemm_table [-- --json] [--quick] [--only f32|f16|bf16] [--shape MxKxN] [--list]
//! cargo run --release -p zerfoo-kernels --example gemm_table -- --step shakespeare|gpt6 [--json]
//! cargo run --release -p zerfoo-kernels --example gemm_table -- --decode gpt6|wide [--json]
//! ```
//!
//! `--step CONFIG` measures instead the f32 products of one training step of
//! that GPT configuration (the forward `x · Wᵀ`, the input gradient
//! `dY · W` and the weight gradient `dYᵀ · X` of each linear layer and the
//! tied head, in the operands' own layouts), one row per product with how
//! many times a step runs it, and the step's total.
//!
//! `--decode CONFIG` measures the products of one generated token (one row
//! times each linear layer's `Wᵀ`, the weight read transposed in place) in
//! f32, bf16 and f16: `gpt6` (width 384) or `wide` (width 2048, vocabulary
//! 32000), one row per product and the token's total.
//!
//! On 2 threads the other worker spins for the next product between runs
//! ([`WarmWorkers`], as in training, and as OpenMP's threads do for
//! `torch.mm`) instead of sleeping and waking per product.
//!
//! Output (stable format): a `peak` line, then one row per
//! (shape, dtype, threads) with GFLOP/s (median of several runs). With
//! `--json`, each row is also printed as one JSON line prefixed `JSON `.

use std::hint::black_box;
use std::time::Instant;

use half::{bf16, f16};
use zerfoo_kernels::{cpu::matmul::gemm as zgemm, cpu::WarmWorkers, FloatDtype, Layout};

/// The shapes measured, as (M, K, N).
const SHAPES: &[(usize, usize, usize)] = &[
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (512, 384, 1536),
    (512, 1536, 384),
    (4096, 768, 768),
    (768, 128, 384),
    (64, 64, 32),
];

/// Single-core f32 FMA peak: independent accumulators, no memory traffic.
#[cfg(target_arch = "x86_64")]
fn fma_peak_once(iters: usize) -> f64 {
    use core::arch::x86_64::*;
    #[target_feature(enable = "avx512f")]
    unsafe fn body(iters: usize) -> f32 {
        let x = _mm512_set1_ps(0.999_999);
        let y = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 16];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let mut s = _mm512_setzero_ps();
        for a in acc {
            s = _mm512_add_ps(s, a);
        }
        _mm512_reduce_add_ps(s)
    }
    if !is_x86_feature_detected!("avx512f") {
        return f64::NAN;
    }
    let t = Instant::now();
    // SAFETY: AVX-512F checked above.
    black_box(unsafe { body(black_box(iters)) });
    (iters * 16 * 16 * 2) as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_once(_iters: usize) -> f64 {
    f64::NAN
}

/// Median GFLOP/s of `f` (each sample repeats `f` for at least ~30 ms).
fn measure(flops: f64, runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.03 / once).ceil() as usize).clamp(1, 10_000);
    let mut g: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    g.sort_by(f64::total_cmp);
    g[g.len() / 2]
}

fn data<E: FloatDtype>(n: usize, seed: u64) -> Vec<E> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            E::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

/// The `gemm` crate on row-major operands, or `None` where it has no such type.
trait Other: FloatDtype {
    fn other(
        m: usize,
        k: usize,
        n: usize,
        a: &[Self],
        b: &[Self],
        c: &mut [Self],
        threads: usize,
    ) -> bool;
}

macro_rules! other_impl {
    ($t:ty, $zero:expr, $one:expr) => {
        impl Other for $t {
            fn other(
                m: usize,
                k: usize,
                n: usize,
                a: &[Self],
                b: &[Self],
                c: &mut [Self],
                threads: usize,
            ) -> bool {
                let par = if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                };
                // SAFETY: a is m x k, b is k x n, c is m x n, all row-major and in bounds.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        $zero,
                        $one,
                        false,
                        false,
                        false,
                        par,
                    )
                };
                true
            }
        }
    };
}
other_impl!(f32, 0.0f32, 1.0f32);
other_impl!(f16, f16::ZERO, f16::ONE);

impl Other for bf16 {
    fn other(
        _: usize,
        _: usize,
        _: usize,
        _: &[Self],
        _: &[Self],
        _: &mut [Self],
        _: usize,
    ) -> bool {
        false
    }
}

fn row<E: Other>(
    name: &str,
    (m, k, n): (usize, usize, usize),
    threads: usize,
    runs: usize,
    peak: f64,
    json: bool,
) {
    // The previous row's pool threads (ours or the gemm crate's) wind down
    // asynchronously; let them go to sleep before this row is timed.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let a: Vec<E> = data(m * k, 1);
    let b: Vec<E> = data(k * n, 2);
    let (la, lb) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
    let flops = 2.0 * (m * n * k) as f64;
    let z = pool.install(|| {
        let _warm = WarmWorkers::start();
        measure(flops, runs, || {
            black_box(zgemm(&a, &la, &b, &lb));
        })
    });
    let mut c = vec![E::default(); m * n];
    let has = E::other(1, 1, 1, &a[..1], &b[..1], &mut c[..1], 1);
    let o = if has {
        pool.install(|| {
            let _warm = WarmWorkers::start();
            measure(flops, runs, || {
                E::other(m, k, n, &a, &b, &mut c, threads);
                black_box(&c);
            })
        })
    } else {
        f64::NAN
    };
    let shape = format!("{m}x{k}x{n}");
    let pk = 100.0 * z / (peak * threads as f64);
    println!(
        "{shape:>16} {name:>5} {threads:>2} {z:>9.1} {o:>9.1} {:>7.2} {pk:>7.1}",
        z / o
    );
    if json {
        let o = if o.is_nan() {
            "null".to_string()
        } else {
            format!("{o:.3}")
        };
        println!(
            "JSON {{\"m\":{m},\"k\":{k},\"n\":{n},\"dtype\":\"{name}\",\"threads\":{threads},\"zerfoo\":{z:.3},\"gemm\":{o},\"peak1\":{peak:.3}}}"
        );
    }
}

/// The f32 products of one GPT training step: (kind, M, K, N, A transposed,
/// B transposed, times per step) for `layers` blocks of width `c` over `t`
/// tokens (batch x context), vocabulary 65.
fn step_products(
    layers: usize,
    t: usize,
    c: usize,
) -> Vec<(String, usize, usize, usize, bool, bool, usize)> {
    let mut v = Vec::new();
    // (layer, inputs, outputs, times per step)
    for (name, i, o, times) in [
        ("qkv", c, 3 * c, layers),
        ("proj", c, c, layers),
        ("fc", c, 4 * c, layers),
        ("proj2", 4 * c, c, layers),
        ("head", c, 65, 1),
    ] {
        v.push((format!("fwd {name}"), t, i, o, false, true, times));
        v.push((format!("dx {name}"), t, o, i, false, false, times));
        v.push((format!("dw {name}"), o, t, i, true, false, times));
    }
    v
}

/// GFLOP/s of `A · B` (`m x k` by `k x n`, either operand stored
/// transposed: `(ta, tb)`) on `pool`, its other workers kept spinning.
fn time_product<E: FloatDtype>(
    pool: &rayon::ThreadPool,
    (m, k, n): (usize, usize, usize),
    (ta, tb): (bool, bool),
    runs: usize,
) -> f64 {
    let a: Vec<E> = data(m * k, 1);
    let b: Vec<E> = data(k * n, 2);
    let la = if ta {
        Layout::contiguous(&[k, m]).permute(&[1, 0])
    } else {
        Layout::contiguous(&[m, k])
    };
    let lb = if tb {
        Layout::contiguous(&[n, k]).permute(&[1, 0])
    } else {
        Layout::contiguous(&[k, n])
    };
    pool.install(|| {
        let _warm = WarmWorkers::start();
        measure(2.0 * (m * n * k) as f64, runs, || {
            black_box(zgemm(&a, &la, &b, &lb));
        })
    })
}

/// A GPT whose training step `--step` measures.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StepConfig {
    /// 4 layers, width 128, 12 x 64 tokens per step.
    Shakespeare,
    /// 6 layers, width 384, 8 x 256 tokens per step.
    Gpt6,
}

/// A GPT whose generated token `--decode` measures.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DecodeConfig {
    /// 6 layers, width 384, vocabulary 65.
    Gpt6,
    /// 1 layer, width 2048, vocabulary 32000 (weights from memory).
    Wide,
}

/// A configuration's name, as given on the command line.
fn name(config: impl clap::ValueEnum) -> String {
    let value = config
        .to_possible_value()
        .expect("no configuration is hidden");
    value.get_name().to_string()
}

/// `--step CONFIG`: one row per product of a training step, then the total.
fn step_table(config: StepConfig, runs: usize, json: bool) {
    let (layers, t, c) = match config {
        StepConfig::Shakespeare => (4, 12 * 64, 128),
        StepConfig::Gpt6 => (6, 8 * 256, 384),
    };
    let config = name(config);
    println!(
        "{:>10} {:>16} {:>2} {:>5} {:>9}",
        "product", "MxKxN", "t", "times", "zerfoo"
    );
    for threads in [1, 2] {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let mut total_ms = 0.0;
        for (kind, m, k, n, ta, tb, times) in step_products(layers, t, c) {
            let z = time_product::<f32>(&pool, (m, k, n), (ta, tb), runs);
            total_ms += times as f64 * 2.0 * (m * n * k) as f64 / z / 1e6;
            println!(
                "{kind:>10} {:>16} {threads:>2} {times:>5} {z:>9.1}",
                format!("{m}x{k}x{n}")
            );
            if json {
                println!(
                    "JSON {{\"kind\":\"{kind}\",\"m\":{m},\"k\":{k},\"n\":{n},\"ta\":{ta},\"tb\":{tb},\"times\":{times},\"threads\":{threads},\"zerfoo\":{z:.3}}}"
                );
            }
        }
        println!("{config} step, {threads} thread(s): all products {total_ms:.2} ms");
    }
}

/// `--decode CONFIG`: the products of one generated token (`1 x C` times
/// each layer's transposed weight), f32, bf16 and f16, 1 and 2 threads.
fn decode_table(config: DecodeConfig, runs: usize, json: bool) {
    let (layers, c, vocab) = match config {
        DecodeConfig::Gpt6 => (6, 384, 65),
        DecodeConfig::Wide => (1, 2048, 32000),
    };
    let config = name(config);
    println!(
        "{:>8} {:>16} {:>5} {:>2} {:>5} {:>9}",
        "product", "MxKxN", "dtype", "t", "times", "zerfoo"
    );
    fn rows<E: FloatDtype>(
        dtype: &str,
        (layers, c, vocab): (usize, usize, usize),
        threads: usize,
        runs: usize,
        json: bool,
    ) -> f64 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let mut total_ms = 0.0;
        for (kind, k, n, times) in [
            ("qkv", c, 3 * c, layers),
            ("proj", c, c, layers),
            ("fc", c, 4 * c, layers),
            ("proj2", 4 * c, c, layers),
            ("head", c, vocab, 1),
        ] {
            let z = time_product::<E>(&pool, (1, k, n), (false, true), runs);
            total_ms += times as f64 * 2.0 * (n * k) as f64 / z / 1e6;
            println!(
                "{kind:>8} {:>16} {dtype:>5} {threads:>2} {times:>5} {z:>9.1}",
                format!("1x{k}x{n}")
            );
            if json {
                println!(
                    "JSON {{\"kind\":\"{kind}\",\"m\":1,\"k\":{k},\"n\":{n},\"dtype\":\"{dtype}\",\"ta\":false,\"tb\":true,\"times\":{times},\"threads\":{threads},\"zerfoo\":{z:.3}}}"
                );
            }
        }
        total_ms
    }
    for threads in [1, 2] {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let f = rows::<f32>("f32", (layers, c, vocab), threads, runs, json);
        let b = rows::<bf16>("bf16", (layers, c, vocab), threads, runs, json);
        let h = rows::<f16>("f16", (layers, c, vocab), threads, runs, json);
        println!(
            "{config} token, {threads} thread(s): all products f32 {f:.3} ms, bf16 {b:.3} ms, f16 {h:.3} ms"
        );
    }
}

/// The command line (an unknown option or value is an error with usage, not a full run).
#[derive(clap::Parser)]
#[command(about = "GEMM GFLOP/s: zerfoo next to the `gemm` crate and the measured FMA peak")]
struct Args {
    /// Also print each row as one JSON line prefixed `JSON `.
    #[arg(long)]
    json: bool,
    /// Fewer runs per row (3 instead of 7).
    #[arg(long)]
    quick: bool,
    /// Only this dtype's rows.
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    only: Option<String>,
    /// One shape `MxKxN` (e.g. 512x384x1536) instead of the list.
    #[arg(long, value_parser = parse_shape)]
    shape: Option<(usize, usize, usize)>,
    /// Print the listed shapes, one `MxKxN` per line, and nothing else.
    #[arg(long)]
    list: bool,
    /// The f32 products of one training step of this GPT configuration.
    #[arg(long, value_enum, conflicts_with_all = ["decode", "only", "shape", "list"])]
    step: Option<StepConfig>,
    /// The products of one generated token of this configuration.
    #[arg(long, value_enum, conflicts_with_all = ["only", "shape", "list"])]
    decode: Option<DecodeConfig>,
}

/// `MxKxN` as three sizes.
fn parse_shape(s: &str) -> Result<(usize, usize, usize), String> {
    let d: Vec<usize> = s
        .split('x')
        .map(|v| v.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s}: {e} (expected MxKxN, e.g. 512x384x1536)"))?;
    match d[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => Err(format!(
            "{s}: expected three positive sizes MxKxN, e.g. 512x384x1536"
        )),
    }
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let json = args.json;
    let runs = if args.quick { 3 } else { 7 };
    let want = |d: &str| args.only.as_deref().is_none_or(|o| o == d);
    if args.list {
        for (m, k, n) in SHAPES {
            println!("{m}x{k}x{n}");
        }
        return;
    }
    let shapes: Vec<(usize, usize, usize)> = match args.shape {
        Some(s) => vec![s],
        None => SHAPES.to_vec(),
    };
    if let Some(config) = args.step {
        return step_table(config, runs, json);
    }
    if let Some(config) = args.decode {
        return decode_table(config, runs, json);
    }
    let _ = fma_peak_once(1 << 20);
    let mut p: Vec<f64> = (0..7).map(|_| fma_peak_once(1 << 24)).collect();
    p.sort_by(f64::total_cmp);
    let peak = p[p.len() - 1];
    println!("peak f32 FMA 1 core: {peak:.1} GFLOP/s (best of 7)");
    if json {
        println!("JSON {{\"peak1\":{peak:.3}}}");
    }
    println!(
        "{:>16} {:>5} {:>2} {:>9} {:>9} {:>7} {:>7}",
        "MxKxN", "dtype", "t", "zerfoo", "gemm", "z/gemm", "%peak"
    );
    for &s in &shapes {
        for threads in [1, 2] {
            if want("f32") {
                row::<f32>("f32", s, threads, runs, peak, json);
            }
        }
    }
    for &s in &shapes {
        for threads in [1, 2] {
            if want("f16") {
                row::<f16>("f16", s, threads, runs, peak, json);
            }
            if want("bf16") {
                row::<bf16>("bf16", s, threads, runs, peak, json);
            }
        }
    }
}
