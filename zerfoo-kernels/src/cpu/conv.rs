//! 2-D convolution, pooling and batch normalization over `[N, C, H, W]`.
//!
//! Convolution is a GEMM over the unrolled input (im2col) that is never
//! written out: each sample is widened to the compute type and zero-padded
//! once, and the product reads its unrolled matrix in place through offset
//! tables (row `(c, ky, kx)`, column `(oy, ox)` at
//! `taps[row] + positions[column]`); at stride 1 an output row's positions
//! are consecutive, and the packing copies them as runs. Small images put
//! several samples side by side in one product. The bias is added in the
//! compute type and the result rounded once. The backward pass: the input
//! gradient is `Wᵀ · gY` folded back (col2im) into the padded sample, the
//! weight gradient `Σ col · gYᵀ` with the unrolled input in chunks that stay
//! in cache (read in place as the product's left operand), the bias
//! gradient the sum of `gY`.
//!
//! Side by side with PyTorch (`bench/conv_vs_pytorch.py`; 2 threads,
//! ResNet layers, batch 8, Zen 4), forward ms before (im2col copies) ->
//! now, PyTorch: 64 channels 56 x 56, 3 x 3: 20.6 -> 9.9, 12.6; the 7 x 7
//! stride-2 stem on 224 x 224: 23.8 -> 14.6, 25.6; 256 channels 14 x 14:
//! 12.1 -> 11.2, 9.2; 512 channels 7 x 7: 12.8 -> 10.4, 7.8.
//!
//! Pooling works on clipped window ranges per output row and column (the
//! caller builds them with [`window_ranges`] or [`adaptive_ranges`]), which
//! covers max pooling with `-inf` padding (padded positions never win),
//! average pooling with or without the padding in the divisor, and adaptive
//! average pooling.
//!
//! Work is split over samples (convolution), `(n, c)` planes (pooling,
//! normalization) or channels (batch statistics). Every sum runs in a fixed
//! order whatever the thread count: batch sums are taken per fixed block of
//! samples (chosen from the shape only) and the block partials added in
//! order, so results are deterministic.

use core::any::TypeId;

use num_traits::{Float, Zero};
use rayon::prelude::*;

use super::matmul::{gemm_indexed, widen, Indexed, PAR_MACS};
use super::threads::{for_each_chunk_mut, map_tasks};
use super::{map, PAR_THRESHOLD};
use crate::device::{BatchNormGrads, ChannelStats, ConvGrads};
use crate::{FloatDtype, Layout, Real};

/// Side of the tiles a transposing copy walks.
const TILE: usize = 16;

/// Fewest output positions (columns) per product of the forward: the
/// samples of smaller images run side by side in one product, which then
/// has whole column panels to work on (8 x 512 x 7 x 7, 3 x 3 kernel, 2
/// threads: 14.9 -> 10.4 ms).
const FORWARD_MIN_COLUMNS: usize = 256;

/// Most blocks of samples that the weight gradient sums separately (and
/// the threads share out); each holds a partial sum of the gradient.
const WGRAD_BLOCKS: usize = 8;

/// Unrolled values per chunk of the weight gradient's input (512 KiB of
/// `f32`: it stays in L2 while the product reads it).
const WGRAD_CHUNK: usize = 1 << 17;

/// Fewest output positions per chunk of the weight gradient (the depth of
/// one product, over which its result is loaded and stored once).
const WGRAD_MIN_DEPTH: usize = 256;

/// The geometry of a sliding window along the two spatial axes (`[h, w]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Kernel size.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit padding on both sides.
    pub padding: [usize; 2],
    /// Spacing between kernel taps (1 = dense).
    pub dilation: [usize; 2],
}

impl Window2d {
    /// The output length along axis `a` (0 = height, 1 = width) for an input
    /// of length `input`: `(input + 2p - d(k - 1) - 1) / s + 1` (PyTorch), or
    /// `None` if the kernel, stride or dilation is zero or the dilated kernel
    /// is longer than the padded input.
    ///
    /// ```
    /// use zerfoo_kernels::cpu::conv::Window2d;
    /// let w = Window2d { kernel: [3, 3], stride: [2, 2], padding: [1, 1], dilation: [1, 1] };
    /// assert_eq!(w.out_len(0, 7), Some(4));
    /// assert_eq!(Window2d { kernel: [9, 9], ..w }.out_len(0, 5), None);
    /// ```
    pub fn out_len(&self, a: usize, input: usize) -> Option<usize> {
        let (k, s, p, d) = (
            self.kernel[a],
            self.stride[a],
            self.padding[a],
            self.dilation[a],
        );
        if k == 0 || s == 0 || d == 0 {
            return None;
        }
        let span = d.checked_mul(k - 1)?.checked_add(1)?;
        let padded = input.checked_add(p.checked_mul(2)?)?;
        if padded < span {
            return None;
        }
        Some((padded - span) / s + 1)
    }

    /// [`out_len`](Self::out_len) along both axes.
    pub fn out_dims(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        Some([self.out_len(0, input[0])?, self.out_len(1, input[1])?])
    }
}

/// The input range `[start, end)` of each of `out` windows of size `kernel`,
/// step `stride`, over an input of length `input` padded by `padding` on
/// both sides, clipped to the input (dilation 1). A window that lies wholly
/// in the padding gets an empty range.
pub fn window_ranges(
    input: usize,
    out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| {
            let start = (i * stride) as isize - padding as isize;
            let end = start + kernel as isize;
            let s = start.clamp(0, input as isize) as usize;
            let e = end.clamp(0, input as isize) as usize;
            (s, e.max(s))
        })
        .collect()
}

/// PyTorch's adaptive pooling windows: output `i` of `out` covers
/// `[floor(i * input / out), ceil((i + 1) * input / out))`.
pub fn adaptive_ranges(input: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| (i * input / out, ((i + 1) * input).div_ceil(out)))
        .collect()
}

/// Dims of a convolution, read from the layouts.
#[derive(Clone, Copy, Debug)]
struct ConvDims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    groups: usize,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    og: usize,
    /// `cg * kh * kw`: rows of the unrolled input.
    ckk: usize,
    oh: usize,
    ow: usize,
}

