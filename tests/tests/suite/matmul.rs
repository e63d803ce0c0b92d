//! Matrix multiplication and `t()`: forward values against a naive loop,
//! f64 finite-difference gradients for every rank combination, a sweep over
//! every dtype, run-time shape errors and generic code over dims.

use zerfoo::ops::LinearAct;
use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, rel_err, weighted_sum};

dim!(M = 3);
dim!(K = 5);
dim!(N = 4);
dim!(B = 2);
dim!(H = 3);

/// The textbook triple loop over a batch: `a` is `[batch, m, k]` (or one
/// `[m, k]` if `a_shared`), `b` is `[batch, k, n]` (or one `[k, n]`).
#[allow(clippy::too_many_arguments)]
fn naive(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_shared: bool,
    b_shared: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for t in 0..batch {
        let ao = if a_shared { 0 } else { t * m * k };
        let bo = if b_shared { 0 } else { t * k * n };
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += a[ao + i * k + p] * b[bo + p * n + j];
                }
                out[(t * m + i) * n + j] = s;
            }
        }
    }
    out
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    assert!(
        e <= tol,
        "rel err {e:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

// ---------------------------------------------------------------- forward

#[test]
fn forward_hand_computed() {
    let a = Tensor::<(U2, U3), f64>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.])
        .unwrap();
    let b = Tensor::<(U3, U2), f64>::from_vec(Default::default(), vec![7., 8., 9., 10., 11., 12.])
        .unwrap();
    // [[1*7+2*9+3*11, 1*8+2*10+3*12], [4*7+5*9+6*11, 4*8+5*10+6*12]]
    assert_eq!(a.clone().matmul(b.clone()).to_vec(), [58., 64., 139., 154.]);
    // aᵀ · aᵀᵀ ... (3x2)(2x3): row i, col j = a[0][i] a[0][j] + a[1][i] a[1][j]
    let g = a.clone().t().matmul(a.clone());
    assert_eq!(g.to_vec(), [17., 22., 27., 22., 29., 36., 27., 36., 45.]);
    // A vector times a matrix, and a dot product.
    let v = Tensor::<(U3,), f64>::from_vec(Default::default(), vec![1., 0., -1.]).unwrap();
    assert_eq!(v.clone().matmul(b).to_vec(), [-4., -4.]);
    let w = Tensor::<(U3,), f64>::from_vec(Default::default(), vec![2., 5., 7.]).unwrap();
    assert_eq!(v.matmul(w).item(), -5.0);
}

#[test]
fn forward_matches_naive_at_odd_sizes() {
    for (i, &(m, k, n)) in [
        (1, 1, 1),
        (7, 33, 9),
        (33, 7, 129),
        (129, 129, 7),
        (150, 140, 130),
    ]
    .iter()
    .enumerate()
    {
        let s = i as u64 * 10;
        let a: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(m), Dyn(k)), s);
        let b: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(k), Dyn(n)), s + 1);
        let want = naive(&a.to_f64_vec(), &b.to_f64_vec(), 1, m, k, n, false, false);
        let y = a.clone().matmul(b.clone());
        assert_eq!(y.dims(), [m, n]);
        assert_close(&y.to_f64_vec(), &want, 1e-13);
        // Same product from transposed storage: (aᵀ)ᵀ · (bᵀ)ᵀ through non-contiguous views.
        let at = a.t().contiguous().t();
        let bt = b.t().contiguous().t();
        assert!(!at.is_contiguous() || m == 1 || k == 1);
        assert_close(&at.matmul(bt).to_f64_vec(), &want, 1e-13);
    }
}

#[test]
fn forward_batched_matches_naive() {
    let (bt, h, m, k, n) = (2, 3, 7, 9, 5);
    let a3: Tensor<(Dyn, Dyn, Dyn), f64> = Tensor::randn((Dyn(bt), Dyn(m), Dyn(k)), 1);
    let b3: Tensor<(Dyn, Dyn, Dyn), f64> = Tensor::randn((Dyn(bt), Dyn(k), Dyn(n)), 2);
    let b2: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(k), Dyn(n)), 3);
    let a2: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(m), Dyn(k)), 4);
    let (va3, vb3, vb2, va2) = (
        a3.to_f64_vec(),
        b3.to_f64_vec(),
        b2.to_f64_vec(),
        a2.to_f64_vec(),
    );
    let y = a3.clone().matmul(b3.clone());
    assert_eq!(y.dims(), [bt, m, n]);
    assert_close(
        &y.to_f64_vec(),
        &naive(&va3, &vb3, bt, m, k, n, false, false),
        1e-13,
    );
    let y = a3.matmul(b2.clone());
    assert_close(
        &y.to_f64_vec(),
        &naive(&va3, &vb2, bt, m, k, n, false, true),
        1e-13,
    );
    let y = a2.clone().matmul(b3);
    assert_eq!(y.dims(), [bt, m, n]);
    assert_close(
        &y.to_f64_vec(),
        &naive(&va2, &vb3, bt, m, k, n, true, false),
        1e-13,
    );

    let a4: Tensor<(Dyn, Dyn, Dyn, Dyn), f64> = Tensor::randn((Dyn(bt), Dyn(h), Dyn(m), Dyn(k)), 5);
    let b4: Tensor<(Dyn, Dyn, Dyn, Dyn), f64> = Tensor::randn((Dyn(bt), Dyn(h), Dyn(k), Dyn(n)), 6);
    let (va4, vb4) = (a4.to_f64_vec(), b4.to_f64_vec());
    let y = a4.clone().matmul(b4.clone());
    assert_eq!(y.dims(), [bt, h, m, n]);
    assert_close(
        &y.to_f64_vec(),
        &naive(&va4, &vb4, bt * h, m, k, n, false, false),
        1e-13,
    );
    let y = a4.matmul(b2);
    assert_close(
        &y.to_f64_vec(),
        &naive(&va4, &vb2, bt * h, m, k, n, false, true),
        1e-13,
    );
    let y = a2.matmul(b4);
    assert_eq!(y.dims(), [bt, h, m, n]);
    assert_close(
        &y.to_f64_vec(),
        &naive(&va2, &vb4, bt * h, m, k, n, true, false),
        1e-13,
    );
}

