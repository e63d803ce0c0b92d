//! Fused attention (forward + backward, f32, causal) against a materialized
//! implementation built from `gemm_batched` (scores, softmax, products), in
//! the same run; then the fused kernels on the layout a training step gives
//! them: `q`, `k` and `v` side by side in one projection's rows, the output
//! sequence-major and the gradients packed into one projection gradient.
//!
//! ```text
//! cargo run --release -p zerfoo-kernels --example attention_timing
//! ```

use std::time::Instant;

use rayon::prelude::*;
use zerfoo_kernels::{
    cpu::attention::{
        attention_backward, attention_backward_packed, attention_forward,
        attention_forward_for_backward, AttnMask, HeadsOrder,
    },
    cpu::matmul::gemm_batched,
    Layout,
};

/// The materialized reference's order of the results.
const HEAD_MAJOR: HeadsOrder = HeadsOrder::HeadMajor;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// `[bh, r, c]` read transposed as `[bh, c, r]`.
fn t(bh: usize, r: usize, c: usize) -> Layout {
    let mut l = Layout::contiguous(&[bh, r, c]);
    l.swap_axes(1, 2);
    l
}

/// Materialized causal attention, forward and backward: `(o, dq, dk, dv)`.
#[allow(clippy::type_complexity)]
fn materialized(
    (bh, tt, d): (usize, usize, usize),
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let lq = Layout::contiguous(&[bh, tt, d]);
    let ls = Layout::contiguous(&[bh, tt, tt]);
    let mut p = gemm_batched(q, &lq, k, &t(bh, tt, d));
    p.par_chunks_mut(tt).enumerate().for_each(|(r, row)| {
        let i = r % tt;
        let mut m = f32::NEG_INFINITY;
        for (j, x) in row.iter_mut().enumerate() {
            if j > i {
                *x = f32::NEG_INFINITY;
            } else {
                *x *= scale;
                m = m.max(*x);
            }
        }
        let mut s = 0.0;
        for x in row.iter_mut() {
            *x = (*x - m).exp();
            s += *x;
        }
        row.iter_mut().for_each(|x| *x /= s);
    });
    let o = gemm_batched(&p, &ls, v, &lq);
    let dv = gemm_batched(&p, &t(bh, tt, tt), g, &lq);
    let mut ds = gemm_batched(g, &lq, v, &t(bh, tt, d));
    ds.par_chunks_mut(tt)
        .zip(p.par_chunks(tt))
        .for_each(|(dr, pr)| {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            for (x, &pj) in dr.iter_mut().zip(pr) {
                *x = pj * (*x - dot) * scale;
            }
        });
    let dq = gemm_batched(&ds, &ls, k, &lq);
    let dk = gemm_batched(&ds, &t(bh, tt, tt), q, &lq);
    (o, dq, dk, dv)
}

fn main() {
    // Inside a pool with warm workers, as a training step runs.
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("thread pool");
    pool.install(|| {
        let _warm = zerfoo_kernels::cpu::WarmWorkers::start();
        run();
    });
}

