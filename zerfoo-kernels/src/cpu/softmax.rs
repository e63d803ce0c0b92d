//! Softmax and log-softmax along one axis: one fused pass per row (read the
//! row once into the compute type, subtract its max, exponentiate, sum,
//! write), and their backward passes from the saved output.
//!
//! "Rows" are the 1-D fibres along the chosen axis. [`rows_map`] is the
//! driver shared with the normalization kernels: it hands each row to a
//! closure and writes a contiguous output in the original order.

use core::mem::MaybeUninit;

use num_traits::{Float, Zero};

use super::elementwise::{filled, map_uninit};
use super::simd::{lane_max, lane_sum_of, lane_sum_zip, vectorized};
use super::threads::for_each_chunk_pair_mut;
use super::{assume_init_vec, init_defaults, uninit_vec, CHUNK, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real};

/// The rows along `axis` of a shape viewed as `outer × n × inner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisRows {
    /// Product of the dims before the axis.
    pub outer: usize,
    /// The axis length (elements per row).
    pub n: usize,
    /// Product of the dims after the axis.
    pub inner: usize,
    axis: usize,
}

impl AxisRows {
    /// The rows of `dims` along `axis`.
    pub fn new(dims: &[usize], axis: usize) -> Self {
        assert!(
            axis < dims.len(),
            "axis {axis} out of range for rank {}",
            dims.len()
        );
        AxisRows {
            outer: dims[..axis].iter().product(),
            n: dims[axis],
            inner: dims[axis + 1..].iter().product(),
            axis,
        }
    }

    /// Number of rows.
    pub fn count(&self) -> usize {
        self.outer * self.inner
    }

    /// [`AxisRows::start`] for every row of `layout`, as a function of the
    /// row: for a contiguous layout one multiply-add per row, where the
    /// general walk divides by every dimension.
    ///
    /// ```
    /// use zerfoo_kernels::{cpu::softmax::AxisRows, Layout};
    /// let l = Layout::contiguous(&[2, 3, 4]);
    /// let rows = AxisRows::new(l.shape(), 2);
    /// let start = rows.starts(&l);
    /// assert_eq!(start(5), rows.start(&l, 5));
    /// assert_eq!(start(5), (20, 1));
    /// ```
    #[inline]
    pub fn starts<'a>(&self, layout: &'a Layout) -> impl Fn(usize) -> (usize, usize) + Copy + 'a {
        let rows = *self;
        let dense = layout.is_contiguous().then(|| layout.index_of(0));
        move |r| match dense {
            Some(offset) => {
                let (o, j) = if rows.inner == 1 {
                    (r, 0)
                } else {
                    (r / rows.inner, r % rows.inner)
                };
                (offset + o * rows.n * rows.inner + j, rows.inner)
            }
            None => rows.start(layout, r),
        }
    }

    /// Storage offset of the first element of row `r` in `layout`, and the
    /// stride between its elements. Rows are numbered `outer`-major.
    #[inline]
    pub fn start(&self, layout: &Layout, r: usize) -> (usize, usize) {
        let (o, j) = (r / self.inner, r % self.inner);
        (
            layout.index_of(o * self.n * self.inner + j),
            layout.strides()[self.axis],
        )
    }
}

/// `dst[k] = f(x[start + k * stride])` for the `dst.len()` values of a row
/// that starts at `start` (from [`AxisRows::start`]): a plain slice walk
/// (one the compiler vectorizes) when the row is contiguous.
///
/// ```
/// let x = [1.0f32, 2.0, 3.0, 4.0];
/// let mut dst = [0.0f32; 2];
/// zerfoo_kernels::cpu::softmax::map_row(&x, (1, 2), &mut dst, |v| v * 10.0);
/// assert_eq!(dst, [20.0, 40.0]);
/// ```
#[inline(always)]
pub fn map_row<T: Copy, O>(
    x: &[T],
    (start, stride): (usize, usize),
    dst: &mut [O],
    f: impl Fn(T) -> O,
) {
    if stride == 1 {
        let src = &x[start..start + dst.len()];
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = f(v));
    } else {
        for (k, d) in dst.iter_mut().enumerate() {
            *d = f(x[start + k * stride]);
        }
    }
}

