//! nanoGPT (`zerfoo::models::Gpt`): training lowers the loss, cached and
//! uncached generation agree, the head is tied to `wte`, gradients match
//! finite differences.

use zerfoo::data::TokenDataset;
use zerfoo::models::{GenerateOpts, Gpt, GptConfig};
use zerfoo::nn::Module;
use zerfoo::optim::Optimizer;
use zerfoo::prelude::*;
use zerfoo_tests::rel_err;

fn tiny(vocab: usize, block: usize) -> GptConfig {
    GptConfig {
        vocab,
        block,
        layers: 2,
        heads: 2,
        width: 16,
        dropout: 0.0,
        bias: true,
    }
}

type Ids = Tensor<(Dyn, Dyn), i64>;

fn batch_tensors(data: &TokenDataset, batch: usize, block: usize, index: u64) -> (Ids, Ids) {
    let b = data.batch(batch, block, 7, index).unwrap();
    let shape = (Dyn(batch), Dyn(block));
    (
        Tensor::from_vec(shape, b.inputs).unwrap(),
        Tensor::from_vec(shape, b.targets).unwrap(),
    )
}

#[test]
fn tiny_gpt_loss_falls() {
    // A periodic sequence: predictable from the context.
    let tokens: Vec<u32> = (0..400u32).map(|i| (i * 3 + i / 5) % 7).collect();
    let data = TokenDataset::new(tokens);
    let mut model: Gpt<f32> = Gpt::new(tiny(7, 8), 1);
    let mut opt = Optimizer::adamw(1e-2, (0.9, 0.99), 1e-8, 0.0);
    let mut losses = Vec::new();
    for step in 0..40 {
        let (x, y) = batch_tensors(&data, 4, 8, step);
        let loss = model.loss(x.traced(), &y);
        losses.push(loss.item() as f64);
        let grads = loss.backward();
        opt.step(&mut model, &grads).unwrap();
    }
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[35..].iter().sum::<f64>() / 5.0;
    // Initial loss is about ln 7 = 1.95.
    assert!((first - 7f64.ln()).abs() < 0.3, "initial loss {first}");
    assert!(last < 0.6 * first, "loss {first} -> {last}");
}

#[test]
fn cached_generation_equals_uncached() {
    let model: Gpt<f64> = Gpt::new(tiny(11, 8), 3);
    let prompt = [1u32, 4, 2];
    // 20 new tokens: the sequence outgrows the block of 8 (window shifts).
    let a = model
        .generate(&prompt, 20, GenerateOpts::greedy(), false)
        .unwrap();
    let b = model
        .generate(&prompt, 20, GenerateOpts::greedy(), true)
        .unwrap();
    assert_eq!(a.len(), 23);
    assert_eq!(&a[..3], &prompt);
    assert_eq!(a, b);
    // Sampling with the same seed draws the same tokens either way.
    let opts = GenerateOpts {
        temperature: 0.8,
        top_k: Some(5),
        top_p: Some(0.9),
        seed: 9,
    };
    let c = model.generate(&prompt, 12, opts, false).unwrap();
    let d = model.generate(&prompt, 12, opts, true).unwrap();
    assert_eq!(c, d);
    assert!(c.iter().all(|&t| t < 11));
    // A prompt longer than the block is cropped, not an error.
    let long: Vec<u32> = (0..12).map(|i| i % 11).collect();
    let e = model
        .generate(&long, 3, GenerateOpts::greedy(), true)
        .unwrap();
    let f = model
        .generate(&long, 3, GenerateOpts::greedy(), false)
        .unwrap();
    assert_eq!(e, f);
}

#[test]
fn greedy_is_argmax_of_forward() {
    let model: Gpt<f64> = Gpt::new(tiny(9, 6), 5);
    let prompt = [3u32, 1, 4, 1];
    let out = model
        .generate(&prompt, 1, GenerateOpts::greedy(), false)
        .unwrap();
    let ids = Tensor::<(Dyn, Dyn), i64>::from_vec((Dyn(1), Dyn(4)), vec![3, 1, 4, 1]).unwrap();
    let logits = model.forward(ids).to_vec();
    let last = &logits[3 * 9..];
    let best = (0..9).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
    assert_eq!(out[4] as usize, best);
}

