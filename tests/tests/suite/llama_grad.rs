//! PyTorch parity of a whole training step on a LLaMA-style decoder, in f64
//! (`../shared/fixtures/llama_grad/`, fixture README section 2): logits,
//! loss and every parameter's gradient on one batch, then three steps of
//! AdamW and of SGD with momentum, each after `clip_grad_norm(1.0)`.
//!
//! The model is built from zerfoo layers with `#[derive(Module)]`, so its
//! checkpoint paths are the fixture's tensor names and
//! `zerfoo::io::load` (strict) fills it from `weights.safetensors`. It is
//! generic over its device: with the `cuda` feature the same checks run on
//! GPU 0 (and on the host emulation of the CUDA kernels), in f64.

use std::collections::HashMap;

use zerfoo::autograd::TapeState;
use zerfoo::nn::{
    cross_entropy, CrossEntropyOpts, Embedding, Forward, GatedFeedForward, LayerNorm, Linear,
    Module, Silu, SwiGlu,
};
use zerfoo::optim::{clip_grad_norm, Optimizer};
use zerfoo::prelude::*;
use zerfoo_tests::fixtures::{fixture_path, get, load_fixture, FixtureTensor};
use zerfoo_tests::rel_err;

dim!(Vocab = 64);
dim!(Model = 32);
dim!(Heads = 4);
dim!(HeadDim = 8);
dim!(Hidden = 48);
dim!(Batch = 2);
dim!(Seq = 12);

const ROPE_BASE: f64 = 10000.0;
const EPS: f64 = 1e-5;
const N_LAYERS: usize = 2;

/// Causal self-attention with RoPE, written from ops.
#[derive(Module, Clone, Debug)]
struct Attention<D: Backend = Cpu> {
    wq: Linear<Model, Model, f64, D>,
    wk: Linear<Model, Model, f64, D>,
    wv: Linear<Model, Model, f64, D>,
    wo: Linear<Model, Model, f64, D>,
}

type Act<T, D = Cpu> = Tensor<(Batch, Seq, Model), f64, D, T>;

impl Attention {
    fn new(seed: u64) -> Self {
        let lin = |s: u64| Linear::new(Model, Model, false, seed + s);
        Attention {
            wq: lin(0),
            wk: lin(1),
            wv: lin(2),
            wo: lin(3),
        }
    }
}

impl<D: Backend> Attention<D> {
    fn forward<T: TapeState>(&self, h: Act<T, D>) -> Act<T, D> {
        // (B, T, D) -> (B, H, T, Hd)
        let heads = |x: Act<T, D>| x.split_heads::<Heads, HeadDim>().transpose::<1, 2>();
        let q = heads(self.wq.forward(h.clone())).rope(ROPE_BASE, 0);
        let k = heads(self.wk.forward(h.clone())).rope(ROPE_BASE, 0);
        let v = heads(self.wv.forward(h));
        let scores = q.matmul(k.t()).div_scalar((HeadDim.size() as f64).sqrt());
        let mask = Tensor::causal_mask(Seq)
            .to_device(scores.device())
            .broadcast_mask::<_, Axes2<0, 1>>(scores.shape());
        let att = scores
            .masked_fill(&mask, f64::NEG_INFINITY)
            .softmax::<Axis<3>>();
        let out = att.matmul(v).transpose::<1, 2>().merge_heads::<Model>();
        self.wo.forward(out)
    }
}

/// A pre-norm decoder block.
#[derive(Module, Clone, Debug)]
struct Block<D: Backend = Cpu> {
    ln1: LayerNorm<Model, f64, D>,
    attn: Attention<D>,
    ln2: LayerNorm<Model, f64, D>,
    ffn: GatedFeedForward<Model, Hidden, f64, Silu, D>,
}

impl<D: Backend> Block<D> {
    fn forward<T: TapeState>(&self, x: Act<T, D>) -> Act<T, D> {
        let x = x.clone() + self.attn.forward(self.ln1.forward(x));
        x.clone() + self.ffn.forward(self.ln2.forward(x))
    }
}

/// The decoder: embedding, blocks, final norm, untied head.
#[derive(Module, Clone, Debug)]
struct Llama<D: Backend = Cpu> {
    tok_emb: Embedding<Vocab, Model, f64, D>,
    layers: Vec<Block<D>>,
    ln_f: LayerNorm<Model, f64, D>,
    lm_head: Linear<Model, Vocab, f64, D>,
}

