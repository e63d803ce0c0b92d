//! Matrix multiplication: a packed, cache-blocked GEMM.
//!
//! Operands are read through any [`Layout`] (a transposed or sliced view is
//! just other strides, never a copy). Blocks of `A` (`MC x KC`) and `B`
//! (`KC x NC`) are packed into contiguous panels in the compute type
//! `E::Acc` (low-precision inputs are widened while packing), a register-blocked
//! micro-kernel multiplies an `MR`-row panel of `A` by an `NR`-column panel
//! of `B`, and the result is accumulated in `E::Acc` and rounded once on store.
//!
//! Every output element is summed in the same order whatever the thread
//! count, so results are deterministic. Small problems run on the calling
//! thread; large ones split row blocks (or the batch) over rayon.

use num_traits::Zero;
use rayon::prelude::*;

use crate::{FloatDtype, Layout, Real};

/// Depth of a packed block (the `K` extent kept in cache at once).
const KC: usize = 256;
/// Rows of a packed `A` block (sized for L2).
const MC: usize = 128;
/// Columns of a packed `B` block (sized for L3).
const NC: usize = 2048;
/// Below this many multiply-adds in total a product runs on the calling thread.
pub const PAR_MACS: usize = 1 << 20;

/// `A · B` for 2-D layouts: `la` is `[M, K]`, `lb` is `[K, N]`, any strides.
/// Returns the `[M, N]` product, contiguous row-major.
///
/// ```
/// use zerfoo_kernels::{cpu::matmul::gemm, Layout};
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
/// let l = Layout::contiguous(&[2, 2]);
/// let mut lt = l;
/// lt.swap_axes(0, 1); // the transpose, as a view
/// assert_eq!(gemm(&a, &l, &a, &lt), [5.0, 11.0, 11.0, 25.0]);
/// ```
pub fn gemm<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> Vec<E> {
    assert_eq!(la.rank(), 2, "gemm: lhs must be 2-D, got {:?}", la.shape());
    assert_eq!(lb.rank(), 2, "gemm: rhs must be 2-D, got {:?}", lb.shape());
    gemm_batched(a, la, b, lb)
}

/// A batch of products: `la` is `[..batch, M, K]`, `lb` is `[..batch, K, N]`
/// with the same batch dims. The batch strides say where each pair lives; a
/// stride of 0 repeats an operand across the batch (broadcast). Returns
/// `[..batch, M, N]`, contiguous row-major.
///
/// ```
/// use zerfoo_kernels::{cpu::matmul::gemm_batched, Layout};
/// // two 1x2 rows times one shared 2x1 column (batch stride 0)
/// let a = [1.0f64, 2.0, 3.0, 4.0];
/// let b = [10.0f64, 1.0];
/// let la = Layout::contiguous(&[2, 1, 2]);
/// let lb = Layout::new(&[2, 2, 1], &[0, 1, 1], 0);
/// assert_eq!(gemm_batched(&a, &la, &b, &lb), [12.0, 34.0]);
/// ```
pub fn gemm_batched<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> Vec<E> {
    let p = Problem::new(la, lb, "gemm_batched");
    let (m, n, k) = (p.m, p.n, p.k);
    let batch = p.a_bases.len();
    let mut out = vec![E::default(); batch * m * n];
    if out.is_empty() {
        return out;
    }
    let a_rows: Vec<usize> = (0..m).map(|i| i * p.sam).collect();
    let a_cols: Vec<usize> = (0..k).map(|i| i * p.sak).collect();
    let b_rows: Vec<usize> = (0..k).map(|i| i * p.sbk).collect();
    let b_cols: Vec<usize> = (0..n).map(|j| j * p.sbn).collect();
    let macs = m * n * k;
    let threads = rayon::current_num_threads();
    let one = |bi: usize, c: &mut Vec<E::Acc>, out: &mut [E], parallel: bool| {
        c.clear();
        c.resize(m * n, E::Acc::zero());
        let ops = Operands {
            a,
            a_base: p.a_bases[bi],
            a_rows: &a_rows,
            a_cols: &a_cols,
            b,
            b_base: p.b_bases[bi],
            b_rows: &b_rows,
            b_cols: &b_cols,
        };
        run(&ops, c, parallel);
        store(c, out, parallel);
    };
    if macs * batch < PAR_MACS || threads == 1 {
        let mut c = Vec::new();
        for (bi, o) in out.chunks_exact_mut(m * n).enumerate() {
            one(bi, &mut c, o, false);
        }
    } else if batch > 1 && (macs < PAR_MACS || batch >= threads) {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each_init(Vec::new, |c, (bi, o)| one(bi, c, o, false));
    } else {
        let mut c = Vec::new();
        for (bi, o) in out.chunks_exact_mut(m * n).enumerate() {
            one(bi, &mut c, o, true);
        }
    }
    out
}