#[test]
fn transpose_is_a_view_of_the_last_two_axes() {
    let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![1., 2., 3., 4., 5., 6.])
        .unwrap();
    let y = x.clone().t();
    assert_eq!(y.dims(), [3, 2]);
    assert!(!y.is_contiguous());
    assert_eq!(y.storage().0.as_ptr(), x.storage().0.as_ptr(), "t() copied");
    assert_eq!(y.to_vec(), [1., 4., 2., 5., 3., 6.]);
    assert_eq!(y.t().to_vec(), x.to_vec());

    let x4: Tensor<(B, H, M, N), f64> = Tensor::randn((B, H, M, N), 7);
    let v = x4.to_f64_vec();
    let y4: Tensor<(B, H, N, M), f64> = x4.t();
    let got = y4.to_f64_vec();
    for bh in 0..6 {
        for i in 0..3 {
            for j in 0..4 {
                assert_eq!(got[bh * 12 + j * 3 + i], v[bh * 12 + i * 4 + j]);
            }
        }
    }
    let x3: Tensor<(B, M, N), f64> = Tensor::randn((B, M, N), 8);
    let y3: Tensor<(B, N, M), f64> = x3.clone().t();
    assert_eq!(y3.dims(), [2, 4, 3]);
    assert_eq!(y3.t().to_vec(), x3.to_vec());
}

#[test]
fn named_dims_of_equal_value_multiply() {
    dim!(Hidden = 8);
    dim!(Embed = 8);
    let x: Tensor<(M, Hidden), f64> = Tensor::randn((M, Hidden), 1);
    let w: Tensor<(Embed, N), f64> = Tensor::randn((Embed, N), 2);
    let want = naive(&x.to_f64_vec(), &w.to_f64_vec(), 1, 3, 8, 4, false, false);
    let y: Tensor<(M, N), f64> = x.matmul(w);
    assert_close(&y.to_f64_vec(), &want, 1e-14);
}

#[test]
fn generic_code_over_dims_compiles_and_runs() {
    fn f<Mm: Dim, Kk: Dim, Nn: Dim>(
        a: Tensor<(Mm, Kk), f32>,
        b: Tensor<(Kk, Nn), f32>,
    ) -> Tensor<(Mm, Nn), f32> {
        a.matmul(b)
    }
    fn g<Mm: Dim, Nn: Dim>(x: Tensor<(Mm, Nn), f32>) -> Tensor<(Mm, Mm), f32> {
        x.clone().matmul(x.t())
    }
    fn batched<Bb: Dim, Mm: Dim, Kk: Dim, Nn: Dim, T: zerfoo::autograd::TapeState>(
        a: Tensor<(Bb, Mm, Kk), f32, Cpu, T>,
        w: Tensor<(Kk, Nn), f32>,
    ) -> Tensor<(Bb, Mm, Nn), f32, Cpu, T> {
        a.matmul(w)
    }
    let a = Tensor::<(M, K), f32>::ones((M, K));
    let b = Tensor::<(K, Dyn), f32>::ones((K, Dyn(2)));
    let y = f(a.clone(), b);
    assert_eq!(y.dims(), [3, 2]);
    assert_eq!(y.to_vec(), [5.0; 6]);
    assert_eq!(g(a).to_vec(), [5.0; 9]);
    let x = Tensor::<(Dyn, M, K), f32>::ones((Dyn(2), M, K));
    let w = Tensor::<(K, N), f32>::full((K, N), 2.0);
    assert_eq!(batched(x, w).to_vec(), [10.0; 24]);
}

// --------------------------------------------------------------- gradients

#[test]
fn grad_rank2() {
    let a: Tensor<(M, K), f64> = Tensor::randn((M, K), 1);
    let b: Tensor<(K, N), f64> = Tensor::randn((K, N), 2);
    check_grad2(a.clone(), b.clone(), |a, b| weighted_sum(a.matmul(b), 3));
    // rhs traced instead of lhs (NoTape x Tape).
    check_grad2(b, a, |b, a| weighted_sum(a.matmul(b), 4));
}

