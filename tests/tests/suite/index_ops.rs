//! Indexing ops: select, index_select, gather, embedding — forward values
//! against hand computations, f64 finite-difference gradients (repeated ids,
//! strided and broadcast inputs, a tensor used twice), dtype sweeps,
//! out-of-range ids and run-time shape errors.

use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, weighted_sum};

dim!(Batch = 2);
dim!(Rows = 3);
dim!(Cols = 4);
dim!(Depth = 5);
dim!(Vocab = 6);
dim!(Width = 3);

fn ids<N: Dim, I: zerfoo::kernels::IntDtype>(n: N, v: &[i64]) -> Tensor<(N,), I> {
    Tensor::from_vec((n,), v.iter().map(|&x| I::from_f64(x as f64)).collect()).unwrap()
}

fn ids2<A: Dim, B: Dim>(a: A, b: B, v: &[i64]) -> Tensor<(A, B), i64> {
    Tensor::from_vec((a, b), v.to_vec()).unwrap()
}

/// `0, 1, 2, ...` as f64 in a (2, 3, 4) tensor: element (i, j, k) = 12i + 4j + k.
fn arange3() -> Tensor<(Batch, Rows, Cols), f64> {
    Tensor::from_fn((Batch, Rows, Cols), |i| i as f64)
}

// ---------------------------------------------------------------- select

#[test]
fn select_forward_values() {
    let x = arange3();
    let a: Tensor<(Rows, Cols), f64> = x.clone().select::<Axis<0>>(1);
    assert_eq!(a.to_vec(), (12..24).map(|v| v as f64).collect::<Vec<_>>());
    let b: Tensor<(Batch, Cols), f64> = x.clone().select::<Axis<1>>(2);
    assert_eq!(b.to_vec(), [8., 9., 10., 11., 20., 21., 22., 23.]);
    let c: Tensor<(Batch, Rows), f64> = x.clone().select::<Axis<2>>(3);
    assert_eq!(c.to_vec(), [3., 7., 11., 15., 19., 23.]);
    // a select of a (strided) select
    let d: Tensor<(Batch,), f64> = x.select::<Axis<2>>(1).select::<Axis<1>>(2);
    assert_eq!(d.to_vec(), [9., 21.]);
}

#[test]
fn select_gradients() {
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::randn((Batch, Rows, Cols), 1);
    check_grad1(x.clone(), |x| weighted_sum(x.select::<Axis<1>>(2), 2));
    // used twice, the same entry twice (accumulates) and another
    check_grad1(x.clone(), |x| {
        let a = x.clone().select::<Axis<0>>(1);
        let b = x.clone().select::<Axis<0>>(1).exp();
        let c = x.select::<Axis<0>>(0);
        weighted_sum(a * b + c, 3)
    });
    // a broadcast input (stride 0)
    let v: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 4);
    check_grad1(v, |v| {
        let b = v.broadcast::<_, Axis<0>>((Rows, Cols));
        weighted_sum(b.select::<Axis<0>>(2).square(), 5)
    });
}

#[test]
fn select_out_of_range() {
    let x = arange3();
    assert_eq!(
        x.clone().try_select::<Axis<1>>(3).unwrap_err(),
        Error::IndexOutOfRange {
            op: "select",
            index: 3,
            size: 3
        }
    );
    let d: Tensor<(Dyn, Cols), f64> = Tensor::zeros((Dyn(2), Cols));
    assert!(d.try_select::<Axis<0>>(2).is_err());
}

#[test]
#[should_panic(expected = "index error in `select`: index 4 is out of range for size 4")]
fn select_out_of_range_panics() {
    let _ = arange3().select::<Axis<2>>(4);
}

// ---------------------------------------------------------------- index_select

#[test]
fn index_select_forward_values() {
    let x = arange3();
    // axis 1 with a repeated id, i64 ids
    let y: Tensor<(Batch, Cols, Cols), f64> = x
        .clone()
        .index_select::<Axis<1>, _>(&ids::<_, i64>(Cols, &[2, 0, 2, 1]));
    let mut want = Vec::new();
    for i in 0..2 {
        for j in [2, 0, 2, 1] {
            for k in 0..4 {
                want.push((12 * i + 4 * j + k) as f64);
            }
        }
    }
    assert_eq!(y.to_vec(), want);
    // axis 2 with u32 ids, a dynamic count
    let z: Tensor<(Batch, Rows, Dyn), f64> = x
        .clone()
        .index_select::<Axis<2>, _>(&ids::<_, u32>(Dyn(2), &[3, 3]));
    assert_eq!(z.dims(), [2, 3, 2]);
    assert_eq!(
        z.to_vec(),
        [3., 3., 7., 7., 11., 11., 15., 15., 19., 19., 23., 23.]
    );
    // axis 0, no ids at all
    let e: Tensor<(Dyn, Rows, Cols), f64> =
        x.index_select::<Axis<0>, _>(&ids::<_, i64>(Dyn(0), &[]));
    assert_eq!(e.dims(), [0, 3, 4]);
}

