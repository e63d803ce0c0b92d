//! Fused optimizer kernels: each update reads a parameter, its gradient and
//! its state once and writes them back in the same pass, in the compute type
//! `E::Acc`, rounding the parameter once. Work is split into fixed
//! [`CHUNK`]-sized pieces on rayon's pool for large tensors, so results never
//! depend on the thread count; the per-element arithmetic is PyTorch's
//! (`torch.optim.SGD`, `Adam`, `AdamW` with `foreach=False`).

use num_traits::Float;
use rayon::prelude::*;

use super::simd::vectorized;
use super::threads::{map_tasks, run_tasks};
use super::CHUNK;

/// Parameters of at least this many values are updated in parallel chunks.
/// Lower than [`super::PAR_THRESHOLD`]: an update is several streams per element,
/// so even a 128 x 128 weight is worth two threads. The chunking is fixed,
/// so results never depend on it.
const OPT_PAR: usize = 2 * CHUNK;
use crate::dtype::{FloatDtype, Real};

/// Settings of one Adam/AdamW update of one parameter tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate of this parameter (its group's scale applied).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay (decoupled for AdamW, added to the gradient for Adam).
    pub weight_decay: f64,
    /// AdamW's decoupled decay.
    pub decoupled: bool,
    /// This parameter's step number, from 1 (bias correction).
    pub step: u64,
    /// Multiplies the gradient first (rounded to the element type, as
    /// scaling it in place would): clipping by norm passes its coefficient
    /// here instead of a separate pass over every gradient. `1.0`: as is.
    pub grad_scale: f64,
}

/// Matching pieces of a parameter, its gradient and its two moments.
type AdamChunk<'a, E> = (
    ((&'a mut [E], &'a [E]), &'a mut [<E as FloatDtype>::Acc]),
    &'a mut [<E as FloatDtype>::Acc],
);

/// One Adam/AdamW step on `param` with gradient `grad` and moments `m`, `v`
/// (all the same length), in place.
///
/// ```
/// use zerfoo_kernels::cpu::optim::{adam_update, AdamStep};
/// let (mut p, g) = (vec![1.0f32; 3], vec![0.5f32; 3]);
/// let (mut m, mut v) = (vec![0.0f32; 3], vec![0.0f32; 3]);
/// let s = AdamStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: true, step: 1, grad_scale: 1.0 };
/// adam_update(&mut p, &g, &mut m, &mut v, &s);
/// assert!((p[0] - 0.9).abs() < 1e-6); // the first step moves by lr
/// ```
pub fn adam_update<E: FloatDtype>(
    param: &mut [E],
    grad: &[E],
    m: &mut [E::Acc],
    v: &mut [E::Acc],
    s: &AdamStep,
) {
    assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len());
    let a = |x: f64| E::Acc::of_f64(x);
    let one = a(1.0);
    let (b1, b2, eps, lr, wd) = (a(s.beta1), a(s.beta2), a(s.eps), a(s.lr), a(s.weight_decay));
    let gs = a(s.grad_scale);
    let t = s.step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - s.beta1.powi(t);
    let bc2_sqrt = a((1.0 - s.beta2.powi(t)).sqrt());
    let step_size = a(s.lr / bc1);
    let (decoupled, coupled) = (s.decoupled, !s.decoupled && s.weight_decay != 0.0);
    let body = |(((p, g), m), v): AdamChunk<'_, E>| {
        // Local copies: constants read through the closure's references
        // could alias the stores, so the loop would reload them every
        // element and stay scalar (~5 ns per value instead of ~0.5).
        let (one, b1, b2, eps, lr, wd, gs) = (one, b1, b2, eps, lr, wd, gs);
        let (bc2_sqrt, step_size, decoupled, coupled) = (bc2_sqrt, step_size, decoupled, coupled);
        vectorized(
            #[inline(always)]
            move || {
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let mut x = p.to_acc();
                    // (A scale of 1 leaves every value as it is.)
                    let mut gr = E::from_acc(g.to_acc() * gs).to_acc();
                    if decoupled {
                        x *= one - lr * wd;
                    } else if coupled {
                        gr += wd * x;
                    }
                    // PyTorch: exp_avg.lerp_(grad, 1 - beta1)
                    *m = *m + (one - b1) * (gr - *m);
                    *v = *v * b2 + (one - b2) * gr * gr;
                    let denom = Float::sqrt(*v) / bc2_sqrt + eps;
                    *p = E::from_acc(x - step_size * *m / denom);
                }
            },
        )
    };
    if param.len() >= OPT_PAR {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(body);
    } else {
        body((((param, grad), m), v));
    }
}