#[test]
fn grad_rank3_by_rank3() {
    let a: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 5);
    let b: Tensor<(B, K, N), f64> = Tensor::randn((B, K, N), 6);
    check_grad2(a, b, |a, b| weighted_sum(a.matmul(b), 7));
}

#[test]
fn grad_rank3_by_shared_rank2() {
    let a: Tensor<(Dyn, M, K), f64> = Tensor::randn((Dyn(3), M, K), 8);
    let w: Tensor<(K, N), f64> = Tensor::randn((K, N), 9);
    check_grad2(a, w, |a, w| weighted_sum(a.matmul(w), 10));
}

#[test]
fn grad_rank4_by_rank4() {
    let a: Tensor<(B, H, M, K), f64> = Tensor::randn((B, H, M, K), 11);
    let b: Tensor<(B, H, K, N), f64> = Tensor::randn((B, H, K, N), 12);
    check_grad2(a, b, |a, b| weighted_sum(a.matmul(b), 13));
}

#[test]
fn grad_rank4_by_shared_rank2() {
    let a: Tensor<(B, H, M, K), f64> = Tensor::randn((B, H, M, K), 14);
    let w: Tensor<(K, N), f64> = Tensor::randn((K, N), 15);
    check_grad2(a, w, |a, w| weighted_sum(a.matmul(w), 16));
}

#[test]
fn grad_shared_rank2_by_batched() {
    let w: Tensor<(M, K), f64> = Tensor::randn((M, K), 17);
    let x3: Tensor<(B, K, N), f64> = Tensor::randn((B, K, N), 18);
    check_grad2(w.clone(), x3, |w, x| weighted_sum(w.matmul(x), 19));
    let x4: Tensor<(B, H, K, N), f64> = Tensor::randn((B, H, K, N), 20);
    check_grad2(w, x4, |w, x| weighted_sum(w.matmul(x), 21));
}

#[test]
fn grad_vector_by_matrix_and_dot() {
    let v: Tensor<(K,), f64> = Tensor::randn((K,), 22);
    let w: Tensor<(K, N), f64> = Tensor::randn((K, N), 23);
    check_grad2(v.clone(), w, |v, w| weighted_sum(v.matmul(w), 24));
    let u: Tensor<(K,), f64> = Tensor::randn((K,), 25);
    check_grad2(v, u, |v, u| v.matmul(u));
}

#[test]
fn grad_through_transposed_operands() {
    // Both operands stored transposed and used through non-contiguous `t()` views.
    // (`check_grad2` traces only its first argument; an op on an untraced
    // tensor records nothing, so the second is traced — same id — before `t()`.)
    let at: Tensor<(K, M), f64> = Tensor::randn((K, M), 26);
    let bt: Tensor<(N, K), f64> = Tensor::randn((N, K), 27);
    check_grad2(at, bt, |at, bt| {
        let (a, b) = (at.t(), bt.traced().t());
        assert!(!a.is_contiguous() && !b.is_contiguous());
        weighted_sum(a.matmul(b), 28)
    });
    // Batched, with a shared transposed weight (the `x · Wᵀ` of a linear layer).
    let x: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 29);
    let w: Tensor<(N, K), f64> = Tensor::randn((N, K), 30);
    check_grad2(x, w, |x, w| weighted_sum(x.matmul(w.traced().t()), 31));
    // Attention-style scores `q · kᵀ` on rank 4.
    let q: Tensor<(B, H, M, K), f64> = Tensor::randn((B, H, M, K), 32);
    let kk: Tensor<(B, H, N, K), f64> = Tensor::randn((B, H, N, K), 33);
    check_grad2(q, kk, |q, kk| weighted_sum(q.matmul(kk.traced().t()), 34));
}

#[test]
fn matmul_t_equals_matmul_of_t_with_gradients() {
    // `x · wᵀ` with the weight's gradient made in its own orientation:
    // rank 2, and rank 3 by a shared rank-2 weight (a linear layer).
    let x: Tensor<(M, K), f64> = Tensor::randn((M, K), 40);
    let w: Tensor<(N, K), f64> = Tensor::randn((N, K), 41);
    check_grad2(x.clone(), w.clone(), |x, w| {
        weighted_sum(x.matmul_t(w.traced()), 42)
    });
    check_grad2(w.clone(), x.clone(), |w, x| {
        weighted_sum(x.traced().matmul_t(w), 43)
    });
    let x3: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 44);
    check_grad2(x3.clone(), w.clone(), |x, w| {
        weighted_sum(x.matmul_t(w.traced()), 45)
    });
    // Batched by batched (per-matrix weights).
    let w3: Tensor<(B, N, K), f64> = Tensor::randn((B, N, K), 46);
    check_grad2(x3.clone(), w3, |x, w| {
        weighted_sum(x.matmul_t(w.traced()), 47)
    });
    // The same values and gradients as through a `t()` view.
    let (xt, wt) = (x3.traced(), w.traced());
    let ga = weighted_sum(xt.clone().matmul_t(wt.clone()), 48).backward();
    let gb = weighted_sum(xt.clone().matmul(wt.clone().t()), 48).backward();
    assert_eq!(
        xt.clone().matmul_t(wt.clone()).to_vec(),
        xt.clone().matmul(wt.clone().t()).to_vec()
    );
    let get = |g: &zerfoo::autograd::Gradients, t: &Tensor<(N, K), f64, Cpu, Tape>| {
        g.get(t).unwrap().to_vec()
    };
    assert!(rel_err(&get(&ga, &wt), &get(&gb, &wt)) <= 1e-14);
    // Inner dims differing at run time: an error, as for `matmul`.
    let xd: Tensor<(M, Dyn), f64> = Tensor::zeros((M, Dyn(3)));
    let wd: Tensor<(N, Dyn), f64> = Tensor::zeros((N, Dyn(4)));
    assert!(xd.try_matmul_t(wd).is_err());
}