#[test]
fn index_select_gradients() {
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::randn((Batch, Rows, Cols), 11);
    let rep = ids::<_, i64>(Depth, &[1, 0, 1, 1, 2]);
    check_grad1(x.clone(), |x| {
        weighted_sum(x.index_select::<Axis<1>, _>(&rep), 12)
    });
    let last = ids::<_, u32>(Dyn(3), &[3, 0, 3]);
    check_grad1(x.clone(), |x| {
        weighted_sum(x.index_select::<Axis<2>, _>(&last), 13)
    });
    // used twice
    check_grad1(x.clone(), |x| {
        let a = x
            .clone()
            .index_select::<Axis<0>, _>(&ids::<_, i64>(Rows, &[1, 1, 0]));
        let b = x
            .tanh()
            .index_select::<Axis<0>, _>(&ids::<_, i64>(Rows, &[0, 1, 0]));
        weighted_sum(a * b, 14)
    });
    // strided input (a select view) and a broadcast input
    check_grad1(x, |x| {
        weighted_sum(x.select::<Axis<2>>(1).index_select::<Axis<1>, _>(&rep), 15)
    });
    let v: Tensor<(Rows,), f64> = Tensor::randn((Rows,), 16);
    check_grad1(v, |v| {
        let b = v.broadcast::<_, Axis<1>>((Rows, Cols));
        weighted_sum(
            b.index_select::<Axis<0>, _>(&ids::<_, i64>(Depth, &[2, 2, 0, 1, 2])),
            17,
        )
    });
}

#[test]
fn index_select_out_of_range() {
    let x = arange3();
    let e = x
        .clone()
        .try_index_select::<Axis<1>, _>(&ids::<_, i64>(Dyn(2), &[0, 3]))
        .unwrap_err();
    assert_eq!(
        e,
        Error::IndexOutOfRange {
            op: "index_select",
            index: 3,
            size: 3
        }
    );
    let e = x
        .try_index_select::<Axis<0>, _>(&ids::<_, i64>(Dyn(2), &[0, -2]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "index error in `index_select`: index -2 is out of range for size 2"
    );
}

#[test]
#[should_panic(expected = "index error in `index_select`: index 7 is out of range for size 4")]
fn index_select_out_of_range_panics() {
    let _ = arange3().index_select::<Axis<2>, _>(&ids::<_, u32>(Dyn(1), &[7]));
}

// ---------------------------------------------------------------- gather

/// `torch.gather` written out directly for rank 3.
fn gather_ref(x: &[f64], xd: [usize; 3], axis: usize, idx: &[i64], id: [usize; 3]) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..id[0] {
        for j in 0..id[1] {
            for k in 0..id[2] {
                let mut m = [i, j, k];
                m[axis] = idx[(i * id[1] + j) * id[2] + k] as usize;
                out.push(x[(m[0] * xd[1] + m[1]) * xd[2] + m[2]]);
            }
        }
    }
    out
}

#[test]
fn gather_forward_values() {
    // the example of the torch.gather documentation
    let t = Tensor::<(U2, U2), f64>::from_vec(Default::default(), vec![1., 2., 3., 4.]).unwrap();
    let i = ids2(U2::default(), U2::default(), &[0, 0, 1, 0]);
    assert_eq!(t.gather::<Axis<1>, _>(&i).to_vec(), [1., 1., 4., 3.]);
    // rank 3, every axis, ids smaller than the source on other axes
    let x = arange3();
    let xv = x.to_vec();
    let i0: Tensor<(U2, U2, U3), i64> =
        Tensor::from_vec(Default::default(), vec![1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1]).unwrap();
    assert_eq!(
        x.clone().gather::<Axis<0>, _>(&i0).to_vec(),
        gather_ref(&xv, [2, 3, 4], 0, &i0.to_vec(), [2, 2, 3])
    );
    let i1: Tensor<(U1, Depth, U2), i64> =
        Tensor::from_vec(Default::default(), vec![2, 0, 1, 1, 0, 2, 2, 2, 1, 0]).unwrap();
    assert_eq!(
        x.clone().gather::<Axis<1>, _>(&i1).to_vec(),
        gather_ref(&xv, [2, 3, 4], 1, &i1.to_vec(), [1, 5, 2])
    );
    let i2: Tensor<(U2, U1, Dyn), i64> = Tensor::from_vec(
        (U2::default(), U1::default(), Dyn(3)),
        vec![3, 3, 0, 1, 2, 3],
    )
    .unwrap();
    assert_eq!(
        x.gather::<Axis<2>, _>(&i2).to_vec(),
        gather_ref(&xv, [2, 3, 4], 2, &i2.to_vec(), [2, 1, 3])
    );
}