impl ConvDims {
    fn new(lx: &Layout, lw: &Layout, groups: usize, win: &Window2d) -> Self {
        assert!(
            lx.rank() == 4 && lw.rank() == 4,
            "conv2d: input and weight must be 4-D, got {:?} and {:?}",
            lx.shape(),
            lw.shape()
        );
        let (xs, ws) = (lx.shape(), lw.shape());
        let (c, o, cg) = (xs[1], ws[0], ws[1]);
        assert!(
            groups > 0 && c == cg * groups && o % groups == 0,
            "conv2d: input {xs:?} and weight {ws:?} do not fit {groups} groups"
        );
        assert_eq!(win.kernel, [ws[2], ws[3]], "conv2d: kernel size");
        let [oh, ow] = win
            .out_dims([xs[2], xs[3]])
            .unwrap_or_else(|| panic!("conv2d: window {win:?} does not fit input {xs:?}"));
        ConvDims {
            n: xs[0],
            c,
            h: xs[2],
            w: xs[3],
            o,
            groups,
            cg,
            og: o / groups,
            ckk: cg * ws[2] * ws[3],
            oh,
            ow,
        }
    }

    fn l(&self) -> usize {
        self.oh * self.ow
    }
}

/// A convolution's unrolled input (one group's `[cg·kh·kw, oh·ow]` im2col
/// matrix) read in place from a zero-padded copy of a sample
/// ([`pad_rows`], `[C, hp, wp]`): row `p = (c, ky, kx)`, column
/// `j = (oy, ox)` is `xp[group + taps[p] + positions[j]]`, `group` the
/// offset of the group's first channel ([`Unrolled::group`]). At stride 1
/// an output row's positions are consecutive offsets, which the GEMM's
/// packing copies as runs: no im2col copy is written.
struct Unrolled {
    /// Height and width of the padded sample.
    hp: usize,
    wp: usize,
    /// Offset of each row (channel, tap) of the unrolled matrix.
    taps: Vec<usize>,
    /// Offset of each column (output position).
    positions: Vec<usize>,
}

impl Unrolled {
    fn new(d: &ConvDims, win: &Window2d) -> Self {
        let (hp, wp) = (d.h + 2 * win.padding[0], d.w + 2 * win.padding[1]);
        let ([kh, kw], [sh, sw], [dh, dw]) = (win.kernel, win.stride, win.dilation);
        let taps = (0..d.cg)
            .flat_map(|c| {
                (0..kh).flat_map(move |i| (0..kw).map(move |j| (c * hp + i * dh) * wp + j * dw))
            })
            .collect();
        let positions = (0..d.oh)
            .flat_map(|y| (0..d.ow).map(move |x| y * sh * wp + x * sw))
            .collect();
        Unrolled {
            hp,
            wp,
            taps,
            positions,
        }
    }

    /// Values in a padded sample (`[C, hp, wp]`).
    fn sample_len(&self, d: &ConvDims) -> usize {
        d.c * self.hp * self.wp
    }

    /// Offset of group `g`'s first channel in a padded sample.
    fn group(&self, d: &ConvDims, g: usize) -> usize {
        g * d.cg * self.hp * self.wp
    }

    /// Writes output rows `rows` of group `g`'s unrolled matrix of the
    /// padded sample `xp` (`[cg·kh·kw, rows.len() · ow]`) into `col` at
    /// `(row length, first column)` `to`, a run of `ow` positions at a time
    /// (`stride` apart in `xp`).
    #[allow(clippy::too_many_arguments)]
    fn unroll<A: Real>(
        &self,
        d: &ConvDims,
        stride: usize,
        xp: &[A],
        g: usize,
        rows: core::ops::Range<usize>,
        (ld, first): (usize, usize),
        col: &mut [A],
    ) {
        let base = self.group(d, g);
        let len = rows.len() * d.ow;
        let starts = &self.positions[rows.start * d.ow..rows.end * d.ow];
        for (row, &tap) in col.chunks_exact_mut(ld).zip(&self.taps) {
            let row = &mut row[first..first + len];
            for (seg, &at) in row.chunks_exact_mut(d.ow).zip(starts.iter().step_by(d.ow)) {
                let from = base + tap + at;
                if stride == 1 {
                    seg.copy_from_slice(&xp[from..from + d.ow]);
                } else {
                    let src = &xp[from..=from + (d.ow - 1) * stride];
                    for (v, &x) in seg.iter_mut().zip(src.iter().step_by(stride)) {
                        *v = x;
                    }
                }
            }
        }
    }

    /// Adds group `g`'s unrolled gradient (`[cg·kh·kw, oh·ow]`, in `col`
    /// at `(row length, first column)`) into the padded sample's gradient
    /// `gxp` (`[C, hp, wp]`): the transpose of [`Unrolled::unroll`], a run
    /// of `ow` positions at a time.
    fn fold<A: Real>(
        &self,
        d: &ConvDims,
        stride: usize,
        (col, ld, first): (&[A], usize, usize),
        g: usize,
        gxp: &mut [A],
    ) {
        let base = self.group(d, g);
        for (row, &tap) in col.chunks_exact(ld).zip(&self.taps) {
            let row = &row[first..first + d.l()];
            for (seg, &at) in row
                .chunks_exact(d.ow)
                .zip(self.positions.iter().step_by(d.ow))
            {
                let to = &mut gxp[base + tap + at..];
                if stride == 1 {
                    for (x, &v) in to.iter_mut().zip(seg) {
                        *x += v;
                    }
                } else {
                    for (x, &v) in to.iter_mut().step_by(stride).zip(seg) {
                        *x += v;
                    }
                }
            }
        }
    }
}

/// Rows `rows` (of `hp`) of every channel of sample `ni` of `x`, in the
/// compute type and zero-padded as `u` says, into `xp` (the padded sample
/// `[C, hp, wp]`, row-major): every value of those rows is written (the
/// others are left as they are, so a buffer needs no zero fill).
#[allow(clippy::too_many_arguments)]
fn pad_rows<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    d: &ConvDims,
    u: &Unrolled,
    ni: usize,
    rows: core::ops::Range<usize>,
    xp: &mut [E::Acc],
) {
    let s = lx.strides();
    let (ph, pw) = ((u.hp - d.h) / 2, (u.wp - d.w) / 2);
    let zero = E::Acc::zero();
    for c in 0..d.c {
        for r in rows.clone() {
            let row = &mut xp[(c * u.hp + r) * u.wp..][..u.wp];
            let Some(ih) = r.checked_sub(ph).filter(|&ih| ih < d.h) else {
                row.fill(zero);
                continue;
            };
            let (left, rest) = row.split_at_mut(pw);
            let (inside, right) = rest.split_at_mut(d.w);
            left.fill(zero);
            right.fill(zero);
            if inside.is_empty() {
                continue;
            }
            let from = lx.offset + ni * s[0] + c * s[1] + ih * s[2];
            if s[3] == 1 {
                widen(&x[from..from + d.w], inside);
            } else {
                for (iw, v) in inside.iter_mut().enumerate() {
                    *v = x[from + iw * s[3]].to_acc();
                }
            }
        }
    }
}