/// The sum over the batch of the products: `la` is `[..batch, M, K]`, `lb`
/// is `[..batch, K, N]`; returns `Σ_batch A_b · B_b` as `[M, N]`.
///
/// This is one GEMM whose depth runs over `(batch, K)`: the gradient of a
/// right operand that was broadcast over the batch.
pub fn gemm_batch_sum<E: FloatDtype>(a: &[E], la: &Layout, b: &[E], lb: &Layout) -> Vec<E> {
    let p = Problem::new(la, lb, "gemm_batch_sum");
    let (m, n, k) = (p.m, p.n, p.k);
    let mut out = vec![E::default(); m * n];
    if out.is_empty() {
        return out;
    }
    let kk = p.a_bases.len() * k;
    let a_rows: Vec<usize> = (0..m).map(|i| i * p.sam).collect();
    let a_cols: Vec<usize> = p
        .a_bases
        .iter()
        .flat_map(|&o| (0..k).map(move |i| o + i * p.sak))
        .collect();
    let b_rows: Vec<usize> = p
        .b_bases
        .iter()
        .flat_map(|&o| (0..k).map(move |i| o + i * p.sbk))
        .collect();
    let b_cols: Vec<usize> = (0..n).map(|j| j * p.sbn).collect();
    let parallel = m * n * kk >= PAR_MACS && rayon::current_num_threads() > 1;
    let mut c = vec![E::Acc::zero(); m * n];
    let ops = Operands {
        a,
        a_base: 0,
        a_rows: &a_rows,
        a_cols: &a_cols,
        b,
        b_base: 0,
        b_rows: &b_rows,
        b_cols: &b_cols,
    };
    run(&ops, &mut c, parallel);
    store(&c, &mut out, parallel);
    out
}

/// Dims, inner strides and per-batch base offsets of a batched product.
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    sam: usize,
    sak: usize,
    sbk: usize,
    sbn: usize,
    a_bases: Vec<usize>,
    b_bases: Vec<usize>,
}

impl Problem {
    fn new(la: &Layout, lb: &Layout, name: &str) -> Self {
        let (ra, rb) = (la.rank(), lb.rank());
        assert!(
            ra >= 2 && ra == rb,
            "{name}: operands must have the same rank >= 2, got {:?} and {:?}",
            la.shape(),
            lb.shape()
        );
        let (sa, sb) = (la.shape(), lb.shape());
        assert!(
            sa[..ra - 2] == sb[..rb - 2] && sa[ra - 1] == sb[rb - 2],
            "{name}: cannot multiply {sa:?} by {sb:?}"
        );
        let (ta, tb) = (la.strides(), lb.strides());
        let bases = |l: &Layout, r: usize| {
            Layout::new(&l.shape()[..r - 2], &l.strides()[..r - 2], l.offset).offsets()
        };
        Problem {
            m: sa[ra - 2],
            k: sa[ra - 1],
            n: sb[rb - 1],
            sam: ta[ra - 2],
            sak: ta[ra - 1],
            sbk: tb[rb - 2],
            sbn: tb[rb - 1],
            a_bases: bases(la, ra),
            b_bases: bases(lb, rb),
        }
    }
}

