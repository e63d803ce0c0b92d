//! The typed ops on the CUDA device agree with the same ops on the CPU,
//! forward and backward: each case is one generic function run on `Cpu` and
//! on `Cuda` (GPU 0 when there is one, and the host emulation of the same
//! kernel sources), comparing outputs and every input's gradient.
//!
//! Tolerances (`|dev - cpu| <= tol * (1 + |cpu|)`): the two sides compute in
//! the same compute type and round once, differing by summation order and
//! transcendental accuracy: f64 1e-10, f32 2e-5.

#![cfg(feature = "cuda")]

use zerfoo::nn::{cross_entropy, CrossEntropyOpts};
use zerfoo::ops::{fused_attention, AttentionMask};
use zerfoo::prelude::*;

dim!(Batch = 2);
dim!(Seq = 5);
dim!(Width = 6);
dim!(Heads = 2);
dim!(HeadDim = 3);
dim!(Vocab = 7);

use zerfoo_tests::cuda_devices as devices;

/// A case's outputs and gradients, flattened to f64, in a fixed order.
type Values = Vec<(&'static str, Vec<f64>)>;

fn tol<E: FloatDtype>() -> f64 {
    match E::DTYPE {
        DType::F64 => 1e-10,
        _ => 2e-5,
    }
}

/// Runs `case` on the CPU and on every CUDA device and compares.
fn compare<E: FloatDtype>(name: &str, case: impl Fn(&dyn RunOn<E>) -> Values) {
    let want = case(&Cpu);
    for dev in devices() {
        let got = case(&dev);
        assert_eq!(got.len(), want.len());
        for ((what, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len(), "{name}: {what} length on {dev:?}");
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    a == b
                        || (a.is_nan() && b.is_nan())
                        || (a - b).abs() <= tol::<E>() * (1.0 + b.abs()),
                    "{name} ({}): {what}[{i}] on {dev:?} is {a}, the CPU gives {b}",
                    E::DTYPE
                );
            }
        }
    }
}

/// A device a case can run on (object safe, so one closure serves both).
trait RunOn<E: FloatDtype> {
    fn elementwise(&self) -> Values;
    fn matmul_norm_softmax(&self) -> Values;
    fn shapes(&self) -> Values;
    fn embedding_attention_loss(&self) -> Values;
    fn masks_rope_gather_mse(&self) -> Values;
    fn logsumexp_argmax(&self) -> Values;
    fn conv_pool(&self) -> Values;
    fn batch_norm(&self) -> Values;
}

fn input<S: Shape + Default, E: FloatDtype, D: Backend>(dev: &D, seed: u64) -> Tensor<S, E, D> {
    Tensor::<S, E>::randn(S::default(), seed).to_device(dev)
}

/// `Σ w ⊙ y` with fixed weights: a scalar whose gradient reaches every
/// element of `y` with a different factor.
fn weighted<S: Shape, E: FloatDtype, D: Backend>(
    y: Tensor<S, E, D, Tape>,
    seed: u64,
) -> Tensor<(), E, D, Tape> {
    let w = Tensor::<S, E>::randn(y.shape(), seed).to_device(y.device());
    (y * w.retaped::<Tape>()).sum_all()
}

fn grad_of<S: Shape, E: FloatDtype, D: Backend>(g: &Gradients, t: &Tensor<S, E, D>) -> Vec<f64> {
    g.get(t).expect("no gradient").to_f64_vec()
}

impl<E: FloatDtype, D: Backend> RunOn<E> for D {
    fn elementwise(&self) -> Values {
        let x: Tensor<(Batch, Seq, Width), E, D> = input(self, 1);
        let b: Tensor<(Width,), E, D> = input(self, 2);
        let xs = x.clone().traced();
        let shape = xs.shape();
        let bb = b.retaped::<Tape>().broadcast::<_, Axes2<0, 1>>(shape);
        let y = (xs.clone().gelu() * bb.clone() + xs.clone().tanh())
            .exp()
            .mul_scalar(0.5)
            - xs.clone().maximum(bb.clone())
            + xs.clone().sigmoid() / bb.abs().add_scalar(1.0);
        let m = y.clone().mean::<Axis<1>>();
        let mx = y.clone().max::<Axis<2>>();
        let loss = weighted(y.clone(), 3) + weighted(m.clone(), 4) + weighted(mx.clone(), 5);
        let g = loss.backward();
        vec![
            ("y", y.to_f64_vec()),
            ("mean", m.to_f64_vec()),
            ("max", mx.to_f64_vec()),
            ("dx", grad_of(&g, &x)),
            ("db", grad_of(&g, &b)),
        ]
    }

