//! Layer norm and RMS norm over the last axis: one fused pass per row forward
//! (read the row once into the compute type, take its statistics, write the
//! normalized, scaled and shifted row, rounding once) and backward (input,
//! weight and bias gradients together).
//!
//! The weight and bias gradients are sums over rows. They are accumulated
//! per fixed block of rows (the blocking depends only on the shape, not on
//! the thread count) and the block partials are added in order, so results
//! are deterministic.

use core::mem::MaybeUninit;

use num_traits::{Float, One, Zero};

#[cfg(target_arch = "x86_64")]
use super::simd::{as_f32, as_f32_mut};
use super::simd::{lane_sum_of, lane_sum_zip, vectorized};
use super::softmax::{map_row, AxisRows};
use super::threads::{for_each_chunk_pair_mut, map_chunks_mut};
use super::{assume_init_vec, map, uninit_vec, CHUNK, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real};

/// Which normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w + b`, biased variance (PyTorch `F.layer_norm`).
    Layer,
    /// `x / sqrt(mean(x^2) + eps) * w` (T5, Llama).
    Rms,
    /// `x / sqrt(mean(x^2) + eps) * (1 + w)` (Gemma), all in the compute type.
    RmsOffset,
}

/// Per-row statistics saved by the forward pass for the backward pass:
/// `xhat = (x - mean) * rstd` (`mean` is 0 for the RMS norms).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NormStats<A> {
    /// The row mean (0 for RMS norms).
    pub mean: A,
    /// `1 / sqrt(var + eps)` (or `1 / sqrt(mean(x^2) + eps)`).
    pub rstd: A,
}

/// Gradients of a normalization.
#[derive(Clone, Debug)]
pub struct NormGrads<E> {
    /// Input gradient, contiguous, shaped like the input (`None` when it
    /// was added into the caller's gradient).
    pub x: Option<Vec<E>>,
    /// Weight gradient (`None` without a weight).
    pub weight: Option<Vec<E>>,
    /// Bias gradient (`None` without a bias).
    pub bias: Option<Vec<E>>,
}

/// The effective per-column scale in the compute type: `w`, `1 + w` for
/// [`NormKind::RmsOffset`], or `None` (scale 1) without a weight.
fn effective_weight<E: FloatDtype>(
    kind: NormKind,
    weight: Option<(&[E], &Layout)>,
) -> Option<Vec<E::Acc>> {
    weight.map(|(w, lw)| {
        map(w, lw, |v: E| {
            let v = v.to_acc();
            if kind == NormKind::RmsOffset {
                E::Acc::one() + v
            } else {
                v
            }
        })
    })
}

fn last_axis(layout: &Layout) -> usize {
    assert!(layout.rank() >= 1, "normalization needs rank >= 1");
    layout.rank() - 1
}

/// Normalizes every row along the last axis of `x` (any layout). `weight`
/// and `bias` have the length of that axis (the caller checks). Returns the
/// contiguous output and the per-row statistics.
pub fn norm_forward<E: FloatDtype>(
    kind: NormKind,
    x: &[E],
    lx: &Layout,
    weight: Option<(&[E], &Layout)>,
    bias: Option<(&[E], &Layout)>,
    eps: f64,
) -> (Vec<E>, Vec<NormStats<E::Acc>>) {
    let axis = last_axis(lx);
    let rows = AxisRows::new(lx.shape(), axis);
    let (count, n) = (rows.count(), rows.n);
    let w = effective_weight(kind, weight);
    let b: Option<Vec<E::Acc>> = bias.map(|(b, lb)| map(b, lb, |v: E| v.to_acc()));
    let (w, b) = (w.as_deref(), b.as_deref());
    let d = E::Acc::of_f64(n as f64);
    let eps = E::Acc::of_f64(eps);
    let mut stats = vec![NormStats::default(); count];
    if n == 0 || count == 0 {
        return (Vec::new(), stats);
    }
    let start = rows.starts(lx);
    let fast = f32_avx512::usable::<E>();
    let mut out = uninit_vec::<E>(count * n);
    let per_task = (CHUNK / n).max(1);
    let body = |(t, out, stats): (usize, &mut [MaybeUninit<E>], &mut [_])| {
        // A strided row is gathered into `buf` first; a unit-stride row is
        // read in place.
        let mut buf = Vec::new();
        vectorized(
            #[inline(always)]
            || {
                let first = t * per_task;
                // Unit-stride `f32` rows through AVX-512, the others (or all) portably.
                #[cfg(target_arch = "x86_64")]
                let done = if fast {
                    normalize_f32_rows(x, (out, stats), first, start, n, kind, (w, b), (d, eps))
                } else {
                    0
                };
                #[cfg(not(target_arch = "x86_64"))]
                let done = 0;
                let rest = out
                    .chunks_mut(n)
                    .zip(stats.iter_mut())
                    .enumerate()
                    .skip(done);
                for (k, (out, st)) in rest {
                    let (at, stride) = start(first + k);
                    *st = if stride == 1 {
                        normalize_row(
                            &x[at..at + n],
                            |v: E| v.to_acc(),
                            out,
                            kind,
                            (w, b),
                            (d, eps),
                        )
                    } else {
                        buf.resize(n, E::Acc::zero());
                        map_row(x, (at, stride), &mut buf, |v| v.to_acc());
                        normalize_row(&buf, |v| v, out, kind, (w, b), (d, eps))
                    };
                }
            },
        )
    };
    if count * n >= PAR_THRESHOLD && count > 1 {
        for_each_chunk_pair_mut(&mut out, per_task * n, &mut stats, per_task, body);
    } else {
        out.chunks_mut(per_task * n)
            .zip(stats.chunks_mut(per_task))
            .enumerate()
            .for_each(|(t, (o, s))| body((t, o, s)));
    }
    // SAFETY: every row of `out` went to one `normalize_row`, which wrote it.
    (unsafe { assume_init_vec(out) }, stats)
}

