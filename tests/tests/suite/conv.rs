//! Convolution, pooling, batch norm and flatten: ops and layers.
//!
//! Forward values against direct loop implementations written here
//! (independent of the im2col/GEMM kernel): odd sizes, stride 2, padding,
//! dilation 2, groups 2, bias. Gradients against f64 central differences
//! (input, weight, bias; contiguous, broadcast and transposed views, a tensor
//! used twice). Every dtype against the f64 reference on rounded inputs.
//! Batch norm in train and eval mode, the running-statistics update against
//! PyTorch's formula, buffers in checkpoints but untouched by optimizers.
//! Output dims computed in the type; run-time errors for `Dyn` shapes and
//! impossible windows. A small CNN learns to tell which quadrant of an 8x8
//! image is bright.

use zerfoo::autograd::TapeState;
use zerfoo::nn::{AvgPool2d, BatchNorm2d, Conv2d, Flatten, Forward, Linear, MaxPool2d, Module};
use zerfoo::ops::{
    Conv2dArgs, Conv2dConfig, ConvOut, ConvOutDim, Convolution, Pool2dArgs, Pool2dConfig,
};
use zerfoo::optim::Optimizer;
use zerfoo::prelude::*;
use zerfoo_tests::{cast, check_dtypes, check_grad1, check_grad2, rel_err, weighted_sum};

dim!(Batch = 2);
dim!(Chans = 4);
dim!(Height = 7);
dim!(Width = 5);
dim!(Filters = 6);
dim!(Half = 2);

// ---------------------------------------------------------------- references

/// Geometry of the reference loops.
#[derive(Clone, Copy, Debug)]
struct Geo {
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
}

impl Geo {
    fn args(self) -> Conv2dArgs<Dyn> {
        Conv2dArgs {
            stride: self.stride,
            padding: self.pad,
            dilation: self.dil,
            groups: Dyn(self.groups),
        }
    }
}

/// `out[n, o, i, j] = b[o] + Σ_{c, p, q} x[n, g*Cg + c, i*s - pad + p*d, j*s - pad + q*d] * w[o, c, p, q]`,
/// skipping taps outside the input.
fn conv_ref(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    b: Option<&[f64]>,
    geo: Geo,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wi] = xd;
    let [o, cg, kh, kw] = wd;
    assert_eq!(c, cg * geo.groups);
    let out_len = |len: usize, a: usize, k: usize| {
        (len + 2 * geo.pad[a] - geo.dil[a] * (k - 1) - 1) / geo.stride[a] + 1
    };
    let (oh, ow) = (out_len(h, 0, kh), out_len(wi, 1, kw));
    let og = o / geo.groups;
    let mut y = vec![0.0; n * o * oh * ow];
    for a in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[oc]);
                    for ci in 0..cg {
                        for p in 0..kh {
                            for q in 0..kw {
                                let ih =
                                    (i * geo.stride[0] + p * geo.dil[0]) as i64 - geo.pad[0] as i64;
                                let iw =
                                    (j * geo.stride[1] + q * geo.dil[1]) as i64 - geo.pad[1] as i64;
                                if ih < 0 || iw < 0 || ih >= h as i64 || iw >= wi as i64 {
                                    continue;
                                }
                                let xv =
                                    x[((a * c + g * cg + ci) * h + ih as usize) * wi + iw as usize];
                                s += xv * w[((oc * cg + ci) * kh + p) * kw + q];
                            }
                        }
                    }
                    y[((a * o + oc) * oh + i) * ow + j] = s;
                }
            }
        }
    }
    (y, [n, o, oh, ow])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pool {
    Max,
    AvgIncludePad,
    AvgExcludePad,
}

/// Pooling by direct loops over the padded window (`-inf` / 0 padding).
fn pool_ref(
    x: &[f64],
    xd: [usize; 4],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    mode: Pool,
) -> Vec<f64> {
    let [n, c, h, w] = xd;
    let oh = (h + 2 * p[0] - k[0]) / s[0] + 1;
    let ow = (w + 2 * p[1] - k[1]) / s[1] + 1;
    let mut y = Vec::new();
    for plane in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0usize);
                for a in 0..k[0] {
                    for b in 0..k[1] {
                        let ih = (i * s[0] + a) as i64 - p[0] as i64;
                        let iw = (j * s[1] + b) as i64 - p[1] as i64;
                        if ih < 0 || iw < 0 || ih >= h as i64 || iw >= w as i64 {
                            continue;
                        }
                        let v = x[(plane * h + ih as usize) * w + iw as usize];
                        best = best.max(v);
                        sum += v;
                        count += 1;
                    }
                }
                y.push(match mode {
                    Pool::Max => best,
                    Pool::AvgIncludePad => sum / (k[0] * k[1]) as f64,
                    Pool::AvgExcludePad => sum / count as f64,
                });
            }
        }
    }
    y
}

/// PyTorch's adaptive average pooling, by direct loops.
fn adaptive_ref(x: &[f64], xd: [usize; 4], oh: usize, ow: usize) -> Vec<f64> {
    let [n, c, h, w] = xd;
    let mut y = Vec::new();
    for plane in 0..n * c {
        for i in 0..oh {
            let (h0, h1) = ((i * h) / oh, ((i + 1) * h).div_ceil(oh));
            for j in 0..ow {
                let (w0, w1) = ((j * w) / ow, ((j + 1) * w).div_ceil(ow));
                let mut s = 0.0;
                for a in h0..h1 {
                    for b in w0..w1 {
                        s += x[(plane * h + a) * w + b];
                    }
                }
                y.push(s / ((h1 - h0) * (w1 - w0)) as f64);
            }
        }
    }
    y
}

/// Per-channel mean and biased variance over `(N, H, W)`.
fn channel_stats(x: &[f64], xd: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let [n, c, h, w] = xd;
    let m = (n * h * w) as f64;
    let vals =
        |ch: usize| (0..n).flat_map(move |a| (0..h * w).map(move |i| x[(a * c + ch) * h * w + i]));
    let mean: Vec<f64> = (0..c).map(|ch| vals(ch).sum::<f64>() / m).collect();
    let var = (0..c)
        .map(|ch| vals(ch).map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m)
        .collect();
    (mean, var)
}

/// `(x - mean) / sqrt(var + eps) * w + b` per channel.
fn bn_ref(
    x: &[f64],
    xd: [usize; 4],
    mean: &[f64],
    var: &[f64],
    w: &[f64],
    b: &[f64],
    eps: f64,
) -> Vec<f64> {
    let [_, c, h, wd] = xd;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / (h * wd)) % c;
            (v - mean[ch]) / (var[ch] + eps).sqrt() * w[ch] + b[ch]
        })
        .collect()
}

