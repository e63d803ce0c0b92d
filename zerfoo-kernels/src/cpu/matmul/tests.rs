use super::*;
use crate::f16;

/// Deterministic values in [-1, 1).
pub(super) fn vals(n: usize, seed: u64) -> Vec<f64> {
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
                s += a[la.offset + i * sa[0] + p * sa[1]] * b[lb.offset + p * sb[0] + j * sb[1]];
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

/// A right operand shared by the batch runs as one `[batch * M, K]`
/// product: also when the batch rows of A are not evenly spaced (a permuted
/// view, read through packing) and when the product is large enough to thread.
#[test]
fn shared_rhs_merges_the_batch() {
    let (b_, h, m, k, n) = (3, 2, 33, 70, 45);
    let a = vals(b_ * h * m * k, 61);
    let b = vals(k * n, 62);
    // A stored as [H, B, M, K], viewed as [B, H, M, K]; B broadcast over both.
    let la = Layout::contiguous(&[h, b_, m, k]).permute(&[1, 0, 2, 3]);
    let lb = Layout::new(&[b_, h, k, n], &[0, 0, n, 1], 0);
    let l2 = Layout::contiguous(&[k, n]);
    for kern in kernels::<f64>() {
        for threads in [1, 2] {
            let got = on_threads(threads, || {
                gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern)
            });
            for bi in 0..b_ {
                for hi in 0..h {
                    let lai = Layout::new(&[m, k], &[k, 1], (hi * b_ + bi) * m * k);
                    let o = (bi * h + hi) * m * n;
                    let want = naive(&a, &lai, &b, &l2);
                    assert!(max_rel(&got[o..o + m * n], &want) < 1e-13, "{}", kern.name);
                }
            }
        }
    }
    // Contiguous A, big enough for threads (> PAR_MACS multiply-adds).
    let (bt, m, k, n) = (12, 64, 128, 200);
    let a = vals(bt * m * k, 63);
    let b = vals(k * n, 64);
    let la = Layout::contiguous(&[bt, m, k]);
    let lb = Layout::new(&[bt, k, n], &[0, n, 1], 0);
    assert!(bt * m * k * n > PAR_MACS);
    let got = gemm_batched(&a, &la, &b, &lb);
    let l2 = Layout::contiguous(&[k, n]);
    for i in [0, 5, 11] {
        let lai = Layout::new(&[m, k], &[k, 1], i * m * k);
        let o = i * m * n;
        assert!(max_rel(&got[o..o + m * n], &naive(&a, &lai, &b, &l2)) < 1e-13);
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
    fn via<E: FloatDtype>(a: &[f64], la: &Layout, b: &[f64], lb: &Layout) -> (Vec<f64>, Vec<f64>) {
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

/// Every kernel this CPU can run: the chosen one, the AVX2 and AVX-512
/// ones where available, and the portable one.
fn kernels<A: Real>() -> Vec<Kernel<A>> {
    use std::any::TypeId;
    let mut v = vec![kernel::kernel::<A>()];
    let cast = |k: Kernel<f32>| -> Kernel<A> {
        assert_eq!(TypeId::of::<A>(), TypeId::of::<f32>());
        // SAFETY: `A` is `f32` (checked).
        unsafe { core::mem::transmute_copy(&k) }
    };
    let cast64 = |k: Kernel<f64>| -> Kernel<A> {
        assert_eq!(TypeId::of::<A>(), TypeId::of::<f64>());
        // SAFETY: `A` is `f64` (checked).
        unsafe { core::mem::transmute_copy(&k) }
    };
    if TypeId::of::<A>() == TypeId::of::<f32>() {
        #[cfg(target_arch = "x86_64")]
        v.extend(
            x86::avx512_f32()
                .into_iter()
                .chain(x86::avx2_f32())
                .map(cast),
        );
        v.push(cast(generic::f32_kernel()));
    } else {
        #[cfg(target_arch = "x86_64")]
        v.extend(
            x86::avx512_f64()
                .into_iter()
                .chain(x86::avx2_f64())
                .map(cast64),
        );
        v.push(cast64(generic::f64_kernel()));
    }
    v
}

/// Layout of an `[r, c]` operand: row-major, transposed, or every other
/// row and column of a bigger buffer; `off` leading elements are skipped.
fn lay(r: usize, c: usize, kind: usize, off: usize) -> (Layout, usize) {
    match kind {
        0 => (Layout::new(&[r, c], &[c, 1], off), off + r * c),
        1 => (Layout::new(&[r, c], &[1, r], off), off + r * c),
        _ => (Layout::new(&[r, c], &[4 * c, 2], off), off + 4 * r * c),
    }
}

/// Every kernel, every layout kind, threaded and not, against the naive product.
fn check_all_kernels_f64(m: usize, k: usize, n: usize) {
    for ka in 0..3 {
        for kb in 0..3 {
            let (la, na) = lay(m, k, ka, 3);
            let (lb, nb) = lay(k, n, kb, 5);
            let a = vals(na, (m * 31 + k + ka) as u64);
            let b = vals(nb, (n * 17 + k + kb) as u64);
            let want = naive(&a, &la, &b, &lb);
            for kern in kernels::<f64>() {
                for threads in [1, 2, 3] {
                    let got = on_threads(threads, || {
                        gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern)
                    });
                    let e = max_rel(&got, &want);
                    assert!(
                        e < 1e-13,
                        "{m}x{k}x{n} kinds ({ka}, {kb}) kernel {} threads {threads}: rel err {e:e}",
                        kern.name
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_layout_and_thread_count() {
    for &(m, k, n) in &[(1, 1, 1), (7, 3, 9), (15, 17, 33), (29, 40, 17), (6, 5, 65)] {
        check_all_kernels_f64(m, k, n);
    }
}

#[test]
fn every_kernel_crosses_block_sizes() {
    // Non-multiples of MR (14, 6, 4), NR, KC (256), MC (336); big enough to thread.
    check_all_kernels_f64(MC + 13, KC + 7, 71);
    check_all_kernels_f64(129, 2 * KC + 3, 129);
}

#[test]
fn crosses_nc_and_splits_columns() {
    // Wider than NC (each of 2 threads' own columns too); few rows so the
    // threaded path splits columns; A read in place (row-major) or packed
    // (transposed: the shared-B row split).
    let (m, k, n) = (5, 300, 2 * NC + 37);
    let a = vals(m * k, 21);
    let b = vals(k * n, 22);
    let lb = Layout::contiguous(&[k, n]);
    for la in [
        Layout::contiguous(&[m, k]),
        Layout::new(&[m, k], &[1, m], 0),
    ] {
        let want = naive(&a, &la, &b, &lb);
        for threads in [1, 2, 4] {
            let got = on_threads(threads, || gemm(&a, &la, &b, &lb));
            assert!(max_rel(&got, &want) < 1e-13);
        }
    }
}

/// f32 through every kernel: threaded and single-threaded results are bit-identical.
#[test]
fn threads_agree_bitwise_f32() {
    let (m, k, n) = (301, 520, 203);
    let a: Vec<f32> = vals(m * k, 31).iter().map(|&v| v as f32).collect();
    let b: Vec<f32> = vals(k * n, 32).iter().map(|&v| v as f32).collect();
    let (la, lb) = (
        Layout::contiguous(&[m, k]),
        Layout::new(&[k, n], &[1, k], 0),
    );
    let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let want = naive(&a64, &la, &b64, &lb);
    for kern in kernels::<f32>() {
        let r1 = on_threads(1, || gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern));
        let r2 = on_threads(2, || gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern));
        assert_eq!(r1, r2, "kernel {}", kern.name);
        let g: Vec<f64> = r1.iter().map(|&v| v as f64).collect();
        assert!(max_rel(&g, &want) < 1e-5, "kernel {}", kern.name);
    }
}

/// A packed (transposed) A, split over threads by columns (no more rows
/// than columns) or by rows with a private B each (taller): bit-identical
/// to one thread.
#[test]
fn packed_a_thread_splits_agree_bitwise_f32() {
    for (m, k, n) in [(128, 769, 130), (385, 300, 129), (29, 40, 300)] {
        let a: Vec<f32> = vals(m * k, 33).iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = vals(k * n, 34).iter().map(|&v| v as f32).collect();
        let (la, lb) = (
            Layout::new(&[m, k], &[1, m], 0),
            Layout::contiguous(&[k, n]),
        );
        let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let want = naive(&a64, &la, &b64, &lb);
        let r1 = on_threads(1, || gemm(&a, &la, &b, &lb));
        for threads in [2, 3] {
            let r = on_threads(threads, || gemm(&a, &la, &b, &lb));
            assert_eq!(r1, r, "{m}x{k}x{n}, {threads} threads");
        }
        let g: Vec<f64> = r1.iter().map(|&v| v as f64).collect();
        assert!(max_rel(&g, &want) < 1e-5, "{m}x{k}x{n}");
    }
}

/// A transposed `A` read in place (each depth step a run of adjacent rows:
/// a weight gradient's `Xᵀ`, see `StepsFn`) gives the very bits of the
/// same kernel reading it packed: tail panels of several lengths, one and
/// several depth blocks, an offset start, the depth steps further apart
/// than the rows (a slice of wider rows), 1 and 2 threads, f32 and f64.
#[test]
fn transposed_a_in_place_matches_packed_bitwise() {
    fn one<A: Real + FloatDtype<Acc = A>>() {
        let in_place: Vec<Kernel<A>> = kernels::<A>()
            .into_iter()
            .filter(|k| k.ft.is_some())
            .collect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            in_place.is_empty(),
            !crate::cpu::simd::has_avx512(),
            "the AVX-512 kernels read a transposed A in place"
        );
        for kern in in_place {
            let packed = Kernel { ft: None, ..kern };
            for (m, k, n) in [(13, 5, 33), (29, KC + 9, 70), (MC + 27, 2 * KC + 1, 65)] {
                // A[i, p] at 7 + p * (m + 3) + i: a [k, m + 3] matrix, transposed and narrowed.
                let a: Vec<A> = vals(7 + k * (m + 3), 97)
                    .into_iter()
                    .map(<A as crate::Dtype>::from_f64)
                    .collect();
                let la = Layout::new(&[m, k], &[1, m + 3], 7);
                let b: Vec<A> = vals(k * n, 98)
                    .into_iter()
                    .map(<A as crate::Dtype>::from_f64)
                    .collect();
                let lb = Layout::contiguous(&[k, n]);
                for threads in [1, 2] {
                    let run = |kern| {
                        on_threads(threads, || {
                            gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern)
                        })
                    };
                    let (got, want) = (run(kern), run(packed));
                    let bits = |v: &[A]| -> Vec<u64> {
                        v.iter()
                            .map(|x| crate::Dtype::to_f64(*x).to_bits())
                            .collect()
                    };
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{:?} {m}x{k}x{n}, kernel {}, {threads} threads",
                        <A as crate::Dtype>::DTYPE,
                        kern.name
                    );
                }
            }
        }
    }
    one::<f32>();
    one::<f64>();
}

/// The threads' other splits of a product: by depth blocks (deeper than
/// wide and tall, e.g. a weight gradient summed over a batch of tokens:
/// 2, 3 or 4 blocks, odd sizes, f32 and f64), by rows with a private copy
/// of a small `B` (a row-major `A` read in place, taller than wide), and by
/// columns for such products with few row panels a thread over several
/// depth blocks: bit-identical to one thread on 2, 3 and 4 threads, and
/// matching the naive product.
#[test]
fn depth_and_private_b_splits_agree_bitwise() {
    fn one<E: FloatDtype>(tol: f64) {
        let cast = |v: Vec<f64>| -> Vec<E> { v.into_iter().map(E::from_f64).collect() };
        let wide = |v: &[E]| -> Vec<f64> { v.iter().map(|x| x.to_f64()).collect() };
        // (batch, m, k per batch, n): depth 2 x 385 = 770 (2 blocks), 1537 (4),
        // 1100 (3); each over `PAR_MACS`, so threaded.
        for (bt, m, k, n) in [(2, 57, 385, 49), (1, 129, 1537, 7), (4, 130, 275, 131)] {
            let a = cast(vals(bt * k * m, 61));
            let b = cast(vals(bt * k * n, 62));
            // Σ_b A_bᵀ · B_b, A_bᵀ a transposed view of [bt, k, m].
            let la = Layout::new(&[bt, m, k], &[m * k, 1, m], 0);
            let lb = Layout::contiguous(&[bt, k, n]);
            let one_thread = on_threads(1, || gemm_batch_sum(&a, &la, &b, &lb));
            for threads in [2, 3, 4] {
                let r = on_threads(threads, || gemm_batch_sum(&a, &la, &b, &lb));
                assert!(r == one_thread, "{bt}x{m}x{k}x{n}, {threads} threads");
            }
            let (a64, b64) = (wide(&a), wide(&b));
            let mut want = vec![0.0; m * n];
            for i in 0..bt {
                let lai = Layout::new(&[m, k], &[1, m], i * m * k);
                let lbi = Layout::new(&[k, n], &[n, 1], i * k * n);
                for (w, v) in want.iter_mut().zip(naive(&a64, &lai, &b64, &lbi)) {
                    *w += v;
                }
            }
            assert!(max_rel(&wide(&one_thread), &want) < tol, "{bt}x{m}x{k}x{n}");
        }
        // A row-major A read in place, taller than wide, a small B; then
        // more than one depth block with few row panels a thread, which
        // split by columns instead (`COARSE_PANELS`; shallower than tall,
        // so the depth split does not take them; the last has too few
        // columns for that and too many panels for 2 threads: rows).
        for (m, k, n) in [
            (701, 129, 33),
            (300, 64, 70),
            (97, 500, 45),
            (800, 700, 200),
            (600, 550, 150),
            (1000, 700, 90),
        ] {
            let a = cast(vals(m * k, 63));
            let b = cast(vals(k * n, 64));
            let (la, lb) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
            let one_thread = on_threads(1, || gemm(&a, &la, &b, &lb));
            for threads in [2, 3, 4] {
                let r = on_threads(threads, || gemm(&a, &la, &b, &lb));
                assert!(r == one_thread, "{m}x{k}x{n}, {threads} threads");
            }
            let want = naive(&wide(&a), &la, &wide(&b), &lb);
            assert!(max_rel(&wide(&one_thread), &want) < tol, "{m}x{k}x{n}");
        }
    }
    one::<f32>(1e-5);
    one::<f64>(1e-13);
}

/// A `bf16` product taller than wide with its `A` read in place, which the
/// threads split by columns (odd sizes, one and two depth blocks, the
/// last column block partial; the last shape has too few columns to split
/// and shares B instead): bit-identical on 2, 3 and 4 threads to one
/// thread, and the exact product rounded once.
#[test]
fn tall_bf16_products_split_by_columns_agree_bitwise() {
    for (m, k, n) in [(701, 129, 200), (300, 1100, 161), (130, 64, 97)] {
        let (a, a64) = bf16s(&vals(m * k, 71));
        let (b, b64) = bf16s(&vals(k * n, 72));
        let (la, lb) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        let one_thread = on_threads(1, || gemm(&a, &la, &b, &lb));
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for threads in [2, 3, 4] {
            let r = on_threads(threads, || gemm(&a, &la, &b, &lb));
            assert_eq!(
                bits(&r),
                bits(&one_thread),
                "{m}x{k}x{n}, {threads} threads"
            );
        }
        let (want, mag) = reference(&a64, &la, &b64, &lb);
        assert_bf16_close(&one_thread, &want, &mag, &format!("{m}x{k}x{n}"));
    }
}

/// Every dtype, every kernel, odd sizes and a transposed operand: exactly
/// the f32 (f64) sum of the widened inputs, rounded once.
#[test]
fn every_dtype_rounds_once() {
    use crate::f8::{F8E4M3, F8E5M2};
    fn one<E: FloatDtype>(m: usize, k: usize, n: usize, tol: f64) {
        let a: Vec<E> = vals(m * k, 41).iter().map(|&v| E::from_f64(v)).collect();
        let b: Vec<E> = vals(k * n, 42).iter().map(|&v| E::from_f64(v)).collect();
        let la = Layout::contiguous(&[m, k]);
        let lb = Layout::new(&[k, n], &[1, k], 0);
        let a64: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
        let b64: Vec<f64> = b.iter().map(|v| v.to_f64()).collect();
        let want = naive(&a64, &la, &b64, &lb);
        for kern in kernels::<E::Acc>() {
            let got = gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern);
            for (g, w) in got.iter().zip(&want) {
                // One rounding of (nearly) the exact sum: within half an ulp plus the f32 sum error.
                let r = E::from_f64(*w).to_f64();
                let g = g.to_f64();
                assert!(
                    (g - r).abs() <= tol * w.abs().max(1.0),
                    "{:?} kernel {}: got {g}, want {r}",
                    E::DTYPE,
                    kern.name
                );
            }
        }
    }
    for &(m, k, n) in &[(1, 1, 1), (15, 37, 33), (17, 300, 7)] {
        one::<f64>(m, k, n, 1e-13);
        one::<f32>(m, k, n, 1e-5);
        one::<f16>(m, k, n, 1e-3);
        one::<bf16>(m, k, n, 8e-3);
        one::<F8E4M3>(m, k, n, 0.07);
        one::<F8E5M2>(m, k, n, 0.13);
    }
}

/// A low-precision product is the `f32` product of the widened inputs,
/// rounded once, to the bit: whether `A`'s rows are widened into a copy for
/// the in-place kernel (row-major, any row pitch) or packed (transposed),
/// on every kernel, across depth blocks and tails of rows and columns, on
/// 1 and 2 threads.
#[test]
fn low_precision_is_the_rounded_f32_product_bitwise() {
    fn one<E: FloatDtype<Acc = f32>>() {
        let (m, k, n) = (2 * 14 + 5, 1100, 70);
        for (la, len) in [
            (Layout::contiguous(&[m, k]), m * k),
            (Layout::new(&[m, k], &[k + 5, 1], 3), 3 + m * (k + 5)),
            (Layout::new(&[m, k], &[1, m], 0), m * k),
        ] {
            let a: Vec<E> = vals(len, 91).into_iter().map(E::from_f64).collect();
            let b: Vec<E> = vals(k * n, 92).into_iter().map(E::from_f64).collect();
            let lb = Layout::contiguous(&[k, n]);
            let (a32, b32): (Vec<f32>, Vec<f32>) = (
                a.iter().map(|v| v.to_acc()).collect(),
                b.iter().map(|v| v.to_acc()).collect(),
            );
            for kern in kernels::<f32>() {
                let want: Vec<E> = gemm_batched_with::<_, Widen>(&a32, &la, &b32, &lb, kern)
                    .into_iter()
                    .map(E::from_acc)
                    .collect();
                for threads in [1, 2] {
                    let got = on_threads(threads, || {
                        gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern)
                    });
                    let bits = |v: &E| v.to_f64().to_bits();
                    let same = got.iter().zip(&want).all(|(g, w)| bits(g) == bits(w));
                    assert!(
                        same,
                        "{:?} kernel {}, A strides {:?}, {threads} threads",
                        E::DTYPE,
                        kern.name,
                        la.strides()
                    );
                }
            }
        }
    }
    one::<f16>();
    one::<bf16>();
}

/// The `k`-wide rows of `dense` stored `pitch` values apart after 5
/// leading values, with `fill` everywhere else, and their layout.
fn rows_at_pitch<T: Copy>(dense: &[T], k: usize, pitch: usize, fill: T) -> (Vec<T>, Layout) {
    let m = dense.len() / k;
    let mut a = vec![fill; 5 + m * pitch];
    for (i, row) in dense.chunks_exact(k).enumerate() {
        a[5 + i * pitch..][..k].copy_from_slice(row);
    }
    (a, Layout::new(&[m, k], &[pitch, 1], 5))
}

/// An `A` whose rows are 6 or 8 KiB apart (they share L1 sets), multiplied
/// by more than a few panels: at 8 KiB (a multiple of 4 KiB) its rows are
/// copied to a padded pitch, at 6 KiB the assembly kernels read them in
/// place and the others copy them (`bf16` pairs: 4 KiB copied, 6 KiB in
/// place). Every kernel, f32, f64 and `bf16`, 1 and 2 threads, gives the
/// bits of the same `A` stored contiguously, across depth blocks and a tail
/// of rows and columns, with one column block of `B` (each task copies its
/// rows) and with several (all of `A` is copied once).
#[test]
fn aliasing_row_pitches_give_the_contiguous_bits() {
    fn one<A: Real + FloatDtype<Acc = A>>(pitches: [usize; 2], (m, n): (usize, usize)) {
        let k = 600;
        let b: Vec<A> = vals(k * n, 94)
            .into_iter()
            .map(<A as crate::Dtype>::from_f64)
            .collect();
        let lb = Layout::contiguous(&[k, n]);
        let dense: Vec<A> = vals(m * k, 93)
            .into_iter()
            .map(<A as crate::Dtype>::from_f64)
            .collect();
        let ld = Layout::contiguous(&[m, k]);
        for kern in kernels::<A>() {
            let want = gemm_batched_with::<_, Widen>(&dense, &ld, &b, &lb, kern);
            for pitch in pitches {
                let nan = <A as crate::Dtype>::from_f64(f64::NAN);
                let (a, la) = rows_at_pitch(&dense, k, pitch, nan);
                for threads in [1, 2] {
                    let got = on_threads(threads, || {
                        gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern)
                    });
                    let bits = |v: &A| crate::Dtype::to_f64(*v).to_bits();
                    let same = got.iter().zip(&want).all(|(g, w)| bits(g) == bits(w));
                    assert!(
                        same,
                        "{:?} kernel {}, row pitch {pitch}, {threads} threads",
                        <A as crate::Dtype>::DTYPE,
                        kern.name
                    );
                }
            }
        }
    }
    // (f32 at depth 600: 864 columns to a block of B; f64: 432. One row
    // has pitch 0, which once counted as aliasing and sent the copy into
    // endless recursion; it is read in place. Four panels of B are few
    // enough to read a 2 KiB pitch in place, but 4 KiB rows are copied.)
    for mn in [
        (2 * 14 + 5, 3 * 32 + 7),
        (2 * 14 + 5, 17 * 32 + 7),
        (2 * 14 + 5, 33 * 32 + 7),
        (1, 33 * 32 + 7),
    ] {
        one::<f32>([1024, 1536], mn);
        one::<f64>([768, 1024], mn);
    }
    // `bf16` pairs: 4 KiB rows are copied, 6 KiB ones read in place.
    let Some(kernels) = bf16_kernels_or_skip("aliasing_row_pitches_give_the_contiguous_bits")
    else {
        return;
    };
    // (Depth 1100: 928 columns to a block of B with 32-column panels.)
    for mn in [
        (2 * 14 + 5, 2 * 48 + 7),
        (2 * 14 + 5, 17 * 48 + 7),
        (2 * 14 + 5, 20 * 48 + 7),
        (1, 20 * 48 + 7),
    ] {
        bf16_one(kernels, mn);
    }
}