/// The first rows of one of [`norm_forward`]'s tasks (`out` and `stats`
/// hold its rows, the first of them row `first`) through
/// [`f32_avx512::normalize_rows`], four at a time and then one at a time,
/// while they are unit-stride rows; returns how many rows it wrote.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_f32_rows<E: FloatDtype>(
    x: &[E],
    (out, stats): (&mut [MaybeUninit<E>], &mut [NormStats<E::Acc>]),
    first: usize,
    start: impl Fn(usize) -> (usize, usize) + Copy,
    n: usize,
    kind: NormKind,
    (w, b): Affine<'_, E::Acc>,
    (d, eps): (E::Acc, E::Acc),
) -> usize {
    /// What every group of rows shares.
    struct Rows<'a, S> {
        x: &'a [f32],
        first: usize,
        start: S,
        n: usize,
        kind: NormKind,
        affine: Affine<'a, f32>,
        d_eps: (f32, f32),
    }
    /// Rows `done..done + R`, unless one of them is strided (`false`).
    #[inline(always)]
    fn group<E: FloatDtype, S: Fn(usize) -> (usize, usize), const R: usize>(
        c: &Rows<'_, S>,
        (out, stats): (&mut [MaybeUninit<E>], &mut [NormStats<E::Acc>]),
        done: usize,
    ) -> bool {
        let n = c.n;
        let at: [(usize, usize); R] = core::array::from_fn(|i| (c.start)(c.first + done + i));
        if at.iter().any(|&(_, stride)| stride != 1) {
            return false;
        }
        let rows = at.map(|(at, _)| c.x[at..at + n].as_ptr());
        let outs: [*mut f32; R] =
            core::array::from_fn(|i| out[(done + i) * n..][..n].as_mut_ptr().cast());
        // SAFETY: AVX-512 (the caller checked); each row and output holds
        // `n` values (sliced above).
        let st =
            unsafe { f32_avx512::normalize_rows::<R>((rows, outs, n), c.kind, c.affine, c.d_eps) };
        for (s, st) in stats[done..done + R].iter_mut().zip(st) {
            *s = NormStats {
                mean: E::Acc::of_f64(st.mean as f64),
                rstd: E::Acc::of_f64(st.rstd as f64),
            };
        }
        true
    }
    let c = Rows {
        x: as_f32(x),
        first,
        start,
        n,
        kind,
        affine: (w.map(as_f32), b.map(as_f32)),
        d_eps: (d.as_f64() as f32, eps.as_f64() as f32),
    };
    in_fours_then_ones(stats.len(), |done, four| {
        let rows = (&mut *out, &mut *stats);
        if four {
            group::<E, _, 4>(&c, rows, done)
        } else {
            group::<E, _, 1>(&c, rows, done)
        }
    })
}

/// One row of [`norm_forward`]: the statistics of `xs` (each value taken
/// through `acc` into the compute type), then the normalized, scaled and
/// shifted row written to `out`.
#[inline(always)]
fn normalize_row<E: FloatDtype, T: Copy>(
    xs: &[T],
    acc: impl Fn(T) -> E::Acc + Copy,
    out: &mut [MaybeUninit<E>],
    kind: NormKind,
    (w, b): Affine<'_, E::Acc>,
    (d, eps): (E::Acc, E::Acc),
) -> NormStats<E::Acc> {
    let mean = if kind == NormKind::Layer {
        lane_sum_of(xs, acc) / d
    } else {
        E::Acc::zero()
    };
    let ss = lane_sum_of(xs, |x| {
        let x = acc(x);
        (x - mean) * (x - mean)
    });
    let rstd = (ss / d + eps).sqrt().recip();
    let rows = out.iter_mut().zip(xs.iter().map(|&v| acc(v)));
    match (w, b) {
        (Some(w), Some(b)) => {
            for (((o, v), &w), &b) in rows.zip(w).zip(b) {
                o.write(E::from_acc((v - mean) * rstd * w + b));
            }
        }
        (Some(w), None) => {
            for ((o, v), &w) in rows.zip(w) {
                o.write(E::from_acc((v - mean) * rstd * w));
            }
        }
        (None, Some(b)) => {
            for ((o, v), &b) in rows.zip(b) {
                o.write(E::from_acc((v - mean) * rstd + b));
            }
        }
        (None, None) => {
            for (o, v) in rows {
                o.write(E::from_acc((v - mean) * rstd));
            }
        }
    }
    NormStats { mean, rstd }
}

