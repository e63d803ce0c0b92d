//! Structural shape ops: reshape, permute / transpose, narrow / slice / split /
//! chunk, concat / concat_all / stack, split / merge heads.
//!
//! Forward values are checked against index formulas written out here, every
//! backward against f64 central differences (with non-contiguous inputs,
//! broadcast operands and tensors used twice), every op in every dtype, and
//! every run-time shape error in its `try_` and panicking forms.

use zerfoo::ops::{HeadsDim, MergeHeads, Reshape};
use zerfoo::prelude::*;
use zerfoo::shape::{ConcatAlong, ReshapeTo};
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, weighted_sum};

dim!(Batch = 2);
dim!(Seq = 3);
dim!(Model = 6);
dim!(Heads = 2);
dim!(HeadDim = 3);
dim!(Rows = 3);
dim!(Cols = 4);

/// `0, 1, 2, ...` in row-major order.
fn iota<S: Shape>(shape: S) -> Tensor<S, f64> {
    Tensor::from_fn(shape, |i| i as f64)
}

/// Row-major index of `idx` in `dims`.
fn flat(dims: &[usize], idx: &[usize]) -> usize {
    dims.iter().zip(idx).fold(0, |a, (&d, &i)| a * d + i)
}

/// Row-major multi-index of `i` in `dims`.
fn unflat(dims: &[usize], mut i: usize) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = i % dims[d];
        i /= dims[d];
    }
    idx
}

fn same_storage<S: Shape, S2: Shape, T, T2>(
    a: &Tensor<S, f64, Cpu, T>,
    b: &Tensor<S2, f64, Cpu, T2>,
) -> bool {
    a.storage().0.as_ptr() == b.storage().0.as_ptr()
}

// ---------------------------------------------------------------- reshape

#[test]
fn reshape_forward_is_a_view_when_contiguous_and_a_copy_otherwise() {
    let x = iota((U2::default(), U3::default()));
    let y: Tensor<(U3, Dyn), f64> = x.clone().reshape((U3::default(), Dyn(2)));
    assert_eq!(y.dims(), [3, 2]);
    assert_eq!(y.to_vec(), [0., 1., 2., 3., 4., 5.]);
    assert!(same_storage(&x, &y));
    // A narrowed (offset, still contiguous) view reshapes without a copy too.
    let rows = x.clone().narrow::<Axis<0>>(1, 1);
    let r: Tensor<(U3,), f64> = rows.clone().reshape_static::<(U3,)>();
    assert_eq!(r.to_vec(), [3., 4., 5.]);
    assert!(same_storage(&x, &r));
    // The transpose of [[0,1,2],[3,4,5]] flattened: 0 3 1 4 2 5 (a copy).
    let t = x.clone().permute::<Perm2<1, 0>>();
    let f: Tensor<(U6,), f64> = t.reshape_static();
    assert_eq!(f.to_vec(), [0., 3., 1., 4., 2., 5.]);
    assert!(!same_storage(&x, &f));
    // Dyn source, static target.
    let d: Tensor<(Dyn, Dyn), f64> = iota((Dyn(4), Dyn(3)));
    let s: Tensor<(U2, U6), f64> = d.reshape_static();
    assert_eq!(s.to_vec(), (0..12).map(|i| i as f64).collect::<Vec<_>>());
}

#[test]
fn reshape_gradients() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 1);
    check_grad1(x.clone(), |x| {
        weighted_sum(x.reshape((U2::default(), Dyn(6))).tanh(), 2)
    });
    // non-contiguous input: permute, then reshape (the copy path)
    check_grad1(x.clone(), |x| {
        weighted_sum(x.permute::<Perm2<1, 0>>().reshape_static::<(U2, U6)>(), 3)
    });
    // a broadcast operand (stride 0) reshaped (the copy path), times a plain tensor
    let bias: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 4);
    let m: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(2), Dyn(6)), 5);
    check_grad2(bias, m, |b, m| {
        let bb = b
            .broadcast::<_, Axis<0>>((Rows, Cols))
            .reshape((Dyn(2), Dyn(6)));
        weighted_sum(bb * m, 5)
    });
    // used twice: as is and transposed
    check_grad1(x, |x| {
        let a = x.clone().reshape((U6::default(), U2::default()));
        let b = x
            .transpose::<0, 1>()
            .reshape((U6::default(), U2::default()));
        weighted_sum(a * b, 6)
    });
}

#[test]
fn reshape_in_every_dtype() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 7);
    check_dtypes!("reshape", |E| cast::<E, _>(&x)
        .reshape((U2::default(), Dyn(6)))
        .to_f64_vec());
    check_dtypes!("reshape of a permuted view", |E| cast::<E, _>(&x)
        .permute::<Perm2<1, 0>>()
        .reshape_static::<(U12,)>()
        .to_f64_vec());
}

#[test]
fn reshape_dyn_count_mismatch_is_an_error() {
    let x: Tensor<(Dyn, U3), f32> = Tensor::zeros((Dyn(2), U3::default()));
    let e = x.clone().try_reshape((U4::default(),)).err().unwrap();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "reshape",
            lhs: vec![2, 3],
            rhs: vec![4]
        }
    );
    assert_eq!(
        e.to_string(),
        "shape error in `reshape`: [2, 3] does not match [4]"
    );
    assert!(x.try_reshape((Dyn(3), Dyn(2))).is_ok());
}

#[test]
#[should_panic(expected = "shape error in `reshape`: [2, 3] does not match [4]")]
fn reshape_dyn_count_mismatch_panics() {
    let x: Tensor<(Dyn, U3), f32> = Tensor::zeros((Dyn(2), U3::default()));
    let _ = x.reshape((U4::default(),));
}