/// The `bf16` part of [`aliasing_row_pitches_give_the_contiguous_bits`].
fn bf16_one(kernels: &[Kernel<u32, f32>], (m, n): (usize, usize)) {
    let k = 1100;
    let b: Vec<bf16> = vals(k * n, 96).into_iter().map(bf16::from_f64).collect();
    let lb = Layout::contiguous(&[k, n]);
    let dense: Vec<bf16> = vals(m * k, 95).into_iter().map(bf16::from_f64).collect();
    let ld = Layout::contiguous(&[m, k]);
    for &kern in kernels {
        let want = gemm_batched_with::<_, Bf16Pairs>(&dense, &ld, &b, &lb, kern);
        for pitch in [2048, 3072] {
            let (a, la) = rows_at_pitch(&dense, k, pitch, bf16::NAN);
            for threads in [1, 2] {
                let got = on_threads(threads, || {
                    gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern)
                });
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(
                    same,
                    "bf16 kernel {}, row pitch {pitch}, {threads} threads",
                    kern.name
                );
            }
        }
    }
}

/// Batched products over every kernel, with a broadcast right operand and
/// a transposed batch sum, threaded and not.
#[test]
fn batched_broadcast_and_batch_sum_every_kernel() {
    let (bt, m, k, n) = (5, 37, 29, 41);
    let a = vals(bt * m * k, 51);
    let b = vals(k * n, 52);
    let la = Layout::contiguous(&[bt, m, k]);
    let lb = Layout::new(&[bt, k, n], &[0, 1, k], 0); // broadcast, transposed
    let lbi = Layout::new(&[k, n], &[1, k], 0);
    let c = vals(bt * m * n, 53);
    let lat = Layout::new(&[bt, k, m], &[m * k, 1, k], 0);
    let lc = Layout::contiguous(&[bt, m, n]);
    let mut want_sum = vec![0.0; k * n];
    for i in 0..bt {
        let lai = Layout::new(&[k, m], &[1, k], i * m * k);
        let lci = Layout::new(&[m, n], &[n, 1], i * m * n);
        for (w, v) in want_sum.iter_mut().zip(naive(&a, &lai, &c, &lci)) {
            *w += v;
        }
    }
    for kern in kernels::<f64>() {
        for threads in [1, 2] {
            let got = on_threads(threads, || {
                gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern)
            });
            for i in 0..bt {
                let lai = Layout::new(&[m, k], &[k, 1], i * m * k);
                let want = naive(&a, &lai, &b, &lbi);
                assert!(max_rel(&got[i * m * n..(i + 1) * m * n], &want) < 1e-13);
            }
            let got = on_threads(threads, || {
                gemm_batch_sum_with::<_, Widen>(&a, &lat, &c, &lc, kern)
            });
            assert!(max_rel(&got, &want_sum) < 1e-13, "kernel {}", kern.name);
        }
    }
}