#[track_caller]
fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let e = rel_err(got, want);
    assert!(e <= tol, "rel err {e:e}\n got {got:?}\nwant {want:?}");
}

fn dyn4(d: [usize; 4], seed: u64) -> Tensor<(Dyn, Dyn, Dyn, Dyn), f64> {
    Tensor::randn((Dyn(d[0]), Dyn(d[1]), Dyn(d[2]), Dyn(d[3])), seed)
}

fn dims4<S: Shape>(t: &Tensor<S, f64>) -> [usize; 4] {
    let d = t.dims();
    [d[0], d[1], d[2], d[3]]
}

// ---------------------------------------------------------------- conv forward

#[test]
fn conv_matches_direct_loops_over_geometries() {
    let cases = [
        // (input dims, weight dims, geometry)
        ([2, 3, 7, 5], [4, 3, 3, 3], [1, 1], [0, 0], [1, 1], 1),
        ([2, 3, 7, 5], [4, 3, 3, 3], [2, 2], [1, 1], [1, 1], 1),
        ([1, 4, 9, 8], [6, 2, 3, 2], [2, 1], [1, 2], [2, 1], 2),
        ([3, 4, 6, 7], [4, 2, 2, 3], [1, 2], [2, 0], [2, 2], 2),
        ([2, 2, 5, 5], [3, 2, 1, 1], [2, 2], [0, 0], [1, 1], 1),
        ([1, 6, 4, 4], [6, 1, 3, 3], [1, 1], [1, 1], [1, 1], 6), // depthwise
        ([2, 1, 3, 3], [2, 1, 3, 3], [1, 1], [0, 0], [1, 1], 1), // kernel = input
    ];
    for (i, &(xd, wd, stride, pad, dil, groups)) in cases.iter().enumerate() {
        let geo = Geo {
            stride,
            pad,
            dil,
            groups,
        };
        let x = dyn4(xd, 10 + i as u64);
        let w = dyn4(wd, 20 + i as u64);
        let b: Tensor<(Dyn,), f64> = Tensor::randn((Dyn(wd[0]),), 30 + i as u64);
        let (want, od) = conv_ref(&x.to_vec(), xd, &w.to_vec(), wd, None, geo);
        let y = x.clone().conv2d(&w, geo.args());
        assert_eq!(y.dims(), od, "case {i}");
        close(&y.to_vec(), &want, 1e-13);
        let bv = b.to_vec();
        let (want_b, _) = conv_ref(&x.to_vec(), xd, &w.to_vec(), wd, Some(&bv), geo);
        close(&x.conv2d_bias(&w, &b, geo.args()).to_vec(), &want_b, 1e-13);
    }
}

#[test]
fn conv_closed_form_values() {
    // x[i][j] = 3i + j on a 3x3 image; kernel [[1, 0], [0, -1]] gives
    // x[i][j] - x[i+1][j+1] = -4 everywhere, plus the bias.
    let x = Tensor::<(U1, U1, U3, U3), f64>::from_fn(Default::default(), |i| i as f64);
    let w = Tensor::<(U1, U1, U2, U2), f64>::from_vec(Default::default(), vec![1., 0., 0., -1.])
        .unwrap();
    let b = Tensor::<(U1,), f64>::full(Default::default(), 0.5);
    let y: Tensor<(U1, U1, U2, U2), f64> = x.clone().conv2d_bias(&w, &b, Conv2dConfig::<U1>::new());
    assert_eq!(y.to_vec(), [-3.5; 4]);
    // stride 2 with padding 1 picks the corners of the padded image:
    // windows at (-1,-1), (-1,1), (1,-1), (1,1): only the `-x[i+1][j+1]` tap
    // of the first lands inside, etc.
    let y2: Tensor<(U1, U1, U2, U2), f64> = x.conv2d(&w, Conv2dConfig::<U2, U1>::new());
    assert_eq!(y2.to_vec(), [-0., -2., -6., 4. - 8.]);
}

#[test]
fn static_output_dims_are_computed_in_the_type() {
    // (7 + 2*1 - 2*(3-1) - 1) / 2 + 1 = 3 and (5 + 2 - 4 - 1) / 2 + 1 = 2
    let x: Tensor<(Batch, Chans, Height, Width), f64> = Tensor::randn(Default::default(), 1);
    let w: Tensor<(Filters, Half, U3, U3), f64> = Tensor::randn(Default::default(), 2);
    let b: Tensor<(Filters,), f64> = Tensor::randn(Default::default(), 3);
    type Cfg = Conv2dConfig<U2, U1, U2, U2>;
    let y: Tensor<(Batch, Filters, U3, U2), f64> = x.clone().conv2d_bias(&w, &b, Cfg::new());
    let geo = Geo {
        stride: [2, 2],
        pad: [1, 1],
        dil: [2, 2],
        groups: 2,
    };
    let (want, od) = conv_ref(
        &x.to_vec(),
        dims4(&x),
        &w.to_vec(),
        dims4(&w),
        Some(&b.to_vec()),
        geo,
    );
    assert_eq!(od, [2, 6, 3, 2]);
    close(&y.to_vec(), &want, 1e-13);
    // the same geometry given at run time: equal values, `Dyn` spatial dims
    let yd: Tensor<(Batch, Filters, Dyn, Dyn), f64> = x.conv2d_bias(&w, &b, geo.args());
    assert_eq!(yd.to_vec(), y.to_vec());
    // a `Dyn` input dim keeps that output dim `Dyn`
    let xd: Tensor<(U1, U1, Dyn, U6), f32> =
        Tensor::zeros((U1::default(), U1::default(), Dyn(6), U6::default()));
    let wk: Tensor<(U1, U1, U3, U3), f32> = Tensor::zeros(Default::default());
    let yk: Tensor<(U1, U1, Dyn, U4), f32> = xd.conv2d(&wk, Conv2dConfig::<U1>::new());
    assert_eq!(yk.dims(), [1, 1, 4, 4]);
    // pools too: (8 + 2 - 3) / 2 + 1 = 4
    let xp: Tensor<(U1, U2, U8, U9), f32> = Tensor::zeros(Default::default());
    let yp: Tensor<(U1, U2, U4, U5), f32> = xp.max_pool2d(Pool2dConfig::<U3, U2, U1>::new());
    assert_eq!(yp.dims(), [1, 2, 4, 5]);
}

// ---------------------------------------------------------------- conv gradients

