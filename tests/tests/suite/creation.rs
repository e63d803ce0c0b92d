//! Creating tensors: constant fills, `from_vec`, `arange`, `eye`, seeded
//! random draws, `realize`, and `Display` against PyTorch's print format.

use zerfoo::kernels::{bf16, f16, FloatDtype, F8E4M3, F8E5M2};
use zerfoo::prelude::*;

dim!(Rows = 2);
dim!(Cols = 3);
dim!(Big = 100_000);

// ---------------------------------------------------------------------------
// Constant fills and from_vec

fn fills<E: FloatDtype>() {
    let z: Tensor<(Rows, Cols), E> = Tensor::zeros((Rows, Cols));
    assert_eq!(z.dims(), [2, 3]);
    assert!(z.is_contiguous());
    assert_eq!(z.to_f64_vec(), [0.0; 6], "{}", E::DTYPE);
    let o: Tensor<(Rows, Cols), E> = Tensor::ones((Rows, Cols));
    assert_eq!(o.to_f64_vec(), [1.0; 6], "{}", E::DTYPE);
    let f: Tensor<(Dyn,), E> = Tensor::full((Dyn(4),), -1.5);
    assert_eq!(f.to_f64_vec(), [-1.5; 4], "{}", E::DTYPE);
    // a value the dtype cannot hold is rounded once, like `from_f64`
    let t: Tensor<(Dyn,), E> = Tensor::full((Dyn(2),), 0.1);
    assert_eq!(t.to_vec(), [E::from_f64(0.1); 2]);
    assert_eq!(t.dtype(), E::DTYPE);
}

#[test]
fn zeros_ones_full_in_every_dtype() {
    fills::<f64>();
    fills::<f32>();
    fills::<f16>();
    fills::<bf16>();
    fills::<F8E4M3>();
    fills::<F8E5M2>();
    // rounded, not truncated toward anything: 1/3 in bf16 is 0x3EAB
    let t: Tensor<(U1,), bf16> = Tensor::full(Default::default(), 1.0 / 3.0);
    assert_eq!(t.item().to_bits(), 0x3EAB);
    // integer fills truncate toward zero
    let i: Tensor<(U2,), i64> = Tensor::full(Default::default(), -2.7);
    assert_eq!(i.to_vec(), [-2, -2]);
    let u: Tensor<(U2,), u32> = Tensor::ones(Default::default());
    assert_eq!(u.to_vec(), [1, 1]);
    // scalars and empty tensors
    let s: Tensor<(), f32> = Tensor::full((), 2.5);
    assert_eq!(s.item(), 2.5);
    assert_eq!(s.numel(), 1);
    let e: Tensor<(Dyn, U3), f32> = Tensor::zeros((Dyn(0), U3::default()));
    assert_eq!(e.numel(), 0);
    assert!(e.to_vec().is_empty());
}

#[test]
fn from_vec_checks_length() {
    let t =
        Tensor::<(Rows, Cols), f32>::from_vec((Rows, Cols), vec![1., 2., 3., 4., 5., 6.]).unwrap();
    assert_eq!(t.to_vec(), [1., 2., 3., 4., 5., 6.]);
    assert_eq!(t.dims(), [2, 3]);
    let err = Tensor::<(Rows, Cols), f32>::from_vec((Rows, Cols), vec![1., 2., 3.]).unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            op: "from_vec",
            expected: 6,
            got: 3
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("`from_vec`"), "{msg}");
    assert!(
        msg.contains('6') && msg.contains('3'),
        "names both counts: {msg}"
    );
    assert_eq!(
        msg,
        "length error in `from_vec`: the shape holds 6 elements but 3 were given"
    );
    // too many is an error as well, with a Dyn dim
    let err = Tensor::<(Dyn,), f64>::from_vec((Dyn(2),), vec![1.0; 5]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "length error in `from_vec`: the shape holds 2 elements but 5 were given"
    );
}

#[test]
fn from_fn_is_row_major() {
    let t = Tensor::<(Rows, Cols), f64>::from_fn((Rows, Cols), |i| i as f64 * 10.0);
    assert_eq!(t.to_vec(), [0., 10., 20., 30., 40., 50.]);
}

// ---------------------------------------------------------------------------
// arange and eye