#[test]
#[should_panic(expected = "shape error in `reshape`: [5] does not match [2, 3]")]
fn reshape_static_of_a_dyn_tensor_panics() {
    let x: Tensor<(Dyn,), f32> = Tensor::zeros((Dyn(5),));
    let _ = x.reshape_static::<(U2, U3)>();
}

// ---------------------------------------------------------------- permute / transpose

#[test]
fn permute_forward_values() {
    let x = iota((U2::default(), U3::default(), U4::default()));
    let y: Tensor<(U4, U2, U3), f64> = x.clone().permute::<Perm3<2, 0, 1>>();
    assert!(same_storage(&x, &y));
    let v = y.to_vec();
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                assert_eq!(v[flat(&[4, 2, 3], &[k, i, j])], (i * 12 + j * 4 + k) as f64);
            }
        }
    }
    // rank 4 and rank 5 markers
    let x4 = iota((U2::default(), U3::default(), U1::default(), U4::default()));
    let y4: Tensor<(U4, U3, U2, U1), f64> = x4.permute::<Perm4<3, 1, 0, 2>>();
    let v4 = y4.to_vec();
    for (n, &got) in v4.iter().enumerate() {
        let o = unflat(&[4, 3, 2, 1], n); // (d3, d1, d0, d2)
        assert_eq!(got, flat(&[2, 3, 1, 4], &[o[2], o[1], o[3], o[0]]) as f64);
    }
    let x5 = iota((
        U2::default(),
        U1::default(),
        U3::default(),
        U2::default(),
        U2::default(),
    ));
    let y5 = x5.permute::<Perm5<2, 0, 3, 1, 4>>();
    assert_eq!(y5.dims(), [3, 2, 2, 1, 2]);
    for (n, &got) in y5.to_vec().iter().enumerate() {
        let o = unflat(&[3, 2, 2, 1, 2], n);
        assert_eq!(
            got,
            flat(&[2, 1, 3, 2, 2], &[o[1], o[3], o[0], o[2], o[4]]) as f64
        );
    }
}

#[test]
fn transpose_forward_values_at_every_rank() {
    let m = iota((Rows, Cols));
    let t: Tensor<(Cols, Rows), f64> = m.clone().transpose::<1, 0>();
    assert!(same_storage(&m, &t));
    assert_eq!(
        t.to_vec(),
        [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
    );
    // swapping an axis with itself changes nothing
    assert_eq!(m.clone().transpose::<1, 1>().to_vec(), m.to_vec());
    // rank 6: swap axes 1 and 4
    let dims = [2, 3, 1, 2, 2, 2];
    let x6 = iota((
        U2::default(),
        U3::default(),
        U1::default(),
        U2::default(),
        U2::default(),
        U2::default(),
    ));
    let y6: Tensor<(U2, U2, U1, U2, U3, U2), f64> = x6.transpose::<1, 4>();
    for (n, &got) in y6.to_vec().iter().enumerate() {
        let mut o = unflat(&[2, 2, 1, 2, 3, 2], n);
        o.swap(1, 4);
        assert_eq!(got, flat(&dims, &o) as f64);
    }
}

#[test]
fn permute_and_transpose_gradients() {
    let x: Tensor<(U2, U3, U4, U2), f64> = Tensor::randn(Default::default(), 10);
    check_grad1(x.clone(), |x| {
        weighted_sum(x.permute::<Perm4<3, 1, 0, 2>>().sin(), 11)
    });
    check_grad1(x.clone(), |x| weighted_sum(x.transpose::<0, 3>(), 12));
    // non-contiguous input: a narrowed, then permuted view
    check_grad1(x.clone(), |x| {
        weighted_sum(
            x.narrow::<Axis<2>>(1, 2)
                .transpose::<1, 2>()
                .permute::<Perm4<2, 0, 3, 1>>(),
            13,
        )
    });
    // rank 5 permute and rank 6 transpose
    let x5: Tensor<(U2, U1, U3, U2, U2), f64> = Tensor::randn(Default::default(), 14);
    check_grad1(x5, |x| {
        weighted_sum(x.permute::<Perm5<4, 2, 0, 3, 1>>(), 15)
    });
    let x6: Tensor<(U2, U1, U2, U1, U3, U2), f64> = Tensor::randn(Default::default(), 16);
    check_grad1(x6, |x| weighted_sum(x.transpose::<5, 2>(), 17));
    // used twice: x + x^T
    let sq: Tensor<(Cols, Cols), f64> = Tensor::randn((Cols, Cols), 18);
    check_grad1(sq, |x| {
        let xt: Tensor<(Cols, Cols), f64, Cpu, Tape> = x.clone().transpose::<0, 1>();
        weighted_sum((x + xt).square(), 19)
    });
    // a broadcast operand, transposed
    let bias: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 20);
    let m: Tensor<(Cols, Rows), f64> = Tensor::randn((Cols, Rows), 21);
    check_grad2(bias, m, |b, m| {
        let bt = b.broadcast::<_, Axis<0>>((Rows, Cols)).transpose::<0, 1>();
        weighted_sum(bt * m, 22)
    });
}

#[test]
fn permute_in_every_dtype() {
    let x: Tensor<(U2, U3, U4), f64> = Tensor::randn(Default::default(), 23);
    check_dtypes!("permute", |E| cast::<E, _>(&x)
        .permute::<Perm3<1, 2, 0>>()
        .to_f64_vec());
    check_dtypes!("transpose", |E| cast::<E, _>(&x)
        .transpose::<0, 2>()
        .to_f64_vec());
}