    fn matmul_norm_softmax(&self) -> Values {
        let x: Tensor<(Batch, Seq, Width), E, D> = input(self, 11);
        let w: Tensor<(HeadDim, Width), E, D> = input(self, 12);
        let gamma: Tensor<(Width,), E, D> = input(self, 13);
        let beta: Tensor<(Width,), E, D> = input(self, 14);
        let n =
            x.clone()
                .traced()
                .layer_norm(&gamma.retaped::<Tape>(), &beta.retaped::<Tape>(), 1e-5);
        let y = n.matmul(w.retaped::<Tape>().t());
        let s = y.clone().softmax::<Axis<2>>();
        let ls = y.clone().log_softmax::<Axis<1>>();
        let loss = weighted(s.clone(), 15) + weighted(ls.clone(), 16);
        let g = loss.backward();
        vec![
            ("softmax", s.to_f64_vec()),
            ("log_softmax", ls.to_f64_vec()),
            ("dx", grad_of(&g, &x)),
            ("dw", grad_of(&g, &w)),
            ("dgamma", grad_of(&g, &gamma)),
            ("dbeta", grad_of(&g, &beta)),
        ]
    }

    fn shapes(&self) -> Values {
        let x: Tensor<(Batch, Seq, Width), E, D> = input(self, 21);
        let xs = x.clone().traced();
        // split heads, permute (a view), reshape of the permuted view (a
        // copy), narrow, concat, contiguous, dtype round trip
        let h = xs
            .clone()
            .split_heads::<Heads, HeadDim>()
            .permute::<Perm4<0, 2, 1, 3>>();
        let r: Tensor<(Batch, Heads, U15), E, D, Tape> = h.reshape(Default::default());
        let a = xs.clone().narrow::<Axis<2>>(1, 3);
        let c = a
            .clone()
            .concat::<Axis<2>>(xs.clone().narrow::<Axis<2>>(0, 2))
            .contiguous();
        let d = xs.t().to_dtype::<f64>().to_dtype::<E>();
        let loss = weighted(r.clone(), 22) + weighted(c.clone(), 23) + weighted(d, 24);
        let g = loss.backward();
        vec![
            ("reshaped", r.to_f64_vec()),
            ("concat", c.to_f64_vec()),
            ("dx", grad_of(&g, &x)),
        ]
    }

    fn embedding_attention_loss(&self) -> Values {
        let table: Tensor<(Vocab, Width), E, D> = input(self, 31);
        let ids: Tensor<(Batch, Seq), i64> =
            Tensor::from_vec(Default::default(), vec![1, 4, 6, 0, 4, 2, 2, 3, 5, 6]).unwrap();
        let targets: Tensor<(Batch, Seq), i64> =
            Tensor::from_vec(Default::default(), vec![4, 6, 0, 4, 2, 2, 3, 5, 6, 1]).unwrap();
        let x = table.retaped::<Tape>().embedding(&ids);
        let q = x
            .clone()
            .split_heads::<Heads, HeadDim>()
            .permute::<Perm4<0, 2, 1, 3>>();
        let o = fused_attention(
            q.clone(),
            q.clone(),
            q.clone(),
            &AttentionMask::causal(),
            0.5,
        );
        // The unfused reference, with a host mask that hides every key of
        // one query (its output is zero).
        let hide = Tensor::<(Batch, Seq, Seq), bool>::from_fn(Default::default(), |n| {
            n % 7 == 2 || (5..10).contains(&n)
        });
        let reference =
            zerfoo::nn::scaled_dot_product_attention(q.clone(), q.clone(), q, Some(&hide), 0.5);
        let y = o.permute::<Perm4<0, 2, 1, 3>>().merge_heads::<Width>();
        let logits = (y + x).matmul(table.retaped::<Tape>().t());
        let loss = cross_entropy(logits, &targets, CrossEntropyOpts::default());
        let value = loss.to_f64_vec();
        let total = loss + weighted(reference.clone(), 32);
        let g = total.backward();
        vec![
            ("loss", value),
            ("unfused attention", reference.to_f64_vec()),
            ("dtable", grad_of(&g, &table)),
        ]
    }