#[test]
fn matmul_t_bias_is_matmul_t_plus_the_broadcast_bias() {
    // Forward: the same bits as the product followed by a broadcast add
    // (f64 and f32 on the CPU), rank 2 and rank 3 by a shared weight.
    let x: Tensor<(Dyn, K), f64> = Tensor::randn((Dyn(37), K), 70);
    let w: Tensor<(N, K), f64> = Tensor::randn((N, K), 71);
    let b: Tensor<(N,), f64> = Tensor::randn((N,), 72);
    let fused = x.clone().matmul_t_bias(w.clone(), b.clone()).to_vec();
    let plain = x.clone().matmul_t(w.clone());
    let shape = plain.shape();
    assert_eq!(
        fused,
        (plain + b.clone().broadcast::<_, Axis<0>>(shape)).to_vec()
    );
    let x3: Tensor<(B, Dyn, K), f32> = Tensor::randn((B, Dyn(300), K), 73);
    let (w32, b32) = (cast::<f32, _>(&w), cast::<f32, _>(&b));
    let fused = x3.clone().matmul_t_bias(w32.clone(), b32.clone()).to_vec();
    let plain = x3.matmul_t(w32);
    let shape = plain.shape();
    assert_eq!(
        fused,
        (plain + b32.broadcast::<_, Axes2<0, 1>>(shape)).to_vec()
    );
    // Gradients of x, w and the bias against central differences (the
    // bias's is the output gradient summed over every row).
    let x3: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 74);
    check_grad2(x3.clone(), w.clone(), |x, w| {
        weighted_sum(
            x.matmul_t_bias(w.traced(), Tensor::randn((N,), 75).traced()),
            76,
        )
    });
    check_grad2(b.clone(), x3.clone(), |b, x| {
        weighted_sum(
            x.traced()
                .matmul_t_bias(Tensor::randn((N, K), 77).traced(), b),
            78,
        )
    });
    // A bias whose length differs at run time: an error naming both shapes.
    let bd: Tensor<(Dyn,), f64> = Tensor::zeros((Dyn(5),));
    match x.try_matmul_t_bias(w, bd) {
        Err(Error::ShapeMismatch { op, lhs, rhs }) => {
            assert_eq!((op, lhs, rhs), ("matmul_t_bias", vec![37, 4], vec![5]));
        }
        other => panic!(
            "expected a shape mismatch, got {:?}",
            other.map(|t| t.dims().to_vec())
        ),
    }
}

#[test]
fn matmul_t_bias_in_every_dtype() {
    let x: Tensor<(B, Dyn, Dyn), f64> = Tensor::randn((B, Dyn(19), Dyn(70)), 80);
    let w: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(33), Dyn(70)), 81);
    let b: Tensor<(Dyn,), f64> = Tensor::randn((Dyn(33),), 82);
    check_dtypes!("matmul_t_bias", |E| cast::<E, _>(&x)
        .matmul_t_bias(cast::<E, _>(&w), cast::<E, _>(&b))
        .to_f64_vec());
    let dy: Tensor<(B, Dyn, Dyn), f64> = Tensor::randn((B, Dyn(19), Dyn(33)), 83);
    check_dtypes!("matmul_t_bias backward (bias)", |E| {
        let (x, w, b, dy) = (
            cast::<E, _>(&x),
            cast::<E, _>(&w),
            cast::<E, _>(&b),
            cast::<E, _>(&dy),
        );
        let g = (x.traced().matmul_t_bias(w, b.clone()) * dy)
            .sum_all()
            .backward();
        g.get(&b).unwrap().to_f64_vec()
    });
}

#[test]
fn grad_of_transpose_alone() {
    let x2: Tensor<(M, N), f64> = Tensor::randn((M, N), 35);
    check_grad1(x2, |x| weighted_sum(x.t(), 36));
    let x3: Tensor<(B, M, N), f64> = Tensor::randn((B, M, N), 37);
    check_grad1(x3, |x| weighted_sum(x.t(), 38));
    let x4: Tensor<(B, H, M, N), f64> = Tensor::randn((B, H, M, N), 39);
    check_grad1(x4, |x| weighted_sum(x.t().exp(), 40));
}