/// The weight (`[O, C/groups, KH, KW]`, any layout) in the compute type, row-major.
fn weight_acc<E: FloatDtype>(w: &[E], lw: &Layout) -> Vec<E::Acc> {
    map(w, lw, |v: E| v.to_acc())
}

/// 2-D convolution (PyTorch `F.conv2d`, cross-correlation): `x` is
/// `[N, C, H, W]`, `w` is `[O, C / groups, KH, KW]`, `bias` `[O]`, all in any
/// layout; `win.kernel` must be `[KH, KW]`. Returns `[N, O, OH, OW]`
/// contiguous, with `OH`, `OW` from [`Window2d::out_dims`].
///
/// The caller checks the shapes (this panics on a mismatch).
///
/// ```
/// use zerfoo_kernels::{cpu::conv::{conv2d_forward, Window2d}, Layout};
/// // a 1x1x3x3 input of ones, a 1x1x2x2 kernel of ones, bias 0.5
/// let x = [1.0f32; 9];
/// let w = [1.0f32; 4];
/// let win = Window2d { kernel: [2, 2], stride: [1, 1], padding: [0, 0], dilation: [1, 1] };
/// let y = conv2d_forward(
///     &x, &Layout::contiguous(&[1, 1, 3, 3]),
///     &w, &Layout::contiguous(&[1, 1, 2, 2]),
///     Some((&[0.5f32][..], &Layout::contiguous(&[1]))), 1, &win);
/// assert_eq!(y, [4.5; 4]);
/// ```
pub fn conv2d_forward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    w: &[E],
    lw: &Layout,
    bias: Option<(&[E], &Layout)>,
    groups: usize,
    win: &Window2d,
) -> Vec<E> {
    let d = ConvDims::new(lx, lw, groups, win);
    let l = d.l();
    let mut out = vec![E::default(); d.n * d.o * l];
    if out.is_empty() {
        return out;
    }
    let wa = weight_acc(w, lw);
    let ba: Option<Vec<E::Acc>> = bias.map(|(b, lb)| map(b, lb, |v: E| v.to_acc()));
    let u = Unrolled::new(&d, win);
    let sb = SampleBlocks::new(&d);
    let padded_len = u.sample_len(&d);
    // Column `(k, j)` of a block: output position `j` of its sample `k`.
    let positions: Vec<usize> = (0..sb.per)
        .flat_map(|k| u.positions.iter().map(move |&p| k * padded_len + p))
        .collect();
    // The group's weight rows `[og, ckk]`, read in place.
    let a_rows: Vec<usize> = (0..d.og).map(|i| i * d.ckk).collect();
    let a_cols: Vec<usize> = (0..d.ckk).collect();
    // `y` (`[O, nb · L]`, compute type) = the block's convolution plus bias.
    let convolve = |xp: &[E::Acc], nb: usize, y: &mut [E::Acc]| {
        for (g, yg) in y.chunks_exact_mut(d.og * nb * l).enumerate() {
            let a = Indexed::new(&wa, g * d.og * d.ckk, &a_rows, &a_cols);
            let b = Indexed::new(xp, u.group(&d, g), &u.taps, &positions[..nb * l]);
            gemm_indexed(a, b, yg, true, sb.product_threads);
        }
        if let Some(ba) = &ba {
            for (row, &b) in y.chunks_exact_mut(nb * l).zip(ba) {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    };
    // Block `bi` (its samples' outputs `out`).
    let block = |bi: usize, out: &mut [E], (xp, acc): &mut (Vec<E::Acc>, Vec<E::Acc>)| {
        let nb = out.len() / (d.o * l);
        xp.resize(nb * padded_len, E::Acc::zero());
        for (k, xp) in xp.chunks_exact_mut(padded_len).enumerate() {
            pad_rows(x, lx, &d, &u, bi * sb.per + k, 0..u.hp, xp);
        }
        match as_acc_mut(out) {
            Some(y) if nb == 1 => convolve(xp, 1, y),
            _ => {
                acc.clear();
                acc.resize(nb * d.o * l, E::Acc::zero());
                convolve(xp, nb, acc);
                // `[O, nb, L]` -> `[nb, O, L]`, rounded.
                for (oi, src) in acc.chunks_exact(nb * l).enumerate() {
                    for (k, src) in src.chunks_exact(l).enumerate() {
                        let dst = &mut out[(k * d.o + oi) * l..][..l];
                        for (o, &v) in dst.iter_mut().zip(src) {
                            *o = E::from_acc(v);
                        }
                    }
                }
            }
        }
    };
    sb.run(&mut out, d.o * l, block);
    out
}

/// How the forward and the input gradient share a batch out: blocks of
/// `per` samples (the last one may be shorter). Small images put several
/// samples side by side in one product (its columns), so that it has at
/// least [`FORWARD_MIN_COLUMNS`] columns: as few such blocks as that needs,
/// of equal sizes. Whole blocks go to the threads where they share out
/// evenly (each thread then pads and packs only its own), else each
/// block's products run on all threads (one image at inference).
struct SampleBlocks {
    /// Samples per block.
    per: usize,
    /// Threads per product.
    product_threads: usize,
    /// Whether the threads take whole blocks.
    by_block: bool,
}

impl SampleBlocks {
    fn new(d: &ConvDims) -> Self {
        let blocks =
            d.n.div_ceil(FORWARD_MIN_COLUMNS.div_ceil(d.l()).clamp(1, d.n));
        let threads = rayon::current_num_threads();
        let parallel = d.n * d.o * d.l() * d.ckk >= PAR_MACS && threads > 1;
        let by_block = parallel
            && blocks >= threads
            && (blocks.is_multiple_of(threads) || blocks >= 4 * threads);
        SampleBlocks {
            per: d.n.div_ceil(blocks),
            product_threads: if parallel && !by_block { threads } else { 1 },
            by_block,
        }
    }

    /// Runs `block(bi, out, bufs)` for each block `bi`, `out` its samples'
    /// part of `all` (`len` values per sample), `bufs` scratch that each
    /// thread reuses across its blocks.
    fn run<T: Send, B: Default + Send>(
        &self,
        all: &mut [T],
        len: usize,
        block: impl Fn(usize, &mut [T], &mut B) + Sync + Send,
    ) {
        if self.by_block {
            // Rayon's own split here (not `threads::run_tasks`), for
            // `for_each_init`'s buffers per thread.
            all.par_chunks_mut(self.per * len)
                .enumerate()
                .for_each_init(B::default, |bufs, (bi, o)| block(bi, o, bufs));
        } else {
            let mut bufs = B::default();
            for (bi, o) in all.chunks_mut(self.per * len).enumerate() {
                block(bi, o, &mut bufs);
            }
        }
    }
}

/// `out` as the compute type, when `E` is its own (`f32`, `f64`).
fn as_acc_mut<E: FloatDtype>(out: &mut [E]) -> Option<&mut [E::Acc]> {
    (TypeId::of::<E>() == TypeId::of::<E::Acc>()).then(|| {
        // SAFETY: `E` and `E::Acc` are the same type (same TypeId).
        unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<E::Acc>(), out.len()) }
    })
}