#[test]
fn arange_counts_from_zero() {
    let a: Tensor<(U5,), f32> = Tensor::arange(U5::default());
    assert_eq!(a.to_vec(), [0., 1., 2., 3., 4.]);
    let b: Tensor<(Dyn,), i64> = Tensor::arange(Dyn(4));
    assert_eq!(b.to_vec(), [0, 1, 2, 3]);
    let c: Tensor<(Dyn,), u32> = Tensor::arange(Dyn(3));
    assert_eq!(c.to_vec(), [0, 1, 2]);
    let e: Tensor<(Dyn,), f64> = Tensor::arange(Dyn(0));
    assert!(e.to_vec().is_empty());
    // f8 E4M3 holds every integer up to 16 exactly
    let f: Tensor<(Dyn,), F8E4M3> = Tensor::arange(Dyn(17));
    assert_eq!(f.to_f64_vec(), (0..17).map(f64::from).collect::<Vec<_>>());
    // large: every value exact in f64
    let g: Tensor<(Dyn,), f64> = Tensor::arange(Dyn(5000));
    assert!(g.to_vec().iter().enumerate().all(|(i, &v)| v == i as f64));
}

#[test]
fn eye_is_the_identity() {
    let i: Tensor<(U3, U3), f32> = Tensor::eye(U3::default());
    assert_eq!(i.to_vec(), [1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    let d: Tensor<(Dyn, Dyn), f64> = Tensor::eye(Dyn(4));
    assert_eq!(d.dims(), [4, 4]);
    for r in 0..4 {
        for c in 0..4 {
            assert_eq!(d.to_vec()[r * 4 + c], if r == c { 1.0 } else { 0.0 });
        }
    }
    let one: Tensor<(U1, U1), bf16> = Tensor::eye(U1::default());
    assert_eq!(one.to_f64_vec(), [1.0]);
    let ids: Tensor<(Dyn, Dyn), i64> = Tensor::eye(Dyn(2));
    assert_eq!(ids.to_vec(), [1, 0, 0, 1]);
}

// ---------------------------------------------------------------------------
// Random draws

/// Every random constructor, as one closure per kind, for a given seed.
fn draws<E: FloatDtype>(seed: u64) -> [Vec<E>; 4] {
    [
        Tensor::<(Big,), E>::randn((Big,), seed).to_vec(),
        Tensor::<(Big,), E>::rand((Big,), seed).to_vec(),
        Tensor::<(Big,), E>::uniform((Big,), -2.0, 6.0, seed).to_vec(),
        Tensor::<(Big,), E>::normal((Big,), 3.0, 2.0, seed).to_vec(),
    ]
}

fn bits_f32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn random_draws_are_reproducible_and_seed_dependent() {
    let a = draws::<f32>(7);
    let b = draws::<f32>(7);
    let c = draws::<f32>(8);
    for k in 0..4 {
        assert_eq!(
            bits_f32(&a[k]),
            bits_f32(&b[k]),
            "draw {k} with the same seed"
        );
        let same = a[k].iter().zip(&c[k]).filter(|(x, y)| x == y).count();
        // rand/uniform in f32 take 24 random bits: a few coincidences are fine
        assert!(same < 100, "draw {k}: {same} equal elements across seeds");
    }
    // not the same stream shifted: distinct seeds are uncorrelated
    let (x, y) = (&a[0], &c[0]);
    let n = x.len() as f64;
    let corr = x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>() / n;
    assert!(corr.abs() < 0.02, "correlation {corr}");
}

#[test]
fn random_draws_do_not_depend_on_thread_count() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let one = pool(1).install(|| draws::<f32>(11));
    let two = pool(2).install(|| draws::<f32>(11));
    let four = pool(4).install(|| draws::<f32>(11));
    for k in 0..4 {
        assert_eq!(bits_f32(&one[k]), bits_f32(&two[k]), "draw {k}");
        assert_eq!(bits_f32(&one[k]), bits_f32(&four[k]), "draw {k}");
    }
    let one = pool(1).install(|| draws::<f64>(12));
    let two = pool(2).install(|| draws::<f64>(12));
    assert_eq!(one, two);
}

fn moments(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt();
    let skew = v.iter().map(|x| ((x - mean) / sd).powi(3)).sum::<f64>() / n;
    let kurt = v.iter().map(|x| ((x - mean) / sd).powi(4)).sum::<f64>() / n;
    (mean, var, skew, kurt)
}

#[test]
fn random_moments_are_right() {
    // n = 1e5: the standard error of a mean is ~0.003 sd, of a variance ~0.0045 var.
    let [randn, rand, uniform, normal] = draws::<f64>(3);
    let (m, v, s, k) = moments(&randn);
    assert!(m.abs() < 0.015 && (v - 1.0).abs() < 0.025, "randn {m} {v}");
    assert!(
        s.abs() < 0.05 && (k - 3.0).abs() < 0.1,
        "randn skew {s} kurtosis {k}"
    );
    // a normal has 68.3 % of its mass within one sd
    let within = randn.iter().filter(|x| x.abs() < 1.0).count() as f64 / randn.len() as f64;
    assert!((within - 0.6827).abs() < 0.01, "{within}");
    let (m, v, _, _) = moments(&normal);
    assert!(
        (m - 3.0).abs() < 0.03 && (v - 4.0).abs() < 0.1,
        "normal {m} {v}"
    );
    let (m, v, s, k) = moments(&rand);
    assert!(
        (m - 0.5).abs() < 0.005 && (v - 1.0 / 12.0).abs() < 0.002,
        "rand {m} {v}"
    );
    assert!(
        s.abs() < 0.05 && (k - 1.8).abs() < 0.05,
        "rand skew {s} kurtosis {k}"
    );
    assert!(rand.iter().all(|x| (0.0..1.0).contains(x)));
    let (m, v, _, _) = moments(&uniform);
    assert!(
        (m - 2.0).abs() < 0.04 && (v - 64.0 / 12.0).abs() < 0.1,
        "uniform {m} {v}"
    );
    assert!(uniform.iter().all(|x| (-2.0..6.0).contains(x)));
    // every decile of rand holds about a tenth of the draws
    for d in 0..10 {
        let lo = d as f64 / 10.0;
        let frac =
            rand.iter().filter(|&&x| x >= lo && x < lo + 0.1).count() as f64 / rand.len() as f64;
        assert!((frac - 0.1).abs() < 0.005, "decile {d}: {frac}");
    }
}

/// `digits`: the dtype's significant bits.
fn rand_below_one<E: FloatDtype>(digits: i32) {
    let v = Tensor::<(Big,), E>::rand((Big,), 5).to_f64_vec();
    let max = v.iter().cloned().fold(0.0, f64::max);
    assert!(
        v.iter().all(|x| (0.0..1.0).contains(x)),
        "rand in {} reached {max}",
        E::DTYPE
    );
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    // draws are k / 2^digits, k uniform in 0..2^digits (as in PyTorch):
    // mean (1 - 2^-digits) / 2, and every grid point is hit
    let want = (1.0 - 2f64.powi(-digits)) / 2.0;
    assert!(
        (mean - want).abs() < 0.005,
        "rand in {}: mean {mean}",
        E::DTYPE
    );
    if digits <= 11 {
        let mut seen = vec![false; 1 << digits];
        for x in &v {
            let k = x * 2f64.powi(digits);
            assert_eq!(k, k.floor(), "{x} is not on the grid");
            seen[k as usize] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "rand in {} misses grid points",
            E::DTYPE
        );
    }
}

#[test]
fn rand_stays_below_one_in_every_dtype() {
    rand_below_one::<f64>(53);
    rand_below_one::<f32>(24);
    rand_below_one::<f16>(11);
    rand_below_one::<bf16>(8);
    rand_below_one::<F8E4M3>(4);
    rand_below_one::<F8E5M2>(3);
}

#[test]
fn randn_in_any_dtype_is_the_f64_draw_rounded() {
    fn check<E: FloatDtype>() {
        let want: Vec<E> = Tensor::<(Rows, Big), f64>::randn((Rows, Big), 9)
            .to_vec()
            .into_iter()
            .map(E::from_f64)
            .collect();
        let got = Tensor::<(Rows, Big), E>::randn((Rows, Big), 9).to_vec();
        assert!(got == want, "{}", E::DTYPE);
    }
    check::<f32>();
    check::<f16>();
    check::<bf16>();
    check::<F8E4M3>();
    check::<F8E5M2>();
}

// ---------------------------------------------------------------------------
// realize

#[test]
fn realize_checks_every_dim() {
    let x: Tensor<(Dyn, Dyn), f32> =
        Tensor::from_vec((Dyn(2), Dyn(3)), (0..6).map(|i| i as f32).collect()).unwrap();
    let id = x.id();
    let y: Tensor<(Rows, Cols), f32> = x.clone().realize().unwrap();
    assert_eq!(y.to_vec(), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(y.id(), id, "realize keeps the id");
    // a static dim that disagrees
    let err = x.clone().realize::<(Rows, U4)>().unwrap_err();
    assert_eq!(
        err,
        Error::StaticShape {
            op: "realize",
            got: vec![2, 3],
            expected: "[2, 4]".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "shape error in `realize`: dims [2, 3] do not fit the shape type [2, 4]"
    );
    // a rank that disagrees
    let err = x.clone().realize::<(Dyn, Dyn, Dyn)>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape error in `realize`: dims [2, 3] do not fit the shape type [?, ?, ?]"
    );
    // static back to dynamic, partly
    let z: Tensor<(Dyn, Cols), f32> = y.realize().unwrap();
    assert_eq!(z.dims(), [2, 3]);
}

#[test]
fn realize_keeps_the_tape() {
    let x: Tensor<(Dyn, Dyn), f64> = Tensor::randn((Dyn(2), Dyn(3)), 1);
    let y: Tensor<(Rows, Cols), f64, Cpu, Tape> = x.clone().traced().realize().unwrap();
    let g = y.exp().sum_all().backward().get(&x).unwrap().to_f64_vec();
    let want: Vec<f64> = x.to_vec().iter().map(|v| v.exp()).collect();
    let e = zerfoo_tests::rel_err(&g, &want);
    assert!(e < 1e-15, "{e}");
}

// ---------------------------------------------------------------------------
// Display: PyTorch's format (`torch._tensor_str`, default print options),
// followed by our dtype and shape. Expected strings are what PyTorch prints
// for the same values, written out by hand.

fn f32s<S: Shape>(shape: S, v: Vec<f32>) -> Tensor<S, f32> {
    Tensor::from_vec(shape, v).unwrap()
}

#[test]
fn display_1d() {
    // torch.tensor([1.0, -2.5, 3.0])
    let t = f32s((U3::default(),), vec![1.0, -2.5, 3.0]);
    assert_eq!(
        t.to_string(),
        "tensor([ 1.0000, -2.5000,  3.0000], dtype=f32, shape=[3])"
    );
    // integer-valued floats print as `1.` (torch.tensor([1., 2., 3.]))
    let t = f32s((U3::default(),), vec![1.0, 2.0, 3.0]);
    assert_eq!(t.to_string(), "tensor([1., 2., 3.], dtype=f32, shape=[3])");
    // small magnitudes switch to scientific notation (torch.tensor([1e-5, 1.]))
    let t = f32s((U2::default(),), vec![1e-5, 1.0]);
    assert_eq!(
        t.to_string(),
        "tensor([1.0000e-05, 1.0000e+00], dtype=f32, shape=[2])"
    );
    // non-finite values are right-aligned words
    let t = f32s((U2::default(),), vec![1.5, f32::NAN]);
    assert_eq!(
        t.to_string(),
        "tensor([1.5000,    nan], dtype=f32, shape=[2])"
    );
    let t = f32s((U3::default(),), vec![1.0, f32::INFINITY, -f32::INFINITY]);
    assert_eq!(
        t.to_string(),
        "tensor([1., inf, -inf], dtype=f32, shape=[3])"
    );
    // integers: torch.tensor([3, -10, 7])
    let t = Tensor::<(U3,), i64>::from_vec(Default::default(), vec![3, -10, 7]).unwrap();
    assert_eq!(
        t.to_string(),
        "tensor([  3, -10,   7], dtype=i64, shape=[3])"
    );
    // a scalar: torch.tensor(3.5)
    let t: Tensor<(), f64> = Tensor::full((), 3.5);
    assert_eq!(t.to_string(), "tensor(3.5000, dtype=f64, shape=[])");
    // long rows wrap at 80 columns: torch.arange(20.) + 0.5
    let t = f32s((Dyn(20),), (0..20).map(|i| i as f32 + 0.5).collect());
    assert_eq!(
        t.to_string(),
        "tensor([ 0.5000,  1.5000,  2.5000,  3.5000,  4.5000,  5.5000,  6.5000,  7.5000,\n         8.5000,  9.5000, 10.5000, 11.5000, 12.5000, 13.5000, 14.5000, 15.5000,\n        16.5000, 17.5000, 18.5000, 19.5000], dtype=f32, shape=[20])"
    );
    // low-precision dtypes print their exact values
    let t = Tensor::<(U2,), bf16>::full(Default::default(), 0.1);
    assert_eq!(
        t.to_string(),
        "tensor([0.1001, 0.1001], dtype=bf16, shape=[2])"
    );
}

#[test]
fn display_2d() {
    let t = f32s((Rows, U2::default()), vec![1.0, -2.5, 3.0, 4.0]);
    assert_eq!(
        t.to_string(),
        "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]], dtype=f32, shape=[2, 2])"
    );
    // torch.ones(2, 3)
    let t: Tensor<(Rows, Cols), f32> = Tensor::ones((Rows, Cols));
    assert_eq!(
        t.to_string(),
        "tensor([[1., 1., 1.],\n        [1., 1., 1.]], dtype=f32, shape=[2, 3])"
    );
}

#[test]
fn display_3d_separates_blocks_with_a_blank_line() {
    // torch.arange(8.).reshape(2, 2, 2)
    let t = f32s(
        (U2::default(), U2::default(), U2::default()),
        (0..8).map(|i| i as f32).collect(),
    );
    assert_eq!(
        t.to_string(),
        "tensor([[[0., 1.],\n         [2., 3.]],\n\n        [[4., 5.],\n         [6., 7.]]], dtype=f32, shape=[2, 2, 2])"
    );
    // torch.arange(8.).reshape(2, 2, 2) + 0.5
    let t = f32s(
        (U2::default(), U2::default(), U2::default()),
        (0..8).map(|i| i as f32 + 0.5).collect(),
    );
    assert_eq!(
        t.to_string(),
        "tensor([[[0.5000, 1.5000],\n         [2.5000, 3.5000]],\n\n        [[4.5000, 5.5000],\n         [6.5000, 7.5000]]], dtype=f32, shape=[2, 2, 2])"
    );
}

#[test]
fn display_summarizes_large_tensors() {
    // torch.arange(2000)
    let t: Tensor<(Dyn,), i64> = Tensor::arange(Dyn(2000));
    let s = t.to_string();
    assert!(s.contains("..."));
    assert_eq!(
        s,
        "tensor([   0,    1,    2,  ..., 1997, 1998, 1999], dtype=i64, shape=[2000])"
    );
    // torch.arange(2000.): the shown values span > 1000x → scientific, and
    // the row wraps after six items
    let t: Tensor<(Dyn,), f32> = Tensor::arange(Dyn(2000));
    assert_eq!(
        t.to_string(),
        "tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n        1.9990e+03], dtype=f32, shape=[2000])"
    );
    // torch.zeros(100, 100)
    let t: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(100), Dyn(100)));
    let row = "[0., 0., 0.,  ..., 0., 0., 0.]";
    let want = format!(
        "tensor([{row},\n        {row},\n        {row},\n        ...,\n        {row},\n        {row},\n        {row}], dtype=f32, shape=[100, 100])"
    );
    assert_eq!(t.to_string(), want);
    // torch.zeros(10, 10, 20): blocks and the `...` between them are
    // separated by blank lines
    let t: Tensor<(Dyn, Dyn, Dyn), f32> = Tensor::zeros((Dyn(10), Dyn(10), Dyn(20)));
    let block = format!(
        "[{row},\n         {row},\n         {row},\n         ...,\n         {row},\n         {row},\n         {row}]"
    );
    let want = format!(
        "tensor([{block},\n\n        {block},\n\n        {block},\n\n        ...,\n\n        {block},\n\n        {block},\n\n        {block}], dtype=f32, shape=[10, 10, 20])"
    );
    assert_eq!(t.to_string(), want);
    // exactly 1000 elements are not summarized
    let t: Tensor<(Dyn,), i64> = Tensor::arange(Dyn(1000));
    assert!(!t.to_string().contains("..."));
}

#[test]
fn debug_shows_type_facts_then_values() {
    let t: Tensor<(Rows,), f32> = Tensor::ones((Rows,));
    let d = format!("{t:?}");
    assert!(
        d.starts_with("Tensor { shape: (Rows,), dtype: f32, device: cpu, tape: NoTape"),
        "{d}"
    );
    assert!(
        d.ends_with("\ntensor([1., 1.], dtype=f32, shape=[2])"),
        "{d}"
    );
}