    fn masks_rope_gather_mse(&self) -> Values {
        let x: Tensor<(Batch, Seq, Width), E, D> = input(self, 41);
        let xs = x.clone().traced();
        let mask = Tensor::<(Batch, Seq, Width), bool>::from_fn(Default::default(), |n| n % 3 == 1)
            .to_device(self);
        let filled = xs.clone().masked_fill(&mask, -2.0);
        let chosen = Tensor::where_cond(&mask, xs.clone().sin(), xs.clone().cos());
        let lower = xs.clone().tril(1);
        let dropped = xs.clone().dropout(0.25, 9);
        let roped = xs
            .clone()
            .split_heads::<Heads, HeadDim>()
            .permute::<Perm4<0, 2, 1, 3>>()
            .narrow::<Axis<3>>(0, 2)
            .rope(10_000.0, 3);
        let picked = xs.clone().select::<Axis<1>>(2);
        let ids: Tensor<(Batch, U3, Width), i64> =
            Tensor::from_fn(Default::default(), |n| ((n * 7) % 5) as i64);
        let gathered = xs.clone().gather::<Axis<1>, _>(&ids);
        let target: Tensor<(Batch, Seq, Width), E, D> = input(self, 42);
        let mse = zerfoo::nn::mse_loss(
            xs.clone(),
            target.retaped::<Tape>(),
            zerfoo::nn::Reduction::Mean,
        );
        let var = xs.clone().var::<Axis<1>>(1);
        let probs: Tensor<(Batch, Seq, Width), E, D> =
            Tensor::<(Batch, Seq, Width), E>::rand(Default::default(), 50).to_device(self);
        let pos: Tensor<(Width,), E, D> =
            Tensor::<(Width,), E>::uniform(Default::default(), 0.5, 2.0, 51).to_device(self);
        let bce = zerfoo::nn::binary_cross_entropy_with_logits_weighted(
            xs,
            probs.retaped::<Tape>(),
            &pos.retaped::<Tape>(),
            zerfoo::nn::Reduction::Sum,
        );
        let loss = weighted(filled.clone(), 43)
            + weighted(chosen.clone(), 44)
            + weighted(lower.clone(), 45)
            + weighted(dropped.clone(), 46)
            + weighted(roped.clone(), 47)
            + weighted(picked.clone(), 48)
            + weighted(gathered.clone(), 49)
            + mse.clone()
            + weighted(var.clone(), 52)
            + bce.clone();
        let g = loss.backward();
        vec![
            ("masked_fill", filled.to_f64_vec()),
            ("where", chosen.to_f64_vec()),
            ("tril", lower.to_f64_vec()),
            ("dropout", dropped.to_f64_vec()),
            ("rope", roped.to_f64_vec()),
            ("select", picked.to_f64_vec()),
            ("gather", gathered.to_f64_vec()),
            ("mse", mse.to_f64_vec()),
            ("var", var.to_f64_vec()),
            ("bce", bce.to_f64_vec()),
            ("dprobs", grad_of(&g, &probs)),
            ("dpos", grad_of(&g, &pos)),
            ("dx", grad_of(&g, &x)),
            ("dtarget", grad_of(&g, &target)),
        ]
    }

