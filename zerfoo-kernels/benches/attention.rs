//! Criterion benchmarks of the fused causal attention kernels
//! (`cpu::attention`), forward and backward, f32, at the Shakespeare
//! (12 x 4 heads x 64 positions x 32) and gpt6 (8 x 6 x 256 x 64) shapes,
//! with queries, keys and values read in place from one `(B, T, 3·H·D)`
//! projection as the models do. The throughput counts the products the
//! kernels compute on the causal half (the masked key blocks are skipped).
//! `forward_for_backward` and `backward_kept` are a training step's pair:
//! the forward that keeps the probabilities and the backward that reads
//! them (counted as the plain ones are).
//!
//! ```text
//! cargo bench -p zerfoo-kernels --bench attention
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use zerfoo_kernels::cpu::attention::{
    attention_backward, attention_forward, attention_forward_for_backward, AttnMask, HeadsOrder,
};
use zerfoo_kernels::Layout;

mod common;
use common::retain_freed_memory;

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn bench_attention(c: &mut Criterion) {
    retain_freed_memory();
    let mut g = c.benchmark_group("attention_causal_f32");
    g.sample_size(30);
    for &(b, h, t, d) in &[(12, 4, 64, 32), (8, 6, 256, 64)] {
        let width = h * d;
        let qkv = data(b * t * 3 * width, 1);
        // (B, H, T, D) views of q, k, v inside the (B, T, 3·H·D) projection.
        let view = |part: usize| {
            Layout::new(
                &[b, h, t, d],
                &[t * 3 * width, d, 3 * width, 1],
                part * width,
            )
        };
        let (lq, lk, lv) = (view(0), view(1), view(2));
        let mask = AttnMask {
            causal: true,
            ..Default::default()
        };
        let scale = 1.0 / (d as f64).sqrt();
        let order = HeadsOrder::SeqMajor;
        let (out, lse) = attention_forward(&qkv, &lq, &qkv, &lk, &qkv, &lv, &mask, scale, order);
        let (_, kept) =
            attention_forward_for_backward(&qkv, &lq, &qkv, &lk, &qkv, &lv, &mask, scale, order);
        let dout = data(b * t * width, 2);
        let ld = order.layout([b, h, t, d]);
        // Causal: about half of the score matrix, 2 products forward, 5 backward.
        let causal_macs = (b * h * t * (t + 1) / 2 * d) as u64;
        let id = |what: &str| BenchmarkId::new(what, format!("{b}x{h}x{t}x{d}"));
        g.throughput(Throughput::Elements(2 * 2 * causal_macs));
        g.bench_function(id("forward"), |bch| {
            bch.iter(|| attention_forward(&qkv, &lq, &qkv, &lk, &qkv, &lv, &mask, scale, order))
        });
        g.bench_function(id("forward_for_backward"), |bch| {
            bch.iter(|| {
                attention_forward_for_backward(&qkv, &lq, &qkv, &lk, &qkv, &lv, &mask, scale, order)
            })
        });
        g.throughput(Throughput::Elements(2 * 5 * causal_macs));
        for (what, saved) in [("backward", &lse), ("backward_kept", &kept)] {
            g.bench_function(id(what), |bch| {
                bch.iter(|| {
                    attention_backward(
                        &qkv, &lq, &qkv, &lk, &qkv, &lv, &out, saved, &dout, &ld, &mask, scale,
                        order,
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(attention_benches, bench_attention);
criterion_main!(attention_benches);