/// The AVX512-BF16 kernels, or `None` (after a note) on a CPU without them.
fn bf16_kernels_or_skip(test: &str) -> Option<&'static [Kernel<u32, f32>]> {
    let k = kernel::bf16_kernels();
    if k.is_empty() {
        eprintln!(
            "{test}: skipped, this CPU has no AVX512-BF16 (the widening path is tested elsewhere)"
        );
        return None;
    }
    Some(k)
}

/// Whether the public `bf16` entries run on AMX tiles here.
fn public_uses_amx() -> bool {
    kernel::bf16_kernel(64, 64).is_some_and(|k| k.amx)
}

/// The AMX path, where this CPU and OS offer it: odd sizes (1, 7, 129,
/// non-multiples of the 32 x 32 block, the task blocks and the depth
/// block, odd depths) and every layout kind close to the exact product;
/// 1, 2 and 3 threads bit-identical; batched and batch-summed products.
#[test]
fn bf16_amx_odd_sizes_layouts_and_threads() {
    #[cfg(target_arch = "x86_64")]
    let on = amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    let on = false;
    let Some(base) = kernel::bf16_kernels().first().copied().filter(|_| on) else {
        eprintln!(
            "bf16_amx_odd_sizes_layouts_and_threads: skipped, no AMX-BF16 here (or ZERFOO_AMX=0)"
        );
        return;
    };
    let kern = Kernel { amx: true, ..base };
    for &(m, k, n) in &[
        (1, 1, 1),
        (7, 7, 7),
        (7, 1, 9),
        (15, 2, 33),
        (32, 32, 32),
        (29, 40, 17),
        (129, 129, 129),
        (161, 300, 97),
        (65, 2085, 257),
    ] {
        for ka in 0..3 {
            for kb in 0..3 {
                let (la, na) = lay(m, k, ka, 3);
                let (lb, nb) = lay(k, n, kb, 5);
                let (a, a64) = bf16s(&vals(na, (m * 13 + k + ka) as u64));
                let (b, b64) = bf16s(&vals(nb, (n * 7 + k + kb) as u64));
                let (want, mag) = reference(&a64, &la, &b64, &lb);
                let what = format!("amx {m}x{k}x{n} kinds ({ka}, {kb})");
                let one = on_threads(1, || {
                    gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern)
                });
                assert_bf16_close(&one, &want, &mag, &what);
                for threads in [2, 3] {
                    let got = on_threads(threads, || {
                        gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern)
                    });
                    assert_eq!(got, one, "{what}: {threads} threads");
                }
            }
        }
    }
    // A batch of 3 with its own B each, and the batch sum of the same.
    let (bt, m, k, n) = (3, 37, 70, 45);
    let (la, lb) = (
        Layout::contiguous(&[bt, m, k]),
        Layout::contiguous(&[bt, k, n]),
    );
    let (a, a64) = bf16s(&vals(bt * m * k, 5));
    let (b, b64) = bf16s(&vals(bt * k, 6).repeat(n));
    let got = gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern);
    let mut sum_want = vec![0.0; m * n];
    let mut sum_mag = vec![0.0; m * n];
    for i in 0..bt {
        let (l2a, l2b) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        let (w, g) = reference(
            &a64[i * m * k..][..m * k],
            &l2a,
            &b64[i * k * n..][..k * n],
            &l2b,
        );
        assert_bf16_close(
            &got[i * m * n..][..m * n],
            &w,
            &g,
            &format!("amx batch item {i}"),
        );
        sum_want.iter_mut().zip(&w).for_each(|(s, x)| *s += x);
        sum_mag.iter_mut().zip(&g).for_each(|(s, x)| *s += x);
    }
    let sum = gemm_batch_sum_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern);
    assert_bf16_close(&sum, &sum_want, &sum_mag, "amx batch sum");
    // A weight gradient's form: each item's A transposed (`[bt, k, m]`
    // stored, read as `[bt, m, k]`), summed over the batch, with whole
    // 32-row tiles and a partial one (m = 70), depth running across items.
    let (bt, m, k, n) = (3, 70, 45, 33);
    let la = Layout::new(&[bt, m, k], &[m * k, 1, m], 0);
    let lb = Layout::contiguous(&[bt, k, n]);
    let (a, a64) = bf16s(&vals(bt * m * k, 7));
    let (b, b64) = bf16s(&vals(bt * k * n, 8));
    let (mut want, mut mag) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..bt {
        let l2a = Layout::new(&[m, k], &[1, m], i * m * k);
        let l2b = Layout::new(&[k, n], &[n, 1], i * k * n);
        let (w, g) = reference(&a64, &l2a, &b64, &l2b);
        want.iter_mut().zip(&w).for_each(|(s, x)| *s += x);
        mag.iter_mut().zip(&g).for_each(|(s, x)| *s += x);
    }
    let one = on_threads(1, || {
        gemm_batch_sum_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern)
    });
    assert_bf16_close(&one, &want, &mag, "amx transposed batch sum");
    let two = on_threads(2, || {
        gemm_batch_sum_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern)
    });
    assert_eq!(two, one, "amx transposed batch sum: 2 threads");
}