#[test]
fn grad_tensor_used_twice() {
    // x · xᵀ: both operands are x (once through a view).
    let x: Tensor<(M, K), f64> = Tensor::randn((M, K), 41);
    check_grad1(x, |x| weighted_sum(x.clone().matmul(x.t()), 42));
    // x · x on a square matrix: the same id on both sides.
    let s: Tensor<(K, K), f64> = Tensor::randn((K, K), 43);
    check_grad1(s, |s| weighted_sum(s.clone().matmul(s), 44));
    // Gram matrices of a batch, and a chain through two products.
    let xb: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 45);
    check_grad1(xb, |x| {
        let gram = x.clone().matmul(x.clone().t());
        weighted_sum(gram.matmul(x), 46)
    });
}

// ------------------------------------------------------------------ dtypes

#[test]
fn matmul_in_every_dtype() {
    let a: Tensor<(Dyn, K), f64> = Tensor::randn((Dyn(7), K), 50);
    let b: Tensor<(K, Dyn), f64> = Tensor::randn((K, Dyn(9)), 51);
    check_dtypes!("matmul", |E| cast::<E, _>(&a)
        .matmul(cast::<E, _>(&b))
        .to_f64_vec());
    let x: Tensor<(B, H, M, Dyn), f64> = Tensor::randn((B, H, M, Dyn(33)), 52);
    let w: Tensor<(N, Dyn), f64> = Tensor::randn((N, Dyn(33)), 53);
    check_dtypes!("matmul (batched, shared transposed rhs)", |E| cast::<E, _>(
        &x
    )
    .matmul(cast::<E, _>(&w).t())
    .to_f64_vec());
    let y: Tensor<(B, H, N, Dyn), f64> = Tensor::randn((B, H, N, Dyn(33)), 54);
    check_dtypes!("matmul (rank 4)", |E| cast::<E, _>(&x)
        .matmul(cast::<E, _>(&y).t())
        .to_f64_vec());
    check_dtypes!("t", |E| cast::<E, _>(&x).t().to_f64_vec());
}

#[test]
fn matmul_gradients_in_every_dtype() {
    let a: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 60);
    let w: Tensor<(K, N), f64> = Tensor::randn((K, N), 61);
    let dy: Tensor<(B, M, N), f64> = Tensor::randn((B, M, N), 62);
    // d/da and d/dw of sum(a·w ⊙ dy): dy·wᵀ and Σ_b a_bᵀ·dy_b, each rounded once.
    check_dtypes!("matmul backward (lhs)", |E| {
        let (a, w, dy) = (cast::<E, _>(&a), cast::<E, _>(&w), cast::<E, _>(&dy));
        let g = (a.clone().traced().matmul(w) * dy).sum_all().backward();
        g.get(&a).unwrap().to_f64_vec()
    });
    check_dtypes!("matmul backward (shared rhs)", |E| {
        let (a, w, dy) = (cast::<E, _>(&a), cast::<E, _>(&w), cast::<E, _>(&dy));
        let g = (a.traced().matmul(w.clone()) * dy).sum_all().backward();
        g.get(&w).unwrap().to_f64_vec()
    });
}

// ------------------------------------------------------------ shape errors

#[test]
fn dyn_inner_mismatch_is_an_error() {
    let a: Tensor<(M, Dyn), f32> = Tensor::zeros((M, Dyn(5)));
    let b: Tensor<(Dyn, N), f32> = Tensor::zeros((Dyn(6), N));
    let e = a.clone().try_matmul(b).unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "matmul",
            lhs: vec![3, 5],
            rhs: vec![6, 4]
        }
    );
    assert_eq!(
        e.to_string(),
        "shape error in `matmul`: [3, 5] does not match [6, 4]"
    );
    // A static inner dim against a dynamic one is checked at run time too.
    let s: Tensor<(M, K), f32> = Tensor::zeros((M, K));
    let d: Tensor<(Dyn, N), f32> = Tensor::zeros((Dyn(4), N));
    assert!(matches!(
        s.try_matmul(d),
        Err(Error::ShapeMismatch { op: "matmul", .. })
    ));
    // A matching Dyn dim goes through.
    let ok: Tensor<(Dyn, N), f32> = Tensor::zeros((Dyn(5), N));
    assert_eq!(a.try_matmul(ok).unwrap().dims(), [3, 4]);
}

#[test]
fn dyn_batch_mismatch_is_an_error() {
    let a: Tensor<(Dyn, M, K), f32> = Tensor::zeros((Dyn(2), M, K));
    let b: Tensor<(Dyn, K, N), f32> = Tensor::zeros((Dyn(3), K, N));
    assert_eq!(
        a.try_matmul(b).unwrap_err(),
        Error::ShapeMismatch {
            op: "matmul",
            lhs: vec![2, 3, 5],
            rhs: vec![3, 5, 4]
        }
    );
    let a: Tensor<(B, Dyn, M, K), f32> = Tensor::zeros((B, Dyn(3), M, K));
    let b: Tensor<(B, Dyn, K, N), f32> = Tensor::zeros((B, Dyn(2), K, N));
    assert!(a.try_matmul(b).is_err());
}