/// The first rows of one of the norm backward's blocks (`out` holds its
/// rows, the first of them row `first`) through
/// [`f32_avx512::backward_rows`], four at a time and then one at a time,
/// while they are unit-stride rows; returns how many rows it did.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
#[inline(always)]
fn backward_f32_rows<E: FloatDtype>(
    (x, grad_y, stats): (&[E], &[E], &[NormStats<E::Acc>]),
    (out, add): (&mut [MaybeUninit<E>], bool),
    first: usize,
    start: impl Fn(usize) -> (usize, usize) + Copy,
    (dw, db): (&mut [f32], &mut [f32]),
    (w, kind, d): (&[f32], NormKind, E::Acc),
) -> usize {
    /// What every group of rows shares.
    struct Rows<'a, A, S> {
        x: &'a [f32],
        grad_y: &'a [f32],
        stats: &'a [NormStats<A>],
        first: usize,
        start: S,
        w: &'a [f32],
        kind: NormKind,
        d: f32,
        add: bool,
    }
    /// Rows `done..done + R`, unless one of them is strided (`false`).
    #[inline(always)]
    fn group<E: FloatDtype, S: Fn(usize) -> (usize, usize), const R: usize>(
        c: &Rows<'_, E::Acc, S>,
        out: &mut [MaybeUninit<E>],
        sums: (&mut [f32], &mut [f32]),
        done: usize,
    ) -> bool {
        let (n, r0) = (c.w.len(), c.first + done);
        let at: [(usize, usize); R] = core::array::from_fn(|i| (c.start)(r0 + i));
        if at.iter().any(|&(_, stride)| stride != 1) {
            return false;
        }
        let xs = at.map(|(at, _)| c.x[at..at + n].as_ptr());
        let gys: [*const f32; R] = core::array::from_fn(|i| c.grad_y[(r0 + i) * n..][..n].as_ptr());
        let outs: [*mut f32; R] =
            core::array::from_fn(|i| out[(done + i) * n..][..n].as_mut_ptr().cast());
        let st: [NormStats<f32>; R] = core::array::from_fn(|i| {
            let st = c.stats[r0 + i];
            NormStats {
                mean: st.mean.as_f64() as f32,
                rstd: st.rstd.as_f64() as f32,
            }
        });
        // SAFETY: AVX-512 (the caller checked); every row holds `n` values
        // (sliced above), the outputs initialized in adding mode.
        unsafe {
            f32_avx512::backward_rows::<R>(
                (xs, st, gys, c.w),
                sums,
                (outs, c.add),
                (n, c.kind, c.d),
            )
        };
        true
    }
    let c = Rows {
        x: as_f32(x),
        grad_y: as_f32(grad_y),
        stats,
        first,
        start,
        w,
        kind,
        d: d.as_f64() as f32,
        add,
    };
    in_fours_then_ones(out.len() / w.len().max(1), |done, four| {
        let sums = (&mut *dw, &mut *db);
        if four {
            group::<E, _, 4>(&c, out, sums, done)
        } else {
            group::<E, _, 1>(&c, out, sums, done)
        }
    })
}

/// Calls `group(done, four)` for the rows of a task: four at a time
/// (`four`) while four remain, then one at a time, until a group declines
/// (returns `false`); returns how many rows the groups took.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn in_fours_then_ones(rows: usize, mut group: impl FnMut(usize, bool) -> bool) -> usize {
    let mut done = 0;
    while done < rows {
        let four = done + 4 <= rows;
        if !group(done, four) {
            break;
        }
        done += if four { 4 } else { 1 };
    }
    done
}

/// A norm's effective weight and its bias, in the compute type, if any.
type Affine<'a, A> = (Option<&'a [A]>, Option<&'a [A]>);

/// One block's partial sums of the weight and bias gradients.
type Partial<A> = (Vec<A>, Vec<A>);

