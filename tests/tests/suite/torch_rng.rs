//! PyTorch's generator in zerfoo: nanoGPT's initial weights and its order
//! of batch draws, checked against what PyTorch itself drew
//! (`tests/data/nanogpt_torch_init.json`, written by the script beside it).

use serde_json::Value;
use zerfoo::data::{Batch, TokenDataset, TorchGenerator};
use zerfoo::models::{Gpt, GptConfig};
use zerfoo::nn::{Module, ParamVisitor};
use zerfoo::prelude::*;
use zerfoo::train::{BatchSource, NanoGptBatches, TrainConfig};

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/nanogpt_torch_init.json");
    let text = std::fs::read_to_string(path).expect("tests/data/nanogpt_torch_init.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("`{k}` in {v}"))
}

/// Every parameter, by path, as `f64`s.
struct Collect(Vec<(String, Vec<f64>)>);

impl ParamVisitor for Collect {
    fn visit<S: Shape, E: FloatDtype, D: zerfoo::Backend>(
        &mut self,
        path: &str,
        p: &Tensor<S, E, D>,
    ) {
        let v = p.to_cpu().to_vec().iter().map(|x| x.to_f64()).collect();
        self.0.push((path.to_string(), v));
    }
}

#[test]
fn nanogpt_weights_equal_pytorchs_and_leave_the_generator_where_pytorch_does() {
    let r = reference();
    for case in r["cases"].as_array().unwrap() {
        let cfg = GptConfig::from_json(&case["config"]).unwrap();
        let mut gen = TorchGenerator::new(u(case, "seed"));
        let model: Gpt<f32> = Gpt::try_new_nanogpt(cfg, &mut gen).unwrap();
        let expected = case["params"].as_object().unwrap();
        let mut params = Collect(Vec::new());
        model.visit_params("", &mut params);
        let mut matched = 0;
        for (path, got) in &params.0 {
            match expected.get(path) {
                Some(want) => {
                    let want = want.as_array().unwrap();
                    assert_eq!(got.len(), want.len(), "{path}");
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        let w = w.as_f64().unwrap();
                        assert!(
                            (g - w).abs() <= 1e-6 * w.abs() + 1e-9,
                            "{path}[{i}]: {g} vs {w}"
                        );
                    }
                    matched += 1;
                }
                // Norm scales are ones, biases zeros, as nanoGPT leaves them.
                None if path.ends_with("bias") => assert!(got.iter().all(|&x| x == 0.0), "{path}"),
                None => assert!(got.iter().all(|&x| x == 1.0), "{path}: {:?}", &got[..3]),
            }
        }
        assert_eq!(matched, expected.len());
        let next: Vec<u64> = (0..12).map(|_| gen.randint(1000)).collect();
        let want: Vec<u64> = case["next_randint_1000"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(next, want, "draws after the initialization");
    }
}

fn starts(b: &Batch) -> Vec<u64> {
    // Token t is t, so a window's first input is its start.
    (0..b.batch).map(|i| b.inputs[i * b.block] as u64).collect()
}

fn as_starts(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn nanogpt_batches_are_drawn_in_train_py_order() {
    let r = reference();
    for s in r["streams"].as_array().unwrap() {
        let cfg = TrainConfig {
            max_steps: u(s, "max_iters"),
            eval_every: u(s, "eval_every"),
            eval_batches: u(s, "eval_iters") as usize,
            accum: u(s, "accum") as usize,
            ..Default::default()
        };
        let train = TokenDataset::new((0..u(s, "train_len") as u32).collect());
        let val = TokenDataset::new((0..u(s, "val_len") as u32).collect());
        let (batch, block) = (u(s, "batch") as usize, u(s, "block") as usize);
        let gen = TorchGenerator::new(u(s, "seed"));
        let data = NanoGptBatches::new(train, val, batch, block, &cfg, gen).unwrap();
        let train_want = s["train"].as_array().unwrap();
        assert_eq!(train_want.len() as u64, cfg.max_steps * cfg.accum as u64);
        // In order, then backwards (the generator is replayed: a resumed
        // run draws the same).
        for i in (0..train_want.len()).chain((0..train_want.len()).rev()) {
            let b = data.train_batch(i as u64).unwrap();
            assert_eq!(starts(&b), as_starts(&train_want[i]), "train batch {i}");
            assert_eq!(b.targets[0], b.inputs[0] + 1);
        }
        for (step, batches) in s["evals"].as_object().unwrap() {
            let step: u64 = step.parse().unwrap();
            for (j, want) in batches.as_array().unwrap().iter().enumerate() {
                let b = data.eval_batch(step, j as u64).unwrap();
                assert_eq!(starts(&b), as_starts(want), "eval at {step}, batch {j}");
            }
        }
        assert!(data.eval_batch(1, 0).is_err(), "no evaluation at step 1");
        assert!(data.eval_batch(0, cfg.eval_batches as u64).is_err());
        assert_eq!(data.val_batch(0).unwrap(), data.eval_batch(0, 0).unwrap());
    }
}

#[test]
fn nanogpt_init_rejects_tensors_pytorch_draws_another_way() {
    // 3 positions x width 4 = 12 elements: PyTorch's small-tensor path.
    let cfg = GptConfig {
        vocab: 5,
        block: 3,
        layers: 1,
        heads: 1,
        width: 4,
        dropout: 0.0,
        bias: false,
    };
    let err = Gpt::<f32>::try_new_nanogpt(cfg, &mut TorchGenerator::new(0)).unwrap_err();
    assert!(err.to_string().contains("12 elements"), "{err}");
}