#[test]
fn gather_gradients() {
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::randn((Batch, Rows, Cols), 21);
    // repeated ids along the axis and ids that do not reach every row
    let i1: Tensor<(U2, Depth, U3), i64> =
        Tensor::from_fn(Default::default(), |i| ((i * 7) % 3) as i64);
    check_grad1(x.clone(), |x| weighted_sum(x.gather::<Axis<1>, _>(&i1), 22));
    let i2: Tensor<(U1, U3, Depth), i64> =
        Tensor::from_fn(Default::default(), |i| ((i * 5) % 4) as i64);
    check_grad1(x.clone(), |x| weighted_sum(x.gather::<Axis<2>, _>(&i2), 23));
    let i0: Tensor<(U3, U2, U4), u32> = Tensor::from_fn(Default::default(), |i| (i % 2) as u32);
    check_grad1(x.clone(), |x| weighted_sum(x.gather::<Axis<0>, _>(&i0), 24));
    // used twice
    check_grad1(x.clone(), |x| {
        let a = x.clone().gather::<Axis<1>, _>(&i1);
        let b = x.sigmoid().gather::<Axis<1>, _>(&i1);
        weighted_sum(a * b, 25)
    });
    // strided (select view) and broadcast inputs
    let j: Tensor<(U2, U4), i64> = Tensor::from_fn(Default::default(), |i| ((i * 2) % 3) as i64);
    check_grad1(x, |x| {
        weighted_sum(x.select::<Axis<2>>(1).gather::<Axis<1>, _>(&j), 26)
    });
    let v: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 27);
    let k: Tensor<(U3, U6), i64> = Tensor::from_fn(Default::default(), |i| ((i * 5) % 4) as i64);
    check_grad1(v, |v| {
        let b = v.broadcast::<_, Axis<0>>((Rows, Cols));
        weighted_sum(b.gather::<Axis<1>, _>(&k), 28)
    });
}

#[test]
fn gather_errors() {
    let x: Tensor<(Dyn, Dyn), f64> = Tensor::zeros((Dyn(2), Dyn(3)));
    // ids larger than the source on a non-gathered axis: a shape error
    let big = ids2(Dyn(3), Dyn(1), &[0, 0, 0]);
    assert_eq!(
        x.clone().try_gather::<Axis<1>, _>(&big).unwrap_err(),
        Error::ShapeMismatch {
            op: "gather",
            lhs: vec![2, 3],
            rhs: vec![3, 1]
        }
    );
    // the gathered axis itself may be any length; an id past it is an index error
    let long = ids2(Dyn(2), Dyn(5), &[0, 1, 2, 1, 0, 2, 2, 2, 3, 0]);
    assert_eq!(
        x.try_gather::<Axis<1>, _>(&long).unwrap_err(),
        Error::IndexOutOfRange {
            op: "gather",
            index: 3,
            size: 3
        }
    );
}

#[test]
#[should_panic(expected = "shape error in `gather`: [2, 3] does not match [2, 4]")]
fn gather_shape_error_panics() {
    let x: Tensor<(Dyn, Dyn), f64> = Tensor::zeros((Dyn(2), Dyn(3)));
    let _ = x.gather::<Axis<0>, _>(&ids2(Dyn(2), Dyn(4), &[0; 8]));
}

// ---------------------------------------------------------------- embedding