/// Settings of one SGD update of one parameter tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    /// Learning rate of this parameter.
    pub lr: f64,
    /// Momentum factor (0: no buffer is read or written).
    pub momentum: f64,
    /// Dampening of the momentum update.
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Whether this is the buffer's first step (PyTorch stores the gradient).
    pub first: bool,
    /// Multiplies the gradient first, as [`AdamStep::grad_scale`] does.
    pub grad_scale: f64,
}

/// One SGD step on `param` with gradient `grad` and momentum buffer `buf`
/// (ignored without momentum), in place.
pub fn sgd_update<E: FloatDtype>(param: &mut [E], grad: &[E], buf: &mut [E::Acc], s: &SgdStep) {
    assert!(grad.len() == param.len() && (s.momentum == 0.0 || buf.len() == param.len()));
    let a = |x: f64| E::Acc::of_f64(x);
    let (one, lr, wd, mo, damp, gs) = (
        a(1.0),
        a(s.lr),
        a(s.weight_decay),
        a(s.momentum),
        a(s.dampening),
        a(s.grad_scale),
    );
    let body = |(p, g, buf): (&mut [E], &[E], &mut [E::Acc])| {
        // Local copies, as in `adam_update`: no reloads through references.
        let (one, lr, wd, mo, damp, gs, s) = (one, lr, wd, mo, damp, gs, *s);
        vectorized(
            #[inline(always)]
            move || {
                for (i, (p, g)) in p.iter_mut().zip(g).enumerate() {
                    let x = p.to_acc();
                    let mut d = E::from_acc(g.to_acc() * gs).to_acc();
                    if s.weight_decay != 0.0 {
                        d += wd * x;
                    }
                    if s.momentum != 0.0 {
                        buf[i] = if s.first {
                            d
                        } else {
                            mo * buf[i] + (one - damp) * d
                        };
                        d = if s.nesterov { d + mo * buf[i] } else { buf[i] };
                    }
                    *p = E::from_acc(x - lr * d);
                }
            },
        )
    };
    let empty: &mut [E::Acc] = &mut [];
    let buf = if s.momentum != 0.0 { buf } else { empty };
    if param.len() >= OPT_PAR && s.momentum != 0.0 {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|((p, g), b)| body((p, g, b)));
    } else if param.len() >= OPT_PAR {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(p, g)| body((p, g, &mut [])));
    } else {
        body((param, grad, buf));
    }
}

/// One chunk of a parameter, its gradient and its two state buffers.
type ChunkSlices<'a, E> = (
    &'a mut [E],
    &'a [E],
    &'a mut [<E as FloatDtype>::Acc],
    &'a mut [<E as FloatDtype>::Acc],
);

/// Raw parts of one parameter update, for [`QueuedUpdate`].
struct Parts<E: FloatDtype> {
    param: *mut E,
    grad: *const E,
    /// Adam's first moment or SGD's momentum buffer (null: none).
    m: *mut E::Acc,
    /// Adam's second moment (null for SGD).
    v: *mut E::Acc,
    len: usize,
}

// SAFETY: `QueuedUpdate`'s constructors require the buffers to be the
// update's alone until it has run; each chunk touches only its own range.
unsafe impl<E: FloatDtype> Send for Parts<E> {}
// SAFETY: as above.
unsafe impl<E: FloatDtype> Sync for Parts<E> {}