/// The backward pass of [`conv2d_forward`]: `gy` is the contiguous
/// `[N, O, OH, OW]` output gradient. All three gradients are accumulated in
/// the compute type and rounded once.
#[allow(clippy::too_many_arguments)] // the forward's operands, plus the output gradient
pub fn conv2d_backward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    w: &[E],
    lw: &Layout,
    with_bias: bool,
    groups: usize,
    win: &Window2d,
    gy: &[E],
) -> ConvGrads<Vec<E>> {
    let d = ConvDims::new(lx, lw, groups, win);
    let l = d.l();
    assert_eq!(gy.len(), d.n * d.o * l, "conv2d backward: gradient length");
    let zero = E::Acc::zero();
    let mut gx = vec![E::default(); d.n * d.c * d.h * d.w];
    let mut gw = vec![E::default(); d.o * d.ckk];
    if gy.is_empty() {
        return ConvGrads {
            x: gx,
            weight: gw,
            bias: with_bias.then(|| vec![E::default(); d.o]),
        };
    }
    let wa = weight_acc(w, lw);
    let ga: Vec<E::Acc> = gy.iter().map(|v| v.to_acc()).collect();
    let macs = d.n * d.o * l * d.ckk;
    let parallel = macs >= PAR_MACS && rayon::current_num_threads() > 1;

    // Input gradient: col = W_gᵀ · gY_g, folded back into the padded
    // sample's gradient, whose inside is the result; for small images
    // several samples side by side in one product (its columns), as in the
    // forward.
    let chw = d.c * d.h * d.w;
    if chw > 0 {
        let u = Unrolled::new(&d, win);
        let (ph, pw) = (win.padding[0], win.padding[1]);
        let padded_len = u.sample_len(&d);
        let sb = SampleBlocks::new(&d);
        // `W_gᵀ` (`[ckk, og]`), the weight read transposed in place.
        let a_rows: Vec<usize> = (0..d.ckk).collect();
        let a_cols: Vec<usize> = (0..d.og).map(|o| o * d.ckk).collect();
        // `gY_g` of the block's samples side by side (`[og, nb · L]`).
        let b_rows: Vec<usize> = (0..d.og).map(|o| o * l).collect();
        let b_cols: Vec<usize> = (0..sb.per)
            .flat_map(|k| (0..l).map(move |j| k * d.o * l + j))
            .collect();
        let block = |bi: usize, out: &mut [E], (acc, col): &mut (Vec<E::Acc>, Vec<E::Acc>)| {
            let nb = out.len() / chw;
            acc.clear();
            acc.resize(nb * padded_len, zero);
            col.resize(d.ckk * nb * l, zero);
            for g in 0..d.groups {
                let a = Indexed::new(&wa, g * d.og * d.ckk, &a_rows, &a_cols);
                let b = Indexed::new(
                    &ga,
                    (bi * sb.per * d.o + g * d.og) * l,
                    &b_rows,
                    &b_cols[..nb * l],
                );
                gemm_indexed(a, b, col, true, sb.product_threads);
                for (k, acc) in acc.chunks_exact_mut(padded_len).enumerate() {
                    u.fold(&d, win.stride[1], (col, nb * l, k * l), g, acc);
                }
            }
            for (row, dst) in out.chunks_exact_mut(d.w).enumerate() {
                let (k, c, ih) = (row / (d.c * d.h), row / d.h % d.c, row % d.h);
                let src = &acc[k * padded_len + (c * u.hp + ih + ph) * u.wp + pw..][..d.w];
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = E::from_acc(v);
                }
            }
        };
        sb.run(&mut gx, chw, block);
    }

    // Weight gradient, transposed per group: gwᵀ_g = Σ_n col_n · gY_nᵀ
    // (`[ckk, og]`). The unrolled input `col` is the products' left
    // operand, read in place, a chunk of output rows at a time (the chunk
    // stays in cache; small images: several whole samples per chunk), and
    // the chunks run along the products' depth into one sum. One partial
    // sum per fixed block of samples (the blocks depend only on the
    // shape), added in block order.
    if d.ckk > 0 {
        let u = Unrolled::new(&d, win);
        let padded_len = u.sample_len(&d);
        // Output rows per chunk, which whole samples make up when an image
        // has fewer.
        let chunk_rows = (WGRAD_CHUNK / (d.ckk * d.ow)).max(WGRAD_MIN_DEPTH.div_ceil(d.ow));
        let samples_per_chunk = chunk_rows.div_ceil(d.oh).max(1);
        let chunk_rows = chunk_rows.clamp(1, d.oh);
        // The chunks, in order: whole samples (`nb` of them from `n0`, as
        // many in each chunk as can be), or one sample's rows.
        let chunks: Vec<(usize, usize, core::ops::Range<usize>)> = if samples_per_chunk > 1 {
            let count = d.n.div_ceil(samples_per_chunk);
            (0..count)
                .map(|c| {
                    let (n0, n1) = (d.n * c / count, d.n * (c + 1) / count);
                    (n0, n1 - n0, 0..d.oh)
                })
                .collect()
        } else {
            (0..d.n)
                .flat_map(|ni| {
                    (0..d.oh)
                        .step_by(chunk_rows)
                        .map(move |y0| (ni, 1, y0..(y0 + chunk_rows).min(d.oh)))
                })
                .collect()
        };
        // Up to `WGRAD_BLOCKS` blocks of consecutive chunks, of about the
        // same size (from the shape alone, so the sum does not depend on
        // the thread count): a single image's rows share out too.
        let blocks = chunks.len().min(WGRAD_BLOCKS);
        let block_chunks =
            |bi: usize| &chunks[chunks.len() * bi / blocks..chunks.len() * (bi + 1) / blocks];
        // The offset tables of a full chunk, whose unrolled input `col`
        // holds rows of `full_depth` values; a shorter chunk (a sample's
        // last rows, a block's last samples) uses their beginning.
        let full_len = chunk_rows * d.ow;
        let full_depth = samples_per_chunk * full_len;
        let a_rows: Vec<usize> = (0..d.ckk).map(|p| p * full_depth).collect();
        let depth_steps: Vec<usize> = (0..full_depth).collect();
        // Depth `(k, j)`: position `j` of a chunk's rows of its sample `k`.
        let b_rows: Vec<usize> = (0..samples_per_chunk)
            .flat_map(|k| (0..full_len).map(move |j| k * d.o * l + j))
            .collect();
        let b_cols: Vec<usize> = (0..d.og).map(|o| o * l).collect();
        let threads = rayon::current_num_threads();
        let product_threads = if parallel && blocks < threads {
            threads
        } else {
            1
        };
        let ([kh, _], [sh, _], [dh, _]) = (win.kernel, win.stride, win.dilation);
        let partial = |bi: usize| -> Vec<E::Acc> {
            let mut part = vec![zero; d.groups * d.ckk * d.og];
            let (mut xp, mut col) = (Vec::new(), vec![zero; d.ckk * full_depth]);
            for (n0, nb, rows) in block_chunks(bi).iter().cloned() {
                // The padded rows that the chunk's output rows read.
                let (r0, r1) = (rows.start * sh, (rows.end - 1) * sh + (kh - 1) * dh + 1);
                xp.resize(nb * padded_len, zero);
                for (k, xp) in xp.chunks_exact_mut(padded_len).enumerate() {
                    pad_rows(x, lx, &d, &u, n0 + k, r0..r1.min(u.hp), xp);
                }
                let len = rows.len() * d.ow;
                let depth = nb * len;
                for (g, part) in part.chunks_exact_mut(d.ckk * d.og).enumerate() {
                    for (k, xp) in xp.chunks_exact(padded_len).enumerate() {
                        let to = (full_depth, k * len);
                        u.unroll(&d, win.stride[1], xp, g, rows.clone(), to, &mut col);
                    }
                    let a = Indexed::new(&col, 0, &a_rows, &depth_steps[..depth]);
                    let b = Indexed::new(
                        &ga,
                        (n0 * d.o + g * d.og) * l + rows.start * d.ow,
                        &b_rows[..depth],
                        &b_cols,
                    );
                    gemm_indexed(a, b, part, false, product_threads);
                }
            }
            part
        };
        let parts: Vec<Vec<E::Acc>> = if parallel && blocks > 1 && product_threads == 1 {
            map_tasks(blocks, partial)
        } else {
            (0..blocks).map(partial).collect()
        };
        // The blocks' sum, in block order, then gw[g·og + o, p] = gwᵀ_g[p, o]
        // (in tiles, so both sides stay in cache).
        let mut sum = vec![zero; d.groups * d.ckk * d.og];
        for part in &parts {
            for (s, &v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        for (gw, sum) in gw
            .chunks_exact_mut(d.og * d.ckk)
            .zip(sum.chunks_exact(d.ckk * d.og))
        {
            for p0 in (0..d.ckk).step_by(TILE) {
                for o0 in (0..d.og).step_by(TILE) {
                    for o in o0..(o0 + TILE).min(d.og) {
                        for p in p0..(p0 + TILE).min(d.ckk) {
                            gw[o * d.ckk + p] = E::from_acc(sum[p * d.og + o]);
                        }
                    }
                }
            }
        }
    }

    let bias = with_bias.then(|| {
        (0..d.o)
            .map(|oi| {
                let mut s = zero;
                for ni in 0..d.n {
                    let base = (ni * d.o + oi) * l;
                    for &v in &ga[base..base + l] {
                        s += v;
                    }
                }
                E::from_acc(s)
            })
            .collect()
    });
    ConvGrads {
        x: gx,
        weight: gw,
        bias,
    }
}

/// Runs `f(plane_index, out_plane)` over the contiguous output planes, in
/// parallel when the work (`cost` per output element) is large.
fn for_planes<T: Send>(
    out: &mut [T],
    plane: usize,
    cost: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if plane == 0 || out.is_empty() {
        return;
    }
    if out.len() * cost >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
        for_each_chunk_mut(out, plane, |(p, o)| f(p, o));
    } else {
        for (p, o) in out.chunks_exact_mut(plane).enumerate() {
            f(p, o);
        }
    }
}