/// One product's operands: `A[i, k] = a[a_base + a_rows[i] + a_cols[k]]`,
/// `B[k, j] = b[b_base + b_rows[k] + b_cols[j]]`. Offset tables (instead of
/// strides) let the depth run over several axes (a batch sum).
struct Operands<'a, E> {
    a: &'a [E],
    a_base: usize,
    a_rows: &'a [usize],
    a_cols: &'a [usize],
    b: &'a [E],
    b_base: usize,
    b_rows: &'a [usize],
    b_cols: &'a [usize],
}

/// Rounds the accumulated product into the output.
fn store<E: FloatDtype>(c: &[E::Acc], out: &mut [E], parallel: bool) {
    const CH: usize = 1 << 14;
    let body = |(o, c): (&mut [E], &[E::Acc])| {
        for (o, &v) in o.iter_mut().zip(c) {
            *o = E::from_acc(v);
        }
    };
    if parallel {
        out.par_chunks_mut(CH).zip(c.par_chunks(CH)).for_each(body);
    } else {
        body((out, c));
    }
}

/// `c += A · B` (`c` is `[M, N]` row-major) with the micro-kernel shape
/// suited to the compute type: 4x8 for `f32`, 4x4 for `f64` (as many
/// accumulators as 16 SSE registers hold).
fn run<E: FloatDtype>(ops: &Operands<'_, E>, c: &mut [E::Acc], parallel: bool) {
    if core::mem::size_of::<E::Acc>() == 4 {
        blocked::<E, 4, 8>(ops, c, parallel);
    } else {
        blocked::<E, 4, 4>(ops, c, parallel);
    }
}

/// The blocked loop nest: column blocks of `NC`, depth blocks of `KC` (one
/// packed `B` block shared by all threads), row blocks of `MC` (each packs
/// its own `A` block), then `NR`-wide by `MR`-tall register tiles.
fn blocked<E: FloatDtype, const MR: usize, const NR: usize>(
    ops: &Operands<'_, E>,
    c: &mut [E::Acc],
    parallel: bool,
) {
    let (m, n, k) = (ops.a_rows.len(), ops.b_cols.len(), ops.a_cols.len());
    debug_assert_eq!(c.len(), m * n);
    let mc = if parallel {
        let per_thread = m.div_ceil(rayon::current_num_threads());
        per_thread.div_ceil(MR).max(1) * MR
    } else {
        MC
    }
    .min(MC);
    let mut bp: Vec<E::Acc> = Vec::new();
    let mut ap: Vec<E::Acc> = Vec::new();
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            pack_b::<E, NR>(ops, pc, kc, jc, nc, &mut bp, parallel);
            let block = |ic: usize, cblk: &mut [E::Acc], ap: &mut Vec<E::Acc>| {
                let rows = cblk.len() / n;
                pack_a::<E, MR>(ops, ic, rows, pc, kc, ap);
                macro_kernel::<E::Acc, MR, NR>(ap, &bp, kc, rows, nc, jc, n, cblk);
            };
            if parallel {
                c.par_chunks_mut(mc * n)
                    .enumerate()
                    .for_each_init(Vec::new, |ap, (ib, cblk)| block(ib * mc, cblk, ap));
            } else {
                for (ib, cblk) in c.chunks_mut(mc * n).enumerate() {
                    block(ib * mc, cblk, &mut ap);
                }
            }
        }
    }
}

/// Packs rows `ic..ic + mc`, depth `pc..pc + kc` of `A` into `MR`-row
/// panels, each stored depth-major (`MR` values per depth step), zero-padded.
fn pack_a<E: FloatDtype, const MR: usize>(
    ops: &Operands<'_, E>,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    ap: &mut Vec<E::Acc>,
) {
    let panels = mc.div_ceil(MR);
    ap.clear();
    ap.resize(panels * kc * MR, E::Acc::zero());
    let cols = &ops.a_cols[pc..pc + kc];
    for (ip, panel) in ap.chunks_exact_mut(kc * MR).enumerate() {
        let r0 = ip * MR;
        for i in 0..MR.min(mc - r0) {
            let base = ops.a_base + ops.a_rows[ic + r0 + i];
            for (dst, &co) in panel[i..].iter_mut().step_by(MR).zip(cols) {
                *dst = ops.a[base + co].to_acc();
            }
        }
    }
}