/// Runs `f(row, out_row, scratch) -> stat` for every row along `axis` of
/// `dims`, where `out_row` (length `n`) is that row of the contiguous output
/// and `scratch` is a per-task buffer of length `n`. Returns the output (in
/// the original row-major order) and the per-row stats.
///
/// Parallel over blocks of rows above [`PAR_THRESHOLD`] elements; each row is
/// computed by one thread in a fixed order, so results do not depend on the
/// thread count. When the axis is not the last one the rows are computed
/// into a buffer and transposed into place (one extra linear copy).
pub fn rows_map<O, A, R>(
    dims: &[usize],
    axis: usize,
    f: impl Fn(usize, &mut [O], &mut [A]) -> R + Sync + Send,
) -> (Vec<O>, Vec<R>)
where
    O: Copy + Default + Send + Sync,
    A: Copy + Default + Send,
    R: Copy + Default + Send,
{
    let rows = AxisRows::new(dims, axis);
    let (count, n) = (rows.count(), rows.n);
    let mut stats = vec![R::default(); count];
    if n == 0 || count == 0 {
        return (Vec::new(), stats);
    }
    let total = count * n;
    let mut buf = uninit_vec::<O>(total);
    let per_task = (CHUNK / n).max(1);
    let body = |(t, (out, st)): (usize, (&mut [MaybeUninit<O>], &mut [R]))| {
        let out = init_defaults(out);
        let mut scratch = vec![A::default(); n];
        for (k, (row, s)) in out.chunks_mut(n).zip(st.iter_mut()).enumerate() {
            *s = f(t * per_task + k, row, &mut scratch);
        }
    };
    if total >= PAR_THRESHOLD && count > 1 {
        for_each_chunk_pair_mut(&mut buf, per_task * n, &mut stats, per_task, |(t, o, s)| {
            body((t, (o, s)))
        });
    } else {
        buf.chunks_mut(per_task * n)
            .zip(stats.chunks_mut(per_task))
            .enumerate()
            .for_each(body);
    }
    // SAFETY: every chunk of `buf` went to one `body`, which initialized it.
    let buf = unsafe { assume_init_vec(buf) };
    if rows.inner == 1 {
        return (buf, stats);
    }
    // `buf` is (outer, inner, n); the output is (outer, n, inner).
    let view = Layout::new(&[rows.outer, n, rows.inner], &[rows.inner * n, 1, n], 0);
    let out = filled(total, |out| map_uninit(&buf, &view, out, |v| v));
    (out, stats)
}

/// `softmax(x)` along `axis` (`LOG = false`) or `log_softmax(x)` (`LOG = true`),
/// max-subtracted in the compute type and rounded once. A row holding NaN
/// gives NaN; a row of `-inf` gives NaN (as in PyTorch).
pub fn softmax_forward<E: FloatDtype, const LOG: bool>(
    x: &[E],
    layout: &Layout,
    axis: usize,
) -> Vec<E> {
    let rows = AxisRows::new(layout.shape(), axis);
    rows_map(
        layout.shape(),
        axis,
        |r, out: &mut [E], buf: &mut [E::Acc]| {
            let at = rows.start(layout, r);
            vectorized(
                #[inline(always)]
                || {
                    map_row(x, at, buf, |v| v.to_acc());
                    // `lane_max` skips a NaN, but then every `exp` below is
                    // NaN too, and so is the row (as it is for a row of `-inf`:
                    // `-inf - -inf`).
                    let m = lane_max(buf);
                    if LOG {
                        let ls = lane_sum_of(buf, |b| (b - m).fast_exp()).ln();
                        for (o, &b) in out.iter_mut().zip(buf.iter()) {
                            *o = E::from_acc((b - m) - ls);
                        }
                    } else {
                        buf.iter_mut().for_each(|b| *b = (*b - m).fast_exp());
                        let inv = lane_sum_of(buf, |b| b).recip();
                        for (o, &b) in out.iter_mut().zip(buf.iter()) {
                            *o = E::from_acc(b * inv);
                        }
                    }
                },
            )
        },
    )
    .0
}

