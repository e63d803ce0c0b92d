//! Training utilities on top of the `Module` traversal: optimizer state saved
//! to and loaded from safetensors (bit-identical resumption), freezing by
//! path, and gradient accumulation over micro-batches.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use zerfoo::autograd::Gradients;
use zerfoo::io;
use zerfoo::nn::{Forward, Linear, Module};
use zerfoo::optim::{clip_grad_norm, Optimizer};
use zerfoo::prelude::*;

dim!(In = 5);
dim!(Hid = 7);
dim!(Out = 3);

#[derive(Module)]
struct Net<E: FloatDtype> {
    embed: Linear<In, Hid, E>,
    head: Linear<Hid, Out, E>,
}

impl<E: FloatDtype> Net<E> {
    fn new(seed: u64) -> Self {
        Net {
            embed: Linear::new(In, Hid, true, seed),
            head: Linear::new(Hid, Out, true, seed + 10),
        }
    }
    fn loss(&self, x: &Tensor<(Dyn, In), E>, y: &Tensor<(Dyn, Out), E>) -> Gradients {
        let h = self.embed.forward(x.clone().traced()).tanh();
        (self.head.forward(h) - y.retaped::<Tape>())
            .square()
            .mean_all()
            .backward()
    }
}

/// Inputs and targets.
type Batch<E> = (Tensor<(Dyn, In), E>, Tensor<(Dyn, Out), E>);

fn batch<E: FloatDtype>(step: u64, rows: usize) -> Batch<E> {
    (
        Tensor::randn((Dyn(rows), In), 1000 + step),
        Tensor::randn((Dyn(rows), Out), 2000 + step),
    )
}

/// Every parameter's bytes, by path.
fn bits<M: Module>(m: &M) -> Vec<u8> {
    io::to_safetensors_bytes(m, None).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zerfoo-optim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn train<E: FloatDtype>(m: &mut Net<E>, opt: &mut Optimizer, steps: std::ops::Range<u64>) {
    for s in steps {
        let (x, y) = batch::<E>(s, 4);
        let g = m.loss(&x, &y);
        // a learning-rate schedule changes the lr: it must survive the save
        opt.set_lr(opt.lr() * 0.9);
        opt.step(m, &g).unwrap();
    }
}

/// Train 3 steps, save model and optimizer, continue 2 steps; load both into
/// a fresh model and optimizer, do the same 2 steps: bit-identical.
fn resume_is_bit_identical<E: FloatDtype>(make: impl Fn() -> Optimizer, tag: &str) {
    let mut a = Net::<E>::new(1);
    let mut opt_a = make();
    train(&mut a, &mut opt_a, 0..3);
    let (mp, op) = (
        tmp(&format!("{tag}-model.safetensors")),
        tmp(&format!("{tag}-opt.safetensors")),
    );
    io::save(&a, &mp).unwrap();
    opt_a.save_state(&op).unwrap();
    train(&mut a, &mut opt_a, 3..5);

    let mut b = Net::<E>::new(99);
    let mut opt_b = make();
    io::load(&mut b, &mp).unwrap();
    opt_b.load_state(&op, &b).unwrap();
    assert_eq!(opt_b.steps(), 3, "{tag}");
    train(&mut b, &mut opt_b, 3..5);
    assert_eq!(bits(&a), bits(&b), "{tag}: resumed training diverged");
    assert_eq!(opt_a.state(), opt_b.state(), "{tag}");
    assert_eq!(opt_a.lr().to_bits(), opt_b.lr().to_bits());

    // without the optimizer state, the same 2 steps give other parameters
    let mut c = Net::<E>::new(99);
    let mut opt_c = make();
    io::load(&mut c, &mp).unwrap();
    opt_c.set_lr(opt_a.lr() / 0.81);
    train(&mut c, &mut opt_c, 3..5);
    assert_ne!(bits(&a), bits(&c), "{tag}: the state made no difference");
}

#[test]
fn resuming_from_saved_state_is_bit_identical() {
    resume_is_bit_identical::<f32>(
        || Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1),
        "adamw-f32",
    );
    resume_is_bit_identical::<f64>(
        || Optimizer::adam(1e-2, (0.8, 0.99), 1e-8, 0.01),
        "adam-f64",
    );
    resume_is_bit_identical::<f32>(|| Optimizer::sgd(0.1, 0.9, 1e-3, true), "sgd-nesterov-f32");
    resume_is_bit_identical::<bf16>(|| Optimizer::sgd(0.1, 0.5, 0.0, false), "sgd-bf16");
}