    fn logsumexp_argmax(&self) -> Values {
        // Large values (1e3: a naive sum of exponentials overflows), a tie
        // in every row of 6 (positions 1 and 4), -inf, and one NaN row.
        let host: Vec<f64> = (0..2 * 5 * 6)
            .map(|n| match (n / 6, n % 6) {
                (3, 2) => f64::NAN,
                (_, 1) | (_, 4) => 1e3 + (n / 6) as f64,
                (r, 5) if r % 2 == 0 => f64::NEG_INFINITY,
                (r, c) => (r as f64 * 0.37 + c as f64 * 1.3).sin() * 5.0 + 990.0,
            })
            .collect();
        let x = Tensor::<(Batch, Seq, Width), f64>::from_vec(Default::default(), host)
            .unwrap()
            .to_dtype::<E>()
            .to_device(self);
        let xs = x.clone().traced();
        let rows = xs.clone().logsumexp::<Axis<2>>();
        let cols = xs.clone().logsumexp::<Axes2<0, 1>>();
        let loss = weighted(rows.clone(), 61) + weighted(cols.clone(), 62);
        let g = loss.backward();
        let ints = |t: Vec<i64>| t.into_iter().map(|v| v as f64).collect::<Vec<f64>>();
        vec![
            ("logsumexp rows", rows.to_f64_vec()),
            ("logsumexp cols", cols.to_f64_vec()),
            ("argmax", ints(x.argmax::<Axis<2>>().to_vec())),
            ("argmin", ints(x.argmin::<Axis<2>>().to_vec())),
            ("argmax (0, 1)", ints(x.argmax::<Axes2<0, 1>>().to_vec())),
            ("dx", grad_of(&g, &x)),
        ]
    }

    fn conv_pool(&self) -> Values {
        use zerfoo::ops::{Conv2dArgs, Pool2dArgs};
        // 2 images, 4 channels, 7 x 6; 6 filters in 2 groups of 3x3,
        // stride 2, padding 1, dilation 1; then every pooling kind.
        let x: Tensor<(U2, U4, U7, U6), E, D> = input(self, 71);
        let w: Tensor<(U6, U2, U3, U3), E, D> = input(self, 72);
        let b: Tensor<(U6,), E, D> = input(self, 73);
        let xs = x.clone().traced();
        let y = xs.clone().conv2d_bias(
            &w.retaped::<Tape>(),
            &b.retaped::<Tape>(),
            Conv2dArgs::new(2, 1, 1).with_groups(U2::default()),
        );
        let dilated = xs.clone().conv2d(
            &w.retaped::<Tape>(),
            Conv2dArgs::new(1, 2, 2).with_groups(U2::default()),
        );
        let maxed = xs.clone().max_pool2d(Pool2dArgs::new(3, 2, 1));
        let avg = xs.clone().avg_pool2d(Pool2dArgs::new(3, 2, 1));
        let avg_ex = xs.clone().avg_pool2d_exclude_pad(Pool2dArgs::new(2, 1, 1));
        let adaptive = xs
            .clone()
            .adaptive_avg_pool2d((U3::default(), U4::default()));
        // The layer, built on the CPU and moved: same weights on both sides.
        let layer: zerfoo::nn::Conv2d<U4, U3, U2, U2, E, Conv2dArgs> = zerfoo::nn::Conv2d::new(
            U4::default(),
            U3::default(),
            (U2::default(), U2::default()),
            Conv2dArgs::new(1, 0, 1),
            true,
            80,
        );
        let layer = zerfoo::nn::Module::to_device(&layer, self);
        let by_layer = zerfoo::nn::Forward::forward(&layer, xs);
        let loss = weighted(y.clone(), 74)
            + weighted(dilated.clone(), 75)
            + weighted(maxed.clone(), 76)
            + weighted(avg.clone(), 77)
            + weighted(avg_ex.clone(), 78)
            + weighted(adaptive.clone(), 79)
            + weighted(by_layer.clone(), 81);
        let g = loss.backward();
        vec![
            ("conv2d", y.to_f64_vec()),
            ("conv2d dilated", dilated.to_f64_vec()),
            ("max_pool2d", maxed.to_f64_vec()),
            ("flatten", maxed.clone().flatten::<Dyn>().to_f64_vec()),
            ("avg_pool2d", avg.to_f64_vec()),
            ("avg_pool2d exclude pad", avg_ex.to_f64_vec()),
            ("adaptive_avg_pool2d", adaptive.to_f64_vec()),
            ("Conv2d layer", by_layer.to_f64_vec()),
            ("dlayer.weight", grad_of(&g, &layer.weight)),
            ("dx", grad_of(&g, &x)),
            ("dw", grad_of(&g, &w)),
            ("db", grad_of(&g, &b)),
        ]
    }
    fn batch_norm(&self) -> Values {
        use zerfoo::nn::{BatchNorm2d, Dropout, Forward, Module};
        // The op on a permuted (strided) input, training statistics.
        let x: Tensor<(U3, U4, U5, U2), E, D> = input(self, 91);
        let w: Tensor<(U4,), E, D> = input(self, 92);
        let b: Tensor<(U4,), E, D> = input(self, 93);
        let xs = x.clone().traced();
        let xt = xs.clone().permute::<Perm4<0, 1, 3, 2>>();
        let (y, stats) = xt.batch_norm2d(&w.retaped::<Tape>(), &b.retaped::<Tape>(), 1e-5);
        // The layer, built on the CPU and moved: two training steps update
        // the running statistics on the device, then eval mode uses them.
        let mut bn: BatchNorm2d<U4, E> = BatchNorm2d::new(U4::default());
        bn.weight = Tensor::<(U4,), E>::randn(Default::default(), 94);
        let mut bn = bn.to_device(self);
        let first = bn.forward(xs.clone().mul_scalar(2.0));
        let second = bn.forward(xs.clone().add_scalar(1.0));
        bn.set_training(false);
        let evaluated = bn.forward(xs.clone());
        // The Dropout layer runs the device's dropout.
        let dropped = Dropout::new(0.5, 3).forward(xs.clone());
        let loss = weighted(y.clone(), 95)
            + weighted(first.clone(), 96)
            + weighted(second.clone(), 97)
            + weighted(evaluated.clone(), 98)
            + weighted(dropped.clone(), 99);
        let g = loss.backward();
        vec![
            ("batch_norm2d", y.to_f64_vec()),
            ("batch mean", stats.mean.clone()),
            ("batch var", stats.var.clone()),
            ("training step 1", first.to_f64_vec()),
            ("training step 2", second.to_f64_vec()),
            ("eval", evaluated.to_f64_vec()),
            ("running mean", bn.running_mean.get().to_f64_vec()),
            ("running var", bn.running_var.get().to_f64_vec()),
            ("Dropout layer", dropped.to_f64_vec()),
            ("dx", grad_of(&g, &x)),
            ("dw", grad_of(&g, &w)),
            ("db", grad_of(&g, &b)),
            ("dlayer.weight", grad_of(&g, &bn.weight)),
            ("dlayer.bias", grad_of(&g, &bn.bias)),
        ]
    }
}