// ---------------------------------------------------------------- narrow / slice / split / chunk

#[test]
fn narrow_and_slice_forward_values() {
    let x = iota((Rows, Cols));
    let y: Tensor<(Rows, Dyn), f64> = x.clone().narrow::<Axis<1>>(1, 2);
    assert!(same_storage(&x, &y));
    assert_eq!(y.to_vec(), [1., 2., 5., 6., 9., 10.]);
    let z: Tensor<(Dyn, Cols), f64> = x.clone().narrow::<Axis<0>>(2, 1);
    assert_eq!(z.to_vec(), [8., 9., 10., 11.]);
    assert_eq!(x.clone().slice::<Axis<1>>(1..3).to_vec(), y.to_vec());
    assert_eq!(x.clone().slice::<Axis<1>>(1..=2).to_vec(), y.to_vec());
    assert_eq!(x.clone().slice::<Axis<0>>(2..).to_vec(), z.to_vec());
    assert_eq!(x.clone().slice::<Axis<0>>(..1).to_vec(), [0., 1., 2., 3.]);
    assert_eq!(x.clone().slice::<Axis<0>>(..).to_vec(), x.to_vec());
    let empty = x.clone().narrow::<Axis<1>>(4, 0);
    assert_eq!(empty.dims(), [3, 0]);
    assert!(empty.to_vec().is_empty());
    // narrowing a transposed view
    let t = x.transpose::<0, 1>().narrow::<Axis<1>>(1, 2); // rows of x^T, cols 1..3
    assert_eq!(t.to_vec(), [4., 8., 5., 9., 6., 10., 7., 11.]);
}

#[test]
fn split_and_chunk_forward_values() {
    let x = iota((U2::default(), U5::default()));
    let parts = x.clone().split::<Axis<1>>(&[2, 0, 3]);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].to_vec(), [0., 1., 5., 6.]);
    assert_eq!(parts[1].dims(), [2, 0]);
    assert_eq!(parts[2].to_vec(), [2., 3., 4., 7., 8., 9.]);
    let c = x.clone().chunk::<Axis<1>>(2);
    let sizes: Vec<usize> = c.iter().map(|p| p.dims()[1]).collect();
    assert_eq!(sizes, [3, 2]);
    assert_eq!(c[1].to_vec(), [3., 4., 8., 9.]);
    // PyTorch semantics: 5 split in 4 chunks of ceil(5 / 4) = 2 gives 2, 2, 1
    let sizes: Vec<usize> = x
        .clone()
        .chunk::<Axis<1>>(4)
        .iter()
        .map(|p| p.dims()[1])
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    let rows = x.chunk::<Axis<0>>(2);
    assert_eq!(rows[1].to_vec(), [5., 6., 7., 8., 9.]);
}

#[test]
fn narrow_split_chunk_gradients() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 30);
    check_grad1(x.clone(), |x| {
        weighted_sum(x.narrow::<Axis<1>>(1, 2).exp(), 31)
    });
    check_grad1(x.clone(), |x| weighted_sum(x.slice::<Axis<0>>(..2), 32));
    // overlapping narrows of one tensor (used twice) accumulate
    check_grad1(x.clone(), |x| {
        let a = x.clone().narrow::<Axis<1>>(0, 3);
        let b = x.narrow::<Axis<1>>(1, 3);
        weighted_sum(a * b, 33)
    });
    // non-contiguous input: narrow of a permuted view
    let x3: Tensor<(U2, U3, U4), f64> = Tensor::randn(Default::default(), 34);
    check_grad1(x3.clone(), |x| {
        weighted_sum(x.permute::<Perm3<2, 0, 1>>().narrow::<Axis<0>>(1, 2), 35)
    });
    // split: every piece weighted differently, one piece unused, one used twice
    check_grad1(x3.clone(), |x| {
        let p = x.split::<Axis<2>>(&[1, 2, 1]);
        let a = weighted_sum(p[0].clone(), 36);
        let b = weighted_sum(p[1].clone() * p[1].clone(), 37);
        (a + b).sum_all()
    });
    check_grad1(x3, |x| {
        let mut acc = None;
        for (i, c) in x.chunk::<Axis<1>>(2).into_iter().enumerate() {
            let s = weighted_sum(c.tanh(), 38 + i as u64);
            acc = Some(match acc {
                None => s,
                Some(a) => a + s,
            });
        }
        acc.unwrap()
    });
    // a broadcast operand, narrowed
    let bias: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 40);
    let m: Tensor<(Dyn, Cols), f64> = Tensor::randn((Dyn(2), Cols), 41);
    check_grad2(bias, m, |b, m| {
        let bb = b
            .broadcast::<_, Axis<0>>((Dyn(4), Cols))
            .narrow::<Axis<0>>(1, 2);
        weighted_sum(bb * m, 42)
    });
}

#[test]
fn narrow_gradient_is_exact_zero_outside_the_block() {
    let x: Tensor<(Rows, Cols), f64> = Tensor::randn((Rows, Cols), 43);
    let g = x
        .clone()
        .traced()
        .narrow::<Axis<1>>(1, 2)
        .sum_all()
        .backward();
    let gx = g.get(&x).unwrap().to_vec();
    assert_eq!(gx, [0., 1., 1., 0., 0., 1., 1., 0., 0., 1., 1., 0.]);
}