#[test]
#[should_panic(expected = "shape error in `matmul`: [3, 5] does not match [6, 4]")]
fn dyn_inner_mismatch_panics_with_the_same_message() {
    let a: Tensor<(M, Dyn), f32> = Tensor::zeros((M, Dyn(5)));
    let b: Tensor<(Dyn, N), f32> = Tensor::zeros((Dyn(6), N));
    let _ = a.matmul(b);
}

#[test]
#[should_panic(expected = "shape error in `matmul`: [2, 3, 5] does not match [3, 5, 4]")]
fn dyn_batch_mismatch_panics_with_the_same_message() {
    let a: Tensor<(Dyn, M, K), f32> = Tensor::zeros((Dyn(2), M, K));
    let b: Tensor<(Dyn, K, N), f32> = Tensor::zeros((Dyn(3), K, N));
    let _ = a.matmul(b);
}

// ------------------------------------------------ linear + activation (fused)

/// A two-layer MLP's output and every gradient, as bit patterns: `fused`
/// uses `try_matmul_t_bias_act`, otherwise the layer then the activation's
/// own op. With `extra`, the hidden activation also feeds a second consumer.
fn mlp_bits<E: FloatDtype>(act: LinearAct, fused: bool, extra: bool) -> Vec<Vec<u64>> {
    dim!(D = 48);
    dim!(F = 200);
    let x: Tensor<(B, Dyn, D), E> = Tensor::<_, f64>::randn((B, Dyn(100), D), 90).to_dtype();
    let w1: Tensor<(F, D), E> = Tensor::<_, f64>::randn((F, D), 91).to_dtype();
    let b1: Tensor<(F,), E> = Tensor::<_, f64>::randn((F,), 92).to_dtype();
    let w2: Tensor<(D, F), E> = Tensor::<_, f64>::randn((D, F), 93).to_dtype();
    let b2: Tensor<(D,), E> = Tensor::<_, f64>::randn((D,), 94).to_dtype();
    let dy: Tensor<(B, Dyn, D), E> = Tensor::<_, f64>::randn((B, Dyn(100), D), 95).to_dtype();
    let xt = x.clone().traced();
    let h = if fused {
        xt.try_matmul_t_bias_act(w1.clone(), Some(b1.clone()), act)
            .unwrap()
    } else {
        let h = xt.matmul_t_bias(w1.clone(), b1.clone());
        match act {
            LinearAct::Relu => h.relu(),
            LinearAct::Gelu => h.gelu(),
            LinearAct::GeluTanh => h.gelu_tanh(),
            LinearAct::Silu => h.silu(),
        }
    };
    let y = h.clone().matmul_t_bias(w2.clone(), b2.clone());
    let mut loss = (y.clone() * dy).sum_all();
    if extra {
        loss = loss + (h.clone() * h).sum_all();
    }
    let g = loss.backward();
    let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<u64>>();
    vec![
        bits(y.to_f64_vec()),
        bits(g.get(&x).unwrap().to_f64_vec()),
        bits(g.get(&w1).unwrap().to_f64_vec()),
        bits(g.get(&b1).unwrap().to_f64_vec()),
        bits(g.get(&w2).unwrap().to_f64_vec()),
        bits(g.get(&b2).unwrap().to_f64_vec()),
    ]
}

const ACTS: [LinearAct; 4] = [
    LinearAct::Relu,
    LinearAct::Gelu,
    LinearAct::GeluTanh,
    LinearAct::Silu,
];

#[test]
fn linear_act_is_the_layer_then_the_activation_bitwise() {
    // The activation inside the product, and its derivative inside the next
    // layer's backward: the same bits as the separate ops, f32 and f64
    // (fused on the CPU) and bf16 (composed), for the output and every
    // gradient.
    for act in ACTS {
        assert!(
            mlp_bits::<f64>(act, true, false) == mlp_bits::<f64>(act, false, false),
            "{act:?} f64"
        );
        assert!(
            mlp_bits::<f32>(act, true, false) == mlp_bits::<f32>(act, false, false),
            "{act:?} f32"
        );
    }
    let bf = |fused| mlp_bits::<zerfoo::kernels::bf16>(LinearAct::Gelu, fused, false);
    assert!(bf(true) == bf(false), "bf16");
}

#[test]
fn linear_act_with_a_second_consumer_sums_both_gradients() {
    // The hidden activation also feeds `Σ h²`: its gradient reaches the
    // layer both through the next layer's fused backward and directly.
    // (Added in another order than the separate ops add them: close, not
    // the same bits.)
    for act in ACTS {
        let (fused, plain) = (
            mlp_bits::<f64>(act, true, true),
            mlp_bits::<f64>(act, false, true),
        );
        for (i, (f, p)) in fused.iter().zip(&plain).enumerate() {
            let v = |b: &Vec<u64>| b.iter().map(|&x| f64::from_bits(x)).collect::<Vec<f64>>();
            let e = rel_err(&v(f), &v(p));
            assert!(e < 1e-12, "{act:?} output/gradient {i}: rel err {e:e}");
        }
    }
}