#[test]
fn head_is_tied_and_param_count_matches_nanogpt() {
    let cfg = GptConfig {
        vocab: 65,
        block: 64,
        layers: 4,
        heads: 4,
        width: 128,
        dropout: 0.0,
        bias: true,
    };
    let model: Gpt<f32> = Gpt::new(cfg, 0);
    let info = model.param_info();
    assert!(info.iter().all(|p| !p.path.contains("head")));
    assert!(info.iter().any(|p| p.path == "wte.weight"));
    assert!(info.iter().any(|p| p.path == "wpe.weight"));
    assert_eq!(model.num_params(), cfg.nanogpt_param_count());
    // nanoGPT's shakespeare_char CPU config: 0.80M parameters incl. positions.
    assert_eq!(
        cfg.nanogpt_param_count(),
        65 * 128 + 64 * 128 + 4 * (12 * 128 * 128 + 13 * 128) + 256
    );
    // The logits are x · wteᵀ: changing wte changes the head.
    assert!(
        format!("{:?}", info.iter().map(|p| &p.path).collect::<Vec<_>>()).contains("h.norm.weight")
    );

    // nanoGPT's default `bias=False`: no bias anywhere, LayerNorms included.
    let no_bias = GptConfig { bias: false, ..cfg };
    let model: Gpt<f32> = Gpt::new(no_bias, 0);
    assert!(model.param_info().iter().all(|p| !p.path.ends_with("bias")));
    assert_eq!(model.num_params(), no_bias.nanogpt_param_count());
    assert_eq!(no_bias.nanogpt_param_count(), 804_096);
}

#[test]
fn nanogpt_init_statistics() {
    let cfg = GptConfig {
        layers: 8,
        width: 64,
        ..tiny(50, 16)
    };
    let model: Gpt<f64> = Gpt::new(cfg, 2);
    let std = |v: Vec<f64>| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let q = std(model.h.layers[0].attn.q_proj.weight.to_vec());
    let o = std(model.h.layers[0].attn.o_proj.weight.to_vec());
    let fc2 = std(model.h.layers[3].ffn.fc2.weight.to_vec());
    let wte = std(model.wte.weight.to_vec());
    assert!((q - 0.02).abs() < 0.002, "q_proj std {q}");
    assert!((wte - 0.02).abs() < 0.002, "wte std {wte}");
    let want = 0.02 / 4.0; // 0.02 / sqrt(2 * 8)
    assert!((o - want).abs() < 0.001, "o_proj std {o}");
    assert!((fc2 - want).abs() < 0.0005, "fc2 std {fc2}");
    let b = model.h.layers[0]
        .attn
        .q_proj
        .bias
        .as_ref()
        .unwrap()
        .to_vec();
    assert!(b.iter().all(|&x| x == 0.0));
}

#[test]
fn gradients_match_finite_differences() {
    let cfg = GptConfig {
        width: 8,
        ..tiny(6, 5)
    };
    let model: Gpt<f64> = Gpt::new(cfg, 4);
    let shape = (Dyn(2), Dyn(5));
    let ids =
        Tensor::<(Dyn, Dyn), i64>::from_vec(shape, vec![0, 1, 2, 3, 4, 5, 4, 3, 2, 1]).unwrap();
    let tg =
        Tensor::<(Dyn, Dyn), i64>::from_vec(shape, vec![1, 2, 3, 4, 5, 0, 0, 1, 5, 2]).unwrap();
    let grads = model.loss(ids.clone().traced(), &tg).backward();
    let loss_of = |m: &Gpt<f64>| m.loss(ids.clone(), &tg).item();

    // wte (used by the embedding and the tied head), wpe, a q projection.
    type Pick = fn(&mut Gpt<f64>) -> &mut Tensor<(Dyn, Dyn), f64>;
    let picks: [(&str, Pick); 3] = [
        ("wte", |m| &mut m.wte.weight),
        ("wpe", |m| &mut m.wpe.weight),
        ("q_proj", |m| &mut m.h.layers[1].attn.q_proj.weight),
    ];
    for (name, pick) in picks {
        let mut base = model.clone();
        let p = pick(&mut base).clone();
        let analytic = grads.get(&p).expect("no gradient").to_vec();
        let n = analytic.len();
        let idx: Vec<usize> = (0..n).step_by((n / 7).max(1)).collect();
        let mut numeric = Vec::new();
        for &i in &idx {
            let h = 1e-5;
            let eval = |delta: f64| {
                let mut m = model.clone();
                let t = pick(&mut m);
                let mut v = t.to_vec();
                v[i] += delta;
                *t = Tensor::from_vec(t.shape(), v).unwrap();
                loss_of(&m)
            };
            numeric.push((eval(h) - eval(-h)) / (2.0 * h));
        }
        let got: Vec<f64> = idx.iter().map(|&i| analytic[i]).collect();
        let e = rel_err(&got, &numeric);
        assert!(e < 1e-4, "{name}: rel err {e} ({got:?} vs {numeric:?})");
    }
}