impl<E: FloatDtype> Parts<E> {
    /// The elements of chunk `c` (of [`CHUNK`] values) of the buffers; a
    /// null state buffer gives an empty slice.
    ///
    /// # Safety
    /// The buffers must be valid for `len` values, and no other thread may
    /// use chunk `c` at the same time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn chunk(&self, c: usize) -> ChunkSlices<'_, E> {
        let (at, n) = (c * CHUNK, CHUNK.min(self.len - c * CHUNK));
        let state = |p: *mut E::Acc| -> &mut [E::Acc] {
            if p.is_null() {
                &mut []
            } else {
                // SAFETY: the caller's guarantee.
                unsafe { core::slice::from_raw_parts_mut(p.add(at), n) }
            }
        };
        // SAFETY: the caller's guarantee.
        unsafe {
            (
                core::slice::from_raw_parts_mut(self.param.add(at), n),
                core::slice::from_raw_parts(self.grad.add(at), n),
                state(self.m),
                state(self.v),
            )
        }
    }
}

/// One parameter's optimizer update, queued so that [`run_updates`] can
/// apply all of a model's as one parallel pass: every parameter's fixed
/// [`CHUNK`]-sized pieces are shared out together, instead of one parallel
/// loop (and one wake-up of the pool) per parameter, most of them too small
/// to split at all.
pub struct QueuedUpdate {
    chunks: usize,
    run: Box<dyn Fn(usize) + Send + Sync>,
}

impl QueuedUpdate {
    /// Queues [`adam_update`] of `param` (gradient `grad`, moments `m`, `v`).
    ///
    /// # Safety
    /// The four buffers must stay valid, and be neither read nor written by
    /// anything else, until the update has run in [`run_updates`]; no other
    /// queued update may share any of `param`, `m` or `v`.
    pub unsafe fn adam<E: FloatDtype>(
        param: &mut [E],
        grad: &[E],
        m: &mut [E::Acc],
        v: &mut [E::Acc],
        s: AdamStep,
    ) -> Self {
        assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len());
        let parts = Parts {
            param: param.as_mut_ptr(),
            grad: grad.as_ptr(),
            m: m.as_mut_ptr(),
            v: v.as_mut_ptr(),
            len: param.len(),
        };
        QueuedUpdate {
            chunks: parts.len.div_ceil(CHUNK),
            run: Box::new(move |c| {
                // SAFETY: the constructor's guarantee; `run_updates` runs each chunk once.
                let (p, g, m, v) = unsafe { parts.chunk(c) };
                adam_update(p, g, m, v, &s)
            }),
        }
    }

    /// Queues [`sgd_update`] of `param` (gradient `grad`, momentum buffer
    /// `buf`, unused without momentum).
    ///
    /// # Safety
    /// As for [`QueuedUpdate::adam`], with `buf` for the moments.
    pub unsafe fn sgd<E: FloatDtype>(
        param: &mut [E],
        grad: &[E],
        buf: &mut [E::Acc],
        s: SgdStep,
    ) -> Self {
        let momentum = s.momentum != 0.0;
        assert!(grad.len() == param.len() && (!momentum || buf.len() == param.len()));
        let parts = Parts {
            param: param.as_mut_ptr(),
            grad: grad.as_ptr(),
            m: if momentum {
                buf.as_mut_ptr()
            } else {
                core::ptr::null_mut()
            },
            v: core::ptr::null_mut(),
            len: param.len(),
        };
        QueuedUpdate {
            chunks: parts.len.div_ceil(CHUNK),
            run: Box::new(move |c| {
                // SAFETY: the constructor's guarantee; `run_updates` runs each chunk once.
                let (p, g, buf, _) = unsafe { parts.chunk(c) };
                sgd_update(p, g, buf, &s)
            }),
        }
    }
}