impl Llama {
    /// Random weights; every one is overwritten by the checkpoint.
    fn new() -> Self {
        Llama {
            tok_emb: Embedding::new(Vocab, Model, 0),
            layers: (0..N_LAYERS as u64)
                .map(|l| Block {
                    ln1: LayerNorm::new(Model, EPS),
                    attn: Attention::new(10 * l + 1),
                    ln2: LayerNorm::new(Model, EPS),
                    ffn: SwiGlu::new(Model, Hidden, false, 10 * l + 5),
                })
                .collect(),
            ln_f: LayerNorm::new(Model, EPS),
            lm_head: Linear::new(Model, Vocab, false, 99),
        }
    }
}

impl<D: Backend> Llama<D> {
    fn logits<T: TapeState>(
        &self,
        ids: &Tensor<(Batch, Seq), i64, Cpu, T>,
    ) -> Tensor<(Batch, Seq, Vocab), f64, D, T> {
        let mut x = self.tok_emb.forward(ids.clone());
        for block in &self.layers {
            x = block.forward(x);
        }
        self.lm_head.forward(self.ln_f.forward(x))
    }
}

type Ids = Tensor<(Batch, Seq), i64>;

fn ids(t: &FixtureTensor, batch: Option<usize>) -> Ids {
    let v = t.i64_values().expect("integer ids");
    let n = Batch.size() * Seq.size();
    let v = match batch {
        Some(b) => v[b * n..(b + 1) * n].to_vec(),
        None => v,
    };
    Tensor::from_vec((Batch, Seq), v).unwrap()
}

fn loaded_model() -> Llama {
    let mut model = Llama::new();
    let report = zerfoo::io::load(&mut model, fixture_path("llama_grad/weights.safetensors"))
        .expect("strict load of the fixture weights");
    assert_eq!(report.loaded.len(), 26);
    assert_eq!(model.num_params(), 21824);
    model
}

/// `(loss, gradients)` of the mean next-token cross-entropy on one batch.
fn loss_and_grads<D: Backend>(model: &Llama<D>, input: &Ids, targets: &Ids) -> (f64, Gradients) {
    let logits = model.logits(&input.clone().traced());
    let loss = cross_entropy(logits, targets, CrossEntropyOpts::default());
    let value = loss.item();
    (value, loss.backward())
}

/// Every parameter's values (or gradient), by path, as f64.
fn by_path<D: Backend>(model: &Llama<D>, grads: Option<&Gradients>) -> Vec<(String, Vec<f64>)> {
    struct Collect<'a> {
        grads: Option<&'a Gradients>,
        out: Vec<(String, Vec<f64>)>,
    }
    impl zerfoo::nn::ParamVisitor for Collect<'_> {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, path: &str, p: &Tensor<S, E, D>) {
            let v = match self.grads {
                None => p.to_f64_vec(),
                Some(g) => g
                    .get(p)
                    .unwrap_or_else(|| panic!("no gradient for `{path}`"))
                    .to_f64_vec(),
            };
            self.out.push((path.to_string(), v));
        }
    }
    let mut c = Collect { grads, out: vec![] };
    model.visit_params("", &mut c);
    c.out
}

/// Checks every parameter (or gradient) against `prefix<name>` of `reference`;
/// returns the worst relative error and its tensor.
#[track_caller]
fn check_all(
    what: &str,
    got: &[(String, Vec<f64>)],
    reference: &HashMap<String, FixtureTensor>,
    prefix: &str,
    tol: f64,
) -> (f64, String) {
    let mut worst = (0.0f64, String::new());
    for (path, v) in got {
        let want = &get(reference, &format!("{prefix}{path}")).values;
        // the fixtures' rule: rel per tensor, or abs <= 1e-12 for tensors near 0
        let e = rel_err(v, want);
        let abs = v
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            e <= tol || abs <= 1e-12,
            "{what}: `{path}` differs from PyTorch, rel err {e:e} (abs {abs:e})"
        );
        if e > worst.0 {
            worst = (e, path.clone());
        }
    }
    worst
}

#[test]
fn forward_loss_and_gradients_match_pytorch() {
    forward_loss_and_gradients_on(&Cpu);
}