#[test]
fn embedding_forward_values() {
    // row v of the table is [10v, 10v + 1, 10v + 2]
    let w: Tensor<(Vocab, Width), f64> =
        Tensor::from_fn((Vocab, Width), |i| (10 * (i / 3) + i % 3) as f64);
    let t = ids2(Batch, Rows, &[5, 0, 5, 2, 2, 1]);
    let y: Tensor<(Batch, Rows, Width), f64> = w.clone().embedding(&t);
    let want: Vec<f64> = [5, 0, 5, 2, 2, 1]
        .iter()
        .flat_map(|&v| (0..3).map(move |c| (10 * v + c) as f64))
        .collect();
    assert_eq!(y.to_vec(), want);
    // a scalar id gives one row; u32 ids; a rank-5 id tensor gives rank 6
    let s: Tensor<(), u32> = Tensor::from_vec((), vec![4]).unwrap();
    assert_eq!(w.clone().embedding(&s).to_vec(), [40., 41., 42.]);
    let t5: Tensor<(U1, U1, U1, U1, U2), i64> =
        Tensor::from_vec(Default::default(), vec![3, 1]).unwrap();
    let y5: Tensor<(U1, U1, U1, U1, U2, Width), f64> = w.embedding(&t5);
    assert_eq!(y5.to_vec(), [30., 31., 32., 10., 11., 12.]);
}

#[test]
fn embedding_gradients() {
    let w: Tensor<(Vocab, Width), f64> = Tensor::randn((Vocab, Width), 31);
    // repeated tokens, an unused row
    let t = ids2(Batch, Cols, &[1, 3, 1, 1, 0, 3, 5, 1]);
    check_grad1(w.clone(), |w| weighted_sum(w.embedding(&t), 32));
    // used twice
    check_grad1(w.clone(), |w| {
        let a = w.clone().embedding(&t);
        let b = w.exp().embedding(&t);
        weighted_sum(a * b, 33)
    });
    // a broadcast (stride-0) table: every row is the same vector
    let v: Tensor<(Width,), f64> = Tensor::randn((Width,), 34);
    check_grad1(v, |v| {
        weighted_sum(v.broadcast::<_, Axis<0>>((Vocab, Width)).embedding(&t), 35)
    });
    // with another operand (an untraced parameter gets its gradient too)
    let pos: Tensor<(Batch, Cols, Width), f64> = Tensor::randn((Batch, Cols, Width), 36);
    check_grad2(w, pos, |w, p| weighted_sum(w.embedding(&t) + p, 37));
}

#[test]
fn traced_ids_give_the_table_its_gradient() {
    // The table is a plain (untraced) parameter; the traced model input is the ids.
    let w: Tensor<(Vocab, Width), f64> = Tensor::randn((Vocab, Width), 41);
    let t = ids2(U1::default(), Rows, &[2, 4, 2]).traced();
    let grads = w.clone().embedding(&t).sum_all().backward();
    let g = grads.get(&w).expect("table got no gradient").to_vec();
    let mut want = vec![0.0; 18];
    for v in [2, 4, 2] {
        for c in 0..3 {
            want[v * 3 + c] += 1.0;
        }
    }
    assert_eq!(g, want);
}

#[test]
fn embedding_out_of_range() {
    let w: Tensor<(Vocab, Width), f32> = Tensor::zeros((Vocab, Width));
    let e = w
        .clone()
        .try_embedding(&ids2(U1::default(), U3::default(), &[0, -1, 9]))
        .unwrap_err();
    assert_eq!(
        e,
        Error::IndexOutOfRange {
            op: "embedding",
            index: -1,
            size: 6
        }
    );
    let e = w
        .try_embedding(&ids::<_, u32>(Dyn(2), &[6, 0]))
        .unwrap_err();
    assert_eq!(
        e,
        Error::IndexOutOfRange {
            op: "embedding",
            index: 6,
            size: 6
        }
    );
}

#[test]
#[should_panic(expected = "index error in `embedding`: index 6 is out of range for size 6")]
fn embedding_out_of_range_panics() {
    let w: Tensor<(Dyn, Width), f32> = Tensor::zeros((Dyn(6), Width));
    let _ = w.embedding(&ids::<_, i64>(Dyn(3), &[1, 6, 2]));
}

#[test]
#[should_panic(expected = "index error in `embedding`: index -3 is out of range for size 6")]
fn embedding_negative_id_panics() {
    let w: Tensor<(Vocab, Width), f32> = Tensor::zeros((Vocab, Width));
    let _ = w.embedding(&ids::<_, i64>(Dyn(1), &[-3]));
}

// ---------------------------------------------------------------- large / parallel