/// Integer inputs whose every partial sum is exact in `f32` (whatever the
/// order) but needs more than `bf16`'s 8 bits: the public `bf16` product
/// (AMX, AVX512-BF16 or widening, whichever this CPU runs), with and
/// without a bias, is the exact sum rounded to nearest, ties to even, to
/// the bit.
#[test]
fn bf16_exact_sums_round_to_nearest_even_bitwise() {
    let (m, k, n) = (37, 96, 45);
    let ints = |len: usize, seed: u64| -> Vec<f64> {
        vals(len, seed).iter().map(|v| (v * 12.0).round()).collect()
    };
    let (a64, b64, bias64) = (ints(m * k, 81), ints(k * n, 82), ints(n, 83));
    let cast = |v: &[f64]| -> Vec<bf16> { v.iter().map(|&x| bf16::from_f64(x)).collect() };
    let (a, b, bias) = (cast(&a64), cast(&b64), cast(&bias64));
    let (la, lb) = (Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
    let exact = naive(&a64, &la, &b64, &lb);
    // The sums reach past 256 (where bf16 steps by 2 and more), and some are ties.
    assert!(exact.iter().any(|s| s.abs() > 1024.0));
    let ties = exact
        .iter()
        .filter(|&&s| (257.0..512.0).contains(&s.abs()) && (s as i64) % 2 != 0)
        .count();
    assert!(ties > 0);
    for threads in [1, 2] {
        let plain = on_threads(threads, || gemm(&a, &la, &b, &lb));
        let biased = on_threads(threads, || gemm_batched_bias(&a, &la, &b, &lb, Some(&bias)));
        for (i, (&s, (p, q))) in exact.iter().zip(plain.iter().zip(&biased)).enumerate() {
            let want = bf16::from_f64(s);
            assert_eq!(p.to_bits(), want.to_bits(), "[{i}] {s}, {threads} threads");
            let want = bf16::from_f64(s + bias64[i % n]);
            assert_eq!(
                q.to_bits(),
                want.to_bits(),
                "[{i}] {s} + bias, {threads} threads"
            );
        }
    }
}

/// `bf16` inputs and their exact `f64` values.
fn bf16s(v: &[f64]) -> (Vec<bf16>, Vec<f64>) {
    rounded(v)
}

/// Inputs rounded to `T` and their exact `f64` values.
fn rounded<T: FloatDtype>(v: &[f64]) -> (Vec<T>, Vec<f64>) {
    let b: Vec<T> = v.iter().map(|&x| T::from_f64(x)).collect();
    let f = b.iter().map(|x| x.to_f64()).collect();
    (b, f)
}

/// `got` against the exact product `want` of the same `bf16` inputs: one
/// rounding (half a `bf16` ulp, at most `2^-8` relative) plus the `f32` summation
/// error, bounded by `2^-17` of the sum of the products' magnitudes `mag`.
fn assert_bf16_close(got: &[bf16], want: &[f64], mag: &[f64], what: &str) {
    assert_rounded_close(got, want, mag, what)
}

/// [`assert_bf16_close`] for a result in `bf16`, `f16` (half an `f16`
/// ulp: at most `2^-11` relative, or `2^-25` among its subnormals), f8
/// (half an ulp: `2^-4` relative and `2^-10` among the subnormals in
/// E4M3FN, `2^-3` and `2^-17` in E5M2) or `f32` (the summation error
/// alone).
fn assert_rounded_close<T: FloatDtype>(got: &[T], want: &[f64], mag: &[f64], what: &str) {
    let (half_ulp, floor) = match T::DTYPE {
        DType::BF16 => (2f64.powi(-8), 0.0),
        DType::F16 => (2f64.powi(-11), 2f64.powi(-25)),
        DType::F8E4M3 => (2f64.powi(-4), 2f64.powi(-10)),
        DType::F8E5M2 => (2f64.powi(-3), 2f64.powi(-17)),
        DType::F32 => (0.0, 0.0),
        other => panic!("assert_rounded_close: {other:?} sums in f64"),
    };
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let g = g.to_f64();
        let tol = w.abs() * half_ulp + floor + m * 2f64.powi(-17);
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tolerance {tol:e})"
        );
    }
}

/// The exact product and the sum of the products' magnitudes, through layouts.
fn reference(a: &[f64], la: &Layout, b: &[f64], lb: &Layout) -> (Vec<f64>, Vec<f64>) {
    let abs = |x: &[f64]| x.iter().map(|v| v.abs()).collect::<Vec<_>>();
    (naive(a, la, b, lb), naive(&abs(a), la, &abs(b), lb))
}

/// Runs `f` on a pool of `threads` threads.
pub(super) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Every native `bf16` kernel at odd sizes (1, 7, 129, non-multiples of
/// MR, NR and the depth block, odd depths) and every layout kind
/// (row-major, transposed, strided; offsets that make pairs unaligned):
/// close to the exact product, and the public `gemm` (whichever tile it
/// picks) gives the same bits.
#[test]
fn bf16_native_odd_sizes_and_layouts() {
    let Some(kernels) = bf16_kernels_or_skip("bf16_native_odd_sizes_and_layouts") else {
        return;
    };
    for &(m, k, n) in &[
        (1, 1, 1),
        (1, 7, 1),
        (7, 7, 7),
        (7, 1, 9),
        (15, 2, 33),
        (14, 32, 32),
        (29, 40, 17),
        (6, 5, 65),
        (129, 129, 129),
        (40, 31, 96),
        (5, KC_BF16 + 1, 3),
        (33, 2 * KC_BF16 + 1, 47),
    ] {
        for ka in 0..3 {
            for kb in 0..3 {
                let (la, na) = lay(m, k, ka, 3);
                let (lb, nb) = lay(k, n, kb, 5);
                let (a, a64) = bf16s(&vals(na, (m * 31 + k + ka) as u64));
                let (b, b64) = bf16s(&vals(nb, (n * 17 + k + kb) as u64));
                let (want, mag) = reference(&a64, &la, &b64, &lb);
                let public = gemm(&a, &la, &b, &lb);
                assert_bf16_close(&public, &want, &mag, &format!("{m}x{k}x{n} public entry"));
                for &kern in kernels {
                    let got = gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern);
                    let what = format!("{m}x{k}x{n} kinds ({ka}, {kb}) kernel {}", kern.name);
                    assert_bf16_close(&got, &want, &mag, &what);
                    // (On AMX the public entry sums in the tiles' own order.)
                    if !public_uses_amx() {
                        assert_eq!(public, got, "{what}: public entry");
                    }
                }
            }
        }
    }
}

/// Across the row, depth and column blocks (MC, KC_BF16, NC) on 1, 2 and 3
/// threads (row or column split): close to the exact product and
/// bit-identical on every count and with every kernel.
#[test]
fn bf16_native_crosses_blocks_threads_agree() {
    let Some(kernels) = bf16_kernels_or_skip("bf16_native_crosses_blocks_threads_agree") else {
        return;
    };
    for &(m, k, n, kb) in &[
        (MC + 13, KC_BF16 + 7, 71, 0),
        (129, 2 * KC_BF16 + 3, 129, 1),
        (301, 1037, 203, 0),
        (400, 515, 240, 0),
        (5, 300, NC + 37, 0),
    ] {
        let (la, na) = lay(m, k, 0, 1);
        let (lb, nb) = lay(k, n, kb, 2);
        let (a, a64) = bf16s(&vals(na, 61));
        let (b, b64) = bf16s(&vals(nb, 62));
        let (want, mag) = reference(&a64, &la, &b64, &lb);
        let one = on_threads(1, || gemm(&a, &la, &b, &lb));
        let what = format!("{m}x{k}x{n}");
        assert_bf16_close(&one, &want, &mag, &what);
        let one_avx = on_threads(1, || {
            gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kernels[0])
        });
        assert_bf16_close(&one_avx, &want, &mag, &what);
        if !public_uses_amx() {
            assert_eq!(one, one_avx, "{what}: public entry");
        }
        for threads in [2, 3] {
            let got = on_threads(threads, || gemm(&a, &la, &b, &lb));
            assert_eq!(got, one, "{what}: {threads} threads");
            for &kern in kernels {
                let got = on_threads(threads, || {
                    gemm_batched_with::<_, Bf16Pairs>(&a, &la, &b, &lb, kern)
                });
                assert_eq!(
                    got, one_avx,
                    "{what}: {threads} threads, kernel {}",
                    kern.name
                );
            }
        }
    }
}

/// Views made with `swap_axes` and `narrow` (a transposed slice of a wider
/// matrix, a column window): read as they are, no copy.
#[test]
fn bf16_native_views() {
    if bf16_kernels_or_skip("bf16_native_views").is_none() {
        return;
    }
    let (m, k, n) = (37, 45, 50);
    // A: columns 3..3+m of a [k, m + 7] matrix, transposed to [m, k].
    let (a, a64) = bf16s(&vals(k * (m + 7), 71));
    let mut la = Layout::contiguous(&[k, m + 7]).narrow(1, 3, m);
    la.swap_axes(0, 1);
    // B: rows 2..2+k and columns 1..1+n of a [k + 4, n + 3] matrix.
    let (b, b64) = bf16s(&vals((k + 4) * (n + 3), 72));
    let lb = Layout::contiguous(&[k + 4, n + 3])
        .narrow(0, 2, k)
        .narrow(1, 1, n);
    let (want, mag) = reference(&a64, &la, &b64, &lb);
    assert_bf16_close(&gemm(&a, &la, &b, &lb), &want, &mag, "views");
    // And B transposed by swap_axes ([n, k] storage).
    let (bt, bt64) = bf16s(&vals(n * k, 73));
    let mut lbt = Layout::contiguous(&[n, k]);
    lbt.swap_axes(0, 1);
    let (want, mag) = reference(&a64, &la, &bt64, &lbt);
    assert_bf16_close(&gemm(&a, &la, &bt, &lbt), &want, &mag, "transposed B");
}