/// Applies queued updates, all of their chunks as one parallel loop. The
/// updates are elementwise, so the results are exactly those of running
/// them one by one (on any number of threads).
///
/// ```
/// use zerfoo_kernels::cpu::optim::{run_updates, AdamStep, QueuedUpdate};
/// let (mut p, g) = (vec![1.0f32; 20_000], vec![0.5f32; 20_000]);
/// let (mut m, mut v) = (vec![0.0f32; 20_000], vec![0.0f32; 20_000]);
/// let s = AdamStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: true, step: 1, grad_scale: 1.0 };
/// // SAFETY: nothing else touches the buffers until `run_updates` returns.
/// let queued = [unsafe { QueuedUpdate::adam(&mut p, &g, &mut m, &mut v, s) }];
/// run_updates(&queued);
/// assert!(p.iter().all(|&x| (x - 0.9).abs() < 1e-6));
/// ```
pub fn run_updates(updates: &[QueuedUpdate]) {
    super::profile::time(
        || "optim/update (queued parameters, one pass)".into(),
        || run_updates_untimed(updates),
    )
}

/// [`run_updates`] without the profile's timing.
fn run_updates_untimed(updates: &[QueuedUpdate]) {
    let pieces: Vec<(usize, usize)> = updates
        .iter()
        .enumerate()
        .flat_map(|(u, q)| (0..q.chunks).map(move |c| (u, c)))
        .collect();
    if pieces.len() > 1 {
        run_tasks(pieces.len(), |i| {
            let (u, c) = pieces[i];
            (updates[u].run)(c)
        });
    } else {
        pieces.iter().for_each(|&(u, c)| (updates[u].run)(c));
    }
}

/// `Σ x²` in f64, summed in fixed [`CHUNK`]-sized pieces (each with 32
/// running sums) and then in order, so the result never depends on the
/// thread count.
pub fn sum_squares<E: FloatDtype>(x: &[E]) -> f64 {
    let partial: Vec<f64> = if x.len() >= OPT_PAR {
        map_tasks(x.len().div_ceil(CHUNK), |i| sum_squares_chunk(x, i))
    } else {
        (0..x.len().div_ceil(CHUNK))
            .map(|i| sum_squares_chunk(x, i))
            .collect()
    };
    partial.iter().sum()
}

/// `Σ x²` over piece `i` (of [`CHUNK`] values) of `x`.
fn sum_squares_chunk<E: FloatDtype>(x: &[E], i: usize) -> f64 {
    #[inline(always)]
    fn chunk_sum<E: FloatDtype>(c: &[E]) -> f64 {
        // Four vectors of running sums: enough independent additions to
        // hide the latency of each.
        let mut acc = [0f64; 32];
        let mut it = c.chunks_exact(32);
        for w in &mut it {
            for (a, x) in acc.iter_mut().zip(w) {
                let x = x.to_f64();
                *a += x * x;
            }
        }
        let tail: f64 = it.remainder().iter().map(|x| x.to_f64() * x.to_f64()).sum();
        acc.iter().sum::<f64>() + tail
    }
    let c = &x[i * CHUNK..x.len().min((i + 1) * CHUNK)];
    vectorized(
        #[inline(always)]
        || chunk_sum(c),
    )
}

/// One tensor's [`sum_squares`], queued so that [`run_sum_squares`] can
/// take a whole model's gradients as one parallel pass (one wake-up of
/// the pool, not one per tensor).
pub struct QueuedSumSquares<'a> {
    chunks: usize,
    run: Box<dyn Fn(usize) -> f64 + Send + Sync + 'a>,
}

impl<'a> QueuedSumSquares<'a> {
    /// Queues `Σ x²`.
    pub fn new<E: FloatDtype>(x: &'a [E]) -> Self {
        QueuedSumSquares {
            chunks: x.len().div_ceil(CHUNK),
            run: Box::new(move |i| sum_squares_chunk(x, i)),
        }
    }
}