fn trained_state(tag: &str) -> (Net<f32>, PathBuf) {
    let mut m = Net::<f32>::new(1);
    let mut opt = Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1);
    train(&mut m, &mut opt, 0..2);
    let p = tmp(&format!("{tag}.safetensors"));
    opt.save_state(&p).unwrap();
    (m, p)
}

fn checkpoint_tensor(e: Error) -> String {
    match e {
        Error::Checkpoint { tensor, .. } => tensor,
        other => panic!("expected a checkpoint error, got {other}"),
    }
}

#[test]
fn state_file_layout() {
    let (m, p) = trained_state("layout");
    let bytes = std::fs::read(&p).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "state.embed.bias.0",
            "state.embed.bias.1",
            "state.embed.weight.0",
            "state.embed.weight.1",
            "state.head.bias.0",
            "state.head.bias.1",
            "state.head.weight.0",
            "state.head.weight.1",
        ]
    );
    let w = file.tensor("state.head.weight.1").unwrap();
    assert_eq!(w.dtype(), StDtype::F64);
    assert_eq!(w.shape(), [3, 7]);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["step"], "2");
    assert_eq!(meta["steps.embed.weight"], "2");
    assert_eq!(meta["rule"], "adamw beta1=0.9 beta2=0.95 eps=1e-8");
    assert_eq!(meta["lr"].parse::<f64>().unwrap(), 1e-2 * 0.9 * 0.9);
    let _ = m;
}