#[test]
fn narrow_split_in_every_dtype() {
    let x: Tensor<(U2, U3, U4), f64> = Tensor::randn(Default::default(), 44);
    check_dtypes!("narrow", |E| cast::<E, _>(&x)
        .transpose::<0, 2>()
        .narrow::<Axis<1>>(1, 2)
        .to_f64_vec());
    check_dtypes!("split", |E| cast::<E, _>(&x).split::<Axis<2>>(&[3, 1])[0]
        .to_f64_vec());
    check_dtypes!("chunk", |E| cast::<E, _>(&x).chunk::<Axis<1>>(2)[1]
        .to_f64_vec());
}

#[test]
fn narrow_slice_split_chunk_errors() {
    let x: Tensor<(Dyn, U4), f32> = Tensor::zeros((Dyn(3), U4::default()));
    let e = x.clone().try_narrow::<Axis<1>>(3, 2).err().unwrap();
    assert_eq!(
        e.to_string(),
        "invalid argument to `narrow`: the range 3..5 does not fit axis 1 of size 4"
    );
    assert!(x.clone().try_narrow::<Axis<0>>(0, 4).is_err());
    assert!(x.clone().try_narrow::<Axis<0>>(usize::MAX, 2).is_err());
    assert!(x.clone().try_narrow::<Axis<0>>(3, 0).is_ok());
    let (lo, hi) = (2, 1);
    let e = x.clone().try_slice::<Axis<0>>(lo..hi).err().unwrap();
    assert_eq!(
        e.to_string(),
        "invalid argument to `slice`: the range 2..1 ends before it starts"
    );
    assert!(x.clone().try_slice::<Axis<0>>(..=3).is_err());
    let e = x.clone().try_split::<Axis<0>>(&[1, 1]).err().unwrap();
    assert_eq!(
        e.to_string(),
        "invalid argument to `split`: the sizes [1, 1] do not add up to 3, the size of axis 0"
    );
    assert!(matches!(
        x.clone().try_chunk::<Axis<1>>(0),
        Err(Error::InvalidArgument { op: "chunk", .. })
    ));
    assert!(x.clone().try_chunk::<Axis<1>>(9).unwrap().len() == 4);
}

#[test]
#[should_panic(
    expected = "invalid argument to `narrow`: the range 3..5 does not fit axis 1 of size 4"
)]
fn narrow_out_of_range_panics() {
    let x: Tensor<(Dyn, U4), f32> = Tensor::zeros((Dyn(3), U4::default()));
    let _ = x.narrow::<Axis<1>>(3, 2);
}

#[test]
#[should_panic(expected = "invalid argument to `split`: the sizes [1, 1] do not add up to 3")]
fn split_bad_sizes_panics() {
    let x: Tensor<(Dyn, U4), f32> = Tensor::zeros((Dyn(3), U4::default()));
    let _ = x.split::<Axis<0>>(&[1, 1]);
}

#[test]
#[should_panic(expected = "invalid argument to `slice`")]
fn slice_reversed_panics() {
    let x: Tensor<(Dyn, U4), f32> = Tensor::zeros((Dyn(3), U4::default()));
    let (lo, hi) = (2, 1);
    let _ = x.slice::<Axis<0>>(lo..hi);
}

// ---------------------------------------------------------------- concat / concat_all / stack

#[test]
fn concat_forward_values_and_types() {
    let a = iota((U2::default(), U1::default())); // [[0], [1]]
    let b = iota((U2::default(), U2::default())).add_scalar(10.0); // [[10, 11], [12, 13]]
    let c: Tensor<(U2, U3), f64> = a.clone().concat::<Axis<1>>(b.clone());
    assert_eq!(c.to_vec(), [0., 10., 11., 1., 12., 13.]);
    let r: Tensor<(U4, U2), f64> = b.clone().concat::<Axis<0>>(b.clone());
    assert_eq!(r.to_vec(), [10., 11., 12., 13., 10., 11., 12., 13.]);
    // a Dyn joined dim; named dims of equal size line up off the axis
    let d: Tensor<(Dyn, Cols), f64> = iota((Dyn(1), Cols));
    let e: Tensor<(Rows, Cols), f64> = iota((Rows, Cols));
    let de: Tensor<(Dyn, Cols), f64> = d.concat::<Axis<0>>(e);
    assert_eq!(de.dims(), [4, 4]);
    assert_eq!(&de.to_vec()[..6], [0., 1., 2., 3., 0., 1.]);
    let u4 = iota((U2::default(), U4::default()));
    let named: Tensor<(U2, U8), f64> = u4.concat::<Axis<1>>(iota((U2::default(), Cols)));
    assert_eq!(named.to_vec()[4..8], [0., 1., 2., 3.]);
    // strided inputs: a transpose and a narrow
    let t = iota((U3::default(), U2::default())).transpose::<0, 1>(); // [[0,2,4],[1,3,5]]
    let n = iota((U2::default(), U4::default())).narrow::<Axis<1>>(2, 2); // [[2,3],[6,7]]
    let tn: Tensor<(U2, Dyn), f64> = t.concat::<Axis<1>>(n);
    assert_eq!(tn.to_vec(), [0., 2., 4., 2., 3., 1., 3., 5., 6., 7.]);
    // rank 1 and rank 3 (middle axis)
    let v: Tensor<(U5,), f64> = iota((U2::default(),)).concat::<Axis<0>>(iota((U3::default(),)));
    assert_eq!(v.to_vec(), [0., 1., 0., 1., 2.]);
    let p = iota((U2::default(), U1::default(), U2::default()));
    let q = iota((U2::default(), U2::default(), U2::default())).mul_scalar(-1.0);
    let pq: Tensor<(U2, U3, U2), f64> = p.concat::<Axis<1>>(q);
    assert_eq!(
        pq.to_vec(),
        [0., 1., -0., -1., -2., -3., 2., 3., -4., -5., -6., -7.]
    );
}