/// The sum of the queued tensors' [`sum_squares`], every piece of every
/// tensor as one parallel loop: the same bits as adding `sum_squares(x)`
/// tensor by tensor in queue order, on any number of threads.
///
/// ```
/// use zerfoo_kernels::cpu::optim::{run_sum_squares, sum_squares, QueuedSumSquares};
/// let (a, b) = (vec![1.0f32; 20_000], vec![2.0f32; 3]);
/// let total = run_sum_squares(&[QueuedSumSquares::new(&a), QueuedSumSquares::new(&b)]);
/// assert_eq!(total, 0.0 + sum_squares(&a) + sum_squares(&b));
/// ```
pub fn run_sum_squares(queued: &[QueuedSumSquares<'_>]) -> f64 {
    super::profile::time(
        || "optim/sum_squares (queued gradients, one pass)".into(),
        || run_sum_squares_untimed(queued),
    )
}

/// [`run_sum_squares`] without the profile's timing.
fn run_sum_squares_untimed(queued: &[QueuedSumSquares<'_>]) -> f64 {
    let pieces: Vec<(usize, usize)> = queued
        .iter()
        .enumerate()
        .flat_map(|(q, s)| (0..s.chunks).map(move |c| (q, c)))
        .collect();
    let partial: Vec<f64> = if pieces.len() > 1 {
        map_tasks(pieces.len(), |i| (queued[pieces[i].0].run)(pieces[i].1))
    } else {
        pieces.iter().map(|&(q, c)| (queued[q].run)(c)).collect()
    };
    let mut total = 0.0;
    let mut at = 0;
    for s in queued {
        total += partial[at..at + s.chunks].iter().sum::<f64>();
        at += s.chunks;
    }
    total
}

/// Multiplies `x` by `factor` in place (computed in `E::Acc`, rounded once).
pub fn scale_in_place<E: FloatDtype>(x: &mut [E], factor: f64) {
    let f = E::Acc::of_f64(factor);
    super::for_each_chunk(x, |(_, c)| {
        for v in c {
            *v = E::from_acc(v.to_acc() * f);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::PAR_THRESHOLD;

    /// The tests' Adam (`decoupled = false`) or AdamW step: step 3, weight decay 0.1.
    fn adam_settings(decoupled: bool) -> AdamStep {
        AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled,
            step: 3,
            grad_scale: 1.0,
        }
    }

    /// Queued updates of several parameters (1 value, a chunk and a bit,
    /// three chunks; Adam, AdamW, SGD with and without momentum) run as one
    /// pass give exactly the values of the updates run one by one, on 1 and
    /// 3 threads.
    #[test]
    fn queued_updates_match_one_by_one() {
        let sizes = [1, CHUNK + 7, 3 * CHUNK];
        let adam = adam_settings;
        let sgd = |momentum| SgdStep {
            lr: 0.1,
            momentum,
            dampening: 0.1,
            nesterov: momentum != 0.0,
            weight_decay: 0.01,
            first: false,
            grad_scale: 1.0,
        };
        let f = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
        // (param, grad, m, v) per parameter, per rule.
        let fresh = |seed: u64| -> Vec<[Vec<f32>; 4]> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let s = seed + 10 * i as u64;
                    let v2: Vec<f32> = f(vals(n, s + 3)).iter().map(|x| x.abs()).collect();
                    [f(vals(n, s)), f(vals(n, s + 1)), f(vals(n, s + 2)), v2]
                })
                .collect()
        };
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for rule in 0..4 {
                let (mut want, mut got) = (fresh(7), fresh(7));
                for [p, g, m, v] in want.iter_mut() {
                    match rule {
                        0 | 1 => adam_update(p, g, m, v, &adam(rule == 1)),
                        _ => sgd_update(p, g, m, &sgd(if rule == 2 { 0.9 } else { 0.0 })),
                    }
                }
                let queued: Vec<QueuedUpdate> = got
                    .iter_mut()
                    .map(|[p, g, m, v]| match rule {
                        // SAFETY: the buffers live, untouched, until `run_updates` returns.
                        0 | 1 => unsafe { QueuedUpdate::adam(p, g, m, v, adam(rule == 1)) },
                        _ => unsafe {
                            QueuedUpdate::sgd(p, g, m, sgd(if rule == 2 { 0.9 } else { 0.0 }))
                        },
                    })
                    .collect();
                pool.install(|| run_updates(&queued));
                drop(queued);
                assert!(want == got, "rule {rule}, {threads} threads");
            }
        }
    }

    fn vals(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64)
            .map(|i| {
                let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5);
                ((h >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// PyTorch's `_single_tensor_adam`, written out in f64.
    fn adam_ref(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], s: &AdamStep) {
        for i in 0..p.len() {
            let mut gr = g[i];
            if s.decoupled {
                p[i] *= 1.0 - s.lr * s.weight_decay;
            } else {
                gr += s.weight_decay * p[i];
            }
            m[i] += (1.0 - s.beta1) * (gr - m[i]);
            v[i] = v[i] * s.beta2 + (1.0 - s.beta2) * gr * gr;
            let bc1 = 1.0 - s.beta1.powi(s.step as i32);
            let bc2 = 1.0 - s.beta2.powi(s.step as i32);
            let denom = v[i].sqrt() / bc2.sqrt() + s.eps;
            p[i] -= s.lr / bc1 * m[i] / denom;
        }
    }

    #[test]
    fn adam_matches_reference_across_sizes_and_threads() {
        for n in [1, 7, CHUNK + 3, PAR_THRESHOLD + 129] {
            for decoupled in [true, false] {
                let (mut p, g) = (vals(n, 1), vals(n, 2));
                let (mut m, mut v) = (
                    vals(n, 3),
                    vals(n, 4).iter().map(|x| x * x).collect::<Vec<f64>>(),
                );
                let (mut p2, mut m2, mut v2): (Vec<f64>, Vec<f64>, Vec<f64>) =
                    (p.clone(), m.clone(), v.clone());
                let s = adam_settings(decoupled);
                adam_update(&mut p, &g, &mut m, &mut v, &s);
                adam_ref(&mut p2, &g, &mut m2, &mut v2, &s);
                // `powi` in the bias corrections may round differently
                // where it is constant-folded: a few ulps (the values are O(1)).
                let close =
                    |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-15);
                let worst = p
                    .iter()
                    .zip(&p2)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                assert!(close(&p, &p2), "n {n}: worst {worst:e}");
                assert_eq!(m, m2);
                assert_eq!(v, v2);
            }
        }
    }

    /// Queued sums of squares give the bits of adding each tensor's
    /// `sum_squares` in order, on 1 and 3 threads (empty, one value, a
    /// chunk and a bit, several chunks).
    #[test]
    fn queued_sum_squares_match_one_by_one() {
        let parts: Vec<Vec<f32>> = [0, 1, CHUNK + 7, 3 * CHUNK, 5]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                vals(n, 40 + i as u64)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect()
            })
            .collect();
        let want = parts.iter().fold(0.0, |t, p| t + sum_squares(p));
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let queued: Vec<QueuedSumSquares<'_>> =
                parts.iter().map(|p| QueuedSumSquares::new(p)).collect();
            let got = pool.install(|| run_sum_squares(&queued));
            assert_eq!(got.to_bits(), want.to_bits(), "{threads} threads");
        }
    }

    /// A gradient scale is the same update as scaling the gradient in place
    /// first (rounded to the element type) and then stepping with scale 1,
    /// bit for bit, for Adam, AdamW and SGD, in f32 and bf16.
    #[test]
    fn grad_scale_is_scaling_the_gradient_first() {
        fn case<E: FloatDtype>() {
            let n = OPT_PAR + 9;
            let conv = |v: Vec<f64>| -> Vec<E> { v.into_iter().map(E::from_f64).collect() };
            let (p0, g) = (conv(vals(n, 11)), conv(vals(n, 12)));
            let m0: Vec<E::Acc> = vals(n, 13).into_iter().map(E::Acc::of_f64).collect();
            let v0: Vec<E::Acc> = vals(n, 14)
                .into_iter()
                .map(|x| E::Acc::of_f64(x * x))
                .collect();
            let scale = 0.3;
            let mut scaled = g.clone();
            scale_in_place(&mut scaled, scale);
            for rule in 0..3 {
                let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
                let (mut p2, mut m2, mut v2) = (p0.clone(), m0.clone(), v0.clone());
                let adam = |gs| AdamStep {
                    grad_scale: gs,
                    ..adam_settings(rule == 1)
                };
                let sgd = |gs| SgdStep {
                    lr: 0.1,
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                    weight_decay: 0.01,
                    first: false,
                    grad_scale: gs,
                };
                if rule < 2 {
                    adam_update(&mut p1, &g, &mut m1, &mut v1, &adam(scale));
                    adam_update(&mut p2, &scaled, &mut m2, &mut v2, &adam(1.0));
                } else {
                    sgd_update(&mut p1, &g, &mut m1, &sgd(scale));
                    sgd_update(&mut p2, &scaled, &mut m2, &sgd(1.0));
                }
                let bits = |p: &[E]| p.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&p1), bits(&p2), "{:?} rule {rule}", E::DTYPE);
                assert!(m1 == m2 && v1 == v2, "{:?} rule {rule}", E::DTYPE);
                // The scale did something: the unscaled step differs.
                let mut p3 = p0.clone();
                if rule < 2 {
                    let (mut m3, mut v3) = (m0.clone(), v0.clone());
                    adam_update(&mut p3, &g, &mut m3, &mut v3, &adam(1.0));
                } else {
                    let mut m3 = m0.clone();
                    sgd_update(&mut p3, &g, &mut m3, &sgd(1.0));
                }
                assert_ne!(bits(&p1), bits(&p3));
            }
        }
        case::<f32>();
        case::<half::bf16>();
    }

    #[test]
    fn sgd_momentum_and_nesterov() {
        let n = PAR_THRESHOLD + 5;
        let (p0, g) = (vals(n, 5), vals(n, 6));
        for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
            let mut p = p0.clone();
            let mut buf = vec![0.0; n];
            for first in [true, false] {
                let s = SgdStep {
                    lr: 0.1,
                    momentum,
                    dampening: 0.0,
                    nesterov,
                    weight_decay: 0.01,
                    first,
                    grad_scale: 1.0,
                };
                sgd_update(&mut p, &g, &mut buf, &s);
            }
            // two steps by hand on element 17
            let (x0, gi) = (p0[17], g[17]);
            let d1 = gi + 0.01 * x0;
            let step1 = if nesterov { d1 + 0.9 * d1 } else { d1 };
            let x1 = x0 - 0.1 * if momentum == 0.0 { d1 } else { step1 };
            let d2 = gi + 0.01 * x1;
            let b2 = 0.9 * d1 + d2;
            let step2 = match (momentum == 0.0, nesterov) {
                (true, _) => d2,
                (false, false) => b2,
                (false, true) => d2 + 0.9 * b2,
            };
            let x2 = x1 - 0.1 * step2;
            assert!((p[17] - x2).abs() < 1e-15, "{momentum} {nesterov}");
        }
    }

    #[test]
    fn sum_squares_and_scale() {
        let x = vals(PAR_THRESHOLD + 77, 9);
        let want: f64 = x.iter().map(|v| v * v).sum();
        assert!((sum_squares(&x) - want).abs() <= 1e-12 * want);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let want32: f64 = x32.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((sum_squares(&x32) - want32).abs() <= 1e-12 * want32);
        let mut y = x32.clone();
        scale_in_place(&mut y, 0.5);
        assert!(y.iter().zip(&x32).all(|(a, b)| *a == b * 0.5));
        assert_eq!(sum_squares::<f32>(&[]), 0.0);
    }
}