/// Packs depth `pc..pc + kc`, columns `jc..jc + nc` of `B` into `NR`-column
/// panels, each stored depth-major (`NR` values per depth step), zero-padded.
fn pack_b<E: FloatDtype, const NR: usize>(
    ops: &Operands<'_, E>,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    bp: &mut Vec<E::Acc>,
    parallel: bool,
) {
    let panels = nc.div_ceil(NR);
    bp.clear();
    bp.resize(panels * kc * NR, E::Acc::zero());
    let rows = &ops.b_rows[pc..pc + kc];
    let body = |(jp, panel): (usize, &mut [E::Acc])| {
        let j0 = jc + jp * NR;
        let cols = &ops.b_cols[j0..j0 + NR.min(nc - jp * NR)];
        for (dst, &ro) in panel.chunks_exact_mut(NR).zip(rows) {
            let base = ops.b_base + ro;
            for (d, &co) in dst.iter_mut().zip(cols) {
                *d = ops.b[base + co].to_acc();
            }
        }
    };
    if parallel {
        bp.par_chunks_mut(kc * NR).enumerate().for_each(body);
    } else {
        bp.chunks_mut(kc * NR).enumerate().for_each(body);
    }
}

/// Multiplies a packed `A` block (`mc x kc`) by a packed `B` block
/// (`kc x nc`) and adds the result to rows `0..mc`, columns `jc..jc + nc`
/// of `c` (row length `ldc`).
#[allow(clippy::too_many_arguments)]
fn macro_kernel<A: Real, const MR: usize, const NR: usize>(
    ap: &[A],
    bp: &[A],
    kc: usize,
    mc: usize,
    nc: usize,
    jc: usize,
    ldc: usize,
    c: &mut [A],
) {
    for (jp, bpanel) in bp.chunks_exact(kc * NR).enumerate() {
        let j0 = jp * NR;
        let cols = NR.min(nc - j0);
        for (ip, apanel) in ap.chunks_exact(kc * MR).enumerate() {
            let i0 = ip * MR;
            let t = micro::<A, MR, NR>(apanel, bpanel);
            for (i, trow) in t.iter().enumerate().take(MR.min(mc - i0)) {
                let start = (i0 + i) * ldc + jc + j0;
                for (cv, &tv) in c[start..start + cols].iter_mut().zip(trow) {
                    *cv += tv;
                }
            }
        }
    }
}