#[test]
fn large_embedding_backward_is_exact_and_thread_count_independent() {
    // 4096 tokens x 64 wide, crossing the parallel threshold; integers keep sums exact.
    let (v, d, n) = (97usize, 64usize, 4096usize);
    let w: Tensor<(Dyn, Dyn), f32> = Tensor::from_fn((Dyn(v), Dyn(d)), |i| (i % 7) as f32);
    let toks: Vec<i64> = (0..n).map(|i| ((i * i + 3 * i) % v) as i64).collect();
    let t: Tensor<(Dyn,), i64> = Tensor::from_vec((Dyn(n),), toks.clone()).unwrap();
    let gy: Tensor<(Dyn, Dyn), f32> =
        Tensor::from_fn((Dyn(n), Dyn(d)), |i| ((i * 31) % 11) as f32 - 5.0);
    let run = || {
        let y = w.clone().traced().embedding(&t);
        let g = y.mul(gy.clone()).sum_all().backward();
        g.get(&w).unwrap().to_vec()
    };
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(run);
    assert_eq!(one, two);
    let gyv = gy.to_vec();
    let mut want = vec![0.0f32; v * d];
    for (j, &tok) in toks.iter().enumerate() {
        for c in 0..d {
            want[tok as usize * d + c] += gyv[j * d + c];
        }
    }
    assert_eq!(one, want);
    // forward rows
    let y = w.clone().embedding(&t).to_vec();
    let wv = w.to_vec();
    for j in [0usize, 1, 2047, 4095] {
        assert_eq!(y[j * d..(j + 1) * d], wv[toks[j] as usize * d..][..d]);
    }
}

// ---------------------------------------------------------------- dtypes

#[test]
fn indexing_in_every_dtype() {
    let x: Tensor<(Batch, Rows, Cols), f64> = Tensor::randn((Batch, Rows, Cols), 51);
    check_dtypes!("select", |E| cast::<E, _>(&x)
        .select::<Axis<1>>(1)
        .to_f64_vec());
    let r = ids::<_, i64>(Depth, &[2, 0, 2, 1, 1]);
    check_dtypes!("index_select", |E| cast::<E, _>(&x)
        .index_select::<Axis<1>, _>(&r)
        .to_f64_vec());
    let gi: Tensor<(U2, U2, Cols), u32> = Tensor::from_fn(Default::default(), |i| (i % 3) as u32);
    check_dtypes!("gather", |E| cast::<E, _>(&x)
        .gather::<Axis<1>, _>(&gi)
        .to_f64_vec());
    let w: Tensor<(Vocab, Width), f64> = Tensor::randn((Vocab, Width), 52);
    let t = ids2(Batch, Rows, &[5, 0, 5, 2, 2, 1]);
    check_dtypes!("embedding", |E| cast::<E, _>(&w).embedding(&t).to_f64_vec());
    // the backward in low precision: scatter-add of repeated ids
    check_dtypes!("embedding backward", |E| {
        let wt = cast::<E, _>(&w);
        let g = wt.clone().traced().embedding(&t).sum_all().backward();
        g.get(&wt).unwrap().to_f64_vec()
    });
}

// ---------------------------------------------------------------- generic code

/// Generic dims compile: the rules hold for any `M`, `N` (the output types are spelled out).
fn generic_indexing<M: Dim, N: Dim>(
    x: Tensor<(M, N), f32>,
    rows: &Tensor<(Dyn,), i64>,
    same: &Tensor<(M, N), u32>,
) -> [Vec<f32>; 4] {
    let a: Tensor<(N,), f32> = x.clone().select::<Axis<0>>(0);
    let b: Tensor<(Dyn, N), f32> = x.clone().index_select::<Axis<0>, _>(rows);
    let c: Tensor<(M, N), f32> = x.clone().gather::<Axis<1>, _>(same);
    let d: Tensor<(Dyn, N), f32> = x.embedding(rows);
    [a.to_vec(), b.to_vec(), c.to_vec(), d.to_vec()]
}

#[test]
fn generic_dims_compile_and_run() {
    let x: Tensor<(Rows, Cols), f32> = Tensor::from_fn((Rows, Cols), |i| i as f32);
    let rows = ids::<_, i64>(Dyn(2), &[2, 0]);
    let same: Tensor<(Rows, Cols), u32> = Tensor::zeros((Rows, Cols));
    let [a, b, c, d] = generic_indexing(x, &rows, &same);
    assert_eq!(a, [0., 1., 2., 3.]);
    assert_eq!(b, [8., 9., 10., 11., 0., 1., 2., 3.]);
    assert_eq!(c, [0., 0., 0., 0., 4., 4., 4., 4., 8., 8., 8., 8.]);
    assert_eq!(d, b);
}