fn run() {
    for &(b, h, tt, d) in &[(12usize, 4usize, 64usize, 32usize), (8, 6, 256, 64)] {
        let bh = b * h;
        let n = bh * tt * d;
        let (q, k, v, g) = (rand(n, 1), rand(n, 2), rand(n, 3), rand(n, 4));
        let l = Layout::contiguous(&[b, h, tt, d]);
        let scale = 1.0 / (d as f64).sqrt();
        let mask = AttnMask {
            causal: true,
            ..Default::default()
        };
        let fused = || {
            let (o, lse) = attention_forward(&q, &l, &k, &l, &v, &l, &mask, scale, HEAD_MAJOR);
            let gr = attention_backward(
                &q, &l, &k, &l, &v, &l, &o, &lse, &g, &l, &mask, scale, HEAD_MAJOR,
            );
            (o, gr)
        };
        let mat = || materialized((bh, tt, d), &q, &k, &v, &g, scale as f32);
        // agreement
        let (fo, (fdq, fdk, fdv)) = fused();
        let (mo, mdq, mdk, mdv) = mat();
        let err = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        println!(
            "B={b} H={h} T={tt} D={d}: max |diff| o {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
            err(&fo, &mo),
            err(&fdq, &mdq),
            err(&fdk, &mdk),
            err(&fdv, &mdv)
        );
        let reps = (2_000_000_000 / (bh * tt * tt * d)).clamp(3, 50);
        let (mut bf, mut bm, mut bfw) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let t0 = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(attention_forward(
                    &q, &l, &k, &l, &v, &l, &mask, scale, HEAD_MAJOR,
                ));
            }
            bfw = bfw.min(t0.elapsed().as_secs_f64() / reps as f64);
            let t0 = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(fused());
            }
            bf = bf.min(t0.elapsed().as_secs_f64() / reps as f64);
            let t0 = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(mat());
            }
            bm = bm.min(t0.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "  fused fwd {:.3} ms; fwd+bwd: fused {:.3} ms, materialized {:.3} ms ({:.2}x)",
            bfw * 1e3,
            bf * 1e3,
            bm * 1e3,
            bm / bf
        );
        projection_layout((b, h, tt, d), &mask, scale, reps);
    }
}

/// The fused kernels on one `(B, T, 3·H·D)` projection (`q`, `k`, `v` as
/// strided views of it), the output stored sequence-major and the gradients
/// packed (`attention_backward_packed`), as a GPT's training step runs them.
fn projection_layout(
    (b, h, tt, d): (usize, usize, usize, usize),
    mask: &AttnMask<'_>,
    scale: f64,
    reps: usize,
) {
    let c = h * d;
    let qkv = rand(b * tt * 3 * c, 5);
    let g = rand(b * tt * c, 6);
    let view = |part: usize| Layout::new(&[b, h, tt, d], &[tt * 3 * c, d, 3 * c, 1], c * part);
    let (lq, lk, lv) = (view(0), view(1), view(2));
    let order = HeadsOrder::SeqMajor;
    let lg = order.layout([b, h, tt, d]);
    // Timed alternately: the forward alone (inference), and the forward
    // that keeps the probabilities with the backward that reads them
    // (training), against the backward that recomputes them.
    let (o, lse) = attention_forward(&qkv, &lq, &qkv, &lk, &qkv, &lv, mask, scale, order);
    let (_, saved) =
        attention_forward_for_backward(&qkv, &lq, &qkv, &lk, &qkv, &lv, mask, scale, order);
    let mut best = [f64::INFINITY; 4];
    for _ in 0..5 {
        for (i, best) in best.iter_mut().enumerate() {
            let t0 = Instant::now();
            for _ in 0..reps {
                match i {
                    0 => drop(std::hint::black_box(attention_forward(
                        &qkv, &lq, &qkv, &lk, &qkv, &lv, mask, scale, order,
                    ))),
                    1 => drop(std::hint::black_box(attention_forward_for_backward(
                        &qkv, &lq, &qkv, &lk, &qkv, &lv, mask, scale, order,
                    ))),
                    _ => drop(std::hint::black_box(attention_backward_packed(
                        &qkv,
                        &lq,
                        &qkv,
                        &lk,
                        &qkv,
                        &lv,
                        &o,
                        if i == 2 { &lse } else { &saved },
                        &g,
                        &lg,
                        mask,
                        scale,
                    ))),
                }
            }
            *best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
        }
    }
    let ms = best.map(|t| t * 1e3);
    println!(
        "  projection layout: fused fwd {:.3} ms, bwd (packed gradients) {:.3} ms; \
         keeping the probabilities: fwd {:.3} ms, bwd {:.3} ms",
        ms[0], ms[2], ms[1], ms[3]
    );
}
