//! A product fused with an elementwise activation, forward and backward: a
//! linear layer followed by GELU (or any [`UnaryOp`]) as one pass over the
//! result instead of two.
//!
//! Forward, `h = A · B + bias` and `y = f(h)`: each task of the product
//! applies `f` to its part of `h` as soon as that part is final, while it is
//! still in cache. Backward, `gx = (gY · B) ⊙ f'(x)` (the gradient reaching
//! an activation through the next layer's product): the product's own
//! result is multiplied in place, part by part, so it is never written out
//! and read back (for results up to a few MiB; larger ones stream `x` and
//! `y` faster in a pass of their own). The values are those of the two steps run one after the
//! other ([`gemm_batched_bias`] then [`unary_forward`], [`gemm_batched`]
//! then [`unary_backward`](crate::cpu::unary::unary_backward)), bit for bit.
//!
//! A residual connection is the same kind of epilogue:
//! [`gemm_batched_bias_residual`] adds the residual stream to each part of
//! `A · B + bias` as it is finished, instead of an addition's own pass.
//!
//! The fused path covers `f32` and `f64` with a `B` shared by the batch (a
//! layer's weight); other operands run the two steps one after the other.

use core::mem::MaybeUninit;

use super::{gemm_batched, gemm_batched_bias, gemm_shared_finished, product_columns, result_shape};
use crate::cpu::binary::{binary_forward, AddOp};
use crate::cpu::simd::vectorized;
use crate::cpu::threads::SyncPtr;
use crate::cpu::unary::{derivative, unary_backward_in_place, unary_forward, UnaryOp};
use crate::{FloatDtype, Layout};

/// `h = A · B + bias` and `y = act(h)` (shapes as [`gemm_batched_bias`]),
/// both contiguous `[..batch, M, N]`: a linear layer and its activation,
/// with the activation applied by the product's tasks to their freshly
/// computed parts.
///
/// ```
/// use zerfoo_kernels::cpu::{matmul::gemm_batched_bias_act, unary::Relu};
/// use zerfoo_kernels::Layout;
/// let a = [1.0f32, -2.0]; // one row
/// let b = [1.0f32, -1.0, 1.0, 1.0]; // [[1, -1], [1, 1]]
/// let (la, lb) = (Layout::contiguous(&[1, 2]), Layout::contiguous(&[2, 2]));
/// let (h, y) = gemm_batched_bias_act(&a, &la, &b, &lb, Some(&[0.5, 0.0]), Relu);
/// assert_eq!(h, [-0.5, -3.0]);
/// assert_eq!(y, [0.0, 0.0]);
/// ```
///
/// # Panics
/// As [`gemm_batched_bias`] does.
pub fn gemm_batched_bias_act<E: FloatDtype, O: UnaryOp>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    bias: Option<&[E]>,
    act: O,
) -> (Vec<E>, Vec<E>) {
    let len = result_len(la, lb);
    let mut y: Vec<E> = Vec::with_capacity(len);
    let n = product_columns(lb);
    let yp = SyncPtr(y.as_mut_ptr());
    let finish = move |c: *mut E::Acc, (r0, rows): (usize, usize), (c0, cols): (usize, usize)| {
        vectorized(
            #[inline(always)]
            || {
                for i in r0..r0 + rows {
                    // SAFETY: the region is inside the `[M, N]` result, final in `c`
                    // (the `Finish` contract), and this task's alone in `y`
                    // (`len` values, the result's size).
                    let (h, y) = unsafe {
                        (
                            core::slice::from_raw_parts(c.add(i * n + c0), cols),
                            core::slice::from_raw_parts_mut(
                                yp.get().add(i * n + c0).cast::<MaybeUninit<E>>(),
                                cols,
                            ),
                        )
                    };
                    for (y, &h) in y.iter_mut().zip(h) {
                        *y = MaybeUninit::new(E::from_acc(act.f(h)));
                    }
                }
            },
        )
    };
    match gemm_shared_finished(a, la, b, lb, bias, &finish) {
        Some(h) => {
            debug_assert_eq!(h.len(), len);
            // SAFETY: every task applied `act` to its whole part: all `len` values.
            unsafe { y.set_len(len) };
            (h, y)
        }
        None => {
            let h = gemm_batched_bias(a, la, b, lb, bias);
            let y = unary_forward(act, &h, &Layout::contiguous(&result_shape(la, lb)));
            (h, y)
        }
    }
}