/// The storage offset of plane `p` (`= n * C + c`) of a 4-D layout.
#[inline]
fn plane_base(lx: &Layout, p: usize) -> usize {
    let (s, c) = (lx.strides(), lx.shape()[1]);
    lx.offset + (p / c) * s[0] + (p % c) * s[1]
}

/// Max pooling over `[N, C, H, W]` (any layout) with the windows `rows` ×
/// `cols` (clipped input ranges, see [`window_ranges`]). Returns the
/// contiguous `[N, C, OH, OW]` maxima and, per output, the position
/// `h * W + w` of the first maximum in its plane (`usize::MAX` for an empty
/// window, whose output is `-inf`). NaN propagates, as in PyTorch.
pub fn max_pool2d_forward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
) -> (Vec<E>, Vec<usize>) {
    assert_eq!(lx.rank(), 4, "max_pool2d: input must be 4-D");
    let [n, c, _, w] = [lx.shape()[0], lx.shape()[1], lx.shape()[2], lx.shape()[3]];
    let plane = rows.len() * cols.len();
    let mut out: Vec<(E, usize)> = vec![(E::default(), usize::MAX); n * c * plane];
    let (sh, sw) = (lx.strides()[2], lx.strides()[3]);
    for_planes(&mut out, plane, 4, |p, o| {
        let base = plane_base(lx, p);
        for (dst, (&(h0, h1), &(w0, w1))) in o
            .iter_mut()
            .zip(rows.iter().flat_map(|r| cols.iter().map(move |c| (r, c))))
        {
            // PyTorch's loop: start at -inf on the window's first position,
            // take a strictly larger value or a NaN.
            let mut best = E::Acc::neg_infinity();
            let mut arg = if h0 < h1 && w0 < w1 {
                h0 * w + w0
            } else {
                usize::MAX
            };
            for ih in h0..h1 {
                for iw in w0..w1 {
                    let v = x[base + ih * sh + iw * sw].to_acc();
                    if v > best || v.is_nan() {
                        best = v;
                        arg = ih * w + iw;
                    }
                }
            }
            *dst = (E::from_acc(best), arg);
        }
    });
    out.into_iter().unzip()
}