#[test]
fn strict_state_loading_names_the_tensor() {
    let (m, p) = trained_state("strict");
    let fresh = || Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1);

    // a module with another shape
    #[derive(Module)]
    struct Wider {
        embed: Linear<In, Out, f32>,
        head: Linear<Hid, Out, f32>,
    }
    let wider = Wider {
        embed: Linear::new(In, Out, true, 0),
        head: Linear::new(Hid, Out, true, 1),
    };
    let e = fresh().load_state(&p, &wider).unwrap_err();
    // (parameters are checked in path order: `embed.bias` comes first)
    assert!(
        e.to_string()
            .contains("shape [7] in the file, the parameter is [3]"),
        "{e}"
    );
    assert_eq!(checkpoint_tensor(e), "state.embed.bias.0");

    // a module without one of the parameters
    #[derive(Module)]
    struct HeadOnly {
        head: Linear<Hid, Out, f32>,
    }
    let head_only = HeadOnly {
        head: Linear::new(Hid, Out, true, 1),
    };
    let e = fresh().load_state(&p, &head_only).unwrap_err();
    assert!(checkpoint_tensor(e).starts_with("state.embed."));

    // another rule
    let mut sgd = Optimizer::sgd(0.1, 0.9, 0.0, false);
    let e = sgd.load_state(&p, &m).unwrap_err();
    assert!(e.to_string().contains("adamw"), "{e}");
    assert_eq!(sgd.steps(), 0, "a failed load changes nothing");

    // hand-made files: a missing buffer, a wrong dtype, an extra tensor
    let write = |name: &str, tensors: Vec<(&str, StDtype, Vec<usize>, Vec<u8>)>| {
        let mut meta = HashMap::new();
        for (k, v) in [
            ("format", "zerfoo-optimizer-state"),
            ("version", "1"),
            ("step", "1"),
            ("lr", "0.01"),
            ("rule", "adamw beta1=0.9 beta2=0.95 eps=1e-8"),
            ("steps.head.bias", "1"),
        ] {
            meta.insert(k.to_string(), v.to_string());
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let bytes = safetensors::tensor::serialize(views, Some(meta)).unwrap();
        let path = tmp(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let f64s = |n: usize| vec![0u8; 8 * n];
    let missing = write(
        "missing.safetensors",
        vec![("state.head.bias.0", StDtype::F64, vec![3], f64s(3))],
    );
    let e = fresh().load_state(&missing, &m).unwrap_err();
    assert_eq!(checkpoint_tensor(e), "state.head.bias.1");
    let wrong_dtype = write(
        "dtype.safetensors",
        vec![
            ("state.head.bias.0", StDtype::F64, vec![3], f64s(3)),
            ("state.head.bias.1", StDtype::F32, vec![3], vec![0u8; 12]),
        ],
    );
    let e = fresh().load_state(&wrong_dtype, &m).unwrap_err();
    assert_eq!(checkpoint_tensor(e), "state.head.bias.1");
    let extra = write(
        "extra.safetensors",
        vec![
            ("state.head.bias.0", StDtype::F64, vec![3], f64s(3)),
            ("state.head.bias.1", StDtype::F64, vec![3], f64s(3)),
            ("state.head.weight.0", StDtype::F64, vec![3, 7], f64s(21)),
        ],
    );
    let e = fresh().load_state(&extra, &m).unwrap_err();
    assert_eq!(checkpoint_tensor(e), "state.head.weight.0");
    // the hand-made file without the extra tensor loads
    let ok = write(
        "ok.safetensors",
        vec![
            ("state.head.bias.0", StDtype::F64, vec![3], f64s(3)),
            ("state.head.bias.1", StDtype::F64, vec![3], f64s(3)),
        ],
    );
    let mut opt = fresh();
    opt.load_state(&ok, &m).unwrap();
    assert_eq!(opt.steps(), 1);
    assert_eq!(opt.state().params.len(), 1);
}

#[test]
fn corrupt_state_files_are_format_errors() {
    let (m, p) = trained_state("corrupt");
    let bytes = std::fs::read(&p).unwrap();
    let mut opt = Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1);
    let is_format = |e: Error| matches!(e, Error::Format { .. });
    // truncated
    assert!(is_format(
        opt.load_state_bytes(&bytes[..bytes.len() / 2], &m)
            .unwrap_err()
    ));
    // garbage
    assert!(is_format(
        opt.load_state_bytes(b"not a safetensors file", &m)
            .unwrap_err()
    ));
    // a model checkpoint is not an optimizer state
    let mp = tmp("model-not-state.safetensors");
    io::save(&m, &mp).unwrap();
    assert!(is_format(opt.load_state(&mp, &m).unwrap_err()));
    // a missing file is an i/o error naming it
    let e = opt.load_state(tmp("nope.safetensors"), &m).unwrap_err();
    assert!(matches!(e, Error::Io { ref path, .. } if path.contains("nope")));
    assert_eq!(opt.steps(), 0);
}

#[test]
fn frozen_parameters_are_left_alone() {
    let mut m = Net::<f32>::new(3);
    let before_embed = bits(&m.embed);
    let before_head = bits(&m.head);
    let mut opt =
        Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1).freeze(|p| p.starts_with("embed."));
    let (x, y) = batch::<f32>(0, 4);
    let g = m.loss(&x, &y);
    assert!(
        g.get(&m.embed.weight).is_some(),
        "backward still computes it"
    );
    opt.step(&mut m, &g).unwrap();
    assert_eq!(
        bits(&m.embed),
        before_embed,
        "weight decay must not touch it either"
    );
    assert_ne!(bits(&m.head), before_head);
    let st = opt.state();
    assert!(
        st.params.keys().all(|k| k.starts_with("head.")),
        "no state for frozen"
    );
    assert_eq!(st.params.len(), 2);

    // clipping sees only what the optimizer updates once frozen grads are dropped
    let mut g = m.loss(&x, &y);
    let head_norm = {
        let w = g.get(&m.head.weight).unwrap().to_f64_vec();
        let b = g.get(m.head.bias.as_ref().unwrap()).unwrap().to_f64_vec();
        w.iter().chain(&b).map(|v| v * v).sum::<f64>().sqrt()
    };
    opt.remove_frozen_grads(&m, &mut g);
    assert!(g.get(&m.embed.weight).is_none() && g.get(m.embed.bias.as_ref().unwrap()).is_none());
    let total = clip_grad_norm(&m, &mut g, 1e9);
    assert!((total - head_norm).abs() <= 1e-6 * head_norm);

    // unfreezing lets it train
    opt.unfreeze_all();
    let g = m.loss(&x, &y);
    opt.step(&mut m, &g).unwrap();
    assert_ne!(bits(&m.embed), before_embed);
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch() {
    let m = Net::<f64>::new(5);
    let (x, y) = batch::<f64>(7, 6);
    let full = m.loss(&x, &y);
    // three micro-batches of two rows: the mean over 6 is the mean of the means
    let xs = x.to_vec();
    let ys = y.to_vec();
    let mut total = Gradients::new();
    for k in 0..3 {
        let xm = Tensor::from_vec((Dyn(2), In), xs[k * 10..(k + 1) * 10].to_vec()).unwrap();
        let ym = Tensor::from_vec((Dyn(2), Out), ys[k * 6..(k + 1) * 6].to_vec()).unwrap();
        total.accumulate(m.loss(&xm, &ym));
    }
    total.scale(1.0 / 3.0);
    let info = m.param_info();
    // 4 parameters, plus each micro-batch's own traced inputs (x and y)
    assert_eq!(full.len(), 4 + 2);
    assert_eq!(total.len(), 4 + 3 * 2);
    for p in &info {
        let a = total.get_vec::<f64>(p.id).unwrap();
        let b = full.get_vec::<f64>(p.id).unwrap();
        for (u, v) in a.iter().zip(b) {
            assert!(
                (u - v).abs() <= 1e-12 * (1.0 + v.abs()),
                "{}: {u} vs {v}",
                p.path
            );
        }
    }
    // the same optimizer step follows from either
    let (mut m1, mut m2) = (Net::<f64>::new(5), Net::<f64>::new(5));
    let mut o1 = Optimizer::sgd(0.5, 0.0, 0.0, false);
    let mut o2 = Optimizer::sgd(0.5, 0.0, 0.0, false);
    o1.step(&mut m1, &full).unwrap();
    o2.step(&mut m2, &total).unwrap();
    let (v1, v2) = (m1.head.weight.to_vec(), m2.head.weight.to_vec());
    for (u, v) in v1.iter().zip(&v2) {
        assert!((u - v).abs() < 1e-12);
    }
}

#[test]
fn accumulate_merges_disjoint_and_low_precision_gradients() {
    let a: Tensor<(U3,), bf16> = Tensor::from_vec(Default::default(), vec![bf16::ONE; 3]).unwrap();
    let b: Tensor<(U2,), f32> = Tensor::ones(Default::default());
    let mut total = Gradients::default();
    assert!(total.is_empty());
    // a's gradient is 2, b's is 3, in separate backward passes
    total.accumulate(a.retaped::<Tape>().mul_scalar(2.0).sum_all().backward());
    total.accumulate(b.retaped::<Tape>().mul_scalar(3.0).sum_all().backward());
    total.accumulate(a.retaped::<Tape>().mul_scalar(0.5).sum_all().backward());
    assert_eq!(total.len(), 2);
    assert_eq!(total.get(&a).unwrap().to_vec(), [bf16::from_f32(2.5); 3]);
    assert_eq!(total.get(&b).unwrap().to_vec(), [3.0, 3.0]);
    total.scale(0.5);
    assert_eq!(total.get(&a).unwrap().to_vec(), [bf16::from_f32(1.25); 3]);
    assert_eq!(total.get(&b).unwrap().to_vec(), [1.5, 1.5]);
}

#[test]
fn a_parameter_unfrozen_late_gets_adams_first_step() {
    // Adam's bias correction counts each parameter's own steps, as PyTorch:
    // after 2 frozen steps, the first update of `embed` is a first step.
    let mut m = Net::<f32>::new(4);
    let mut opt = Optimizer::adam(1e-2, (0.9, 0.99), 1e-8, 0.0).freeze(|p| p.starts_with("embed."));
    for s in 0..2 {
        let (x, y) = batch::<f32>(s, 4);
        let g = m.loss(&x, &y);
        opt.step(&mut m, &g).unwrap();
    }
    opt.unfreeze_all();
    let mut reference = Net::<f32>::new(0);
    io::load_bytes_with(&mut reference, &bits(&m), Default::default()).unwrap();
    let (x, y) = batch::<f32>(2, 4);
    let g = m.loss(&x, &y);
    let g_ref = reference.loss(&x, &y);
    opt.step(&mut m, &g).unwrap();
    Optimizer::adam(1e-2, (0.9, 0.99), 1e-8, 0.0)
        .step(&mut reference, &g_ref)
        .unwrap();
    assert_eq!(bits(&m.embed), bits(&reference.embed));
    assert_eq!(opt.state().params["embed.weight"].0, 1);
    assert_eq!(opt.state().params["head.weight"].0, 3);
}