/// `residual + (A · B + bias)` (shapes as [`gemm_batched_bias`], `residual`
/// any layout of the result's shape), contiguous `[..batch, M, N]`: a
/// layer's output projection and the residual connection around it. The
/// product's tasks add a contiguous residual to each part they finish,
/// while it is in cache; the values are those of [`gemm_batched_bias`]
/// then [`binary_forward`] with [`AddOp`], bit for bit.
///
/// ```
/// use zerfoo_kernels::cpu::matmul::gemm_batched_bias_residual;
/// use zerfoo_kernels::Layout;
/// let a = [1.0f32, 2.0]; // one row
/// let b = [1.0f32, 0.0, 0.0, 1.0]; // identity
/// let (la, lb) = (Layout::contiguous(&[1, 2]), Layout::contiguous(&[2, 2]));
/// let r = [10.0f32, 20.0];
/// let y = gemm_batched_bias_residual(&a, &la, &b, &lb, Some(&[0.5, 0.5]), &r, &la);
/// assert_eq!(y, [11.5, 22.5]);
/// ```
///
/// # Panics
/// If the residual's shape is not the result's, or as [`gemm_batched_bias`]
/// does.
pub fn gemm_batched_bias_residual<E: FloatDtype>(
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    bias: Option<&[E]>,
    residual: &[E],
    lr: &Layout,
) -> Vec<E> {
    let shape = result_shape(la, lb);
    assert_eq!(
        lr.shape(),
        &shape[..],
        "gemm_batched_bias_residual: residual shape"
    );
    let n = product_columns(lb);
    if lr.is_contiguous() {
        let r = &residual[lr.offset..lr.offset + lr.numel()];
        let finish = move |c: *mut E::Acc,
                           (r0, rows): (usize, usize),
                           (c0, cols): (usize, usize)| {
            vectorized(
                #[inline(always)]
                || {
                    for i in r0..r0 + rows {
                        // SAFETY: the region is inside the `[M, N]` result,
                        // final in `c` and this task's alone (the `Finish`
                        // contract).
                        let c = unsafe { core::slice::from_raw_parts_mut(c.add(i * n + c0), cols) };
                        for (c, &r) in c.iter_mut().zip(&r[i * n + c0..][..cols]) {
                            *c += r.to_acc();
                        }
                    }
                },
            )
        };
        if let Some(y) = gemm_shared_finished(a, la, b, lb, bias, &finish) {
            return y;
        }
    }
    let h = gemm_batched_bias(a, la, b, lb, bias);
    binary_forward(AddOp, residual, lr, &h, &Layout::contiguous(&shape))
}

/// The largest result (bytes) whose backward multiplies by the derivative
/// inside the product. The multiply reads `x` and `y` from memory a row
/// panel at a time, between the panels' products; past a few MiB that is
/// slower than one streaming pass afterwards (criterion `linear_gelu_f32`,
/// 2 threads: 768x128x512 fused 504 µs against 518 in two steps,
/// 2048x384x1536 9.55 ms against 9.33).
const FUSED_GRAD_MAX_BYTES: usize = 4 << 20;

/// `(gY · B) ⊙ act'(x)`, contiguous `[..batch, M, N]`: the gradient of an
/// activation's input `x` (contiguous, with its output `y = act(x)`, both
/// `[..batch, M, N]`) from the gradient `gY` of the layer after it, whose
/// weight (transposed) is `B`. The product's tasks multiply their parts by
/// `act'` in place (up to a few MiB of result, else it runs the two steps);
/// `act'` is [`UnaryOp::df`] as [`unary_backward`](crate::cpu::unary::unary_backward) takes it.
///
/// ```
/// use zerfoo_kernels::cpu::{matmul::gemm_batched_act_grad, unary::Relu};
/// use zerfoo_kernels::Layout;
/// let g = [1.0f32]; // one row, one column
/// let w = [2.0f32, 3.0]; // [1, 2]
/// let (lg, lw) = (Layout::contiguous(&[1, 1]), Layout::contiguous(&[1, 2]));
/// // x = (-1, 4): ReLU passes the second column only
/// let gx = gemm_batched_act_grad(&g, &lg, &w, &lw, Relu, &[-1.0, 4.0], &[0.0, 4.0]);
/// assert_eq!(gx, [0.0, 3.0]);
/// ```
///
/// # Panics
/// If `x` or `y` does not have the result's length, or as [`gemm_batched`]
/// does.
pub fn gemm_batched_act_grad<E: FloatDtype, O: UnaryOp>(
    g: &[E],
    lg: &Layout,
    b: &[E],
    lb: &Layout,
    act: O,
    x: &[E],
    y: &[E],
) -> Vec<E> {
    let len = result_len(lg, lb);
    assert!(
        x.len() == len && y.len() == len,
        "gemm_batched_act_grad: the activation's input and output need {len} values, got {} and {}",
        x.len(),
        y.len()
    );
    let n = product_columns(lb);
    let finish = move |c: *mut E::Acc, (r0, rows): (usize, usize), (c0, cols): (usize, usize)| {
        vectorized(
            #[inline(always)]
            || {
                for i in r0..r0 + rows {
                    let at = i * n + c0;
                    // SAFETY: the region is inside the `[M, N]` result, final in `c`
                    // and this task's alone (the `Finish` contract).
                    let gx = unsafe { core::slice::from_raw_parts_mut(c.add(at), cols) };
                    let (x, y) = (&x[at..at + cols], &y[at..at + cols]);
                    for ((g, &x), &y) in gx.iter_mut().zip(x).zip(y) {
                        // (`E` is its own compute type here: no rounding.)
                        *g *= derivative(act, x, y);
                    }
                }
            },
        )
    };
    let fused = if len * core::mem::size_of::<E>() <= FUSED_GRAD_MAX_BYTES {
        gemm_shared_finished(g, lg, b, lb, None, &finish)
    } else {
        None
    };
    match fused {
        Some(gx) => gx,
        None => {
            // The product, then one pass multiplying it in place by
            // `act'` (no fresh output to write: gpt6's 2048 x 1536
            // gradient, 2 threads, 2.15 -> 1.95 ms for the pass).
            let mut ga = gemm_batched(g, lg, b, lb);
            unary_backward_in_place(act, x, y, &mut ga);
            ga
        }
    }
}