/// `gemm_batched` (a broadcast, transposed right operand; batch axes that
/// are permuted, with a right operand per item or shared) and `gemm_batch_sum` (a transposed left operand) through
/// the public entries: close to the exact products, the same on 1 and 2
/// threads.
#[test]
fn bf16_native_batched_and_batch_sum() {
    if bf16_kernels_or_skip("bf16_native_batched_and_batch_sum").is_none() {
        return;
    }
    let (bt, m, k, n) = (5, 37, 29, 41);
    let (a, a64) = bf16s(&vals(bt * m * k, 81));
    let (b, b64) = bf16s(&vals(k * n, 82));
    let la = Layout::contiguous(&[bt, m, k]);
    let lb = Layout::new(&[bt, k, n], &[0, 1, k], 0); // broadcast, transposed
    let got = on_threads(1, || gemm_batched(&a, &la, &b, &lb));
    assert_eq!(on_threads(2, || gemm_batched(&a, &la, &b, &lb)), got);
    for i in 0..bt {
        let lai = Layout::new(&[m, k], &[k, 1], i * m * k);
        let (want, mag) = reference(&a64, &lai, &b64, &Layout::new(&[k, n], &[1, k], 0));
        assert_bf16_close(&got[i * m * n..(i + 1) * m * n], &want, &mag, "batched");
    }
    // A stored as [H, B, M, K] viewed as [B, H, M, K]; big enough to thread.
    let (b_, h, m2, k2, n2) = (2, 3, 40, 67, 60);
    let (a2, a2_64) = bf16s(&vals(b_ * h * m2 * k2, 83));
    let (b2, b2_64) = bf16s(&vals(b_ * h * k2 * n2, 84));
    let la2 = Layout::contiguous(&[h, b_, m2, k2]).permute(&[1, 0, 2, 3]);
    // Each item its own B, then one B shared by all (one merged product
    // whose A rows are not evenly spaced: packed, not read in place).
    let lb2 = Layout::contiguous(&[b_, h, k2, n2]);
    let lb2_shared = Layout::new(&[b_, h, k2, n2], &[0, 0, n2, 1], 0);
    for (lb2, shared) in [(lb2, false), (lb2_shared, true)] {
        let got = on_threads(1, || gemm_batched(&a2, &la2, &b2, &lb2));
        assert_eq!(on_threads(2, || gemm_batched(&a2, &la2, &b2, &lb2)), got);
        for bi in 0..b_ {
            for hi in 0..h {
                let lai = Layout::new(&[m2, k2], &[k2, 1], (hi * b_ + bi) * m2 * k2);
                let item = if shared { 0 } else { bi * h + hi };
                let lbi = Layout::new(&[k2, n2], &[n2, 1], item * k2 * n2);
                let o = (bi * h + hi) * m2 * n2;
                let (want, mag) = reference(&a2_64, &lai, &b2_64, &lbi);
                let what = format!("permuted batch (shared B: {shared})");
                assert_bf16_close(&got[o..o + m2 * n2], &want, &mag, &what);
            }
        }
    }
    // Σ_b A_bᵀ · C_b with A_bᵀ a transposed view ([bt, k, m]).
    let (c, c64) = bf16s(&vals(bt * m * n, 85));
    let lat = Layout::new(&[bt, k, m], &[m * k, 1, k], 0);
    let lc = Layout::contiguous(&[bt, m, n]);
    let got = on_threads(1, || gemm_batch_sum(&a, &lat, &c, &lc));
    assert_eq!(on_threads(2, || gemm_batch_sum(&a, &lat, &c, &lc)), got);
    let (mut want, mut mag) = (vec![0.0; k * n], vec![0.0; k * n]);
    for i in 0..bt {
        let lai = Layout::new(&[k, m], &[1, k], i * m * k);
        let lci = Layout::new(&[m, n], &[n, 1], i * m * n);
        let (w, g) = reference(&a64, &lai, &c64, &lci);
        want.iter_mut().zip(w).for_each(|(s, v)| *s += v);
        mag.iter_mut().zip(g).for_each(|(s, v)| *s += v);
    }
    assert_bf16_close(&got, &want, &mag, "batch sum");
}

/// NaN and infinity propagate through `vdpbf16ps` as through the widening path.
#[test]
fn bf16_native_special_values() {
    if bf16_kernels_or_skip("bf16_native_special_values").is_none() {
        return;
    }
    let (m, k, n) = (16, 33, 40);
    let (mut a, _) = bf16s(&vals(m * k, 91));
    let (b, _) = bf16s(
        &vals(k * n, 92)
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect::<Vec<_>>(),
    );
    a[k + 4] = bf16::NAN; // row 1
    a[3 * k + 7] = bf16::INFINITY; // row 3; B is positive
    let l = |r, c| Layout::contiguous(&[r, c]);
    let got = gemm(&a, &l(m, k), &b, &l(k, n));
    for (i, row) in got.chunks(n).enumerate() {
        for v in row {
            match i {
                1 => assert!(v.is_nan()),
                3 => assert_eq!(*v, bf16::INFINITY),
                _ => assert!(v.is_finite()),
            }
        }
    }
}

/// The AVX512-BF16 kernel's vector rounding and the scalar one used for
/// edge tiles give `bf16::from_f32`'s bits on ties, NaNs, infinities,
/// overflow, denormals and many other patterns.
#[test]
#[cfg(target_arch = "x86_64")]
fn bf16_rounding_matches_from_f32() {
    if bf16_kernels_or_skip("bf16_rounding_matches_from_f32").is_none() {
        return;
    }
    let mut bits: Vec<u32> = vec![
        0x3F80_8000, // 1 + 2^-8: a tie, rounds down to even
        0x3F81_8000, // a tie that rounds up
        0x3F80_8001,
        0x7F7F_FFFF, // the largest f32: rounds to infinity
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001, // signalling NaN: quieted
        0xFFC0_1234,
        0x0000_0001, // denormals
        0x8000_8000,
        0x007F_FFFF,
        0,
        0x8000_0000,
    ];
    // The same patterns less the subnormals, in a vector of their own: a
    // vector holding a subnormal is rounded another way.
    let normal: Vec<u32> = bits
        .iter()
        .copied()
        .filter(|&b| b & 0x7F80_0000 != 0 || b & 0x007F_FFFF == 0)
        .collect();
    assert!(normal.len() < 16);
    bits.resize(16, 0);
    bits.extend(&normal);
    bits.resize(32, 0);
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    bits.extend((0..4096).map(|_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s as u32
    }));
    bits.resize(bits.len().next_multiple_of(16), 0);
    for chunk in bits.chunks(16) {
        let x: Vec<f32> = chunk.iter().map(|&b| f32::from_bits(b)).collect();
        let mut got = [0u16; 16];
        // SAFETY: the CPU has AVX512-BF16 (checked); 16 values in, 16 out.
        unsafe {
            x86::round_bf16_16(x.as_ptr(), got.as_mut_ptr());
        }
        for ((&b, &g), &v) in chunk.iter().zip(&got).zip(&x) {
            let want = bf16::from_f32(v).to_bits();
            assert_eq!(g, want, "vector rounding of {b:#010x}");
            assert_eq!(pack::bf16_round(b), want, "scalar rounding of {b:#010x}");
        }
    }
}

/// The in-place small-product path (`direct`) against the blocked path
/// (bit for bit: same summation order) and the f64 triple loop, at sizes
/// that leave partial row tiles and partial vectors, with `A` row-major,
/// transposed or strided both ways, and padded row strides; adding to `c`
/// or overwriting it.
#[test]
fn direct_small_products_match_blocked_bitwise() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: this CPU has no AVX-512F, the direct path is not used");
        return;
    }
    for &(m, n, k) in &[
        (1, 1, 1),
        (7, 5, 3),
        (8, 16, 32),
        (9, 17, 31),
        (64, 64, 32),
        (13, 33, 64),
        (64, 48, 129),
        (16, 64, 67),
    ] {
        // A row-major, transposed, and strided both ways (each has its own loop).
        for (a_order, overwrite) in (0..3).flat_map(|o| [(o, false), (o, true)]) {
            let (rsa, csa) = match a_order {
                0 => (k + 3, 1),
                1 => (1, m + 2),
                _ => (2 * k + 3, 2),
            };
            let rsb = n + 5;
            let a64 = vals((m - 1) * rsa + (k - 1) * csa + 1, (m * 7 + k) as u64);
            let b64 = vals((k - 1) * rsb + n, (n * 3 + k) as u64);
            let c64 = vals(m * n, 99);
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (a, b) = (f(&a64), f(&b64));
            let mut direct_c = f(&c64);
            // SAFETY: the operands were sized for these strides above.
            assert!(unsafe {
                direct::try_gemm_f32(
                    (m, n, k),
                    &a,
                    (rsa, csa),
                    &b,
                    (rsb, 1),
                    &mut direct_c,
                    overwrite,
                )
            });
            // The blocked path, through the same entry the kernels use.
            let (a_rows, a_cols) = (offsets(m, rsa), offsets(k, csa));
            let (b_rows, b_cols) = (offsets(k, rsb), offsets(n, 1));
            let ops = Operands::new(&a, 0, &a_rows, &a_cols, &b, 0, &b_rows, &b_cols);
            let mut blocked_c = f(&c64);
            // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the values are initialized.
            let c = unsafe {
                &mut *(blocked_c.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>])
            };
            blocked::<f32, Widen>(
                &ops,
                c,
                1,
                kernel::kernel::<f32>(),
                overwrite,
                None,
                Final::Keep,
            );
            let what = format!("{m}x{n}x{k} A order {a_order}, overwrite {overwrite}");
            assert_eq!(
                direct_c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                blocked_c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{what}"
            );
            let mut want = if overwrite {
                vec![0.0; m * n]
            } else {
                c64.clone()
            };
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        want[i * n + j] += a[i * rsa + p * csa] as f64 * b[p * rsb + j] as f64;
                    }
                }
            }
            let got: Vec<f64> = direct_c.iter().map(|&x| x as f64).collect();
            assert!(max_rel(&got, &want) < 1e-5, "{what}");
        }
    }
    // Not for it: a transposed B, or a depth beyond one block.
    let mut c = vec![0f32; 4];
    // SAFETY: in bounds (and refused before any read).
    assert!(!unsafe {
        direct::try_gemm_f32(
            (2, 2, 2),
            &[0.0; 4],
            (2, 1),
            &[0.0; 4],
            (1, 2),
            &mut c,
            false,
        )
    });
    let long = vec![0f32; 2 * (KC + 1)];
    // SAFETY: as above.
    assert!(!unsafe {
        direct::try_gemm_f32(
            (2, 1, KC + 1),
            &long,
            (KC + 1, 1),
            &long,
            (1, 1),
            &mut c[..2],
            false,
        )
    });
}

