//! Criterion benchmarks of `cpu::matmul::gemm` (f32, f16, bf16) at the
//! shapes the GEMM work targets, on the default rayon pool.
//!
//! ```text
//! cargo bench -p zerfoo-kernels --bench gemm
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use zerfoo_kernels::{cpu::matmul::gemm, FloatDtype, Layout};

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

fn benches(c: &mut Criterion) {
    bench_dtype::<f32>(c, "f32");
    bench_dtype::<f16>(c, "f16");
    bench_dtype::<bf16>(c, "bf16");
}

criterion_group!(gemm_benches, benches);
criterion_main!(gemm_benches);