/// The number of values in [`result_shape`].
fn result_len(la: &Layout, lb: &Layout) -> usize {
    result_shape(la, lb).iter().product()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{on_threads, vals};
    use super::*;
    use crate::cpu::unary::{unary_backward, GeluErf, GeluTanh, Relu, Silu};

    fn of<E: FloatDtype>(v: Vec<f64>) -> Vec<E> {
        v.into_iter().map(E::from_f64).collect()
    }

    fn bits<E: FloatDtype>(v: &[E]) -> Vec<u64> {
        v.iter().map(|x| x.to_f64().to_bits()).collect()
    }

    /// The fused forward and backward equal the two steps run one after the
    /// other, bit for bit: `f32` and `f64` (fused) and `bf16` (composed), a
    /// shared weight (row-major and transposed, as a linear layer's) and a
    /// per-item one, with and without bias, sizes from one element to
    /// several threads' worth and past the depth block, on 1 and 2 threads.
    #[test]
    fn fused_activation_matches_the_two_steps_bitwise() {
        fn case<E: FloatDtype, O: UnaryOp>(act: O, (batch, m, n, k): (usize, usize, usize, usize)) {
            let a: Vec<E> = of(vals(batch * m * k, 1));
            let w: Vec<E> = of(vals(n * k, 2));
            let bias: Vec<E> = of(vals(n, 3));
            let la = Layout::contiguous(&[batch, m, k]);
            // The weight stored `[N, K]`, seen transposed and shared by the batch.
            let lw = Layout::new(&[batch, k, n], &[0, 1, k], 0);
            for bias in [None, Some(&bias[..])] {
                let (h, y) = gemm_batched_bias_act(&a, &la, &w, &lw, bias, act);
                let h2 = gemm_batched_bias(&a, &la, &w, &lw, bias);
                let y2 = unary_forward(act, &h2, &Layout::contiguous(&[batch, m, n]));
                let what = format!("{:?} {} {batch}x{m}x{n}x{k}", E::DTYPE, O::NAME);
                assert_eq!(bits(&h), bits(&h2), "h: {what}");
                assert_eq!(bits(&y), bits(&y2), "y: {what}");
                // Backward: gY `[batch, m, k]` times the weight `[k, n]` (the
                // next layer's, row-major), then act' at `h`.
                let g: Vec<E> = of(vals(batch * m * k, 4));
                let lb = Layout::new(&[batch, k, n], &[0, n, 1], 0);
                let gx = gemm_batched_act_grad(&g, &la, &w, &lb, act, &h, &y);
                let ga = gemm_batched(&g, &la, &w, &lb);
                let gx2 = unary_backward(act, &h, &Layout::contiguous(&[batch, m, n]), &y, &ga);
                assert_eq!(bits(&gx), bits(&gx2), "gx: {what}");
            }
            // A weight per batch item (not shared): the composed path.
            if batch > 1 {
                let wb: Vec<E> = of(vals(batch * k * n, 5));
                let lb = Layout::contiguous(&[batch, k, n]);
                let (h, y) = gemm_batched_bias_act(&a, &la, &wb, &lb, None, act);
                let h2 = gemm_batched(&a, &la, &wb, &lb);
                assert_eq!(bits(&h), bits(&h2));
                assert_eq!(
                    bits(&y),
                    bits(&unary_forward(
                        act,
                        &h2,
                        &Layout::contiguous(&[batch, m, n])
                    ))
                );
            }
        }
        // The last one is past `FUSED_GRAD_MAX_BYTES` (the backward's two steps).
        let shapes = [
            (1, 1, 1, 1),
            (2, 7, 33, 5),
            (1, 129, 65, 17),
            (12, 64, 512, 128),
            (3, 100, 40, 600),
            (1, 1100, 1024, 8),
        ];
        for threads in [1, 2] {
            on_threads(threads, || {
                for &s in &shapes {
                    case::<f32, _>(GeluErf, s);
                    case::<f64, _>(GeluErf, s);
                    case::<f32, _>(Relu, s);
                    case::<f32, _>(GeluTanh, s);
                    case::<f32, _>(Silu, s);
                }
                case::<half::bf16, _>(GeluErf, (2, 7, 33, 5));
            });
        }
    }

    /// The residual epilogue equals the product then the addition, bit for
    /// bit: `f32` and `f64` (fused) and `bf16` (composed), contiguous and
    /// strided residuals, with and without bias, on 1 and 2 threads; and it
    /// does add the residual (against a product without one).
    #[test]
    fn residual_epilogue_matches_the_two_steps_bitwise() {
        fn case<E: FloatDtype>((batch, m, n, k): (usize, usize, usize, usize)) {
            let a: Vec<E> = of(vals(batch * m * k, 1));
            let w: Vec<E> = of(vals(n * k, 2));
            let bias: Vec<E> = of(vals(n, 3));
            let r: Vec<E> = of(vals(batch * m * n, 4));
            let la = Layout::contiguous(&[batch, m, k]);
            let lw = Layout::new(&[batch, k, n], &[0, 1, k], 0);
            let out = Layout::contiguous(&[batch, m, n]);
            // The same values stored column-major per item: a strided view.
            let rt: Vec<E> = (0..batch * m * n)
                .map(|i| {
                    let (b, j, c) = (i / (m * n), (i / m) % n, i % m);
                    r[b * m * n + c * n + j]
                })
                .collect();
            let lrt = Layout::new(&[batch, m, n], &[m * n, 1, m], 0);
            for bias in [None, Some(&bias[..])] {
                let h = gemm_batched_bias(&a, &la, &w, &lw, bias);
                let want = binary_forward(AddOp, &r, &out, &h, &out);
                let what = format!("{:?} {batch}x{m}x{n}x{k}", E::DTYPE);
                let y = gemm_batched_bias_residual(&a, &la, &w, &lw, bias, &r, &out);
                assert_eq!(bits(&y), bits(&want), "contiguous: {what}");
                let y = gemm_batched_bias_residual(&a, &la, &w, &lw, bias, &rt, &lrt);
                assert_eq!(bits(&y), bits(&want), "strided: {what}");
                let moved = y.iter().zip(&h).filter(|(y, h)| y.to_f64() != h.to_f64());
                assert!(
                    moved.count() > y.len() / 2,
                    "the residual was added: {what}"
                );
            }
        }
        let shapes = [
            (1, 1, 1, 1),
            (2, 7, 33, 5),
            (1, 129, 65, 17),
            (12, 64, 128, 512),
        ];
        for threads in [1, 2] {
            on_threads(threads, || {
                for &s in &shapes {
                    case::<f32>(s);
                    case::<f64>(s);
                }
                case::<half::bf16>((2, 7, 33, 5));
            });
        }
    }

    /// The backward product really is scaled by the derivative (not just
    /// equal to a composed path that could share a mistake): ReLU's
    /// gradient is the product where `x > 0` and 0 elsewhere.
    #[test]
    fn relu_grad_keeps_the_product_where_x_is_positive() {
        let (m, n, k) = (40, 50, 30);
        let g = vals(m * k, 6);
        let w = vals(k * n, 7);
        let x = vals(m * n, 8);
        let y: Vec<f64> = x.iter().map(|&v| v.max(0.0)).collect();
        let (lg, lw) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        let gx = gemm_batched_act_grad(&g, &lg, &w, &lw, Relu, &x, &y);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| g[i * k + p] * w[p * n + j]).sum();
                let want = if x[i * n + j] > 0.0 { dot } else { 0.0 };
                assert!((gx[i * n + j] - want).abs() < 1e-12, "({i}, {j})");
            }
        }
    }

    #[test]
    #[should_panic(expected = "the activation's input and output need 6 values")]
    fn grad_with_a_short_activation_input_panics_clearly() {
        let l = Layout::contiguous(&[2, 3]);
        let w = Layout::contiguous(&[3, 3]);
        gemm_batched_act_grad(
            &[0.0f32; 6],
            &l,
            &[0.0f32; 9],
            &w,
            Relu,
            &[0.0; 5],
            &[0.0; 6],
        );
    }
}