/// Backward of [`norm_forward`], given the saved `stats` and the contiguous
/// `grad_y`. With `g = grad_y * w_eff` and `xhat = (x - mean) * rstd`:
/// layer norm `gx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, RMS norms
/// `gx = rstd * (g - xhat * mean(g * xhat))`; `gw = sum_rows(grad_y * xhat)`,
/// `gb = sum_rows(grad_y)`.
///
/// With `into` (the input's gradient so far, contiguous) the input gradient
/// is added there in the same pass instead of returned (`x` is `None`):
/// the bits of adding the returned gradient elementwise (each value
/// rounded to `E`, then added in the compute type and rounded).
///
/// # Panics
/// If `into` is not as long as the input.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<E: FloatDtype>(
    kind: NormKind,
    x: &[E],
    lx: &Layout,
    weight: Option<(&[E], &Layout)>,
    has_bias: bool,
    stats: &[NormStats<E::Acc>],
    grad_y: &[E],
    into: Option<&mut [E]>,
) -> NormGrads<E> {
    let args = (kind, x, lx, weight, has_bias, stats, grad_y);
    match into {
        Some(acc) => {
            assert_eq!(acc.len(), lx.numel(), "norm_backward: gradient length");
            // SAFETY: `MaybeUninit<E>` has `E`'s layout; `backward_into` in
            // adding mode reads each (initialized) element before writing an
            // initialized value back.
            let acc = unsafe { &mut *(acc as *mut [E] as *mut [MaybeUninit<E>]) };
            let (weight, bias) = backward_into(args, (acc, true));
            NormGrads {
                x: None,
                weight,
                bias,
            }
        }
        None => {
            let mut gx = uninit_vec::<E>(lx.numel());
            let (weight, bias) = backward_into(args, (&mut gx, false));
            NormGrads {
                // SAFETY: `backward_into` wrote every element of `gx`.
                x: Some(unsafe { assume_init_vec(gx) }),
                weight,
                bias,
            }
        }
    }
}

/// [`norm_backward`]'s inputs: kind, input and layout, weight, whether
/// there is a bias, statistics, upstream gradient.
type BackwardArgs<'a, E> = (
    NormKind,
    &'a [E],
    &'a Layout,
    Option<(&'a [E], &'a Layout)>,
    bool,
    &'a [NormStats<<E as FloatDtype>::Acc>],
    &'a [E],
);

/// The input gradient written into `out` (or, with `add`, added to the
/// initialized values there), and the weight and bias gradients.
#[allow(clippy::type_complexity)]
fn backward_into<E: FloatDtype>(
    (kind, x, lx, weight, has_bias, stats, grad_y): BackwardArgs<'_, E>,
    (out, add): (&mut [MaybeUninit<E>], bool),
) -> (Option<Vec<E>>, Option<Vec<E>>) {
    let axis = last_axis(lx);
    let rows = AxisRows::new(lx.shape(), axis);
    let (count, n) = (rows.count(), rows.n);
    let has_weight = weight.is_some();
    let w = effective_weight(kind, weight);
    if count == 0 || n == 0 {
        let z = |on: bool| on.then(|| vec![E::from_acc(E::Acc::zero()); n]);
        return (z(has_weight), z(has_bias));
    }
    let d = E::Acc::of_f64(n as f64);
    // Fixed blocking: at most 64 blocks, each at least ~4K elements.
    let per_block = count.div_ceil(64).max((4096 / n).max(1));
    let start = rows.starts(lx);
    // Scale 1 without a weight (`g * 1` is `g`); the weight and bias sums
    // are taken either way and returned when there is a weight or bias.
    let w = w.unwrap_or_else(|| vec![E::Acc::one(); n]);
    let fast = f32_avx512::usable::<E>();
    let body = |(blk, chunk): (usize, &mut [MaybeUninit<E>])| {
        let (mut dw, mut db) = (vec![E::Acc::zero(); n], vec![E::Acc::zero(); n]);
        // The portable rows' scratch (`xhat`, `g`), sized when first used.
        let (mut buf, mut g) = (Vec::new(), Vec::new());
        vectorized(
            #[inline(always)]
            || {
                let first = blk * per_block;
                #[cfg(target_arch = "x86_64")]
                let done = if fast {
                    let sums = (as_f32_mut(&mut dw), as_f32_mut(&mut db));
                    backward_f32_rows(
                        (x, grad_y, stats),
                        (chunk, add),
                        first,
                        start,
                        sums,
                        (as_f32(&w), kind, d),
                    )
                } else {
                    0
                };
                #[cfg(not(target_arch = "x86_64"))]
                let done = 0;
                for (i, out) in chunk.chunks_mut(n).enumerate().skip(done) {
                    let r = first + i;
                    let st = stats[r];
                    let gy = &grad_y[r * n..(r + 1) * n];
                    buf.resize(n, E::Acc::zero());
                    g.resize(n, E::Acc::zero());
                    map_row(x, start(r), &mut buf, |x| (x.to_acc() - st.mean) * st.rstd);
                    // The weight and bias gradients sum grad_y * xhat and
                    // grad_y over rows; g = grad_y * w_eff.
                    for ((((gk, &gy), &xh), dw), db) in
                        g.iter_mut().zip(gy).zip(&buf).zip(&mut dw).zip(&mut db)
                    {
                        let gy = gy.to_acc();
                        *dw += gy * xh;
                        *db += gy;
                        *gk = gy;
                    }
                    for (gk, &w) in g.iter_mut().zip(&w) {
                        *gk *= w;
                    }
                    let mg = if kind == NormKind::Layer {
                        lane_sum_of(&g, |x| x) / d
                    } else {
                        E::Acc::zero()
                    };
                    let mgx = lane_sum_zip(&g, &buf, |g, b| g * b) / d;
                    let grad = |gk: E::Acc, xh: E::Acc| E::from_acc(st.rstd * (gk - mg - xh * mgx));
                    if add {
                        for ((o, &gk), &xh) in out.iter_mut().zip(g.iter()).zip(buf.iter()) {
                            // SAFETY: in adding mode every element is
                            // initialized (the caller's gradient).
                            let before = unsafe { o.assume_init_read() };
                            o.write(E::from_acc(before.to_acc() + grad(gk, xh).to_acc()));
                        }
                    } else {
                        for ((o, &gk), &xh) in out.iter_mut().zip(g.iter()).zip(buf.iter()) {
                            o.write(grad(gk, xh));
                        }
                    }
                }
            },
        );
        (dw, db)
    };
    let partials: Vec<Partial<E::Acc>> = if count * n >= PAR_THRESHOLD && count > 1 {
        map_chunks_mut(out, per_block * n, body)
    } else {
        out.chunks_mut(per_block * n)
            .enumerate()
            .map(body)
            .collect()
    };
    let total = |pick: fn(&Partial<E::Acc>) -> &Vec<E::Acc>| {
        let mut acc = vec![E::Acc::zero(); n];
        for p in &partials {
            for (a, &v) in acc.iter_mut().zip(pick(p)) {
                *a += v;
            }
        }
        acc.into_iter().map(E::from_acc).collect::<Vec<E>>()
    };
    (
        has_weight.then(|| total(|p| &p.0)),
        has_bias.then(|| total(|p| &p.1)),
    )
}