#[test]
fn concat_all_and_stack_forward_values() {
    let xs: Vec<Tensor<(U2, Dyn), f64>> = (1..=3)
        .map(|n| Tensor::full((U2::default(), Dyn(n)), n as f64))
        .collect();
    let c: Tensor<(U2, Dyn), f64> = Tensor::concat_all::<Axis<1>>(xs);
    assert_eq!(c.to_vec(), [1., 2., 2., 3., 3., 3., 1., 2., 2., 3., 3., 3.]);
    let a = iota((U2::default(), U3::default()));
    let b = a.clone().add_scalar(10.0);
    let s0: Tensor<(Dyn, U2, U3), f64> = Tensor::stack::<Axis<0>>([a.clone(), b.clone()]);
    assert_eq!(
        s0.to_vec(),
        [0., 1., 2., 3., 4., 5., 10., 11., 12., 13., 14., 15.]
    );
    let s1: Tensor<(U2, Dyn, U3), f64> = Tensor::stack::<Axis<1>>(vec![a.clone(), b.clone()]);
    assert_eq!(
        s1.to_vec(),
        [0., 1., 2., 10., 11., 12., 3., 4., 5., 13., 14., 15.]
    );
    let s2: Tensor<(U2, U3, Dyn), f64> =
        Tensor::stack::<Axis<2>>([a.clone(), b.clone(), a.clone()]);
    for (n, &got) in s2.to_vec().iter().enumerate() {
        let (i, j, k) = (n / 9, (n / 3) % 3, n % 3);
        let base = (i * 3 + j) as f64;
        assert_eq!(got, if k == 1 { base + 10.0 } else { base });
    }
    // stacking transposed views, and scalars into a vector
    let st = Tensor::stack::<Axis<0>>([a.clone().transpose::<0, 1>(), b.transpose::<0, 1>()]);
    assert_eq!(st.to_vec()[..6], [0., 3., 1., 4., 2., 5.]);
    let scalars: Vec<Tensor<(), f64>> = (0..4).map(|i| Tensor::full((), i as f64)).collect();
    let v: Tensor<(Dyn,), f64> = Tensor::stack::<Axis<0>>(scalars);
    assert_eq!(v.to_vec(), [0., 1., 2., 3.]);
}

#[test]
fn concat_gradients() {
    let a: Tensor<(Rows, U2), f64> = Tensor::randn(Default::default(), 50);
    let b: Tensor<(Rows, Cols), f64> = Tensor::randn(Default::default(), 51);
    check_grad2(a.clone(), b.clone(), |a, b| {
        weighted_sum(a.concat::<Axis<1>>(b).tanh(), 52)
    });
    // the same tensor twice
    check_grad1(b.clone(), |b| {
        weighted_sum(b.clone().concat::<Axis<0>>(b), 53)
    });
    check_grad1(b.clone(), |b| {
        let bb: Tensor<(Rows, U8), f64, Cpu, Tape> = b.clone().concat::<Axis<1>>(b.exp());
        weighted_sum(bb, 54)
    });
    // narrow then concat (strided input), permute then concat
    check_grad1(b.clone(), |b| {
        let l = b.clone().narrow::<Axis<1>>(0, 1);
        let r = b.narrow::<Axis<1>>(2, 2);
        weighted_sum(l.concat::<Axis<1>>(r), 55)
    });
    let sq: Tensor<(Cols, Rows), f64> = Tensor::randn(Default::default(), 56);
    check_grad2(sq, b.clone(), |s, b| {
        weighted_sum(b.concat::<Axis<0>>(s.permute::<Perm2<1, 0>>()), 57)
    });
    // a broadcast operand
    let bias: Tensor<(Cols,), f64> = Tensor::randn((Cols,), 58);
    check_grad2(bias, b, |bias, b| {
        let bb = bias.broadcast::<_, Axis<0>>((Dyn(2), Cols));
        weighted_sum(bb.concat::<Axis<0>>(b), 59)
    });
}

#[test]
fn concat_all_and_stack_gradients() {
    let x: Tensor<(U2, U3), f64> = Tensor::randn(Default::default(), 60);
    check_grad1(x.clone(), |x| {
        let parts = vec![
            x.clone(),
            x.clone().square(),
            x.transpose::<0, 1>().transpose::<0, 1>(),
        ];
        weighted_sum(Tensor::concat_all::<Axis<1>>(parts), 61)
    });
    check_grad1(x.clone(), |x| {
        let parts = [
            x.clone().narrow::<Axis<1>>(0, 2),
            x.clone().narrow::<Axis<1>>(1, 2),
            x.narrow::<Axis<1>>(2, 1),
        ];
        weighted_sum(Tensor::concat_all::<Axis<1>>(parts), 62)
    });
    for seed in 0..3u64 {
        check_grad1(x.clone(), move |x| {
            let parts = [x.clone().sin(), x.clone(), x];
            let s = match seed {
                0 => Tensor::stack::<Axis<0>>(parts).reshape((Dyn(18),)),
                1 => Tensor::stack::<Axis<1>>(parts).reshape((Dyn(18),)),
                _ => Tensor::stack::<Axis<2>>(parts).reshape((Dyn(18),)),
            };
            weighted_sum(s, 63 + seed)
        });
    }
    // a broadcast operand stacked with a traced tensor
    let bias: Tensor<(U3,), f64> = Tensor::randn(Default::default(), 66);
    check_grad1(bias, |b| {
        let m: Tensor<(U2, U3), f64> = Tensor::randn(Default::default(), 67);
        let bb = b.broadcast::<_, Axis<0>>((U2::default(), U3::default()));
        let m = m.traced();
        weighted_sum(Tensor::stack::<Axis<1>>([bb, m]), 68)
    });
}