/// The backward pass of [`max_pool2d_forward`]: each output gradient goes to
/// the position of its maximum. `dims` is the input's `[N, C, H, W]`.
pub fn max_pool2d_backward<E: FloatDtype>(gy: &[E], argmax: &[usize], dims: [usize; 4]) -> Vec<E> {
    let hw = dims[2] * dims[3];
    let planes = dims[0] * dims[1];
    let mut gx = vec![E::default(); planes * hw];
    if planes == 0 {
        return gx;
    }
    let oplane = gy.len() / planes;
    for_planes(&mut gx, hw, 2, |p, o| {
        let mut acc = vec![E::Acc::zero(); hw];
        let (g, a) = (
            &gy[p * oplane..(p + 1) * oplane],
            &argmax[p * oplane..(p + 1) * oplane],
        );
        for (&gv, &i) in g.iter().zip(a) {
            if i != usize::MAX {
                acc[i] += gv.to_acc();
            }
        }
        for (d, v) in o.iter_mut().zip(acc) {
            *d = E::from_acc(v);
        }
    });
    gx
}

/// What an average-pooling window divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AvgDivisor {
    /// A fixed count: `KH * KW` (PyTorch's `count_include_pad=True`).
    Fixed(usize),
    /// The number of input elements in the clipped window
    /// (`count_include_pad=False`, adaptive pooling).
    Count,
}

impl AvgDivisor {
    #[inline]
    fn of<A: Real>(self, h: (usize, usize), w: (usize, usize)) -> A {
        let n = match self {
            AvgDivisor::Fixed(n) => n,
            AvgDivisor::Count => (h.1 - h.0) * (w.1 - w.0),
        };
        A::of_f64(n as f64)
    }
}

/// Average pooling over `[N, C, H, W]` (any layout) with the windows `rows`
/// × `cols`: the window sum (in the compute type) over the divisor, rounded
/// once. Returns `[N, C, OH, OW]` contiguous.
pub fn avg_pool2d_forward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    divisor: AvgDivisor,
) -> Vec<E> {
    assert_eq!(lx.rank(), 4, "avg_pool2d: input must be 4-D");
    let (n, c) = (lx.shape()[0], lx.shape()[1]);
    let plane = rows.len() * cols.len();
    let mut out = vec![E::default(); n * c * plane];
    let (sh, sw) = (lx.strides()[2], lx.strides()[3]);
    for_planes(&mut out, plane, 4, |p, o| {
        let base = plane_base(lx, p);
        for (dst, (&hr, &wr)) in o
            .iter_mut()
            .zip(rows.iter().flat_map(|r| cols.iter().map(move |c| (r, c))))
        {
            let mut s = E::Acc::zero();
            for ih in hr.0..hr.1 {
                for iw in wr.0..wr.1 {
                    s += x[base + ih * sh + iw * sw].to_acc();
                }
            }
            *dst = E::from_acc(s / divisor.of::<E::Acc>(hr, wr));
        }
    });
    out
}

/// The backward pass of [`avg_pool2d_forward`]: each output gradient is
/// spread evenly (over the divisor) onto its window. `dims` is the input's
/// `[N, C, H, W]`.
pub fn avg_pool2d_backward<E: FloatDtype>(
    gy: &[E],
    dims: [usize; 4],
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    divisor: AvgDivisor,
) -> Vec<E> {
    let (w, hw) = (dims[3], dims[2] * dims[3]);
    let planes = dims[0] * dims[1];
    let mut gx = vec![E::default(); planes * hw];
    let oplane = rows.len() * cols.len();
    for_planes(&mut gx, hw, 4, |p, o| {
        let mut acc = vec![E::Acc::zero(); hw];
        let g = &gy[p * oplane..(p + 1) * oplane];
        for (&gv, (&hr, &wr)) in g
            .iter()
            .zip(rows.iter().flat_map(|r| cols.iter().map(move |c| (r, c))))
        {
            let v = gv.to_acc() / divisor.of::<E::Acc>(hr, wr);
            for ih in hr.0..hr.1 {
                for a in &mut acc[ih * w + wr.0..ih * w + wr.1] {
                    *a += v;
                }
            }
        }
        for (d, v) in o.iter_mut().zip(acc) {
            *d = E::from_acc(v);
        }
    });
    gx
}

/// Calls `f(offset)` with the storage offset of every element of channel
/// `ci` of a `[N, C, H, W]` layout, in row-major `(n, h, w)` order.
#[inline]
fn channel_offsets(lx: &Layout, ci: usize, mut f: impl FnMut(usize)) {
    let (d, s) = (lx.shape(), lx.strides());
    for ni in 0..d[0] {
        let base = lx.offset + ni * s[0] + ci * s[1];
        for ih in 0..d[2] {
            let row = base + ih * s[2];
            for iw in 0..d[3] {
                f(row + iw * s[3]);
            }
        }
    }
}

/// Maps each channel to a value, in parallel when the input is large.
fn per_channel<R: Send>(lx: &Layout, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    let c = lx.shape()[1];
    if lx.numel() >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
        map_tasks(c, f)
    } else {
        (0..c).map(f).collect()
    }
}

/// The batch statistics of `x` (`[N, C, H, W]`, any layout) per channel:
/// mean and biased variance over `(N, H, W)` (two passes, in the compute
/// type), and `1 / sqrt(var + eps)`.
pub fn batch_norm_stats<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    eps: f64,
) -> ChannelStats<Vec<E::Acc>> {
    assert_eq!(lx.rank(), 4, "batch_norm2d: input must be 4-D");
    let d = lx.shape();
    let m = E::Acc::of_f64((d[0] * d[2] * d[3]) as f64);
    let eps = E::Acc::of_f64(eps);
    let stats = per_channel(lx, |ci| {
        let mut s = E::Acc::zero();
        channel_offsets(lx, ci, |o| s += x[o].to_acc());
        let mean = s / m;
        let mut q = E::Acc::zero();
        channel_offsets(lx, ci, |o| {
            let v = x[o].to_acc() - mean;
            q += v * v;
        });
        let var = q / m;
        (mean, var, (var + eps).sqrt().recip())
    });
    let mut out = ChannelStats {
        mean: Vec::with_capacity(stats.len()),
        var: Vec::with_capacity(stats.len()),
        rstd: Vec::with_capacity(stats.len()),
    };
    for (mean, var, rstd) in stats {
        out.mean.push(mean);
        out.var.push(var);
        out.rstd.push(rstd);
    }
    out
}