#[test]
fn linear_act_gradients_pass_finite_differences() {
    // Through the next layer (the fused backward) and alone (the
    // activation's own backward), with and without a bias.
    dim!(F = 6);
    let x: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 96);
    let w: Tensor<(F, K), f64> = Tensor::randn((F, K), 97);
    for act in ACTS {
        check_grad2(x.clone(), w.clone(), |x, w| {
            let h =
                x.try_matmul_t_bias_act(w.traced(), Some(Tensor::randn((F,), 98).traced()), act);
            weighted_sum(
                h.unwrap()
                    .matmul_t(Tensor::<(N, F), f64>::randn((N, F), 99).traced()),
                100,
            )
        });
        check_grad2(w.clone(), x.clone(), |w, x| {
            let h = x
                .traced()
                .try_matmul_t_bias_act(w, None::<Tensor<(F,), f64, Cpu, Tape>>, act);
            weighted_sum(h.unwrap(), 101)
        });
    }
}

#[test]
fn linear_act_in_every_dtype_and_its_errors() {
    let x: Tensor<(B, Dyn, Dyn), f64> = Tensor::randn((B, Dyn(19), Dyn(70)), 102);
    let w: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(33), Dyn(70)), 103);
    let b: Tensor<(Dyn,), f64> = Tensor::randn((Dyn(33),), 104);
    check_dtypes!("matmul_t_bias_act", |E| cast::<E, _>(&x)
        .try_matmul_t_bias_act(cast::<E, _>(&w), Some(cast::<E, _>(&b)), LinearAct::Gelu)
        .unwrap()
        .to_f64_vec());
    // A bias whose length differs at run time: an error naming both shapes.
    let bd: Tensor<(Dyn,), f64> = Tensor::zeros((Dyn(5),));
    match x.try_matmul_t_bias_act(w, Some(bd), LinearAct::Relu) {
        Err(Error::ShapeMismatch { op, lhs, rhs }) => {
            assert_eq!((op, lhs, rhs), ("matmul_t_bias", vec![2, 19, 33], vec![5]));
        }
        other => panic!(
            "expected a shape mismatch, got {:?}",
            other.map(|t| t.dims().to_vec())
        ),
    }
}

#[test]
fn linear_act_feeding_no_product_is_the_two_ops_bitwise() {
    // The activation's output multiplied elementwise (a gated MLP's gate):
    // nobody takes the fused backward, the layer's own runs, the same bits.
    dim!(F = 40);
    let x: Tensor<(B, Dyn, K), f32> = Tensor::<_, f64>::randn((B, Dyn(33), K), 105).to_dtype();
    let w: Tensor<(F, K), f32> = Tensor::<_, f64>::randn((F, K), 106).to_dtype();
    let z: Tensor<(B, Dyn, F), f32> = Tensor::<_, f64>::randn((B, Dyn(33), F), 107).to_dtype();
    for act in ACTS {
        let grads = |fused: bool| {
            let h = if fused {
                x.clone()
                    .traced()
                    .try_matmul_t_bias_act(w.clone(), None::<Tensor<(F,), f32>>, act)
                    .unwrap()
            } else {
                let h = x.clone().traced().matmul_t(w.clone());
                match act {
                    LinearAct::Relu => h.relu(),
                    LinearAct::Gelu => h.gelu(),
                    LinearAct::GeluTanh => h.gelu_tanh(),
                    LinearAct::Silu => h.silu(),
                }
            };
            let g = (h * z.clone()).sum_all().backward();
            (g.get(&x).unwrap().to_vec(), g.get(&w).unwrap().to_vec())
        };
        assert!(grads(true) == grads(false), "{act:?}");
    }
}

// ------------------------------------------------ linear + residual (fused)

/// A pre-norm residual step `r + (norm(r) · w1ᵀ + b1)` whose output feeds a
/// second layer, and every gradient, as bit patterns: `fused` uses
/// `try_matmul_t_bias_residual`, otherwise the layer then the addition.
/// The residual is also the layer's input (through a norm), as in a block.
fn residual_bits<E: FloatDtype>(fused: bool, bias: bool) -> Vec<Vec<u64>> {
    dim!(D = 48);
    let r: Tensor<(B, Dyn, D), E> = Tensor::<_, f64>::randn((B, Dyn(100), D), 110).to_dtype();
    let w: Tensor<(D, D), E> = Tensor::<_, f64>::randn((D, D), 111).to_dtype();
    let b: Tensor<(D,), E> = Tensor::<_, f64>::randn((D,), 112).to_dtype();
    let w2: Tensor<(D, D), E> = Tensor::<_, f64>::randn((D, D), 113).to_dtype();
    let dy: Tensor<(B, Dyn, D), E> = Tensor::<_, f64>::randn((B, Dyn(100), D), 114).to_dtype();
    let rt = r.clone().traced();
    let x = rt.clone().layer_norm_no_affine(1e-5);
    let b_opt = bias.then(|| b.clone().traced());
    let y = if fused {
        x.try_matmul_t_bias_residual(w.clone().traced(), b_opt, rt)
            .unwrap()
    } else {
        let h = match b_opt {
            Some(b) => x.matmul_t_bias(w.clone().traced(), b),
            None => x.matmul_t(w.clone().traced()),
        };
        rt + h
    };
    let out = y.clone().matmul_t(w2.clone());
    let g = (out * dy).sum_all().backward();
    let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<u64>>();
    let mut all = vec![
        bits(y.to_f64_vec()),
        bits(g.get(&r).unwrap().to_f64_vec()),
        bits(g.get(&w).unwrap().to_f64_vec()),
    ];
    if bias {
        all.push(bits(g.get(&b).unwrap().to_f64_vec()));
    }
    all
}