fn grad_geo() -> Conv2dArgs<U2> {
    Conv2dArgs {
        stride: [2, 1],
        padding: [1, 2],
        dilation: [2, 1],
        groups: U2::default(),
    }
}

#[test]
fn conv_gradients_input_and_weight() {
    let x: Tensor<(Batch, Chans, Height, Width), f64> = Tensor::randn(Default::default(), 1);
    let w: Tensor<(Filters, Half, U3, U2), f64> = Tensor::randn(Default::default(), 2);
    check_grad2(x.clone(), w.clone(), |x, w| {
        weighted_sum(x.conv2d(&w, grad_geo()), 3)
    });
    // the weight traced, the input as a constant operand
    check_grad2(w, x, |w, x| weighted_sum(x.conv2d(&w, grad_geo()), 4));
    // plain geometry with a static config
    let x1: Tensor<(U2, U3, U5, U6), f64> = Tensor::randn(Default::default(), 5);
    let w1: Tensor<(U4, U3, U3, U3), f64> = Tensor::randn(Default::default(), 6);
    check_grad2(x1, w1, |x, w| {
        weighted_sum(x.conv2d(&w, Conv2dConfig::<U1, U1>::new()), 7)
    });
}

#[test]
fn conv_gradient_bias() {
    let x: Tensor<(Batch, Chans, Height, Width), f64> = Tensor::randn(Default::default(), 1);
    let w: Tensor<(Filters, Half, U3, U2), f64> = Tensor::randn(Default::default(), 2);
    let b: Tensor<(Filters,), f64> = Tensor::randn(Default::default(), 3);
    check_grad2(x.clone(), b.clone(), |x, b| {
        weighted_sum(x.conv2d_bias(&w, &b, grad_geo()), 4)
    });
    // all three at once: each gets its gradient by id
    let grads = weighted_sum(
        x.clone()
            .traced()
            .conv2d_bias(&w.retaped::<Tape>(), &b.retaped::<Tape>(), grad_geo()),
        4,
    )
    .backward();
    let gb = grads.get(&b).unwrap().to_vec();
    // d/db_o of Σ y * r = Σ over the output plane of r
    // (the output is (2, 6, 3, 8): (7 + 2 - 5) / 2 + 1 and (5 + 4 - 2) / 1 + 1)
    let r: Tensor<(Batch, Filters, Dyn, Dyn), f64> =
        Tensor::randn((Batch, Filters, Dyn(3), Dyn(8)), 4);
    let rv = r.to_vec();
    let plane = |n: usize, o: usize| {
        rv[(n * 6 + o) * 24..(n * 6 + o + 1) * 24]
            .iter()
            .sum::<f64>()
    };
    let want: Vec<f64> = (0..6).map(|o| plane(0, o) + plane(1, o)).collect();
    close(&gb, &want, 1e-12);
    assert!(grads.get(&w).is_some() && grads.get(&x).is_some());
}

#[test]
fn conv_gradients_through_views_and_reuse() {
    let w: Tensor<(U3, U2, U2, U2), f64> = Tensor::randn(Default::default(), 2);
    // a stride-0 broadcast along W
    let x3: Tensor<(U2, U2, U5), f64> = Tensor::randn(Default::default(), 1);
    check_grad1(x3, |x| {
        let x4 =
            x.broadcast::<_, Axis<3>>((U2::default(), U2::default(), U5::default(), U4::default()));
        weighted_sum(x4.conv2d(&w, Conv2dArgs::new(1, 1, 1)), 5)
    });
    // a transposed view (H and W swapped)
    let xt: Tensor<(U2, U2, U4, U5), f64> = Tensor::randn(Default::default(), 3);
    check_grad1(xt, |x| {
        weighted_sum(
            x.transpose::<2, 3>()
                .conv2d(&w, Conv2dConfig::<U2, U1>::new()),
            6,
        )
    });
    // used twice: convolved and max-pooled
    let x: Tensor<(U1, U2, U5, U5), f64> = Tensor::randn(Default::default(), 4);
    check_grad1(x, |x| {
        let a = weighted_sum(x.clone().conv2d(&w, Conv2dArgs::new(1, 0, 1)), 7);
        let b = weighted_sum(x.max_pool2d(Pool2dArgs::new(2, 1, 1)), 8);
        a + b
    });
}

// ---------------------------------------------------------------- pools

#[test]
fn pools_match_direct_loops() {
    let cases = [
        ([2, 3, 7, 6], [3, 3], [2, 2], [1, 1]),
        ([1, 2, 5, 8], [2, 3], [1, 2], [1, 1]),
        ([2, 1, 4, 4], [2, 2], [2, 2], [0, 0]),
        ([1, 2, 6, 5], [3, 2], [3, 1], [0, 1]),
    ];
    for (i, &(xd, k, s, p)) in cases.iter().enumerate() {
        let x = dyn4(xd, 40 + i as u64);
        let xv = x.to_vec();
        let args = Pool2dArgs {
            kernel: k,
            stride: s,
            padding: p,
        };
        let max = x.clone().max_pool2d(args).to_vec();
        close(&max, &pool_ref(&xv, xd, k, s, p, Pool::Max), 0.0);
        let avg = x.clone().avg_pool2d(args).to_vec();
        close(
            &avg,
            &pool_ref(&xv, xd, k, s, p, Pool::AvgIncludePad),
            1e-15,
        );
        let avg_ex = x.avg_pool2d_exclude_pad(args).to_vec();
        close(
            &avg_ex,
            &pool_ref(&xv, xd, k, s, p, Pool::AvgExcludePad),
            1e-15,
        );
    }
}

#[test]
fn max_pool_pads_with_minus_infinity() {
    // all values negative: zero padding would win, -inf padding does not
    let x = Tensor::<(U1, U1, U2, U2), f64>::from_vec(Default::default(), vec![-4., -3., -2., -1.])
        .unwrap();
    let y = x.max_pool2d(Pool2dConfig::<U2, U1, U1>::new());
    assert_eq!(y.to_vec(), [-4., -3., -3., -2., -1., -1., -2., -1., -1.]);
}

#[test]
fn adaptive_and_global_average() {
    let x = dyn4([2, 3, 5, 7], 50);
    let xv = x.to_vec();
    let y = x
        .clone()
        .adaptive_avg_pool2d((U3::default(), Dyn(4)))
        .to_vec();
    close(&y, &adaptive_ref(&xv, [2, 3, 5, 7], 3, 4), 1e-15);
    let g: Tensor<(Dyn, Dyn, U1, U1), f64> = x.global_avg_pool2d();
    let want: Vec<f64> = xv
        .chunks(35)
        .map(|p| p.iter().sum::<f64>() / 35.0)
        .collect();
    close(&g.to_vec(), &want, 1e-15);
}