/// Small `f32` products through the public entry (`small_in_place`, the
/// in-place tiles) give the blocked path's bits: a batch with its own or
/// a shared (broadcast) `B`, `A` row-major or transposed, with and without
/// a bias, on both sides of the size limits; larger or deeper products and
/// a transposed `B` are left to the blocked path.
#[test]
fn small_products_take_the_in_place_path_with_the_same_bits() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: this CPU has no AVX-512F, the in-place path is not used");
        return;
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    // (batch, m, k, n, A transposed, B shared, bias, takes the path)
    let cases = [
        (1, 64, 64, 32, false, false, false, true),
        (1, 1, 1, 1, false, false, true, true),
        (3, 7, 29, 33, true, false, true, true),
        (4, 13, 100, 17, false, true, false, true),
        (2, 32, 200, 64, true, true, true, true),
        (1, 70, 53, 70, false, false, true, true),
        // past both limits, deeper than a block, too many in all
        (1, 80, 60, 80, false, false, false, false),
        (1, 8, KC + 1, 8, false, false, false, false),
        (16, 64, 256, 64, false, false, false, false),
    ];
    for (batch, m, k, n, ta, shared, with_bias, takes) in cases {
        let a = f(vals(batch * m * k, 5));
        let b = f(vals(batch * k * n, 6));
        let bias = f(vals(n, 7));
        let la = if ta {
            Layout::contiguous(&[batch, k, m]).permute(&[0, 2, 1])
        } else {
            Layout::contiguous(&[batch, m, k])
        };
        let lb = if shared {
            Layout::new(&[batch, k, n], &[0, n, 1], 0)
        } else {
            Layout::contiguous(&[batch, k, n])
        };
        let bias = with_bias.then_some(&bias[..]);
        let what = format!("{batch} x {m}x{k}x{n}, A transposed {ta}, B shared {shared}");
        let fast = small_in_place(&a, &la, &b, &lb, bias);
        assert_eq!(fast.is_some(), takes, "{what}");
        let blocked = gemm_batched_bias_with::<_, Widen>(&a, &la, &b, &lb, bias, kernel::kernel());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if let Some(fast) = fast {
            assert_eq!(bits(&fast), bits(&blocked), "{what}");
        }
        assert_eq!(
            bits(&gemm_batched_bias(&a, &la, &b, &lb, bias)),
            bits(&blocked),
            "{what}"
        );
    }
    // A transposed B is not for it.
    let v = f(vals(64, 8));
    let mut lt = Layout::contiguous(&[8, 8]);
    lt.swap_axes(0, 1);
    assert!(small_in_place(&v, &Layout::contiguous(&[8, 8]), &v, &lt, None).is_none());
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
        // Best of several runs (the machine may be shared), timed inside one pool.
        let s = on_threads(threads, || {
            (0..10)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(gemm(&a, &l, &b, &l));
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        });
        println!(
            "f32 512^3 on {threads} thread(s): {:.2} ms, {:.1} GFLOP/s",
            s * 1e3,
            2.0 * (n * n * n) as f64 / s / 1e9
        );
    }
}

/// f32 with a transposed B packs eight columns at a time through 8 x 8
/// register transposes (whole blocks of eight depth steps, the rest one by
/// one): depths and widths around multiples of 8, with an offset, against
/// the naive product of the same f32 values.
#[test]
fn f32_transposed_b_packs_in_8x8_blocks() {
    for (m, k, n) in [
        (3, 8, 8),
        (5, 13, 17),
        (9, 64, 40),
        (2, 519, 33),
        (16, 7, 9),
    ] {
        let a: Vec<f32> = vals(m * k, 3).iter().map(|&x| x as f32).collect();
        let b: Vec<f32> = vals(k * n + 4, 4).iter().map(|&x| x as f32).collect();
        let la = Layout::contiguous(&[m, k]);
        let lb = Layout::new(&[k, n], &[1, k], 4);
        let got: Vec<f64> = gemm(&a, &la, &b, &lb).iter().map(|&x| x as f64).collect();
        let wide = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let want = naive(&wide(&a), &la, &wide(&b), &lb);
        let e = max_rel(&got, &want);
        assert!(e < 1e-5, "{m}x{k}x{n}: rel err {e}");
    }
}

/// `f32`/`f64` with a bias: the same bits as the product followed by an
/// add of the bias, for every kernel, layout kind and thread count, at
/// sizes that take each way of sharing the work out (depth blocks, own
/// columns, own rows with a private `B`, shared `B`), edge tiles, a batch
/// with and without a shared `B`, and an empty depth (the bias alone).
#[test]
fn bias_is_added_after_the_sum_bitwise() {
    fn one<A: FloatDtype<Acc = A> + Real>(m: usize, k: usize, n: usize, batch: usize) {
        let bias: Vec<A> = vals(n, (n * 7 + k) as u64)
            .iter()
            .map(|&v| <A as crate::Dtype>::from_f64(v))
            .collect();
        for (ka, kb) in [(0, 0), (1, 1), (2, 0), (0, 1)] {
            let (la2, na) = lay(m, k, ka, 3);
            let (lb2, nb) = lay(k, n, kb, 5);
            // A batch: A items `na` apart; B shared (stride 0) or per item.
            let la = Layout::new(
                &[batch, m, k],
                &[na, la2.strides()[0], la2.strides()[1]],
                la2.offset,
            );
            let a: Vec<A> = vals(na * batch, (m * 31 + k + ka) as u64)
                .iter()
                .map(|&v| <A as crate::Dtype>::from_f64(v))
                .collect();
            let b: Vec<A> = vals(nb * batch, (n * 17 + k + kb) as u64)
                .iter()
                .map(|&v| <A as crate::Dtype>::from_f64(v))
                .collect();
            for shared_b in [true, false] {
                let lb = Layout::new(
                    &[batch, k, n],
                    &[
                        if shared_b { 0 } else { nb },
                        lb2.strides()[0],
                        lb2.strides()[1],
                    ],
                    lb2.offset,
                );
                for kern in kernels::<A>() {
                    for threads in [1, 2, 3] {
                        let (plain, fused) = on_threads(threads, || {
                            (
                                gemm_batched_with::<_, Widen>(&a, &la, &b, &lb, kern),
                                gemm_batched_bias_with::<_, Widen>(
                                    &a,
                                    &la,
                                    &b,
                                    &lb,
                                    Some(&bias),
                                    kern,
                                ),
                            )
                        });
                        let want: Vec<A> = plain
                            .iter()
                            .enumerate()
                            .map(|(i, &v)| v + bias[i % n])
                            .collect();
                        assert!(
                            fused.iter().zip(&want).all(|(f, w)| f.as_f64().to_bits() == w.as_f64().to_bits()),
                            "{:?} {batch}x{m}x{k}x{n} kinds ({ka}, {kb}) shared B {shared_b} kernel {} threads {threads}",
                            A::DTYPE,
                            kern.name
                        );
                    }
                }
            }
        }
    }
    // (M, K, N, batch): depth blocks shared out (deep and small), columns
    // (M <= N), rows (M > N), edge tiles and a single element; a batch.
    for &(m, k, n, batch) in &[
        (1, 1, 1, 1),
        (7, 3, 9, 1),
        (64, 3 * KC + 5, 96, 1),
        (100, 200, 513, 1),
        (700, 300, 70, 1),
        (MC + 13, KC + 7, 71, 1),
        (29, 40, 17, 3),
        (5, 0, 6, 2),
    ] {
        one::<f32>(m, k, n, batch);
        one::<f64>(m, k, n, batch);
    }
}

/// Every dtype with a bias through the public entry (the `bf16` one on its
/// native kernels or AMX where present): one rounding of the exact
/// `A · B + bias`, within the dtype's tolerance.
#[test]
fn bias_every_dtype_rounds_once() {
    use crate::f8::{F8E4M3, F8E5M2};
    fn one<E: FloatDtype>(m: usize, k: usize, n: usize, tol: f64) {
        let a: Vec<E> = vals(m * k, 51).iter().map(|&v| E::from_f64(v)).collect();
        let b: Vec<E> = vals(k * n, 52).iter().map(|&v| E::from_f64(v)).collect();
        let bias: Vec<E> = vals(n, 53).iter().map(|&v| E::from_f64(4.0 * v)).collect();
        let la = Layout::contiguous(&[m, k]);
        let lb = Layout::new(&[k, n], &[1, k], 0);
        let f64s = |x: &[E]| x.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
        let (want, mag) = reference(&f64s(&a), &la, &f64s(&b), &lb);
        for threads in [1, 2] {
            let got = on_threads(threads, || gemm_batched_bias(&a, &la, &b, &lb, Some(&bias)));
            for (i, g) in got.iter().enumerate() {
                let w = want[i] + bias[i % n].to_f64();
                let r = E::from_f64(w).to_f64();
                let scale = (mag[i] + bias[i % n].to_f64().abs()).max(1.0);
                assert!(
                    (g.to_f64() - r).abs() <= tol * scale,
                    "{:?} {m}x{k}x{n} threads {threads} element {i}: got {}, want {r}",
                    E::DTYPE,
                    g.to_f64()
                );
            }
        }
    }
    for &(m, k, n) in &[(1, 1, 1), (15, 37, 33), (17, 300, 7), (130, 1100, 96)] {
        one::<f64>(m, k, n, 1e-13);
        one::<f32>(m, k, n, 1e-5);
        one::<f16>(m, k, n, 2e-3);
        one::<bf16>(m, k, n, 1e-2);
        one::<F8E4M3>(m, k, n, 0.07);
        one::<F8E5M2>(m, k, n, 0.13);
    }
}

#[test]
#[should_panic(expected = "one value per column")]
fn bias_of_the_wrong_length_is_refused() {
    let a = [1.0f32; 6];
    let (la, lb) = (Layout::contiguous(&[2, 3]), Layout::contiguous(&[3, 2]));
    gemm_batched_bias(&a, &la, &a, &lb, Some(&[1.0, 2.0, 3.0]));
}