/// Statistics from running mean and variance vectors (`[C]`, any layout),
/// for eval mode.
pub fn running_stats<E: FloatDtype>(
    mean: (&[E], &Layout),
    var: (&[E], &Layout),
    eps: f64,
) -> ChannelStats<Vec<E::Acc>> {
    let mean = map(mean.0, mean.1, |v: E| v.to_acc());
    let var: Vec<E::Acc> = map(var.0, var.1, |v: E| v.to_acc());
    let e = E::Acc::of_f64(eps);
    let rstd = var.iter().map(|&v| (v + e).sqrt().recip()).collect();
    ChannelStats { mean, var, rstd }
}

/// `(x - mean) * rstd * weight + bias` per channel, computed in the compute
/// type and rounded once; `weight` and `bias` are `[C]` vectors (any layout)
/// or absent (scale 1, shift 0). Returns `[N, C, H, W]` contiguous.
pub fn batch_norm_apply<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    stats: &ChannelStats<Vec<E::Acc>>,
    weight: Option<(&[E], &Layout)>,
    bias: Option<(&[E], &Layout)>,
) -> Vec<E> {
    assert_eq!(lx.rank(), 4, "batch_norm2d: input must be 4-D");
    let c = lx.shape()[1];
    let hw = lx.shape()[2] * lx.shape()[3];
    let one = <E::Acc as num_traits::One>::one();
    let wa: Vec<E::Acc> =
        weight.map_or_else(|| vec![one; c], |(w, l)| map(w, l, |v: E| v.to_acc()));
    let ba: Vec<E::Acc> = bias.map_or_else(
        || vec![E::Acc::zero(); c],
        |(b, l)| map(b, l, |v: E| v.to_acc()),
    );
    let (sh, sw) = (lx.strides()[2], lx.strides()[3]);
    let w = lx.shape()[3];
    let mut out = vec![E::default(); lx.numel()];
    for_planes(&mut out, hw, 2, |p, o| {
        let ci = p % c;
        let base = plane_base(lx, p);
        let (mean, scale, shift) = (stats.mean[ci], stats.rstd[ci] * wa[ci], ba[ci]);
        for (i, dst) in o.iter_mut().enumerate() {
            let v = x[base + (i / w) * sh + (i % w) * sw].to_acc();
            *dst = E::from_acc((v - mean) * scale + shift);
        }
    });
    out
}