#[test]
fn pool_gradients() {
    let x: Tensor<(U2, U3, U7, U6), f64> = Tensor::randn(Default::default(), 60);
    let args = Pool2dArgs::new(3, 2, 1);
    check_grad1(x.clone(), |x| weighted_sum(x.max_pool2d(args), 1));
    check_grad1(x.clone(), |x| weighted_sum(x.avg_pool2d(args), 2));
    check_grad1(x.clone(), |x| {
        weighted_sum(x.avg_pool2d_exclude_pad(args), 3)
    });
    check_grad1(x.clone(), |x| {
        weighted_sum(x.adaptive_avg_pool2d((U4::default(), U4::default())), 4)
    });
    check_grad1(x.clone(), |x| weighted_sum(x.global_avg_pool2d(), 5));
    // overlapping static windows, and a transposed view
    check_grad1(x, |x| {
        weighted_sum(
            x.transpose::<2, 3>()
                .max_pool2d(Pool2dConfig::<U2, U1>::new()),
            6,
        )
    });
}

#[test]
fn max_pool_gradient_goes_to_the_first_maximum() {
    let x = Tensor::<(U1, U1, U2, U2), f64>::from_vec(Default::default(), vec![1., 5., 5., 2.])
        .unwrap();
    let g = x
        .clone()
        .traced()
        .max_pool2d(Pool2dConfig::<U2>::new())
        .sum_all()
        .backward();
    assert_eq!(g.get(&x).unwrap().to_vec(), [0., 1., 0., 0.]);
}

// ---------------------------------------------------------------- batch norm

fn bn_params(c: usize, seed: u64) -> (Tensor<(Dyn,), f64>, Tensor<(Dyn,), f64>) {
    (
        Tensor::uniform((Dyn(c),), 0.5, 1.5, seed),
        Tensor::randn((Dyn(c),), seed + 1),
    )
}

#[test]
fn batch_norm_train_matches_the_definition() {
    let xd = [3, 4, 5, 2];
    let x = dyn4(xd, 70).mul_scalar(3.0).add_scalar(1.0);
    let (w, b) = bn_params(4, 71);
    let (y, stats) = x.clone().batch_norm2d(&w, &b, 1e-5);
    let (mean, var) = channel_stats(&x.to_vec(), xd);
    let want = bn_ref(&x.to_vec(), xd, &mean, &var, &w.to_vec(), &b.to_vec(), 1e-5);
    close(&y.to_vec(), &want, 1e-13);
    close(&stats.mean, &mean, 1e-14);
    let m = 30.0;
    let unbiased: Vec<f64> = var.iter().map(|v| v * m / (m - 1.0)).collect();
    close(&stats.var, &unbiased, 1e-14);
    assert_eq!(stats.count, 30);
}

#[test]
fn batch_norm_eval_uses_the_running_statistics() {
    let xd = [2, 3, 4, 4];
    let x = dyn4(xd, 80);
    let (w, b) = bn_params(3, 81);
    let rm: Tensor<(Dyn,), f64> = Tensor::randn((Dyn(3),), 82);
    let rv: Tensor<(Dyn,), f64> = Tensor::uniform((Dyn(3),), 0.5, 2.0, 83);
    let y = x.clone().batch_norm2d_eval(&w, &b, &rm, &rv, 1e-3);
    let want = bn_ref(
        &x.to_vec(),
        xd,
        &rm.to_vec(),
        &rv.to_vec(),
        &w.to_vec(),
        &b.to_vec(),
        1e-3,
    );
    close(&y.to_vec(), &want, 1e-14);
    // train mode differs: its output has zero mean per channel
    let (yt, _) = x.batch_norm2d(&w, &b, 1e-3);
    let (mt, _) = channel_stats(&yt.to_vec(), xd);
    close(&mt, &b.to_vec(), 1e-12);
    assert!(rel_err(&yt.to_vec(), &y.to_vec()) > 1e-2);
}

#[test]
fn batch_norm_gradients_train_and_eval() {
    let x: Tensor<(U3, U2, U3, U2), f64> = Tensor::randn(Default::default(), 90);
    let w: Tensor<(U2,), f64> = Tensor::uniform(Default::default(), 0.5, 1.5, 91);
    let b: Tensor<(U2,), f64> = Tensor::randn(Default::default(), 92);
    check_grad2(x.clone(), w.clone(), |x, w| {
        weighted_sum(x.batch_norm2d(&w, &b, 1e-5).0, 1)
    });
    check_grad2(x.clone(), b.clone(), |x, b| {
        weighted_sum(x.batch_norm2d(&w, &b, 1e-5).0, 2)
    });
    // used twice and through a transposed view
    check_grad1(x.clone(), |x| {
        let a = weighted_sum(x.clone().batch_norm2d(&w, &b, 1e-5).0, 3);
        let t = x.transpose::<2, 3>().batch_norm2d(&w, &b, 1e-5).0;
        a + weighted_sum(t, 4)
    });
    let rm: Tensor<(U2,), f64> = Tensor::randn(Default::default(), 93);
    let rv: Tensor<(U2,), f64> = Tensor::uniform(Default::default(), 0.5, 2.0, 94);
    check_grad2(x.clone(), w, |x, w| {
        weighted_sum(x.batch_norm2d_eval(&w, &b, &rm, &rv, 1e-5), 5)
    });
    // the running statistics get no gradient
    let grads = weighted_sum(
        x.traced().batch_norm2d_eval(
            &Tensor::<(U2,), f64>::ones(Default::default()),
            &b,
            &rm,
            &rv,
            1e-5,
        ),
        6,
    )
    .backward();
    assert!(grads.get(&rm).is_none() && grads.get(&rv).is_none());
}

#[test]
fn running_statistics_follow_pytorch() {
    let bn: BatchNorm2d<U3, f64> = BatchNorm2d::new(U3::default());
    let xd = [4, 3, 2, 3];
    let (x1, x2) = (dyn4(xd, 100), dyn4(xd, 101).mul_scalar(2.0).add_scalar(0.5));
    let _ = bn.forward(x1.clone());
    let _ = bn.forward(x2.clone());
    // PyTorch: running = (1 - momentum) * running + momentum * batch, with
    // the unbiased batch variance; starting from mean 0, var 1.
    let m = 24.0;
    let (mut rm, mut rv) = (vec![0.0; 3], vec![1.0; 3]);
    for x in [&x1, &x2] {
        let (mean, var) = channel_stats(&x.to_vec(), xd);
        for c in 0..3 {
            rm[c] = 0.9 * rm[c] + 0.1 * mean[c];
            rv[c] = 0.9 * rv[c] + 0.1 * var[c] * m / (m - 1.0);
        }
    }
    close(&bn.running_mean.get().to_vec(), &rm, 1e-14);
    close(&bn.running_var.get().to_vec(), &rv, 1e-14);
    // eval mode normalizes with them and leaves them alone
    let mut bn = bn;
    bn.set_training(false);
    let y = bn.forward(x1.clone());
    let ones = vec![1.0; 3];
    let want = bn_ref(&x1.to_vec(), xd, &rm, &rv, &ones, &[0.0; 3], 1e-5);
    close(&y.to_vec(), &want, 1e-14);
    close(&bn.running_mean.get().to_vec(), &rm, 1e-14);
}