/// Every edge kernel gives each of its rows the full kernel's bits, at
/// every row count and odd depths, and writes nothing past its rows.
#[test]
fn edge_kernels_match_the_full_kernel_bitwise() {
    fn one<A: Real>() {
        for kern in kernels::<A>() {
            let Some(edge) = kern.edge else { continue };
            let (mr, nr) = (kern.mr, kern.nr);
            for kc in [1, 2, 3, 7, 64, 515] {
                let cast = |v: Vec<f64>| -> Vec<A> {
                    v.iter().map(|&x| A::from_f64(x).unwrap()).collect()
                };
                let a = cast(vals(kc * mr, kc as u64 + 11));
                let b = cast(vals(kc * nr, kc as u64 + 12));
                let mut full = vec![A::zero(); mr * nr];
                // SAFETY: the panels and tiles have the sizes the kernels read and write.
                unsafe {
                    (kern.f)(
                        kc,
                        a.as_ptr(),
                        b.as_ptr(),
                        full.as_mut_ptr(),
                        nr,
                        Store::c(true),
                    )
                };
                for rows in 1..mr {
                    let poison = A::from_f64(7.25).unwrap();
                    let mut part = vec![poison; mr * nr];
                    // SAFETY: as above; `rows < MR`.
                    unsafe { edge(rows, kc, a.as_ptr(), b.as_ptr(), part.as_mut_ptr()) };
                    let bits = |c: &[A]| {
                        c.iter()
                            .map(|v| v.to_f64().unwrap().to_bits())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        bits(&part[..rows * nr]),
                        bits(&full[..rows * nr]),
                        "{} kc {kc} rows {rows}",
                        kern.name
                    );
                    assert!(
                        part[rows * nr..].iter().all(|&v| v == poison),
                        "{} wrote past row {rows}",
                        kern.name
                    );
                }
            }
        }
    }
    one::<f32>();
    one::<f64>();
}

/// Each kernel reading `A` in place (the assembly depth loops among them)
/// against the same kernel on a packed `A`: the same fused multiply-adds in
/// the same order, so the same bits, at depths around the 4-step unroll and
/// row strides that are odd, tiny and large.
#[test]
fn direct_kernels_match_packed_bitwise() {
    fn one<A: Real>() {
        for kern in kernels::<A>() {
            let Some(fd) = kern.fd else { continue };
            let (mr, nr) = (kern.mr, kern.nr);
            for kc in [1, 2, 3, 4, 5, 7, 8, 9, 13, 64, 515] {
                // (1024: rows 4 or 8 KiB apart, where the rows share L1 sets.)
                for lda in [kc, kc + 1, kc + 37, 4 * kc + 1029, 1024] {
                    let a: Vec<A> = vals(mr * lda, (kc * 7 + lda) as u64)
                        .iter()
                        .map(|&v| A::from_f64(v).unwrap())
                        .collect();
                    let b: Vec<A> = vals(kc * nr, kc as u64)
                        .iter()
                        .map(|&v| A::from_f64(v).unwrap())
                        .collect();
                    let packed: Vec<A> = (0..kc * mr).map(|x| a[(x % mr) * lda + x / mr]).collect();
                    let c0: Vec<A> = vals(mr * nr, 3)
                        .iter()
                        .map(|&v| A::from_f64(v).unwrap())
                        .collect();
                    let (mut c1, mut c2) = (c0.clone(), c0.clone());
                    // SAFETY: the panels and tiles have the sizes the kernels read and write.
                    unsafe {
                        (kern.f)(
                            kc,
                            packed.as_ptr(),
                            b.as_ptr(),
                            c1.as_mut_ptr(),
                            nr,
                            Store::c(false),
                        );
                        fd(
                            kc,
                            a.as_ptr(),
                            lda,
                            b.as_ptr(),
                            c2.as_mut_ptr(),
                            nr,
                            Store::c(false),
                        );
                    }
                    let bits = |c: &[A]| {
                        c.iter()
                            .map(|v| v.to_f64().unwrap().to_bits())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(bits(&c1), bits(&c2), "{} kc {kc} lda {lda}", kern.name);
                }
            }
        }
    }
    one::<f32>();
    one::<f64>();
    // `bf16` pairs: `A` read in place as `bf16` values, packed as pairs.
    #[cfg(target_arch = "x86_64")]
    for kern in x86::avx512_bf16().into_iter().flatten() {
        let (mr, nr, fd) = (kern.mr, kern.nr, kern.fd.unwrap());
        let bf =
            |v: &[f64]| -> Vec<u16> { v.iter().map(|&x| bf16::from_f64(x).to_bits()).collect() };
        let pair = |lo: u16, hi: u16| lo as u32 | (hi as u32) << 16;
        for kc in [2, 4, 6, 8, 10, 14, 18, 26, 128, 1030] {
            for lda in [kc, kc + 1, kc + 37, 4 * kc + 1029, 2048] {
                let a = bf(&vals(mr * lda, (kc * 7 + lda) as u64));
                let b = bf(&vals(kc * nr, kc as u64));
                let packed: Vec<u32> = (0..kc / 2 * mr)
                    .map(|x| {
                        let (q, i) = (x / mr, x % mr);
                        pair(a[i * lda + 2 * q], a[i * lda + 2 * q + 1])
                    })
                    .collect();
                let bp: Vec<u32> = (0..kc / 2 * nr)
                    .map(|x| {
                        let (q, j) = (x / nr, x % nr);
                        pair(b[2 * q * nr + j], b[(2 * q + 1) * nr + j])
                    })
                    .collect();
                let c0: Vec<f32> = vals(mr * nr, 3).iter().map(|&v| v as f32).collect();
                let (mut c1, mut c2) = (c0.clone(), c0.clone());
                // SAFETY: the panels and tiles have the sizes the kernels read and write.
                unsafe {
                    (kern.f)(
                        kc,
                        packed.as_ptr(),
                        bp.as_ptr(),
                        c1.as_mut_ptr(),
                        nr,
                        Store::c(false),
                    );
                    fd(
                        kc,
                        a.as_ptr().cast(),
                        lda,
                        bp.as_ptr(),
                        c2.as_mut_ptr(),
                        nr,
                        Store::c(false),
                    );
                }
                let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&c1), bits(&c2), "{} kc {kc} lda {lda}", kern.name);
            }
        }
    }
}

/// The AVX-512 `f16` conversions of the packing and the final rounding
/// against `half`'s value by value: every `f16` bit pattern widened, and
/// `f32` values around every rounding case (ties, subnormals, overflow,
/// infinities, NaN) narrowed, at every run length up to 40 (the masked
/// tails).
#[test]
fn f16_conversions_match_half() {
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut wide = vec![0f32; all.len()];
    pack::widen(&all, &mut wide);
    for (h, w) in all.iter().zip(&wide) {
        let want = h.to_f32();
        assert!(
            w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()),
            "{:#06x}: {w} vs {want}",
            h.to_bits()
        );
    }
    let mut xs: Vec<f32> = wide
        .iter()
        .filter(|v| v.is_finite())
        .flat_map(|&v| {
            let b = v.to_bits();
            [
                v,
                f32::from_bits(b.wrapping_add(1)),
                f32::from_bits(b.wrapping_sub(1)),
                f32::from_bits(b + 0x1000),
            ]
        })
        .collect();
    xs.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65520.0,
        65519.0,
        1e-8,
        -1e-8,
        1e30,
    ]);
    let mut out = vec![core::mem::MaybeUninit::<f16>::uninit(); xs.len()];
    pack::narrow(&xs, &mut out);
    for (x, o) in xs.iter().zip(&out) {
        // SAFETY: `narrow` writes every element.
        let got = unsafe { o.assume_init() };
        let want = f16::from_f32(*x);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{x:e}: {got} vs {want}"
        );
    }
    for len in 0..=40 {
        let src: Vec<f16> = (0..len)
            .map(|i| f16::from_f32(i as f32 * 0.5 - 3.0))
            .collect();
        let mut d = vec![f32::NAN; len + 3];
        pack::widen(&src, &mut d[..len]);
        assert!(
            d[..len].iter().zip(&src).all(|(d, s)| *d == s.to_f32()),
            "widen {len}"
        );
        assert!(
            d[len..].iter().all(|v| v.is_nan()),
            "widen {len} wrote past its run"
        );
        let mut o = vec![core::mem::MaybeUninit::new(f16::from_f32(7.0)); len + 3];
        pack::narrow(&d[..len], &mut o[..len]);
        // SAFETY: every element was initialized.
        let o: Vec<f16> = o.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert!(
            o[..len].iter().zip(&src).all(|(o, s)| o == s),
            "narrow {len}"
        );
        assert!(
            o[len..].iter().all(|v| v.to_f32() == 7.0),
            "narrow {len} wrote past its run"
        );
    }
}

/// A product of 1-4 rows (the skinny path: `B` read in place), in `f32`,
/// `f16` and `bf16` (with AVX512-BF16), at depths across depth blocks and
/// within one vector (odd ones too), widths across strips and tasks, with a
/// bias, on 1 and 2 threads:
/// - with a row-major `B`, the bits of the same rows computed among more
///   rows (the blocked path), also when added into a result (`gemm_acc`);
/// - with a transposed `B` (dot products along the weight's rows), close to
///   the exact product of the same inputs, and the same bits on 1 and 2
///   threads.
#[test]
fn few_rows_read_b_in_place() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("few_rows_read_b_in_place: no AVX-512F, skipped");
        return;
    }
    let tall = skinny::MAX_ROWS + 9;
    let bf16_too = !kernel::bf16_kernels().is_empty();
    let avx512bw = std::arch::is_x86_feature_detected!("avx512bw");
    for (k, n) in [
        (1, 1),
        (7, 33),
        (9, 64),
        (33, 7),
        (300, 65),
        (1100, 300),
        (515, 1031),
    ] {
        let a64 = vals(tall * k, (k + n) as u64);
        let b64 = vals(k * n, (3 * k + n) as u64);
        let bias64 = vals(n, 7);
        for (lb, in_place_order) in [
            (Layout::contiguous(&[k, n]), true),
            (Layout::new(&[k, n], &[1, k], 0), false),
        ] {
            let values = (a64.as_slice(), b64.as_slice(), bias64.as_slice());
            few_rows_of::<f32>(values, (k, n), &lb, in_place_order);
            if bf16_too {
                few_rows_of::<bf16>(values, (k, n), &lb, in_place_order);
            }
            if avx512bw {
                few_rows_of::<f16>(values, (k, n), &lb, in_place_order);
                few_rows_of::<crate::F8E4M3>(values, (k, n), &lb, in_place_order);
                few_rows_of::<crate::F8E5M2>(values, (k, n), &lb, in_place_order);
            }
            // Added into a result (`gemm_acc`, `f32`): the blocked kernels' `c + Σ`.
            let (a, b) = (rounded::<f32>(&a64).0, rounded::<f32>(&b64).0);
            let (sa, sb) = ((k, 1), (lb.strides()[0], lb.strides()[1]));
            let c0: Vec<f32> = vals(tall * n, 9).iter().map(|&v| v as f32).collect();
            for m in 1..=skinny::MAX_ROWS {
                let what = format!("gemm_acc {m} x {k} x {n}, B strides {:?}", lb.strides());
                let (mut c, mut tall_c) = (c0[..m * n].to_vec(), c0.clone());
                gemm_acc(m, n, k, &a, sa, &b, sb, &mut c);
                gemm_acc(tall, n, k, &a, sa, &b, sb, &mut tall_c);
                if in_place_order {
                    let same = c
                        .iter()
                        .zip(&tall_c)
                        .all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{what}");
                } else {
                    let c: Vec<f64> = c.iter().map(|&v| v as f64).collect();
                    let t: Vec<f64> = tall_c[..m * n].iter().map(|&v| v as f64).collect();
                    assert!(max_rel(&c, &t) < 1e-5, "{what}");
                }
            }
        }
    }
}