#[test]
fn concat_stack_in_every_dtype() {
    let a: Tensor<(U2, U3), f64> = Tensor::randn(Default::default(), 70);
    let b: Tensor<(U2, U2), f64> = Tensor::randn(Default::default(), 71);
    check_dtypes!("concat", |E| cast::<E, _>(&a)
        .concat::<Axis<1>>(cast::<E, _>(&b))
        .to_f64_vec());
    check_dtypes!("concat_all", |E| Tensor::concat_all::<Axis<0>>([
        cast::<E, _>(&a),
        cast::<E, _>(&a).transpose::<0, 1>().transpose::<0, 1>()
    ])
    .to_f64_vec());
    check_dtypes!("stack", |E| Tensor::stack::<Axis<1>>([
        cast::<E, _>(&a),
        cast::<E, _>(&a)
    ])
    .to_f64_vec());
}

#[test]
fn concat_stack_runtime_errors() {
    let a: Tensor<(Dyn, U2), f32> = Tensor::zeros((Dyn(2), U2::default()));
    let b: Tensor<(Dyn, U3), f32> = Tensor::zeros((Dyn(3), U3::default()));
    let e = a.clone().try_concat::<Axis<1>>(b.clone()).err().unwrap();
    assert_eq!(
        e.to_string(),
        "shape error in `concat`: [2, 2] does not match [3, 3]"
    );
    let e = Tensor::try_concat_all::<Axis<1>>([a.clone(), Tensor::zeros((Dyn(1), U2::default()))])
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "shape error in `concat_all`: [2, 2] does not match [1, 2]"
    );
    let e = Tensor::try_stack::<Axis<0>>([a.clone(), Tensor::zeros((Dyn(1), U2::default()))])
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "shape error in `stack`: [2, 2] does not match [1, 2]"
    );
    let none: Vec<Tensor<(Dyn, U2), f32>> = Vec::new();
    assert!(matches!(
        Tensor::try_stack::<Axis<0>>(none.clone()),
        Err(Error::InvalidArgument { op: "stack", .. })
    ));
    assert!(matches!(
        Tensor::try_concat_all::<Axis<0>>(none),
        Err(Error::InvalidArgument {
            op: "concat_all",
            ..
        })
    ));
}

#[test]
#[should_panic(expected = "shape error in `concat`: [2, 2] does not match [3, 3]")]
fn concat_runtime_error_panics() {
    let a: Tensor<(Dyn, U2), f32> = Tensor::zeros((Dyn(2), U2::default()));
    let b: Tensor<(Dyn, U3), f32> = Tensor::zeros((Dyn(3), U3::default()));
    let _ = a.concat::<Axis<1>>(b);
}

#[test]
#[should_panic(expected = "shape error in `stack`: [2, 2] does not match [1, 2]")]
fn stack_runtime_error_panics() {
    let a: Tensor<(Dyn, U2), f32> = Tensor::zeros((Dyn(2), U2::default()));
    let _ = Tensor::stack::<Axis<0>>([a, Tensor::zeros((Dyn(1), U2::default()))]);
}

#[test]
#[should_panic(expected = "shape error in `concat_all`: [2, 2] does not match [1, 2]")]
fn concat_all_runtime_error_panics() {
    let a: Tensor<(Dyn, U2), f32> = Tensor::zeros((Dyn(2), U2::default()));
    let _ = Tensor::concat_all::<Axis<1>>([a, Tensor::zeros((Dyn(1), U2::default()))]);
}

#[test]
fn large_split_concat_round_trip_uses_the_parallel_paths() {
    // 300 x 256 = 76800 elements, above the kernels' parallel threshold.
    let (r, c) = (300, 256);
    let x: Tensor<(Dyn, Dyn), f64> = iota((Dyn(r), Dyn(c)));
    let parts = x.clone().traced().split::<Axis<0>>(&[100, 200]);
    let (top, bottom) = (parts[0].clone(), parts[1].clone());
    // [top | bottom^T-ish]: join along axis 1 after narrowing bottom to 100 rows
    let joined = top.concat::<Axis<1>>(bottom.narrow::<Axis<0>>(50, 100));
    assert_eq!(joined.dims(), [100, 512]);
    let v = joined.to_vec();
    for &(i, j) in &[(0, 0), (0, 255), (0, 256), (99, 511), (57, 300)] {
        let want = if j < c {
            i * c + j
        } else {
            (150 + i) * c + (j - c)
        };
        assert_eq!(v[i * 512 + j], want as f64);
    }
    let g = joined.sum_all().backward();
    let gx = g.get(&x).unwrap().to_vec();
    for (n, &gv) in gx.iter().enumerate() {
        let row = n / c;
        let want = if row < 100 || (150..250).contains(&row) {
            1.0
        } else {
            0.0
        };
        assert_eq!(gv, want, "row {row}");
    }
}

// ---------------------------------------------------------------- split / merge heads