#[derive(Module)]
struct ConvBn {
    conv: Conv2d<U2, U3, U3, U3, f64, Conv2dConfig<U1, U1>>,
    bn: BatchNorm2d<U3, f64>,
}

impl ConvBn {
    fn new() -> Self {
        ConvBn {
            conv: Conv2d::new(
                U2::default(),
                U3::default(),
                Default::default(),
                Conv2dConfig::new(),
                true,
                5,
            ),
            bn: BatchNorm2d::new(U3::default()),
        }
    }
    fn forward<T: TapeState>(
        &self,
        x: Tensor<(Dyn, U2, U4, U4), f64, Cpu, T>,
    ) -> Tensor<(Dyn, U3, U4, U4), f64, Cpu, T> {
        self.bn.forward(self.conv.forward(x))
    }
}

#[test]
fn buffers_are_checkpointed_but_not_trained() {
    let mut net = ConvBn::new();
    let paths: Vec<String> = net.param_info().into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            "conv.weight",
            "conv.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var"
        ]
    );
    let x: Tensor<(Dyn, U2, U4, U4), f64> =
        Tensor::randn((Dyn(3), U2::default(), U4::default(), U4::default()), 7);
    let mut opt = Optimizer::adamw(0.1, (0.9, 0.999), 1e-8, 0.1);
    let loss = weighted_sum(net.forward(x.clone().traced()), 8);
    let grads = loss.backward();
    assert!(grads.get(&net.bn.running_mean.get()).is_none());
    let (rm, rv) = (
        net.bn.running_mean.get().to_vec(),
        net.bn.running_var.get().to_vec(),
    );
    let w_before = net.bn.weight.to_vec();
    opt.step(&mut net, &grads).unwrap();
    // the optimizer (with weight decay) moved the weight but not the buffers
    assert_ne!(net.bn.weight.to_vec(), w_before);
    assert_eq!(net.bn.running_mean.get().to_vec(), rm);
    assert_eq!(net.bn.running_var.get().to_vec(), rv);
    // save, scramble, load back: the buffers round-trip by path
    let dir = std::env::temp_dir().join(format!("zerfoo-conv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("convbn.safetensors");
    zerfoo::io::save(&net, &path).unwrap();
    let mut other = ConvBn::new();
    other
        .bn
        .running_mean
        .set(Tensor::full(Default::default(), 9.0));
    zerfoo::io::load(&mut other, &path).unwrap();
    assert_eq!(other.bn.running_mean.get().to_vec(), rm);
    assert_eq!(other.bn.running_var.get().to_vec(), rv);
    assert_eq!(other.conv.weight.to_vec(), net.conv.weight.to_vec());
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- layers

#[test]
fn conv_layer_init_and_forward() {
    let conv: Conv2d<U4, U6, U3, U2, f64, Conv2dArgs<U1>> = Conv2d::new(
        U4::default(),
        U6::default(),
        Default::default(),
        Conv2dArgs::new(2, 1, 1),
        true,
        3,
    );
    // PyTorch default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 4 * 3 * 2
    let bound = 1.0 / 24f64.sqrt();
    let wv = conv.weight.to_vec();
    assert!(wv.iter().all(|v| v.abs() <= bound));
    assert!(wv.iter().any(|v| v.abs() > 0.8 * bound));
    let bv = conv.bias.as_ref().unwrap().to_vec();
    assert!(bv.iter().all(|v| v.abs() <= bound));
    let x = dyn4([2, 4, 5, 6], 4);
    let y = conv.forward(x.clone());
    let geo = Geo {
        stride: [2, 2],
        pad: [1, 1],
        dil: [1, 1],
        groups: 1,
    };
    let (want, od) = conv_ref(&x.to_vec(), [2, 4, 5, 6], &wv, [6, 4, 3, 2], Some(&bv), geo);
    assert_eq!(y.dims(), od);
    close(&y.to_vec(), &want, 1e-13);
    assert_eq!(conv.num_params(), 6 * 4 * 3 * 2 + 6);
}

#[test]
fn pool_and_flatten_layers() {
    let x: Tensor<(U2, U3, U6, U6), f64> = Tensor::randn(Default::default(), 5);
    let xv = x.to_vec();
    let m: Tensor<(U2, U3, U3, U3), f64> =
        MaxPool2d::new(Pool2dConfig::<U2>::new()).forward(x.clone());
    close(
        &m.to_vec(),
        &pool_ref(&xv, [2, 3, 6, 6], [2, 2], [2, 2], [0, 0], Pool::Max),
        0.0,
    );
    let a = AvgPool2d::new(Pool2dConfig::<U3, U3, U1>::new()).forward(x.clone());
    close(
        &a.to_vec(),
        &pool_ref(
            &xv,
            [2, 3, 6, 6],
            [3, 3],
            [3, 3],
            [1, 1],
            Pool::AvgIncludePad,
        ),
        1e-15,
    );
    let mut ex = AvgPool2d::new(Pool2dArgs::new(3, 3, 1));
    ex.count_include_pad = false;
    close(
        &ex.forward(x.clone()).to_vec(),
        &pool_ref(
            &xv,
            [2, 3, 6, 6],
            [3, 3],
            [3, 3],
            [1, 1],
            Pool::AvgExcludePad,
        ),
        1e-15,
    );
    let dynamic = MaxPool2d::with_args(2, 2, 0).forward(x.clone());
    assert_eq!(dynamic.to_vec(), m.to_vec());
    let f: Tensor<(U2, U27), f64> = Flatten::<U27>::new().forward(m.clone());
    assert_eq!(f.to_vec(), m.to_vec());
    let fd = Flatten::<Dyn>::new().forward(m);
    assert_eq!(fd.dims(), [2, 27]);
    check_grad1(x.clone(), |x| weighted_sum(x.flatten::<U108>(), 1));
    // a non-contiguous input is copied in row-major order of its view
    let xt = x.clone().transpose::<2, 3>();
    assert_eq!(xt.clone().flatten::<Dyn>().to_vec(), xt.to_vec());
    check_grad1(x, |x| {
        weighted_sum(x.transpose::<2, 3>().flatten::<U108>(), 2)
    });
    assert_eq!(MaxPool2d::new(Pool2dConfig::<U2>::new()).num_params(), 0);
}

// ---------------------------------------------------------------- large inputs

/// A directional derivative check for inputs too large for element-wise
/// finite differences: `(f(x + hv) - f(x - hv)) / 2h` against `<grad, v>`
/// for a random direction `v`. (`h` large where `f` is linear, to keep the
/// rounding of `f` out of the quotient; small where it has kinks.)
#[track_caller]
fn directional_check<S: Shape>(
    x: Tensor<S, f64>,
    h: f64,
    f: impl Fn(Tensor<S, f64, Cpu, Tape>) -> Tensor<(), f64, Cpu, Tape>,
) {
    let g = f(x.clone().traced()).backward().get(&x).unwrap().to_vec();
    let v: Tensor<S, f64> = Tensor::randn(x.shape(), 77);
    let at = |s: f64| f((x.clone() + v.clone().mul_scalar(s)).traced()).item();
    let numeric = (at(h) - at(-h)) / (2.0 * h);
    let analytic: f64 = g.iter().zip(v.to_vec()).map(|(a, b)| a * b).sum();
    let e = (numeric - analytic).abs() / analytic.abs().max(1.0);
    assert!(e < 1e-6, "directional derivative {numeric} vs {analytic}");
}

/// Runs `f` on a rayon pool of `threads` threads.
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn large_inputs_take_the_parallel_paths() {
    // 3 * 16 * 40 * 40 outputs x 72 taps: above the parallel threshold, and
    // the weight gradient is summed over blocks of 2 + 1 samples
    let x = dyn4([3, 16, 40, 40], 120);
    let w = dyn4([16, 8, 3, 3], 121);
    let b: Tensor<(Dyn,), f64> = Tensor::randn((Dyn(16),), 122);
    let geo = Geo {
        stride: [1, 1],
        pad: [1, 1],
        dil: [1, 1],
        groups: 2,
    };
    let (want, _) = conv_ref(
        &x.to_vec(),
        [3, 16, 40, 40],
        &w.to_vec(),
        [16, 8, 3, 3],
        Some(&b.to_vec()),
        geo,
    );
    close(
        &x.clone().conv2d_bias(&w, &b, geo.args()).to_vec(),
        &want,
        1e-13,
    );
    directional_check(x.clone(), 1e-2, |x| {
        weighted_sum(x.conv2d_bias(&w, &b, geo.args()), 1)
    });
    directional_check(w.clone(), 1e-2, |w| {
        weighted_sum(x.clone().conv2d_bias(&w, &b, geo.args()), 2)
    });
    directional_check(b.clone(), 1e-2, |b| {
        weighted_sum(x.clone().conv2d_bias(&w, &b, geo.args()), 3)
    });
    // 32768 elements: pools and batch norm split over planes and channels
    let big = dyn4([4, 8, 32, 32], 123);
    let pool = Pool2dArgs::new(3, 2, 1);
    close(
        &big.clone().max_pool2d(pool).to_vec(),
        &pool_ref(
            &big.to_vec(),
            [4, 8, 32, 32],
            [3, 3],
            [2, 2],
            [1, 1],
            Pool::Max,
        ),
        0.0,
    );
    directional_check(big.clone(), 1e-6, |x| weighted_sum(x.max_pool2d(pool), 4));
    directional_check(big.clone(), 1e-2, |x| weighted_sum(x.avg_pool2d(pool), 5));
    let (wc, bc) = bn_params(8, 124);
    directional_check(big.clone(), 1e-4, |x| {
        weighted_sum(x.batch_norm2d(&wc, &bc, 1e-5).0, 6)
    });
    // and the results do not depend on the thread count
    let (wc, bc) = bn_params(16, 125);
    let run = || {
        let xt = x.clone().traced();
        let y = xt.conv2d_bias(&w.retaped::<Tape>(), &b.retaped::<Tape>(), geo.args());
        let z = y.clone().max_pool2d(pool).sum_all()
            + weighted_sum(y.batch_norm2d(&wc, &bc, 1e-5).0, 7);
        let g = z.backward();
        [
            g.get(&x).unwrap().to_vec(),
            g.get(&w).unwrap().to_vec(),
            g.get(&b).unwrap().to_vec(),
            g.get(&wc).unwrap().to_vec(),
        ]
    };
    assert_eq!(on_threads(1, run), on_threads(3, run));
}

// ---------------------------------------------------------------- dtypes

#[test]
fn every_dtype_matches_f64() {
    let x: Tensor<(U2, U4, U5, U6), f64> = Tensor::randn(Default::default(), 110);
    let w: Tensor<(U6, U2, U3, U2), f64> = Tensor::randn(Default::default(), 111);
    let b: Tensor<(U6,), f64> = Tensor::randn(Default::default(), 112);
    let geo = Conv2dArgs {
        stride: [2, 1],
        padding: [1, 1],
        dilation: [1, 2],
        groups: U2::default(),
    };
    check_dtypes!("conv2d", |E| cast::<E, _>(&x)
        .conv2d_bias(&cast::<E, _>(&w), &cast::<E, _>(&b), geo)
        .to_f64_vec());
    check_dtypes!("conv2d grads", |E| {
        let (xe, we) = (cast::<E, _>(&x), cast::<E, _>(&w));
        let y = xe.clone().traced().conv2d(&we.retaped::<Tape>(), geo);
        let r: Tensor<(U2, U6, Dyn, Dyn), E> = cast::<E, _>(&Tensor::randn(
            (U2::default(), U6::default(), Dyn(3), Dyn(6)),
            113,
        ));
        let g = y.mul(r).sum_all().backward();
        let mut v = g.get(&xe).unwrap().to_f64_vec();
        v.extend(g.get(&we).unwrap().to_f64_vec());
        v
    });
    let pool = Pool2dArgs::new(3, 2, 1);
    check_dtypes!("max_pool2d", |E| cast::<E, _>(&x)
        .max_pool2d(pool)
        .to_f64_vec());
    check_dtypes!("avg_pool2d", |E| cast::<E, _>(&x)
        .avg_pool2d(pool)
        .to_f64_vec());
    check_dtypes!("adaptive_avg_pool2d", |E| cast::<E, _>(&x)
        .adaptive_avg_pool2d((U3::default(), U4::default()))
        .to_f64_vec());
    let (wc, bc): (Tensor<(U4,), f64>, Tensor<(U4,), f64>) = (
        Tensor::uniform(Default::default(), 0.5, 1.5, 114),
        Tensor::randn(Default::default(), 115),
    );
    check_dtypes!("batch_norm2d", |E| cast::<E, _>(&x)
        .batch_norm2d(&cast::<E, _>(&wc), &cast::<E, _>(&bc), 1e-5)
        .0
        .to_f64_vec());
    let (rm, rv): (Tensor<(U4,), f64>, Tensor<(U4,), f64>) = (
        Tensor::randn(Default::default(), 116),
        Tensor::uniform(Default::default(), 0.5, 2.0, 117),
    );
    check_dtypes!("batch_norm2d eval", |E| cast::<E, _>(&x)
        .batch_norm2d_eval(
            &cast::<E, _>(&wc),
            &cast::<E, _>(&bc),
            &cast::<E, _>(&rm),
            &cast::<E, _>(&rv),
            1e-5
        )
        .to_f64_vec());
}

// ---------------------------------------------------------------- errors

fn dyn_x() -> Tensor<(Dyn, Dyn, Dyn, Dyn), f64> {
    dyn4([1, 3, 4, 4], 1)
}

#[test]
fn conv_runtime_errors() {
    let w = dyn4([2, 2, 3, 3], 2);
    // 3 input channels against a weight for 2
    let e = dyn_x()
        .try_conv2d(&w, Conv2dArgs::new(1, 0, 1))
        .unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "conv2d",
            lhs: vec![1, 3, 4, 4],
            rhs: vec![2, 2, 3, 3]
        }
    );
    // kernel larger than the padded input
    let big = dyn4([2, 3, 7, 3], 3);
    let e = dyn_x()
        .try_conv2d(&big, Conv2dArgs::new(1, 1, 1))
        .unwrap_err();
    assert!(
        e.to_string().contains("larger than the padded input"),
        "{e}"
    );
    // dilation makes a 3x3 kernel span 5 > 4
    let w3 = dyn4([2, 3, 3, 3], 4);
    assert!(dyn_x().try_conv2d(&w3, Conv2dArgs::new(1, 0, 2)).is_err());
    assert!(dyn_x().try_conv2d(&w3, Conv2dArgs::new(1, 0, 1)).is_ok());
    // zero stride, zero dilation
    let e = dyn_x()
        .try_conv2d(&w3, Conv2dArgs::new(0, 0, 1))
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { op: "conv2d", .. }),
        "{e}"
    );
    assert!(dyn_x().try_conv2d(&w3, Conv2dArgs::new(1, 0, 0)).is_err());
    // groups: 3 channels with Dyn(3) groups and 2 output channels
    let wg = dyn4([2, 1, 3, 3], 5);
    let e = dyn_x()
        .try_conv2d(&wg, Conv2dArgs::new(1, 0, 1).with_groups(Dyn(3)))
        .unwrap_err();
    assert!(e.to_string().contains("do not divide"), "{e}");
    assert!(dyn_x()
        .try_conv2d(&wg, Conv2dArgs::new(1, 0, 1).with_groups(Dyn(0)))
        .is_err());
    // bias of the wrong length
    let b: Tensor<(Dyn,), f64> = Tensor::zeros((Dyn(3),));
    let e = dyn_x()
        .try_conv2d_bias(&w3, &b, Conv2dArgs::new(1, 0, 1))
        .unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { op: "conv2d", .. }),
        "{e}"
    );
}