#[test]
fn convolution_and_pooling_match_the_cpu() {
    compare::<f64>("conv/pool", |d| d.conv_pool());
    compare::<f32>("conv/pool", |d| d.conv_pool());
}

#[test]
fn batch_norm_and_its_layer_match_the_cpu() {
    compare::<f64>("batch norm", |d| d.batch_norm());
    compare::<f32>("batch norm", |d| d.batch_norm());
}

#[test]
fn logsumexp_argmax_and_argmin_match_the_cpu() {
    compare::<f64>("logsumexp/argmax", |d| d.logsumexp_argmax());
    compare::<f32>("logsumexp/argmax", |d| d.logsumexp_argmax());
}

#[test]
fn elementwise_broadcast_and_reductions_match_the_cpu() {
    compare::<f64>("elementwise", |d| d.elementwise());
    compare::<f32>("elementwise", |d| d.elementwise());
}

#[test]
fn layer_norm_matmul_and_softmax_match_the_cpu() {
    compare::<f64>("matmul/norm/softmax", |d| d.matmul_norm_softmax());
    compare::<f32>("matmul/norm/softmax", |d| d.matmul_norm_softmax());
}

#[test]
fn views_copies_and_joins_match_the_cpu() {
    compare::<f64>("shape ops", |d| d.shapes());
    compare::<f32>("shape ops", |d| d.shapes());
}

#[test]
fn embedding_attention_and_cross_entropy_match_the_cpu() {
    compare::<f64>("embedding/attention/loss", |d| d.embedding_attention_loss());
    compare::<f32>("embedding/attention/loss", |d| d.embedding_attention_loss());
}