#[test]
fn split_and_merge_heads_forward_values() {
    let x = iota((Batch, Seq, Model));
    let h: Tensor<(Batch, Seq, Heads, HeadDim), f64> = x.clone().split_heads::<Heads, HeadDim>();
    assert!(same_storage(&x, &h));
    let v = h.to_vec();
    for b in 0..2 {
        for t in 0..3 {
            for hh in 0..2 {
                for d in 0..3 {
                    assert_eq!(
                        v[flat(&[2, 3, 2, 3], &[b, t, hh, d])],
                        (b * 18 + t * 6 + hh * 3 + d) as f64
                    );
                }
            }
        }
    }
    // one of H, Hd may be Dyn: its size is D over the other
    let h2: Tensor<(Batch, Seq, Heads, Dyn), f64> = x.clone().split_heads::<Heads, Dyn>();
    assert_eq!(h2.dims(), [2, 3, 2, 3]);
    let h3: Tensor<(Batch, Seq, Dyn, HeadDim), f64> = x.clone().split_heads::<Dyn, HeadDim>();
    assert_eq!(h3.to_vec(), x.to_vec());
    let h4 = x.clone().split_heads_to(Dyn(3), Dyn(2));
    assert_eq!(h4.dims(), [2, 3, 3, 2]);
    // merge is the inverse; into a named or a Dyn dim
    let m: Tensor<(Batch, Seq, Model), f64> = h.clone().merge_heads::<Model>();
    assert_eq!(m.to_vec(), x.to_vec());
    let md: Tensor<(Batch, Seq, Dyn), f64> = h4.merge_heads::<Dyn>();
    assert_eq!(md.dims(), [2, 3, 6]);
    // merging after a transpose of heads and time copies: (B, H, T, Hd) -> (B, T, H, Hd)
    let bhtd = h.transpose::<1, 2>();
    let back: Tensor<(Batch, Seq, Model), f64> = bhtd.transpose::<1, 2>().merge_heads();
    assert_eq!(back.to_vec(), x.to_vec());
}

#[test]
fn split_and_merge_heads_gradients() {
    let x: Tensor<(Batch, Seq, Model), f64> = Tensor::randn(Default::default(), 80);
    check_grad1(x.clone(), |x| {
        weighted_sum(x.split_heads::<Heads, HeadDim>().transpose::<1, 2>(), 81)
    });
    // the attention layout round trip: split, (B, H, T, Hd), back, merge (a copy)
    check_grad1(x.clone(), |x| {
        let h = x.split_heads::<Heads, Dyn>().transpose::<1, 2>().exp();
        weighted_sum(h.transpose::<1, 2>().merge_heads::<Model>(), 82)
    });
    // used twice
    check_grad1(x.clone(), |x| {
        let h = x.clone().split_heads::<Dyn, HeadDim>().merge_heads::<Dyn>();
        weighted_sum(h * x.reshape((Batch, Seq, Dyn(6))), 83)
    });
    // a non-contiguous input (permuted) and a broadcast operand
    let y: Tensor<(Seq, Batch, Model), f64> = Tensor::randn(Default::default(), 84);
    check_grad1(y, |y| {
        weighted_sum(y.transpose::<0, 1>().split_heads::<Heads, HeadDim>(), 85)
    });
    let bias: Tensor<(Model,), f64> = Tensor::randn(Default::default(), 86);
    check_grad1(bias, |b| {
        let bb = b.broadcast::<_, Axes2<0, 1>>((Batch, Seq, Model));
        weighted_sum(bb.split_heads::<Heads, HeadDim>(), 87)
    });
}

#[test]
fn heads_in_every_dtype() {
    let x: Tensor<(Batch, Seq, Model), f64> = Tensor::randn(Default::default(), 88);
    check_dtypes!("split_heads", |E| cast::<E, _>(&x)
        .split_heads::<Heads, HeadDim>()
        .transpose::<1, 2>()
        .to_f64_vec());
    check_dtypes!("merge_heads", |E| cast::<E, _>(&x)
        .split_heads::<Heads, HeadDim>()
        .transpose::<2, 3>()
        .merge_heads::<Dyn>()
        .to_f64_vec());
}

#[test]
fn heads_runtime_errors() {
    let x: Tensor<(U1, U2, Dyn), f32> = Tensor::zeros((U1::default(), U2::default(), Dyn(7)));
    let e = x.clone().try_split_heads::<Heads, HeadDim>().err().unwrap();
    assert_eq!(
        e.to_string(),
        "shape error in `split_heads`: [7] does not match [2, 3]"
    );
    let e = x.clone().try_split_heads::<Heads, Dyn>().err().unwrap();
    assert_eq!(
        e.to_string(),
        "invalid argument to `split_heads`: the last dim 7 is not a multiple of 2"
    );
    let e = x.clone().try_split_heads::<Dyn, Dyn>().err().unwrap();
    assert!(matches!(
        e,
        Error::InvalidArgument {
            op: "split_heads",
            ..
        }
    ));
    let e = x.clone().try_split_heads_to(Dyn(2), Dyn(4)).err().unwrap();
    assert_eq!(
        e.to_string(),
        "shape error in `split_heads`: [7] does not match [2, 4]"
    );
    assert!(x.try_split_heads_to(Dyn(7), Dyn(1)).is_ok());
    let h: Tensor<(U1, U2, Dyn, U3), f32> =
        Tensor::zeros((U1::default(), U2::default(), Dyn(3), U3::default()));
    let e = h.clone().try_merge_heads::<Model>().err().unwrap();
    assert_eq!(
        e.to_string(),
        "shape error in `merge_heads`: [3, 3] does not match [6]"
    );
    assert_eq!(h.merge_heads::<Dyn>().dims(), [1, 2, 9]);
}

#[test]
#[should_panic(expected = "shape error in `split_heads`: [7] does not match [2, 3]")]
fn split_heads_runtime_error_panics() {
    let x: Tensor<(U1, U2, Dyn), f32> = Tensor::zeros((U1::default(), U2::default(), Dyn(7)));
    let _ = x.split_heads::<Heads, HeadDim>();
}