#[test]
fn errors_for_bad_input() {
    let model: Gpt<f32> = Gpt::new(tiny(5, 4), 0);
    let long = Tensor::<(Dyn, Dyn), i64>::from_vec((Dyn(1), Dyn(5)), vec![0; 5]).unwrap();
    assert!(model.try_forward(long).is_err());
    let bad = Tensor::<(Dyn, Dyn), i64>::from_vec((Dyn(1), Dyn(2)), vec![0, 5]).unwrap();
    assert!(model.try_forward(bad).is_err());
    assert!(Gpt::<f32>::try_new(
        GptConfig {
            heads: 3,
            ..tiny(5, 4)
        },
        0
    )
    .is_err());
    assert!(model
        .generate(&[], 2, GenerateOpts::greedy(), true)
        .is_err());
}

/// A checkpoint written in the middle of a GPT training run loads in the
/// example's `sample` mode and generates exactly what the model held at that
/// step generates.
#[test]
fn mid_run_checkpoint_samples() {
    use zerfoo::models::sample_from_checkpoint;
    use zerfoo::tokenizer::{CharTokenizer, Tokenizer};
    use zerfoo::train::checkpoint::step_dir;
    use zerfoo::train::{MicroStep, Progress, TokenBatches, TrainConfig, Trainer};

    let text = "to be, or not to be, that is the question: ".repeat(12);
    let tok = CharTokenizer::from_corpus(&text);
    let (train, val) = TokenDataset::new(tok.encode(&text).unwrap())
        .split(0.9)
        .unwrap();
    let data = TokenBatches {
        train,
        val,
        batch: 4,
        block: 8,
        seed: 3,
    };
    let cfg = tiny(tok.vocab_size(), 8);
    let mut run_config = cfg.to_json();
    run_config["dtype"] = "f32".into();
    let run = |steps: u64, dir: Option<std::path::PathBuf>| {
        let mut model: Gpt<f32> = Gpt::new(cfg, 9);
        let mut opt = Optimizer::adamw(1e-2, (0.9, 0.99), 1e-8, 0.1);
        Trainer::new(TrainConfig {
            max_steps: steps,
            eval_every: 3,
            eval_batches: 2,
            ckpt_every: 3,
            keep_last: 0,
            seed: 3,
            run_dir: dir,
            progress: Progress::Quiet,
            handle_ctrlc: false,
            config: Some(run_config.clone()),
            tokenizer_json: Some(tok.to_json()),
            ..Default::default()
        })
        .fit(
            &mut model,
            &mut opt,
            &zerfoo::optim::Constant(1e-2),
            &data,
            |m: &Gpt<f32>, b: &zerfoo::data::Batch, _: &MicroStep| {
                let (x, y) = batch_ids(b);
                m.try_loss(x.traced(), &y)
            },
            |m: &Gpt<f32>, b: &zerfoo::data::Batch| {
                let (x, y) = batch_ids(b);
                m.try_loss(x, &y)
            },
        )
        .unwrap();
        model
    };
    let dir = std::env::temp_dir().join(format!("zerfoo-gpt-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = run(7, Some(dir.clone()));
    let at_step_3 = run(3, None);

    let opts = GenerateOpts {
        temperature: 0.8,
        top_k: Some(5),
        top_p: None,
        seed: 11,
    };
    let sampled = sample_from_checkpoint(step_dir(&dir, 3), "to be", 30, opts).unwrap();
    let expected = at_step_3
        .generate(&tok.encode("to be").unwrap(), 30, opts, true)
        .unwrap();
    assert_eq!(sampled, tok.decode(&expected).unwrap());
    assert_eq!(sampled.chars().count(), 35);
    assert!(sampled.starts_with("to be"));
    // A character the corpus never had is a clear error, not a panic.
    let e = sample_from_checkpoint(step_dir(&dir, 3), "ZZZ", 3, opts).unwrap_err();
    assert!(e.to_string().contains('Z'), "{e}");
    // A folder without a checkpoint is an error naming what is missing.
    let e = sample_from_checkpoint(dir.join("nowhere"), "to", 3, opts).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn batch_ids(b: &zerfoo::data::Batch) -> (Ids, Ids) {
    let shape = (Dyn(b.batch), Dyn(b.block));
    (
        Tensor::from_vec(shape, b.inputs.clone()).unwrap(),
        Tensor::from_vec(shape, b.targets.clone()).unwrap(),
    )
}