#[test]
#[should_panic(expected = "shape error in `conv2d`: [1, 3, 4, 4] does not match [2, 2, 3, 3]")]
fn conv_channel_mismatch_panics() {
    let _ = dyn_x().conv2d(&dyn4([2, 2, 3, 3], 2), Conv2dArgs::new(1, 0, 1));
}

#[test]
#[should_panic(
    expected = "invalid argument to `conv2d`: the dilated kernel [5, 5] is larger than the padded input [4, 4]"
)]
fn conv_window_too_large_panics() {
    let _ = dyn_x().conv2d(&dyn4([2, 3, 3, 3], 2), Conv2dArgs::new(1, 0, 2));
}

#[test]
fn pool_runtime_errors() {
    let e = dyn_x()
        .try_max_pool2d(Pool2dArgs::new(2, 2, 2))
        .unwrap_err();
    assert!(e.to_string().contains("at most half the kernel"), "{e}");
    assert!(dyn_x().try_max_pool2d(Pool2dArgs::new(5, 1, 0)).is_err());
    assert!(dyn_x().try_avg_pool2d(Pool2dArgs::new(2, 0, 0)).is_err());
    assert!(dyn_x().try_avg_pool2d(Pool2dArgs::new(0, 1, 0)).is_err());
    let empty = dyn4([1, 1, 0, 3], 1);
    assert!(empty
        .try_adaptive_avg_pool2d((U1::default(), U1::default()))
        .is_err());
}

