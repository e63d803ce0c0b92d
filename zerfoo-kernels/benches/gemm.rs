//! Criterion benchmarks of `cpu::matmul::gemm` (f32, f16, bf16) at the
//! shapes the GEMM work targets, and of a linear layer with GELU fused into
//! its product against the two steps (forward and backward, f32, the
//! Shakespeare and gpt6 MLP shapes), on the default rayon pool.
//!
//! ```text
//! cargo bench -p zerfoo-kernels --bench gemm
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use zerfoo_kernels::cpu::matmul::{
    gemm, gemm_batched, gemm_batched_act_grad, gemm_batched_bias, gemm_batched_bias_act,
};
use zerfoo_kernels::cpu::unary::{unary_backward, unary_forward, GeluErf};
use zerfoo_kernels::{FloatDtype, Layout};

mod common;
use common::retain_freed_memory;

const SHAPES: &[(usize, usize, usize)] = &[
    (64, 64, 32),
    (768, 128, 384),
    (256, 256, 256),
    (512, 512, 512),
    (512, 384, 1536),
    (512, 1536, 384),
    (1024, 1024, 1024),
];

fn data<E: FloatDtype>(n: usize) -> Vec<E> {
    (0..n)
        .map(|i| E::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0))
        .collect()
}

fn bench_dtype<E: FloatDtype>(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group(format!("gemm_{name}"));
    g.sample_size(20);
    for &(m, k, n) in SHAPES {
        let a: Vec<E> = data(m * k);
        let b: Vec<E> = data(k * n);
        let (la, lb) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{m}x{k}x{n}")),
            &(),
            |bch, _| bch.iter(|| gemm(&a, &la, &b, &lb)),
        );
    }
    g.finish();
}

/// `x · Wᵀ + b` then GELU (`m x k` by `k -> n`), and the backward of the
/// next layer's input gradient through GELU (`m x k` by `k x n`, then
/// GELU's derivative): fused and as two steps. The weights are scaled so
/// the pre-activations are about unit-sized, as in training.
fn bench_linear_gelu(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear_gelu_f32");
    g.sample_size(20);
    for &(m, k, n) in &[(768, 128, 512), (2048, 384, 1536)] {
        let x: Vec<f32> = data(m * k);
        let scale = 1.7 / (k as f32).sqrt();
        let w: Vec<f32> = data::<f32>(n * k).iter().map(|v| v * scale).collect();
        let b: Vec<f32> = data(n);
        let (lx, lwt) = (
            Layout::contiguous(&[m, k]),
            Layout::new(&[k, n], &[1, k], 0),
        );
        let (lw, lh) = (Layout::contiguous(&[k, n]), Layout::contiguous(&[m, n]));
        let (h, y) = gemm_batched_bias_act(&x, &lx, &w, &lwt, Some(&b), GeluErf);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = |what: &str| BenchmarkId::new(what, format!("{m}x{k}x{n}"));
        g.bench_function(id("forward_fused"), |bch| {
            bch.iter(|| gemm_batched_bias_act(&x, &lx, &w, &lwt, Some(&b), GeluErf))
        });
        g.bench_function(id("forward_two_steps"), |bch| {
            bch.iter(|| {
                let h = gemm_batched_bias(&x, &lx, &w, &lwt, Some(&b));
                unary_forward(GeluErf, &h, &lh)
            })
        });
        g.bench_function(id("backward_fused"), |bch| {
            bch.iter(|| gemm_batched_act_grad(&x, &lx, &w, &lw, GeluErf, &h, &y))
        });
        g.bench_function(id("backward_two_steps"), |bch| {
            bch.iter(|| {
                let ga = gemm_batched(&x, &lx, &w, &lw);
                unary_backward(GeluErf, &h, &lh, &y, &ga)
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    retain_freed_memory();
    bench_dtype::<f32>(c, "f32");
    bench_dtype::<f16>(c, "f16");
    bench_dtype::<bf16>(c, "bf16");
    bench_linear_gelu(c);
}

criterion_group!(gemm_benches, benches);
criterion_main!(gemm_benches);