/// The `f32` AVX-512 forms of the rows of [`norm_forward`] and
/// [`norm_backward`] (unit-stride rows), with the portable loops' bits:
/// the same operations, unfused, and the sums in the lanes of
/// [`lane_sum_of`]. The compiler turns those loops' 16-lane sums into
/// 2-wide pieces, several times the instructions.
mod f32_avx512 {
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::*;

    #[cfg(target_arch = "x86_64")]
    use super::{Affine, NormKind, NormStats};
    #[cfg(target_arch = "x86_64")]
    use crate::cpu::simd::f32x16::{fold_add, lanes};
    use crate::FloatDtype;

    /// Whether `E` is `f32` on a CPU with AVX-512.
    pub(super) fn usable<E: FloatDtype>() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            E::DTYPE == crate::DType::F32 && crate::cpu::simd::has_avx512()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Asks for the row of `n` values [`AHEAD_BYTES`] after `row` (in whole
    /// rows) to be brought into L1, for reading or writing (`WRITE`). A
    /// training step's activations come from L3 or
    /// memory, and a row's chain of sums keeps the core from running far
    /// enough ahead for its loads to overlap: a 768 x 128 layer norm from
    /// memory took 3.5 times as long as from L2, 1.4 times with this.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch_rows_ahead<const WRITE: bool>(row: *const f32, n: usize) {
        let rows = (AHEAD_BYTES / (4 * n).max(1)).max(1);
        crate::cpu::simd::prefetch::<WRITE, f32>(row.wrapping_add(rows * n), n);
    }

    /// How far ahead [`prefetch_rows_ahead`] asks.
    #[cfg(target_arch = "x86_64")]
    const AHEAD_BYTES: usize = 4096;