/// The few-rows path widens 16 f8 values at a time with vector code: for
/// every one of the 256 bit patterns of both formats, in every lane, the
/// value `to_f32` gives (NaN for NaN), and zero in the lanes masked off.
#[test]
fn f8_widening_loads_give_every_value() {
    use crate::{F8E4M3, F8E5M2};
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl"))
    {
        eprintln!("f8_widening_loads_give_every_value: no AVX-512 BW/VL, skipped");
        return;
    }
    fn check<T: skinny::Wide + FloatDtype>(of_bits: fn(u8) -> T) {
        let all: Vec<T> = (0..=255u8).map(of_bits).collect();
        for start in 0..=240 {
            for mask in [0xFFFFu16, 0x00FF, 0x8001] {
                let mut got = [0f32; 16];
                // SAFETY: AVX-512 F/BW/VL are present; the 16 values from
                // `start` are in `all`.
                unsafe {
                    let v = T::load16(mask, all.as_ptr().add(start));
                    core::arch::x86_64::_mm512_storeu_ps(got.as_mut_ptr(), v);
                }
                for (lane, &g) in got.iter().enumerate() {
                    let want = if mask >> lane & 1 == 1 {
                        all[start + lane].to_f32()
                    } else {
                        0.0
                    };
                    let what = format!("{:?} bits {:#04x} lane {lane}", T::DTYPE, start + lane);
                    if want.is_nan() {
                        assert!(g.is_nan(), "{what}: got {g}, want NaN");
                    } else {
                        assert_eq!(g.to_bits(), want.to_bits(), "{what}: got {g}, want {want}");
                    }
                }
            }
        }
    }
    check(F8E4M3::from_bits);
    check(F8E5M2::from_bits);
}

/// [`few_rows_read_b_in_place`] for one `T` (`f32`, `bf16`, `f16` or f8): the
/// `(A, B, bias)` values (`A` with [`skinny::MAX_ROWS`] + 9 rows of `k`)
/// rounded to `T`, `B` `[k, n]` through `lb`. Each of 1-4 rows: the same
/// bits on 1 and 2 threads; the tall product's bits where the path keeps
/// the blocked order (`in_place_order`); close to the exact product of the
/// rounded inputs.
fn few_rows_of<T: FloatDtype>(
    (a64, b64, bias64): (&[f64], &[f64], &[f64]),
    (k, n): (usize, usize),
    lb: &Layout,
    in_place_order: bool,
) {
    let tall = skinny::MAX_ROWS + 9;
    let (a, af) = rounded::<T>(a64);
    let (b, bf) = rounded::<T>(b64);
    let (bias, biasf) = rounded::<T>(bias64);
    let all = gemm_batched_bias(&a, &Layout::contiguous(&[tall, k]), &b, lb, Some(&bias));
    // (Widening to `f64` is exact and keeps every bit of a non-NaN value.)
    let same = |x: &[T], y: &[T]| {
        x.iter()
            .zip(y)
            .all(|(g, w)| g.to_f64().to_bits() == w.to_f64().to_bits())
    };
    for m in 1..=skinny::MAX_ROWS {
        let lm = Layout::contiguous(&[m, k]);
        let what = format!(
            "{:?} {m} x {k} x {n}, B strides {:?}",
            T::DTYPE,
            lb.strides()
        );
        let one = on_threads(1, || {
            gemm_batched_bias(&a[..m * k], &lm, &b, lb, Some(&bias))
        });
        let two = on_threads(2, || {
            gemm_batched_bias(&a[..m * k], &lm, &b, lb, Some(&bias))
        });
        assert!(same(&one, &two), "{what}: 1 and 2 threads");
        if in_place_order {
            assert!(same(&one, &all[..m * n]), "{what}: the tall product's rows");
        }
        let (mut want, mag) = reference(&af[..m * k], &lm, &bf, lb);
        for row in want.chunks_mut(n) {
            row.iter_mut().zip(&biasf).for_each(|(w, &b)| *w += b);
        }
        let mag: Vec<f64> = mag
            .iter()
            .zip(biasf.iter().cycle())
            .map(|(m, b)| m + b.abs())
            .collect();
        assert_rounded_close(&one, &want, &mag, &what);
    }
}

#[test]
fn column_runs_split_at_every_gap() {
    let mut runs = [(0, 0); 4];
    assert_eq!(column_runs_of(&[10, 11, 12, 20, 21, 5], &mut runs), Some(3));
    assert_eq!(runs[..3], [(0, 3), (3, 2), (5, 1)]);
    assert_eq!(column_runs_of(&[], &mut runs), Some(0));
    // More runs than room: none.
    assert_eq!(column_runs_of(&[0, 2, 4, 6, 8], &mut runs), None);
}

fn column_runs_of(offsets: &[usize], runs: &mut [(usize, usize)]) -> Option<usize> {
    pack::column_runs(offsets, runs)
}

/// `gemm_indexed` against the triple loop over the same offset tables:
/// `B`'s columns in runs of consecutive offsets (a convolution's output
/// rows, copied run by run), with gaps too short for runs (strided, copied
/// value by value), a transposed `B`, odd sizes, adding onto `c`, and 1 or
/// 2 threads with the same bits.
#[test]
fn indexed_operands_match_the_triple_loop() {
    // `B[p, j] = b[base + rows[p] + cols[j]]`: a 3-tap, 2-channel unrolled
    // image of width `wp`, `ow` positions per output row at `step`.
    fn image_cols(oh: usize, ow: usize, wp: usize, step: usize) -> Vec<usize> {
        (0..oh)
            .flat_map(|y| (0..ow).map(move |x| y * wp + x * step))
            .collect()
    }
    for (m, oh, ow, step, wp) in [
        (5, 3, 37, 1, 40),
        (17, 9, 7, 1, 9),
        (1, 2, 60, 1, 61),
        (29, 4, 11, 2, 24),
        (14, 1, 129, 1, 131),
    ] {
        let taps: Vec<usize> = (0..2)
            .flat_map(|c| (0..3).map(move |t| c * 20 * wp + t * wp + t))
            .collect();
        let cols = image_cols(oh, ow, wp, step);
        let image = vals(3 + 2 * 20 * wp + 2 * wp + 2 + *cols.last().unwrap(), 7);
        let k = taps.len();
        let a = vals(m * k + 3, 8);
        let (a_rows, a_cols): (Vec<usize>, Vec<usize>) =
            ((0..m).map(|i| i * k).collect(), (0..k).collect());
        let n = cols.len();
        let mut want = vals(m * n, 9);
        let start = want.clone();
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += a[3 + a_rows[i] + a_cols[p]] * image[3 + taps[p] + cols[j]];
                }
                want[i * n + j] += s;
            }
        }
        let mut bits = Vec::new();
        for threads in [1, 2] {
            let run = |overwrite: bool, c: &mut [f64]| {
                let ai = Indexed::new(&a, 3, &a_rows, &a_cols);
                let bi = Indexed::new(&image, 3, &taps, &cols);
                gemm_indexed(ai, bi, c, overwrite, threads);
            };
            let mut c = start.clone();
            run(false, &mut c);
            assert!(
                max_rel(&c, &want) < 1e-12,
                "{m} x {oh}x{ow} step {step}: c +="
            );
            let mut set = vec![f64::NAN; m * n];
            run(true, &mut set);
            let sums: Vec<f64> = want.iter().zip(&start).map(|(w, s)| w - s).collect();
            assert!(
                max_rel(&set, &sums) < 1e-10,
                "{m} x {oh}x{ow} step {step}: c ="
            );
            bits.push(set);
        }
        assert_eq!(bits[0], bits[1], "thread counts agree");
        // `B` read transposed (unit depth steps): `Bᵀ` is `image` rows.
        let bt_rows: Vec<usize> = (0..k).collect();
        let bt_cols: Vec<usize> = (0..n).map(|j| j * k).collect();
        let bt = vals(n * k, 10);
        let mut c = vec![f64::NAN; m * n];
        let ai = Indexed::new(&a, 3, &a_rows, &a_cols);
        let bi = Indexed::new(&bt, 0, &bt_rows, &bt_cols);
        gemm_indexed(ai, bi, &mut c, true, 2);
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| a[3 + i * k + p] * bt[j * k + p]).sum();
                assert!((c[i * n + j] - s).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn indexed_operands_are_checked() {
    let data = [1.0f32; 6];
    let rows = [0, 2];
    let cols = [0, 1, 4];
    let ok = Indexed::new(&data, 0, &rows, &cols[..2]);
    let past = Indexed::new(&data, 0, &rows, &cols);
    let mut c = [0.0f32; 4];
    gemm_indexed(ok, ok, &mut c, true, 1);
    assert_eq!(c, [2.0; 4]);
    let r = std::panic::catch_unwind(move || {
        let mut c = [0.0f32; 6];
        gemm_indexed(ok, past, &mut c, true, 1)
    });
    assert!(r.is_err(), "an offset past the operand's end");
}