/// The register tile: `MR x NR` accumulators, one rank-1 update per depth
/// step. Fixed-size arrays let LLVM keep the tile in registers and vectorize
/// the `NR` loop.
#[inline(always)]
fn micro<A: Real, const MR: usize, const NR: usize>(ap: &[A], bp: &[A]) -> [[A; NR]; MR] {
    let mut acc = [[A::zero(); NR]; MR];
    for (a, b) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)) {
        let a: &[A; MR] = a.try_into().expect("panel of MR");
        let b: &[A; NR] = b.try_into().expect("panel of NR");
        for i in 0..MR {
            let ai = a[i];
            for j in 0..NR {
                acc[i][j] += ai * b[j];
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bf16, f16};

    /// Deterministic values in [-1, 1).
    fn vals(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// The textbook triple loop, in f64, through layouts.
    fn naive(a: &[f64], la: &Layout, b: &[f64], lb: &Layout) -> Vec<f64> {
        let (m, k, n) = (la.shape()[0], la.shape()[1], lb.shape()[1]);
        let (sa, sb) = (la.strides(), lb.strides());
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s +=
                        a[la.offset + i * sa[0] + p * sa[1]] * b[lb.offset + p * sb[0] + j * sb[1]];
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    fn max_rel(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let den = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        got.iter()
            .zip(want)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()))
            / den
    }

    fn check_f64(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) {
        let a = vals(m * k + 3, (m * 31 + k) as u64);
        let b = vals(k * n + 5, (n * 17 + k) as u64);
        // A stored as [M, K] or as [K, M] viewed transposed; offsets exercise non-zero starts.
        let la = if trans_a {
            Layout::new(&[m, k], &[1, m], 3)
        } else {
            Layout::new(&[m, k], &[k, 1], 3)
        };
        let lb = if trans_b {
            Layout::new(&[k, n], &[1, k], 5)
        } else {
            Layout::new(&[k, n], &[n, 1], 5)
        };
        let got = gemm(&a, &la, &b, &lb);
        let want = naive(&a, &la, &b, &lb);
        let e = max_rel(&got, &want);
        assert!(
            e < 1e-13,
            "{m}x{k}x{n} (ta {trans_a}, tb {trans_b}): rel err {e:e}"
        );
    }

    #[test]
    fn matches_naive_at_odd_sizes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 1),
            (7, 7, 7),
            (7, 1, 9),
            (33, 33, 33),
            (5, 129, 3),
            (129, 33, 7),
            (3, 300, 130),
            (130, 257, 9),
        ] {
            check_f64(m, k, n, false, false);
            check_f64(m, k, n, true, false);
            check_f64(m, k, n, false, true);
            check_f64(m, k, n, true, true);
        }
    }

    #[test]
    fn large_problem_uses_threads_and_agrees() {
        // Crosses MC, KC and the threading threshold; wide enough to span two NC blocks.
        check_f64(131, 261, 67, false, true);
        check_f64(70, 40, NC + 9, true, false);
    }

    #[test]
    fn strided_views() {
        // Every other row and column of a 10x12 matrix, times a column slice of another.
        let a = vals(10 * 12, 1);
        let b = vals(6 * 9, 2);
        let la = Layout::new(&[5, 6], &[24, 2], 1);
        let lb = Layout::contiguous(&[6, 9]).narrow(1, 2, 4);
        let got = gemm(&a, &la, &b, &lb);
        assert!(max_rel(&got, &naive(&a, &la, &b, &lb)) < 1e-14);
    }

    #[test]
    fn empty_and_zero_depth() {
        let a: Vec<f32> = vec![];
        assert!(gemm(
            &a,
            &Layout::contiguous(&[0, 3]),
            &[0.0f32; 6],
            &Layout::contiguous(&[3, 2])
        )
        .is_empty());
        let z = gemm(
            &a,
            &Layout::contiguous(&[2, 0]),
            &a,
            &Layout::contiguous(&[0, 3]),
        );
        assert_eq!(z, vec![0.0f32; 6]);
    }

    #[test]
    fn batched_with_broadcast_rhs_and_batch_sum() {
        let (bt, m, k, n) = (3, 5, 7, 4);
        let a = vals(bt * m * k, 3);
        let b = vals(k * n, 4);
        let la = Layout::contiguous(&[bt, m, k]);
        let lb = Layout::new(&[bt, k, n], &[0, n, 1], 0);
        let got = gemm_batched(&a, &la, &b, &lb);
        let l2 = Layout::contiguous(&[k, n]);
        for i in 0..bt {
            let lai = Layout::new(&[m, k], &[k, 1], i * m * k);
            let want = naive(&a, &lai, &b, &l2);
            assert!(max_rel(&got[i * m * n..(i + 1) * m * n], &want) < 1e-14);
        }
        // Σ_b A_bᵀ · C_b with A_bᵀ a transposed view ([bt, k, m]).
        let c = vals(bt * m * n, 5);
        let lat = Layout::new(&[bt, k, m], &[m * k, 1, k], 0);
        let lc = Layout::contiguous(&[bt, m, n]);
        let got = gemm_batch_sum(&a, &lat, &c, &lc);
        let mut want = vec![0.0; k * n];
        for i in 0..bt {
            let lai = Layout::new(&[k, m], &[1, k], i * m * k);
            let lci = Layout::new(&[m, n], &[n, 1], i * m * n);
            for (w, v) in want.iter_mut().zip(naive(&a, &lai, &c, &lci)) {
                *w += v;
            }
        }
        assert!(max_rel(&got, &want) < 1e-14);
    }

    #[test]
    fn batched_over_two_permuted_axes() {
        // A stored as [H, B, M, K] and viewed as [B, H, M, K]: batch strides are not uniform.
        let (b_, h, m, k, n) = (2, 3, 4, 5, 6);
        let a = vals(b_ * h * m * k, 6);
        let b = vals(b_ * h * k * n, 7);
        let la = Layout::contiguous(&[h, b_, m, k]).permute(&[1, 0, 2, 3]);
        let lb = Layout::contiguous(&[b_, h, k, n]);
        let got = gemm_batched(&a, &la, &b, &lb);
        for bi in 0..b_ {
            for hi in 0..h {
                let lai = Layout::new(&[m, k], &[k, 1], (hi * b_ + bi) * m * k);
                let lbi = Layout::new(&[k, n], &[n, 1], (bi * h + hi) * k * n);
                let o = (bi * h + hi) * m * n;
                assert!(max_rel(&got[o..o + m * n], &naive(&a, &lai, &b, &lbi)) < 1e-14);
            }
        }
        // Many large-enough products: the batch-parallel path.
        let (bt, m, k, n) = (16, 40, 50, 60);
        let a = vals(bt * m * k, 8);
        let b = vals(bt * k * n, 9);
        let got = gemm_batched(
            &a,
            &Layout::contiguous(&[bt, m, k]),
            &b,
            &Layout::contiguous(&[bt, k, n]),
        );
        for i in [0, 7, 15] {
            let lai = Layout::new(&[m, k], &[k, 1], i * m * k);
            let lbi = Layout::new(&[k, n], &[n, 1], i * k * n);
            let o = i * m * n;
            assert!(max_rel(&got[o..o + m * n], &naive(&a, &lai, &b, &lbi)) < 1e-13);
        }
    }

    /// Low-precision inputs are widened exactly and the f32 sum rounded once.
    #[test]
    fn low_precision_rounds_once() {
        let (m, k, n) = (9, 33, 7);
        let a64 = vals(m * k, 10);
        let b64 = vals(k * n, 11);
        let la = Layout::contiguous(&[m, k]);
        let lb = Layout::contiguous(&[k, n]);
        fn via<E: FloatDtype>(
            a: &[f64],
            la: &Layout,
            b: &[f64],
            lb: &Layout,
        ) -> (Vec<f64>, Vec<f64>) {
            let a: Vec<E> = a.iter().map(|&v| E::from_f64(v)).collect();
            let b: Vec<E> = b.iter().map(|&v| E::from_f64(v)).collect();
            let got = gemm(&a, la, &b, lb).iter().map(|v| v.to_f64()).collect();
            let a: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
            let b: Vec<f64> = b.iter().map(|v| v.to_f64()).collect();
            (got, naive(&a, la, &b, lb))
        }
        let (g, w) = via::<f32>(&a64, &la, &b64, &lb);
        assert!(max_rel(&g, &w) < 1e-5);
        let (g, w) = via::<f16>(&a64, &la, &b64, &lb);
        assert!(max_rel(&g, &w) < 2e-3);
        let (g, w) = via::<bf16>(&a64, &la, &b64, &lb);
        assert!(max_rel(&g, &w) < 1e-2);
    }

    /// Rough f32 throughput at 512^3 (run with `--release -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn bench_f32_512() {
        let n = 512;
        let a: Vec<f32> = vals(n * n, 1).iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = vals(n * n, 2).iter().map(|&v| v as f32).collect();
        let l = Layout::contiguous(&[n, n]);
        let _ = gemm(&a, &l, &b, &l);
        for threads in [1, rayon::current_num_threads()] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            // Best of several runs: the machine may be shared.
            let s = (0..10)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(pool.install(|| gemm(&a, &l, &b, &l)));
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            println!(
                "f32 512^3 on {threads} thread(s): {:.2} ms, {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (n * n * n) as f64 / s / 1e9
            );
        }
    }
}