    /// `f(v, lanes)` for each 16-wide vector `v` of an `n`-long row, with
    /// the mask of its columns: all 16 lanes but in the last (partial)
    /// vector, computed once instead of per vector.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn each_vector(n: usize, mut f: impl FnMut(usize, __mmask16)) {
        for v in 0..n / 16 {
            f(v, 0xffff);
        }
        if !n.is_multiple_of(16) {
            f(n / 16, lanes(n, n / 16));
        }
    }

    /// [`super::normalize_row`] for `R` rows at once (each row's own
    /// operations, interleaved: one row's chain of dependent sums, divisions
    /// and square root waits alongside the others'); `out[r]` takes
    /// `n` values.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; every `x[r]` holds `n` values and
    /// every `out[r]` is valid for `n` writes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn normalize_rows<const R: usize>(
        (x, out, n): ([*const f32; R], [*mut f32; R], usize),
        kind: NormKind,
        (w, b): Affine<'_, f32>,
        (d, eps): (f32, f32),
    ) -> [NormStats<f32>; R] {
        for r in 0..R {
            prefetch_rows_ahead::<false>(x[r], n);
            prefetch_rows_ahead::<true>(out[r], n);
        }
        // SAFETY (every load and store below): the lanes in `k` are
        // columns `16v..n`, inside each row, `w` and `b`.
        let load = |p: *const f32, v: usize, k| unsafe { _mm512_maskz_loadu_ps(k, p.add(16 * v)) };
        let mut mean = [0f32; R];
        if kind == NormKind::Layer {
            let mut acc = [_mm512_setzero_ps(); R];
            each_vector(
                n,
                #[inline(always)]
                |v, k| {
                    for r in 0..R {
                        acc[r] = _mm512_mask_add_ps(acc[r], k, acc[r], load(x[r], v, k));
                    }
                },
            );
            for r in 0..R {
                // SAFETY: AVX-512F, as this function.
                mean[r] = unsafe { fold_add(acc[r]) } / d;
            }
        }
        let mut mv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            mv[r] = _mm512_set1_ps(mean[r]);
        }
        let mut acc = [_mm512_setzero_ps(); R];
        each_vector(
            n,
            #[inline(always)]
            |v, k| {
                for r in 0..R {
                    let c = _mm512_sub_ps(load(x[r], v, k), mv[r]);
                    acc[r] = _mm512_mask_add_ps(acc[r], k, acc[r], _mm512_mul_ps(c, c));
                }
            },
        );
        let mut rstd = [0f32; R];
        for r in 0..R {
            // SAFETY: AVX-512F, as this function.
            let ss = unsafe { fold_add(acc[r]) };
            rstd[r] = (ss / d + eps).sqrt().recip();
        }
        let mut rv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            rv[r] = _mm512_set1_ps(rstd[r]);
        }
        each_vector(
            n,
            #[inline(always)]
            |v, k| {
                let (wv, bv) = (
                    w.map(|w| load(w.as_ptr(), v, k)),
                    b.map(|b| load(b.as_ptr(), v, k)),
                );
                for r in 0..R {
                    let mut y = _mm512_mul_ps(_mm512_sub_ps(load(x[r], v, k), mv[r]), rv[r]);
                    if let Some(wv) = wv {
                        y = _mm512_mul_ps(y, wv);
                    }
                    if let Some(bv) = bv {
                        y = _mm512_add_ps(y, bv);
                    }
                    // SAFETY: as the loads.
                    unsafe { _mm512_mask_storeu_ps(out[r].add(16 * v), k, y) };
                }
            },
        );
        let mut stats = [NormStats::default(); R];
        for r in 0..R {
            stats[r] = NormStats {
                mean: mean[r],
                rstd: rstd[r],
            };
        }
        stats
    }

    /// `R` rows of the backward, interleaved as in [`normalize_rows`]: with
    /// `xhat = (x - mean) * rstd` and `g = grad_y * w`, `grad_y * xhat` and
    /// `grad_y` added into `dw` and `db` (row after row, as one row at a
    /// time would), and `rstd * (g - mean(g) - xhat * mean(g * xhat))` (no
    /// `mean(g)` for the RMS norms) written to `out[r]`, or added to it.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `w`, `dw`, `db` hold `n` values, so
    /// does every `x[r]` and `gy[r]`, and every `out[r]` is valid for `n`
    /// reads (when adding) and writes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::type_complexity)]
    pub(super) unsafe fn backward_rows<const R: usize>(
        (x, st, gy, w): (
            [*const f32; R],
            [NormStats<f32>; R],
            [*const f32; R],
            &[f32],
        ),
        (dw, db): (&mut [f32], &mut [f32]),
        (out, add): ([*mut f32; R], bool),
        (n, kind, d): (usize, NormKind, f32),
    ) {
        assert!(w.len() == n && dw.len() == n && db.len() == n);
        for r in 0..R {
            prefetch_rows_ahead::<false>(x[r], n);
            prefetch_rows_ahead::<false>(gy[r], n);
            prefetch_rows_ahead::<true>(out[r], n);
        }
        // SAFETY (every load and store below): the lanes in `k` are
        // columns `16v..n`, inside every row given.
        let load = |p: *const f32, v: usize, k| unsafe { _mm512_maskz_loadu_ps(k, p.add(16 * v)) };
        let (mut mv, mut rv) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
        for r in 0..R {
            (mv[r], rv[r]) = (_mm512_set1_ps(st[r].mean), _mm512_set1_ps(st[r].rstd));
        }
        let xhat =
            |r: usize, v: usize, k| _mm512_mul_ps(_mm512_sub_ps(load(x[r], v, k), mv[r]), rv[r]);
        let (mut sg, mut sgx) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
        let (dwp, dbp) = (dw.as_mut_ptr(), db.as_mut_ptr());
        each_vector(
            n,
            #[inline(always)]
            |v, k| {
                let (mut dwv, mut dbv, wv) =
                    (load(dwp, v, k), load(dbp, v, k), load(w.as_ptr(), v, k));
                for r in 0..R {
                    let (xh, gy) = (xhat(r, v, k), load(gy[r], v, k));
                    dwv = _mm512_add_ps(dwv, _mm512_mul_ps(gy, xh));
                    dbv = _mm512_add_ps(dbv, gy);
                    let g = _mm512_mul_ps(gy, wv);
                    sg[r] = _mm512_mask_add_ps(sg[r], k, sg[r], g);
                    sgx[r] = _mm512_mask_add_ps(sgx[r], k, sgx[r], _mm512_mul_ps(g, xh));
                }
                // SAFETY: as the loads.
                unsafe {
                    _mm512_mask_storeu_ps(dwp.add(16 * v), k, dwv);
                    _mm512_mask_storeu_ps(dbp.add(16 * v), k, dbv);
                }
            },
        );
        let (mut mgv, mut mgxv) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
        for r in 0..R {
            // SAFETY: AVX-512F, as this function.
            let (sg, sgx) = unsafe { (fold_add(sg[r]), fold_add(sgx[r])) };
            let mg = if kind == NormKind::Layer { sg / d } else { 0.0 };
            (mgv[r], mgxv[r]) = (_mm512_set1_ps(mg), _mm512_set1_ps(sgx / d));
        }
        each_vector(
            n,
            #[inline(always)]
            |v, k| {
                let wv = load(w.as_ptr(), v, k);
                for r in 0..R {
                    let g = _mm512_mul_ps(load(gy[r], v, k), wv);
                    let t = _mm512_sub_ps(
                        _mm512_sub_ps(g, mgv[r]),
                        _mm512_mul_ps(xhat(r, v, k), mgxv[r]),
                    );
                    let mut y = _mm512_mul_ps(rv[r], t);
                    if add {
                        y = _mm512_add_ps(load(out[r], v, k), y);
                    }
                    // SAFETY: as the loads.
                    unsafe { _mm512_mask_storeu_ps(out[r].add(16 * v), k, y) };
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_row_has_zero_mean_unit_variance() {
        let x = [1.0f64, 2.0, 4.0, 7.0, -1.0, 0.0, 1.0, 2.0];
        let l = Layout::contiguous(&[2, 4]);
        let (y, st) = norm_forward(NormKind::Layer, &x, &l, None, None, 0.0);
        for r in 0..2 {
            let row = &y[r * 4..r * 4 + 4];
            let mean: f64 = row.iter().sum::<f64>() / 4.0;
            let var: f64 = row.iter().map(|v| v * v).sum::<f64>() / 4.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        }
        assert_eq!(st[0].mean, 3.5);
        // rms norm with weight 1 + w: x / rms * (1 + w)
        let w = [0.0f64, 1.0, -1.0, 0.5];
        let lw = Layout::contiguous(&[4]);
        let (y, _) = norm_forward(NormKind::RmsOffset, &x, &l, Some((&w, &lw)), None, 0.0);
        let rms = (70.0f64 / 4.0).sqrt();
        assert!((y[1] - 2.0 * 2.0 / rms).abs() < 1e-12);
        assert_eq!(y[2], 0.0);
    }

    #[test]
    fn weight_and_bias_gradients_sum_over_rows_in_parallel() {
        let (rows, n) = (PAR_THRESHOLD / 16, 32);
        let x: Vec<f32> = (0..rows * n).map(|i| ((i * 7) % 11) as f32).collect();
        let l = Layout::contiguous(&[rows, n]);
        let w = vec![2.0f32; n];
        let lw = Layout::contiguous(&[n]);
        let (_, st) = norm_forward(NormKind::Layer, &x, &l, Some((&w, &lw)), None, 1e-5);
        let gy = vec![1.0f32; rows * n];
        let g = norm_backward(
            NormKind::Layer,
            &x,
            &l,
            Some((&w, &lw)),
            true,
            &st,
            &gy,
            None,
        );
        // d/db of sum(y) is the row count; d/dx of sum(y) is 0 (y has zero mean per row)
        assert!(g.bias.unwrap().iter().all(|&v| v == rows as f32));
        assert!(g.x.unwrap().iter().all(|v| v.abs() < 1e-3));
        // sum over rows of xhat per column, against a direct computation
        let gw = g.weight.unwrap();
        let mut want = vec![0.0f64; n];
        for r in 0..rows {
            for k in 0..n {
                let s = st[r];
                want[k] += ((x[r * n + k] - s.mean) * s.rstd) as f64;
            }
        }
        for k in 0..n {
            assert!((gw[k] as f64 - want[k]).abs() < 1e-2 * (1.0 + want[k].abs()));
        }
    }

    /// Adding the input gradient into an existing one gives the bits of
    /// the two steps (the gradient, then `acc += g` in the compute type):
    /// every kind, with and without weight and bias, f32/f64/bf16, a
    /// transposed input, one block and many (parallel).
    #[test]
    fn backward_add_has_the_two_steps_bits() {
        fn check<E: FloatDtype>(rows: usize, n: usize, transposed: bool) {
            let val = |i: usize, k: usize| {
                E::from_f32((((i * k + 3) * 7919) % 1000) as f32 / 400.0 - 1.2)
            };
            let x: Vec<E> = (0..rows * n).map(|i| val(i, 1)).collect();
            let lx = if transposed {
                Layout::new(&[rows, n], &[1, rows], 0)
            } else {
                Layout::contiguous(&[rows, n])
            };
            let w: Vec<E> = (0..n).map(|i| val(i, 5)).collect();
            let b: Vec<E> = (0..n).map(|i| val(i, 9)).collect();
            let l1 = Layout::contiguous(&[n]);
            let gy: Vec<E> = (0..rows * n).map(|i| val(i, 2)).collect();
            let acc0: Vec<E> = (0..rows * n).map(|i| val(i, 3)).collect();
            for kind in [NormKind::Layer, NormKind::Rms, NormKind::RmsOffset] {
                for (weight, bias) in [(false, false), (true, false), (true, true)] {
                    let wv = weight.then_some((&w[..], &l1));
                    let bv = bias.then_some((&b[..], &l1));
                    let (_, st) = norm_forward(kind, &x, &lx, wv, bv, 1e-5);
                    let g = norm_backward(kind, &x, &lx, wv, bias, &st, &gy, None);
                    let want: Vec<E> = acc0
                        .iter()
                        .zip(g.x.as_deref().unwrap())
                        .map(|(a, g)| E::from_acc(a.to_acc() + g.to_acc()))
                        .collect();
                    let mut acc = acc0.clone();
                    let ga = norm_backward(kind, &x, &lx, wv, bias, &st, &gy, Some(&mut acc));
                    assert!(ga.x.is_none());
                    let (gw, gb) = (ga.weight, ga.bias);
                    let bits = |v: &[E]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                    let what = format!("{kind:?} w {weight} b {bias} {rows}x{n} t {transposed}");
                    assert_eq!(bits(&acc), bits(&want), "{what}: input gradient");
                    assert_eq!(gw.map(|v| bits(&v)), g.weight.map(|v| bits(&v)), "{what}");
                    assert_eq!(gb.map(|v| bits(&v)), g.bias.map(|v| bits(&v)), "{what}");
                }
            }
        }
        for (rows, n, t) in [
            (3, 7, false),
            (5, 33, true),
            (PAR_THRESHOLD / 16, 32, false),
        ] {
            check::<f32>(rows, n, t);
            check::<f64>(rows, n, t);
            check::<crate::bf16>(rows, n, t);
        }
    }

    /// Unit-stride `f32` rows run the AVX-512 kernels (on a CPU that has
    /// them); the same values stored transposed (strided rows) run the
    /// portable loops. Both must give the same bits: statistics, output,
    /// and every gradient, with and without a gradient to add into.
    #[test]
    fn avx512_rows_have_the_portable_bits() {
        let val = |i: usize, k: usize| {
            ((((i * k + 3) * 7919) % 1000) as f32 / 250.0 - 1.9) * (1.0 + (i % 5) as f32)
        };
        for (rows, n) in [
            (1, 1),
            (3, 7),
            (4, 16),
            (5, 17),
            (9, 33),
            (6, 128),
            (7, 129),
            (PAR_THRESHOLD / 100, 130),
        ] {
            let x: Vec<f32> = (0..rows * n).map(|i| val(i, 1)).collect();
            // The same tensor, stored column-major.
            let mut xt = vec![0f32; rows * n];
            for (i, &v) in x.iter().enumerate() {
                xt[(i % n) * rows + i / n] = v;
            }
            let (lx, lt) = (
                Layout::contiguous(&[rows, n]),
                Layout::new(&[rows, n], &[1, rows], 0),
            );
            let w: Vec<f32> = (0..n).map(|i| val(i, 5)).collect();
            let b: Vec<f32> = (0..n).map(|i| val(i, 9)).collect();
            let l1 = Layout::contiguous(&[n]);
            let gy: Vec<f32> = (0..rows * n).map(|i| val(i, 2)).collect();
            let acc0: Vec<f32> = (0..rows * n).map(|i| val(i, 3)).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for kind in [NormKind::Layer, NormKind::Rms, NormKind::RmsOffset] {
                for (weight, bias) in [(false, false), (true, false), (false, true), (true, true)] {
                    let what = format!("{kind:?} w {weight} b {bias} {rows}x{n}");
                    let wv = weight.then_some((&w[..], &l1));
                    let bv = bias.then_some((&b[..], &l1));
                    let (y, st) = norm_forward(kind, &x, &lx, wv, bv, 1e-5);
                    let (yt, stt) = norm_forward(kind, &xt, &lt, wv, bv, 1e-5);
                    assert_eq!(bits(&y), bits(&yt), "{what}: output");
                    assert_eq!(st, stt, "{what}: statistics");
                    for into in [false, true] {
                        let (mut acc, mut acct) = (acc0.clone(), acc0.clone());
                        let (into1, into2) = if into {
                            (Some(&mut acc[..]), Some(&mut acct[..]))
                        } else {
                            (None, None)
                        };
                        let g = norm_backward(kind, &x, &lx, wv, bias, &st, &gy, into1);
                        let gt = norm_backward(kind, &xt, &lt, wv, bias, &st, &gy, into2);
                        assert_eq!(
                            g.x.map(|v| bits(&v)),
                            gt.x.map(|v| bits(&v)),
                            "{what}: input gradient"
                        );
                        assert_eq!(bits(&acc), bits(&acct), "{what}: input gradient added");
                        assert_eq!(
                            g.weight.map(|v| bits(&v)),
                            gt.weight.map(|v| bits(&v)),
                            "{what}: weight"
                        );
                        assert_eq!(
                            g.bias.map(|v| bits(&v)),
                            gt.bias.map(|v| bits(&v)),
                            "{what}: bias"
                        );
                    }
                }
            }
        }
    }
}