/// Backward of [`softmax_forward`] from the saved output `y` and `grad_y`
/// (both contiguous, shaped `dims`):
/// softmax `gx = y * (gy - sum(gy * y))`, log-softmax `gx = gy - exp(y) * sum(gy)`.
pub fn softmax_backward<E: FloatDtype, const LOG: bool>(
    y: &[E],
    grad_y: &[E],
    dims: &[usize],
    axis: usize,
) -> Vec<E> {
    let rows = AxisRows::new(dims, axis);
    let l = Layout::contiguous(dims);
    rows_map(dims, axis, |r, out: &mut [E], _: &mut [()]| {
        let (start, stride) = rows.start(&l, r);
        let at = |k: usize| {
            (
                y[start + k * stride].to_acc(),
                grad_y[start + k * stride].to_acc(),
            )
        };
        // A contiguous row as slices (walks the compiler vectorizes).
        let contiguous =
            (stride == 1).then(|| (&y[start..start + rows.n], &grad_y[start..start + rows.n]));
        vectorized(
            #[inline(always)]
            || {
                let s = match contiguous {
                    Some((_, g)) if LOG => lane_sum_of(g, |g| g.to_acc()),
                    Some((y, g)) => lane_sum_zip(y, g, |y, g| g.to_acc() * y.to_acc()),
                    None => {
                        let mut s = E::Acc::zero();
                        for k in 0..rows.n {
                            let (y, g) = at(k);
                            s += if LOG { g } else { g * y };
                        }
                        s
                    }
                };
                let grad = |y: E::Acc, g: E::Acc| {
                    E::from_acc(if LOG {
                        g - y.fast_exp() * s
                    } else {
                        y * (g - s)
                    })
                };
                match contiguous {
                    Some((y, g)) => {
                        for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
                            *o = grad(y.to_acc(), g.to_acc());
                        }
                    }
                    None => {
                        for (k, o) in out.iter_mut().enumerate() {
                            let (y, g) = at(k);
                            *o = grad(y, g);
                        }
                    }
                }
            },
        )
    })
    .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(row: &[f64]) -> Vec<f64> {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|x| (x - m).exp()).sum();
        row.iter().map(|x| (x - m).exp() / s).collect()
    }

    #[test]
    fn softmax_along_a_middle_axis_of_a_strided_input() {
        // logical (2, 3, 4) read through a permuted layout
        let src: Vec<f64> = (0..24).map(|i| ((i * 5) % 7) as f64 * 0.3).collect();
        let l = Layout::contiguous(&[4, 2, 3]).permute(&[1, 2, 0]);
        let y = softmax_forward::<f64, false>(&src, &l, 1);
        let ly = softmax_forward::<f64, true>(&src, &l, 1);
        let xs = l.offsets();
        for i in 0..2 {
            for k in 0..4 {
                let row: Vec<f64> = (0..3).map(|j| src[xs[i * 12 + j * 4 + k]]).collect();
                let want = reference(&row);
                for j in 0..3 {
                    assert!((y[i * 12 + j * 4 + k] - want[j]).abs() < 1e-12);
                    assert!((ly[i * 12 + j * 4 + k] - want[j].ln()).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn parallel_rows_and_huge_logits() {
        let (rows, n) = (PAR_THRESHOLD / 64, 128);
        let src: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 13) % 29) as f32 * 1e3)
            .collect();
        let l = Layout::contiguous(&[rows, n]);
        let y = softmax_forward::<f32, false>(&src, &l, 1);
        assert!(y.iter().all(|v| v.is_finite()));
        for r in [0, rows / 2, rows - 1] {
            let s: f32 = y[r * n..(r + 1) * n].iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
        let g = softmax_backward::<f32, false>(&y, &vec![1.0; rows * n], &[rows, n], 1);
        assert!(g.iter().all(|v| v.abs() < 1e-5));
    }

    #[test]
    fn parallel_rows_along_a_middle_axis() {
        let dims = [64, 33, 32];
        let n: usize = dims.iter().product();
        assert!(n >= PAR_THRESHOLD);
        let src: Vec<f64> = (0..n).map(|i| ((i * 31) % 17) as f64 * 0.25).collect();
        let l = Layout::contiguous(&dims);
        let y = softmax_forward::<f64, false>(&src, &l, 1);
        for (i, k) in [(0, 0), (17, 5), (63, 31)] {
            let at = |j: usize| i * 33 * 32 + j * 32 + k;
            let row: Vec<f64> = (0..33).map(|j| src[at(j)]).collect();
            let want = reference(&row);
            for (j, w) in want.iter().enumerate() {
                assert!((y[at(j)] - w).abs() < 1e-12);
            }
        }
    }
}