#[test]
#[should_panic(expected = "shape error in `merge_heads`: [3, 3] does not match [6]")]
fn merge_heads_runtime_error_panics() {
    let h: Tensor<(U1, U2, Dyn, U3), f32> =
        Tensor::zeros((U1::default(), U2::default(), Dyn(3), U3::default()));
    let _ = h.merge_heads::<Model>();
}

// ---------------------------------------------------------------- generic code over dims

fn swap_generic<M: Dim, N: Dim>(x: Tensor<(M, N), f32>) -> Tensor<(N, M), f32> {
    x.transpose::<0, 1>()
}

fn rotate_generic<A: Dim, B: Dim, C: Dim, T: zerfoo::autograd::TapeState>(
    x: Tensor<(A, B, C), f32, Cpu, T>,
) -> Tensor<(C, A, B), f32, Cpu, T> {
    x.permute::<Perm3<2, 0, 1>>()
}

fn first_col_generic<M: Dim, N: Dim>(x: Tensor<(M, N), f32>) -> Tensor<(M, Dyn), f32> {
    x.narrow::<Axis<1>>(0, 1)
}

fn halves_generic<M: Dim, N: Dim>(x: Tensor<(M, N), f32>) -> Vec<Tensor<(M, Dyn), f32>> {
    let n = x.dims()[1];
    x.split::<Axis<1>>(&[n / 2, n - n / 2])
}

fn join_list_generic<M: Dim, N: Dim>(
    a: Tensor<(M, N), f32>,
    b: Tensor<(M, N), f32>,
) -> Tensor<(M, Dyn), f32> {
    Tensor::concat_all::<Axis<1>>([a, b])
}

/// `(M, N)` joined with `(M, K)` along axis 1.
type Joined<M, N, K> = <(M, N) as ConcatAlong<(M, K), Axis<1>>>::Out;

fn join_generic<M: Dim, N: Dim, K: Dim>(
    a: Tensor<(M, N), f32>,
    b: Tensor<(M, K), f32>,
) -> Tensor<Joined<M, N, K>, f32>
where
    (M, N): ConcatAlong<(M, K), Axis<1>>,
{
    a.concat::<Axis<1>>(b)
}

fn stack_generic<M: Dim, N: Dim>(xs: Vec<Tensor<(M, N), f32>>) -> Tensor<(M, Dyn, N), f32> {
    Tensor::stack::<Axis<1>>(xs)
}

fn flatten_generic<M: Dim, N: Dim>(x: Tensor<(M, N), f32>) -> Tensor<(Dyn,), f32>
where
    (M, N): ReshapeTo<(Dyn,), Reshape>,
{
    let n = x.numel();
    x.reshape((Dyn(n),))
}

/// Merging into a `Dyn` dim needs no bounds on `H` and `Hd`.
fn merge_generic<B: Dim, T: Dim, H: Dim, Hd: Dim>(
    x: Tensor<(B, T, H, Hd), f32>,
) -> Tensor<(B, T, Dyn), f32> {
    x.merge_heads::<Dyn>()
}

/// Splitting a `Dyn` last dim needs no bounds on `H`.
fn split_generic<B: Dim, T: Dim, H: Dim>(
    x: Tensor<(B, T, Dyn), f32>,
) -> Tensor<(B, T, H, Dyn), f32> {
    x.split_heads::<H, Dyn>()
}

fn merge_named_generic<B: Dim, T: Dim, H: Dim, Hd: Dim, D>(
    x: Tensor<(B, T, H, Hd), f32>,
) -> Tensor<(B, T, D), f32>
where
    D: HeadsDim<H, Hd, MergeHeads>,
{
    x.merge_heads::<D>()
}

#[test]
fn generic_functions_over_dims_compile_and_run() {
    let x: Tensor<(Rows, Cols), f32> = Tensor::from_fn((Rows, Cols), |i| i as f32);
    assert_eq!(swap_generic(x.clone()).dims(), [4, 3]);
    let x3: Tensor<(U2, Dyn, U4), f32> = Tensor::zeros((U2::default(), Dyn(3), U4::default()));
    assert_eq!(rotate_generic(x3.clone()).dims(), [4, 2, 3]);
    assert_eq!(rotate_generic(x3.traced()).dims(), [4, 2, 3]);
    assert_eq!(first_col_generic(x.clone()).to_vec(), [0., 4., 8.]);
    let h = halves_generic(x.clone());
    assert_eq!(h[1].to_vec(), [2., 3., 6., 7., 10., 11.]);
    assert_eq!(join_list_generic(x.clone(), x.clone()).dims(), [3, 8]);
    let j: Tensor<(Rows, U5), f32> = join_generic(x.clone(), Tensor::zeros((Rows, U1::default())));
    assert_eq!(j.dims(), [3, 5]);
    assert_eq!(stack_generic(vec![x.clone(); 3]).dims(), [3, 3, 4]);
    assert_eq!(flatten_generic(x.clone()).dims(), [12]);
    let q: Tensor<(U1, U2, Heads, Dyn), f32> =
        Tensor::zeros((U1::default(), U2::default(), Heads, Dyn(3)));
    assert_eq!(merge_generic(q.clone()).dims(), [1, 2, 6]);
    let m: Tensor<(U1, U2, Model), f32> = merge_named_generic(q);
    assert_eq!(m.dims(), [1, 2, 6]);
    let d: Tensor<(U1, U2, Dyn), f32> = Tensor::zeros((U1::default(), U2::default(), Dyn(6)));
    assert_eq!(split_generic::<_, _, Heads>(d).dims(), [1, 2, 2, 3]);
}