/// The backward pass of [`batch_norm_apply`] with `stats` from
/// [`batch_norm_stats`] (`training`: the statistics depend on `x`) or
/// [`running_stats`] (eval: they are constants). `gy` is the contiguous
/// output gradient.
pub fn batch_norm_backward<E: FloatDtype>(
    x: &[E],
    lx: &Layout,
    stats: &ChannelStats<Vec<E::Acc>>,
    weight: Option<(&[E], &Layout)>,
    gy: &[E],
    training: bool,
) -> BatchNormGrads<Vec<E>> {
    assert_eq!(lx.rank(), 4, "batch_norm2d: input must be 4-D");
    let d = lx.shape();
    let (c, hw, w) = (d[1], d[2] * d[3], d[3]);
    let one = <E::Acc as num_traits::One>::one();
    let wa: Vec<E::Acc> =
        weight.map_or_else(|| vec![one; c], |(wt, l)| map(wt, l, |v: E| v.to_acc()));
    // Σ gy and Σ gy * xhat per channel.
    let sums = per_channel(lx, |ci| {
        let (mut sg, mut sgx) = (E::Acc::zero(), E::Acc::zero());
        let (mean, rstd) = (stats.mean[ci], stats.rstd[ci]);
        let mut k = 0;
        channel_offsets(lx, ci, |o| {
            let (ni, i) = (k / hw, k % hw);
            let g = gy[(ni * c + ci) * hw + i].to_acc();
            sg += g;
            sgx += g * (x[o].to_acc() - mean) * rstd;
            k += 1;
        });
        (sg, sgx)
    });
    let m = E::Acc::of_f64((d[0] * hw) as f64);
    let (sh, sw) = (lx.strides()[2], lx.strides()[3]);
    let mut gx = vec![E::default(); lx.numel()];
    for_planes(&mut gx, hw, 3, |p, o| {
        let ci = p % c;
        let base = plane_base(lx, p);
        let (mean, rstd) = (stats.mean[ci], stats.rstd[ci]);
        let scale = wa[ci] * rstd;
        let (mg, mgx) = (sums[ci].0 / m, sums[ci].1 / m);
        let g = &gy[p * hw..(p + 1) * hw];
        for (i, dst) in o.iter_mut().enumerate() {
            let gv = g[i].to_acc();
            *dst = E::from_acc(if training {
                let xhat = (x[base + (i / w) * sh + (i % w) * sw].to_acc() - mean) * rstd;
                scale * (gv - mg - xhat * mgx)
            } else {
                scale * gv
            });
        }
    });
    BatchNormGrads {
        x: gx,
        weight: sums.iter().map(|s| E::from_acc(s.1)).collect(),
        bias: sums.iter().map(|s| E::from_acc(s.0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 7-loop convolution in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        xd: [usize; 4],
        w: &[f64],
        wd: [usize; 4],
        groups: usize,
        win: &Window2d,
    ) -> Vec<f64> {
        let [n, c, h, wi] = xd;
        let [o, cg, kh, kw] = wd;
        let [oh, ow] = win.out_dims([h, wi]).unwrap();
        let og = o / groups;
        let mut y = vec![0.0; n * o * oh * ow];
        for a in 0..n {
            for oc in 0..o {
                let g = oc / og;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut s = 0.0;
                        for ci in 0..cg {
                            for p in 0..kh {
                                for q in 0..kw {
                                    let ih = (i * win.stride[0] + p * win.dilation[0]) as isize
                                        - win.padding[0] as isize;
                                    let iw = (j * win.stride[1] + q * win.dilation[1]) as isize
                                        - win.padding[1] as isize;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= wi as isize {
                                        continue;
                                    }
                                    let xc = g * cg + ci;
                                    s += x[((a * c + xc) * h + ih as usize) * wi + iw as usize]
                                        * w[((oc * cg + ci) * kh + p) * kw + q];
                                }
                            }
                        }
                        y[((a * o + oc) * oh + i) * ow + j] = s;
                    }
                }
            }
        }
        y
    }

    fn vals(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64) / 500.0 - 1.0)
            .collect()
    }

    /// The gradients of [`naive`] by the same loops: `(gx, gw)`.
    fn naive_backward(
        x: &[f64],
        xd: [usize; 4],
        w: &[f64],
        wd: [usize; 4],
        groups: usize,
        win: &Window2d,
        gy: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let [n, c, h, wi] = xd;
        let [o, cg, kh, kw] = wd;
        let [oh, ow] = win.out_dims([h, wi]).unwrap();
        let og = o / groups;
        let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        for a in 0..n {
            for oc in 0..o {
                for i in 0..oh {
                    for j in 0..ow {
                        let g = gy[((a * o + oc) * oh + i) * ow + j];
                        for ci in 0..cg {
                            for p in 0..kh {
                                for q in 0..kw {
                                    let ih = (i * win.stride[0] + p * win.dilation[0]) as isize
                                        - win.padding[0] as isize;
                                    let iw = (j * win.stride[1] + q * win.dilation[1]) as isize
                                        - win.padding[1] as isize;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= wi as isize {
                                        continue;
                                    }
                                    let xi = ((a * c + oc / og * cg + ci) * h + ih as usize) * wi
                                        + iw as usize;
                                    let wi_ = ((oc * cg + ci) * kh + p) * kw + q;
                                    gx[xi] += g * w[wi_];
                                    gw[wi_] += g * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (gx, gw)
    }

    /// Forward and backward against the loops, on 1 and 2 threads with the
    /// same bits: an image whose weight gradient runs in chunks of output
    /// rows, small images several to a product (forward) and to a chunk
    /// (weight gradient), over several blocks of samples with a short
    /// last one, groups, strides, dilations and a padding past the kernel.
    #[test]
    fn conv_and_gradients_match_direct_loops() {
        let win = |kernel, stride, padding, dilation| Window2d {
            kernel,
            stride,
            padding,
            dilation,
        };
        let cases = [
            (
                [2, 64, 24, 24],
                [8, 64, 3, 3],
                1,
                win([3, 3], [1, 1], [1, 1], [1, 1]),
            ),
            (
                [11, 3, 5, 4],
                [4, 3, 2, 3],
                1,
                win([2, 3], [2, 1], [1, 2], [1, 2]),
            ),
            (
                [3, 4, 6, 7],
                [6, 2, 2, 2],
                2,
                win([2, 2], [1, 2], [3, 1], [1, 1]),
            ),
            (
                [20, 64, 4, 4],
                [8, 64, 3, 3],
                1,
                win([3, 3], [1, 1], [1, 1], [1, 1]),
            ),
            // An empty width whose padding still gives outputs (all bias).
            (
                [2, 3, 4, 0],
                [2, 3, 1, 1],
                1,
                win([1, 1], [1, 1], [1, 1], [1, 1]),
            ),
        ];
        for (xd, wd, groups, win) in cases {
            let x = vals(xd.iter().product(), 1);
            let w = vals(wd.iter().product(), 2);
            let (lx, lw) = (Layout::contiguous(&xd), Layout::contiguous(&wd));
            let want = naive(&x, xd, &w, wd, groups, &win);
            let gy = vals(want.len(), 3);
            let (gx_want, gw_want) = naive_backward(&x, xd, &w, wd, groups, &win, &gy);
            let close = |got: &[f64], want: &[f64], what: &str| {
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() < 1e-11, "{xd:?} {what}: {a} vs {b}");
                }
            };
            let mut runs = Vec::new();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (y, g) = pool.install(|| {
                    let y = conv2d_forward(&x, &lx, &w, &lw, None, groups, &win);
                    let g = conv2d_backward(&x, &lx, &w, &lw, true, groups, &win, &gy);
                    (y, g)
                });
                close(&y, &want, "forward");
                close(&g.x, &gx_want, "input gradient");
                close(&g.weight, &gw_want, "weight gradient");
                runs.push((y, g.x, g.weight, g.bias));
            }
            assert!(runs[0] == runs[1], "{xd:?}: 1 and 2 threads differ");
        }
    }

    #[test]
    fn conv_matches_direct_loop() {
        let win = Window2d {
            kernel: [3, 2],
            stride: [2, 1],
            padding: [1, 2],
            dilation: [2, 1],
        };
        let (xd, wd) = ([2, 4, 7, 5], [6, 2, 3, 2]);
        let x = vals(xd.iter().product(), 1);
        let w = vals(wd.iter().product(), 2);
        let y = conv2d_forward(
            &x,
            &Layout::contiguous(&xd),
            &w,
            &Layout::contiguous(&wd),
            None,
            2,
            &win,
        );
        let want = naive(&x, xd, &w, wd, 2, &win);
        assert_eq!(y.len(), want.len());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn ranges_follow_pytorch() {
        assert_eq!(window_ranges(5, 3, 3, 2, 1), [(0, 2), (1, 4), (3, 5)]);
        assert_eq!(adaptive_ranges(5, 3), [(0, 2), (1, 4), (3, 5)]);
        assert_eq!(adaptive_ranges(4, 1), [(0, 4)]);
    }

    #[test]
    fn max_pool_picks_the_first_maximum() {
        let x = [1.0f32, 3.0, 3.0, 2.0];
        let l = Layout::contiguous(&[1, 1, 2, 2]);
        let (y, arg) = max_pool2d_forward(&x, &l, &[(0, 2)], &[(0, 2)]);
        assert_eq!((y, arg.clone()), (vec![3.0], vec![1]));
        assert_eq!(
            max_pool2d_backward(&[5.0f32], &arg, [1, 1, 2, 2]),
            [0.0, 5.0, 0.0, 0.0]
        );
    }

    #[test]
    fn batch_norm_normalizes_each_channel() {
        // channel 0: 1, 3 (mean 2, var 1); channel 1: 0, 0
        let x = [1.0f64, 0.0, 3.0, 0.0];
        let l = Layout::contiguous(&[2, 2, 1, 1]);
        let s = batch_norm_stats(&x, &l, 0.0);
        assert_eq!(s.mean, [2.0, 0.0]);
        assert_eq!(s.var, [1.0, 0.0]);
        let y = batch_norm_apply(
            &x,
            &l,
            &ChannelStats {
                rstd: vec![1.0, 1.0],
                ..s
            },
            None,
            None,
        );
        assert_eq!(y, [-1.0, 0.0, 1.0, 0.0]);
    }
}