#[test]
fn masks_dropout_rope_select_gather_var_and_losses_match_the_cpu() {
    compare::<f64>("masks/rope/gather/mse", |d| d.masks_rope_gather_mse());
    compare::<f32>("masks/rope/gather/mse", |d| d.masks_rope_gather_mse());
}

#[test]
fn tensors_move_between_devices_exactly() {
    for dev in devices() {
        let x: Tensor<(U3, U4), bf16> = Tensor::randn(Default::default(), 7);
        let back = x.to_device(&dev).to_cpu();
        assert_eq!(back.to_vec(), x.to_vec());
        let i: Tensor<(U5,), i64> =
            Tensor::from_vec(Default::default(), vec![-3, 0, 9, 1 << 40, 2]).unwrap();
        assert_eq!(i.to_device(&dev).to_vec(), i.to_vec());
    }
}

/// Parameters by path, as f64, copied to the host.
fn params_of<M: zerfoo::nn::Module>(m: &M) -> Vec<(String, Vec<f64>)> {
    struct Read(Vec<(String, Vec<f64>)>);
    impl zerfoo::nn::ParamVisitor for Read {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, path: &str, p: &Tensor<S, E, D>) {
            self.0.push((path.to_string(), p.to_f64_vec()));
        }
    }
    let mut r = Read(Vec::new());
    m.visit_params("", &mut r);
    r.0
}

/// Three AdamW steps (dropout on, gradient clipping, weight decay on
/// matrices only) of a tiny GPT moved to `dev`: the losses and the final
/// parameters, on the host.
fn gpt_steps<D: Backend>(dev: &D) -> (Vec<f64>, Vec<(String, Vec<f64>)>) {
    use zerfoo::models::{Gpt, GptConfig};
    use zerfoo::nn::Module;
    use zerfoo::optim::{clip_grad_norm, no_decay_on_norms_and_biases, GroupConfig, Optimizer};
    let cfg = GptConfig {
        vocab: 11,
        block: 4,
        layers: 1,
        heads: 2,
        width: 8,
        dropout: 0.1,
        bias: true,
    };
    let mut model: Gpt<f64, D> = Gpt::<f64>::new(cfg, 3).to_device(dev);
    let mut opt = Optimizer::adamw(1e-2, (0.9, 0.99), 1e-8, 0.1).with_groups(
        vec![
            GroupConfig {
                weight_decay: 0.1,
                lr_scale: 1.0,
            },
            GroupConfig {
                weight_decay: 0.0,
                lr_scale: 1.0,
            },
        ],
        no_decay_on_norms_and_biases,
    );
    let mut losses = Vec::new();
    for step in 0..3u64 {
        let tok = |n: u64| ((n * 7 + step * 3) % 11) as i64;
        let x: Tensor<(Dyn, Dyn), i64> =
            Tensor::from_vec((Dyn(2), Dyn(4)), (0..8).map(tok).collect()).unwrap();
        let y: Tensor<(Dyn, Dyn), i64> =
            Tensor::from_vec((Dyn(2), Dyn(4)), (1..9).map(tok).collect()).unwrap();
        let loss = model.try_loss_train(x.traced(), &y, step).unwrap();
        losses.push(loss.to_f64_vec()[0]);
        let mut g = loss.backward();
        clip_grad_norm(&model, &mut g, 0.5);
        opt.step(&mut model, &g).unwrap();
    }
    (losses, params_of(&model))
}

#[test]
fn a_gpt_trains_on_the_device_as_on_the_cpu() {
    let (want_loss, want_params) = gpt_steps(&Cpu);
    for dev in devices() {
        let (loss, params) = gpt_steps(&dev);
        for (a, b) in loss.iter().zip(&want_loss) {
            assert!(
                (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                "loss {a} vs {b} on {dev:?}"
            );
        }
        for ((path, p), (_, w)) in params.iter().zip(&want_params) {
            for (a, b) in p.iter().zip(w) {
                assert!(
                    (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                    "{path}: {a} vs {b} on {dev:?}"
                );
            }
        }
    }
}