/// The fixture's logits, loss and gradients, with the model on `dev`.
fn forward_loss_and_gradients_on<D: Backend>(dev: &D) {
    let model: Llama<D> = loaded_model().to_device(dev);
    let inputs = load_fixture("llama_grad/inputs.safetensors");
    let expected = load_fixture("llama_grad/expected.safetensors");
    let (input, targets) = (
        ids(get(&inputs, "input_ids"), None),
        ids(get(&inputs, "targets"), None),
    );

    let logits = model.logits(&input);
    let e_logits = rel_err(&logits.to_f64_vec(), &get(&expected, "logits").values);
    assert!(e_logits <= 1e-10, "logits rel err {e_logits:e}");

    let (loss, grads) = loss_and_grads(&model, &input, &targets);
    let want = get(&expected, "loss").values[0];
    let e_loss = ((loss - want) / want).abs();
    assert!(e_loss <= 1e-10, "loss {loss} vs {want}: rel err {e_loss:e}");

    let reference = load_fixture("llama_grad/grads.safetensors");
    assert_eq!(reference.len(), 26);
    let (e_grad, worst) = check_all(
        "gradient",
        &by_path(&model, Some(&grads)),
        &reference,
        "",
        1e-9,
    );
    println!(
        "llama_grad on {dev:?}: logits rel err {e_logits:.2e}, loss rel err {e_loss:.2e}, \
         worst gradient rel err {e_grad:.2e} (`{worst}`)"
    );
}

/// Runs the fixture's optimizer protocol for 3 steps and checks each step.
fn run_optimizer<D: Backend>(dev: &D, file: &str, mut opt: Optimizer) {
    let mut model: Llama<D> = loaded_model().to_device(dev);
    let inputs = load_fixture("llama_grad/inputs.safetensors");
    let reference = load_fixture(&format!("llama_grad/{file}.safetensors"));
    let losses = &get(&reference, "losses").values;
    let norms = &get(&reference, "grad_norms").values;
    let mut worst = (0.0f64, String::new());
    let (mut worst_loss, mut worst_norm) = (0.0f64, 0.0f64);
    for step in 0..3 {
        let input = ids(get(&inputs, "step_input_ids"), Some(step));
        let targets = ids(get(&inputs, "step_targets"), Some(step));
        let (loss, mut grads) = loss_and_grads(&model, &input, &targets);
        let norm = clip_grad_norm(&model, &mut grads, 1.0);
        opt.step(&mut model, &grads).unwrap();

        let el = ((loss - losses[step]) / losses[step]).abs();
        let en = ((norm - norms[step]) / norms[step]).abs();
        assert!(
            el <= 1e-9,
            "{file} step {}: loss {loss} vs {}",
            step + 1,
            losses[step]
        );
        assert!(
            en <= 1e-9,
            "{file} step {}: grad norm {norm} vs {}",
            step + 1,
            norms[step]
        );
        worst_loss = worst_loss.max(el);
        worst_norm = worst_norm.max(en);
        let w = check_all(
            &format!("{file} step {}", step + 1),
            &by_path(&model, None),
            &reference,
            &format!("step{}.", step + 1),
            1e-9,
        );
        if w.0 > worst.0 {
            worst = (w.0, format!("step{}.{}", step + 1, w.1));
        }
    }
    println!(
        "llama_grad {file} on {dev:?}: worst param rel err {:.2e} (`{}`), loss {worst_loss:.2e}, grad norm {worst_norm:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn adamw_steps_match_pytorch() {
    run_optimizer(
        &Cpu,
        "adamw",
        Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1),
    );
}

#[test]
fn sgd_momentum_steps_match_pytorch() {
    run_optimizer(&Cpu, "sgd", Optimizer::sgd(0.05, 0.9, 0.0, false));
}

#[test]
fn parameter_paths_are_the_fixture_names() {
    let model = Llama::new();
    let cfg = std::fs::read_to_string(fixture_path("llama_grad/config.json")).unwrap();
    let paths: Vec<String> = model.param_info().into_iter().map(|p| p.path).collect();
    // the config lists the names in PyTorch's `named_parameters` order
    let mut pos = 0;
    for p in &paths {
        let quoted = format!("\"{p}\"");
        let at = cfg[pos..]
            .find(&quoted)
            .unwrap_or_else(|| panic!("`{p}` not in the config's parameter names (in order)"));
        pos += at + quoted.len();
    }
    assert_eq!(paths.len(), 26);
}

/// The same checks with the model on GPU 0 and on the host emulation of the
/// CUDA kernels (each absent one prints why it skipped), in f64 with the
/// CPU's tolerances.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;
    use zerfoo_tests::cuda_devices as devices;

    #[test]
    fn forward_loss_and_gradients_match_pytorch_on_cuda() {
        for dev in devices() {
            forward_loss_and_gradients_on(&dev);
        }
    }

    #[test]
    fn adamw_and_sgd_steps_match_pytorch_on_cuda() {
        for dev in devices() {
            run_optimizer(
                &dev,
                "adamw",
                Optimizer::adamw(1e-2, (0.9, 0.95), 1e-8, 0.1),
            );
            run_optimizer(&dev, "sgd", Optimizer::sgd(0.05, 0.9, 0.0, false));
        }
    }
}