#[test]
fn linear_residual_is_the_layer_then_the_addition_bitwise() {
    // The residual added inside the product (f32 and f64, fused on the
    // CPU; bf16 composed): the same bits as the separate ops, output and
    // every gradient, the residual's included.
    for bias in [false, true] {
        assert!(residual_bits::<f64>(true, bias) == residual_bits::<f64>(false, bias));
        assert!(residual_bits::<f32>(true, bias) == residual_bits::<f32>(false, bias));
        let bf = |fused| residual_bits::<zerfoo::kernels::bf16>(fused, bias);
        assert!(bf(true) == bf(false), "bf16");
    }
}

#[test]
fn linear_residual_gradients_pass_finite_differences_and_errors() {
    let x: Tensor<(B, M, K), f64> = Tensor::randn((B, M, K), 115);
    let w: Tensor<(N, K), f64> = Tensor::randn((N, K), 116);
    let r: Tensor<(B, M, N), f64> = Tensor::randn((B, M, N), 117);
    let bias = || Some(Tensor::<(N,), f64>::randn((N,), 118).traced());
    check_grad2(x.clone(), w.clone(), |x, w| {
        weighted_sum(
            x.try_matmul_t_bias_residual(w.traced(), bias(), r.clone().traced())
                .unwrap(),
            119,
        )
    });
    check_grad1(r.clone(), |r| {
        let y = x
            .clone()
            .traced()
            .try_matmul_t_bias_residual(w.clone().traced(), bias(), r);
        weighted_sum(y.unwrap(), 120)
    });
    // A residual seen transposed (a strided view): the composed path.
    let rt: Tensor<(B, N, M), f64> = Tensor::randn((B, N, M), 121);
    let y = x
        .clone()
        .try_matmul_t_bias_residual(
            w.clone(),
            None::<Tensor<(N,), f64>>,
            rt.clone().transpose::<1, 2>(),
        )
        .unwrap();
    let want = rt.transpose::<1, 2>() + x.clone().matmul_t(w.clone());
    assert_eq!(y.to_vec(), want.to_vec());
    check_dtypes!("matmul_t_bias_residual", |E| cast::<E, _>(&x)
        .try_matmul_t_bias_residual(cast::<E, _>(&w), None::<Tensor<(N,), E>>, cast::<E, _>(&r))
        .unwrap()
        .to_f64_vec());
    // A residual whose dims differ at run time: an error naming both shapes.
    let xd: Tensor<(B, Dyn, K), f64> = Tensor::randn((B, Dyn(3), K), 122);
    let rd: Tensor<(B, Dyn, N), f64> = Tensor::zeros((B, Dyn(4), N));
    match xd.try_matmul_t_bias_residual(w, None::<Tensor<(N,), f64>>, rd) {
        Err(Error::ShapeMismatch { op, lhs, rhs }) => {
            assert_eq!(
                (op, lhs, rhs),
                ("matmul_t_bias_residual", vec![2, 3, 4], vec![2, 4, 4])
            );
        }
        other => panic!(
            "expected a shape mismatch, got {:?}",
            other.map(|t| t.dims().to_vec())
        ),
    }
}

/// A large product's backward computes its two gradients side by side on a
/// pool of several threads (`MatmulKernels::gradients_side_by_side`) and
/// one after the other on one thread: the same bits either way, through
/// two layers (each product 2 x 256 x 512 x 512 = 2^27 multiply-adds, the
/// threshold).
#[test]
fn gradients_side_by_side_match_one_after_the_other() {
    use zerfoo::kernels::device::MatmulKernels;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(
                Cpu.gradients_side_by_side(2 * 256 * 512 * 512),
                threads > 1,
                "{threads} threads"
            );
            let x: Tensor<(B, Dyn, Dyn), f64> = Tensor::randn((B, Dyn(256), Dyn(512)), 130);
            let w1: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(512), Dyn(512)), 131);
            let w2: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(512), Dyn(512)), 132);
            let (xt, w1t, w2t) = (x.traced(), w1.traced(), w2.traced());
            let y = xt.clone().matmul_t(w1t.clone()).matmul_t(w2t.clone());
            let g = weighted_sum(y, 133).backward();
            let bits = |v: Vec<f64>| -> Vec<u64> { v.into_iter().map(f64::to_bits).collect() };
            (
                bits(g.get(&xt).unwrap().to_vec()),
                bits(g.get(&w1t).unwrap().to_vec()),
                bits(g.get(&w2t).unwrap().to_vec()),
            )
        })
    };
    let (one, two) = (run(1), run(2));
    assert!(one.0 == two.0, "the input's gradient differs");
    assert!(one.1 == two.1, "the first weight's gradient differs");
    assert!(one.2 == two.2, "the second weight's gradient differs");
}