#[test]
#[should_panic(expected = "invalid argument to `max_pool2d`")]
fn pool_window_too_large_panics() {
    let _ = dyn_x().max_pool2d(Pool2dArgs::new(5, 1, 0));
}

#[test]
fn batch_norm_and_flatten_runtime_errors() {
    let (w, b) = bn_params(2, 1);
    let e = dyn_x().try_batch_norm2d(&w, &b, 1e-5).unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "batch_norm2d",
            lhs: vec![1, 3, 4, 4],
            rhs: vec![2]
        }
    );
    let (w1, b1) = bn_params(3, 1);
    let single = dyn4([1, 3, 1, 1], 1);
    let e = single.try_batch_norm2d(&w1, &b1, 1e-5).unwrap_err();
    assert!(
        e.to_string().contains("more than 1 value per channel"),
        "{e}"
    );
    let r2: Tensor<(Dyn,), f64> = Tensor::ones((Dyn(2),));
    assert!(dyn_x()
        .try_batch_norm2d_eval(&w1, &b1, &r2, &r2, 1e-5)
        .is_err());
    let layer: BatchNorm2d<U2, f64> = BatchNorm2d::new(U2::default());
    assert!(layer.try_forward(dyn_x()).is_err());
    let e = dyn_x().try_flatten::<U47>().unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            op: "flatten",
            lhs: vec![1, 3, 4, 4],
            rhs: vec![1, 47]
        }
    );
    assert_eq!(dyn_x().try_flatten::<U48>().unwrap().dims(), [1, 48]);
}

#[test]
#[should_panic(expected = "shape error in `batch_norm2d`: [1, 3, 4, 4] does not match [2]")]
fn batch_norm_channel_mismatch_panics() {
    let (w, b) = bn_params(2, 1);
    let _ = dyn_x().batch_norm2d(&w, &b, 1e-5);
}

// ---------------------------------------------------------------- generic code

/// The ops compile in code generic over every dim (run-time geometry: `Dyn`
/// spatial output; one group: channels proven equal by the shared type).
fn generic_block<N: Dim, C: Dim, H: Dim, W: Dim, E: FloatDtype, T: TapeState>(
    x: Tensor<(N, C, H, W), E, Cpu, T>,
    w: &Tensor<(C, C, U3, U3), E>,
    bn: &BatchNorm2d<C, E>,
) -> Tensor<(N, Dyn), E, Cpu, T> {
    let y = x.conv2d(&w.retaped::<T>(), Conv2dArgs::new(1, 1, 1));
    let y = bn.forward(y).relu();
    let y = y.max_pool2d(Pool2dArgs::new(2, 2, 0));
    let y = y.avg_pool2d(Pool2dArgs::new(1, 1, 0));
    y.flatten::<Dyn>()
}

/// A 3x3 kernel with padding 1 keeps the spatial size.
type SamePad = Conv2dConfig<U1, U1>;
/// The output dim of a [`SamePad`] convolution along an axis of size `I`.
type Same<I> = ConvOut<I, U3, SamePad>;

/// With a static geometry, generic code states the output-dim rule.
fn generic_static<N: Dim, C: Dim, H, W>(
    x: Tensor<(N, C, H, W), f32>,
    w: &Tensor<(C, C, U3, U3), f32>,
) -> Tensor<(N, C, Same<H>, Same<W>), f32>
where
    H: ConvOutDim<U3, SamePad, Convolution>,
    W: ConvOutDim<U3, SamePad, Convolution>,
{
    x.conv2d(w, Conv2dConfig::new())
}

#[test]
fn generic_code_compiles_and_runs() {
    let x: Tensor<(U2, U3, U6, U6), f32> = Tensor::randn(Default::default(), 1);
    let w: Tensor<(U3, U3, U3, U3), f32> = Tensor::randn(Default::default(), 2);
    let bn = BatchNorm2d::new(U3::default());
    assert_eq!(generic_block(x.clone(), &w, &bn).dims(), [2, 27]);
    let y: Tensor<(U2, U3, U6, U6), f32> = generic_static(x, &w);
    assert_eq!(y.dims(), [2, 3, 6, 6]);
}

// ---------------------------------------------------------------- a CNN learns

dim!(Classes = 4);

#[derive(Module)]
struct Cnn {
    conv: Conv2d<U1, U4, U3, U3, f32, Conv2dConfig<U1, U1>>,
    fc: Linear<U64, Classes, f32>,
}

impl Cnn {
    fn forward<T: TapeState>(
        &self,
        x: Tensor<(Dyn, U1, U8, U8), f32, Cpu, T>,
    ) -> Tensor<(Dyn, Classes), f32, Cpu, T> {
        let h: Tensor<(Dyn, U4, U8, U8), f32, Cpu, T> = self.conv.forward(x).relu();
        let p: Tensor<(Dyn, U4, U4, U4), f32, Cpu, T> =
            MaxPool2d::new(Pool2dConfig::<U2>::new()).forward(h);
        self.fc.forward(Flatten::<U64>::new().forward(p))
    }
}

/// A batch of one-channel 8x8 images.
type Images = Tensor<(Dyn, U1, U8, U8), f32>;
/// One class id per image.
type Labels = Tensor<(Dyn, U1), i64>;

/// Images of noise (std 0.8) with one quadrant brighter by 0.8; the label
/// is the quadrant.
fn quadrant_batch(n: usize, seed: u64) -> (Images, Labels) {
    let noise: Tensor<(Dyn, U1, U8, U8), f32> = Tensor::normal(
        (Dyn(n), U1::default(), U8::default(), U8::default()),
        0.0,
        0.8,
        seed,
    );
    let labels: Vec<i64> = (0..n).map(|i| ((i as u64 * 7 + seed) % 4) as i64).collect();
    let mut x = noise;
    let data = x.data_mut();
    for (i, &q) in labels.iter().enumerate() {
        let (r0, c0) = ((q as usize / 2) * 4, (q as usize % 2) * 4);
        for r in r0..r0 + 4 {
            for c in c0..c0 + 4 {
                data[i * 64 + r * 8 + c] += 0.8;
            }
        }
    }
    let y = Tensor::from_vec((Dyn(n), U1::default()), labels).unwrap();
    (x, y)
}

/// Mean cross-entropy: `-mean(log_softmax(logits)[label])`.
fn cross_entropy<T: TapeState>(
    logits: Tensor<(Dyn, Classes), f32, Cpu, T>,
    labels: &Labels,
) -> Tensor<(), f32, Cpu, T> {
    logits
        .log_softmax::<Axis<1>>()
        .gather::<Axis<1>, _>(labels)
        .mean_all()
        .neg()
}

#[test]
fn a_small_cnn_learns_which_quadrant_is_bright() {
    let mut net = Cnn {
        conv: Conv2d::new(
            U1::default(),
            U4::default(),
            Default::default(),
            Conv2dConfig::new(),
            true,
            11,
        ),
        fc: Linear::new(U64::default(), Classes, true, 12),
    };
    let mut opt = Optimizer::adamw(0.02, (0.9, 0.999), 1e-8, 0.01);
    let (x_test, y_test) = quadrant_batch(64, 999);
    let initial = cross_entropy(net.forward(x_test.clone()), &y_test).item();
    let steps = 100;
    for step in 0..steps {
        let (x, y) = quadrant_batch(32, step);
        let loss = cross_entropy(net.forward(x.traced()), &y);
        let grads = loss.backward();
        opt.step(&mut net, &grads).unwrap();
    }
    let logits = net.forward(x_test);
    let final_loss = cross_entropy(logits.clone(), &y_test).item();
    let pred = logits.argmax::<Axis<1>>().to_vec();
    let correct = pred
        .iter()
        .zip(y_test.to_vec())
        .filter(|(p, y)| **p == *y)
        .count();
    eprintln!("cnn: loss {initial} -> {final_loss}, {correct}/64 correct");
    assert!(initial > 1.2, "initial loss {initial}");
    // chance is ln 4 = 1.39; with this much noise a few images stay ambiguous
    assert!(
        final_loss < 0.15,
        "held-out loss after {steps} steps: {final_loss}"
    );
    assert!(correct >= 58, "{correct}/64 correct");
}
