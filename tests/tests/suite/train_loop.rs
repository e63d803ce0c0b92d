//! The training loop on a bigram language model (an `Embedding<V, V>` whose
//! rows are the next-token logits): the loss falls, resume is bit-identical,
//! the run folder holds metrics, a loss curve and checkpoints, the stop flag
//! (Ctrl-C) saves and stops, and gradient accumulation averages.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use zerfoo::autograd::TapeState;
use zerfoo::data::{Batch, TokenDataset, TorchGenerator};
use zerfoo::nn::{Embedding, Forward, Module};
use zerfoo::optim::{Constant, CosineWithWarmup, Optimizer};
use zerfoo::prelude::*;
use zerfoo::tokenizer::{CharTokenizer, Tokenizer};
use zerfoo::train::{
    checkpoint, read_metrics, BatchSource, MicroStep, NanoGptBatches, Progress, StepGate,
    TokenBatches, TrainConfig, TrainStatus, Trainer,
};

dim!(Vocab = 16);
dim!(Rows = 4);
dim!(Block = 8);

#[derive(Module)]
struct Bigram {
    emb: Embedding<Vocab, Vocab, f32>,
}

fn bigram(seed: u64) -> Bigram {
    Bigram {
        emb: Embedding::new(Vocab, Vocab, seed),
    }
}

const TEXT: &str = "to be or not to be that is the question ";

fn tokenizer() -> CharTokenizer {
    CharTokenizer::from_corpus(TEXT)
}

fn data() -> TokenBatches {
    let tok = tokenizer();
    assert!(tok.vocab_size() <= 16);
    let ids = tok.encode(&TEXT.repeat(40)).unwrap();
    let (train, val) = TokenDataset::new(ids).split(0.9).unwrap();
    TokenBatches {
        train,
        val,
        batch: 4,
        block: 8,
        seed: 11,
    }
}

/// Mean cross-entropy of the bigram logits: `-mean(log_softmax(logits)[target])`.
fn nll<T: TapeState>(
    m: &Bigram,
    ids: Tensor<(Rows, Block), i64, Cpu, T>,
    b: &Batch,
) -> Tensor<(), f32, Cpu, T> {
    let logp = m.emb.forward(ids).log_softmax::<Axis<2>>();
    let targets =
        Tensor::<(Rows, Block, U1), i64>::from_vec(Default::default(), b.targets.clone()).unwrap();
    -logp.gather::<Axis<2>, _>(&targets).mean_all()
}

fn ids(b: &Batch) -> Tensor<(Rows, Block), i64> {
    Tensor::from_vec(Default::default(), b.inputs.clone()).unwrap()
}

fn train_loss(m: &Bigram, b: &Batch, _: &MicroStep) -> Result<Tensor<(), f32, Cpu, Tape>> {
    Ok(nll(m, ids(b).traced(), b))
}

fn eval_loss(m: &Bigram, b: &Batch) -> Result<Tensor<(), f32, Cpu, NoTape>> {
    Ok(nll(m, ids(b), b))
}

fn adamw() -> Optimizer {
    Optimizer::adamw(0.1, (0.9, 0.95), 1e-8, 0.01)
}

const SCHEDULE: CosineWithWarmup = CosineWithWarmup {
    max_lr: 0.1,
    min_lr: 0.01,
    warmup: 3,
    decay_steps: 40,
};

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zerfoo-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(max_steps: u64, dir: Option<PathBuf>) -> TrainConfig {
    TrainConfig {
        max_steps,
        accum: 2,
        grad_clip: Some(1.0),
        eval_every: 4,
        eval_batches: 3,
        ckpt_every: 5,
        keep_last: 0,
        log_every: 5,
        seed: 5,
        run_dir: dir,
        progress: Progress::Quiet,
        handle_ctrlc: false,
        config: Some(serde_json::json!({"model": "bigram", "vocab": 16})),
        tokenizer_json: Some(tokenizer().to_json()),
        step_gate: None,
    }
}

fn weights(m: &Bigram) -> Vec<u32> {
    m.emb.weight.to_vec().iter().map(|x| x.to_bits()).collect()
}

/// Each step's index, training-loss bits and validation-loss bits.
type LossBits = Vec<(u64, u64, Option<u64>)>;

fn loss_bits(r: &zerfoo::train::TrainReport) -> LossBits {
    r.history
        .iter()
        .map(|m| (m.step, m.train_loss.to_bits(), m.val_loss.map(f64::to_bits)))
        .collect()
}

#[test]
fn bigram_loss_falls() {
    let data = data();
    let mut model = bigram(1);
    let mut opt = adamw();
    let mut trainer = Trainer::new(TrainConfig {
        eval_every: 0,
        ..config(40, None)
    });
    let before = trainer.evaluate(&model, &data, eval_loss).unwrap();
    let r = trainer
        .fit(
            &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
        )
        .unwrap();
    assert_eq!(r.status, TrainStatus::Finished);
    assert_eq!(r.step, 40);
    assert_eq!(r.history.len(), 40);
    // evaluated only at the last step (eval_every = 0)
    assert!(r.history[..39].iter().all(|m| m.val_loss.is_none()));
    let after = r.history[39].val_loss.unwrap();
    let first: f64 = r.history[..5].iter().map(|m| m.train_loss).sum::<f64>() / 5.0;
    let last: f64 = r.history[35..].iter().map(|m| m.train_loss).sum::<f64>() / 5.0;
    assert!(last < first - 1.0, "train loss {first} -> {last}");
    assert!(after < before - 1.0, "val loss {before} -> {after}");
    // the text is nearly deterministic given the previous character
    assert!(after < 1.5, "val loss {after}");
    assert_eq!(r.best_val_loss, Some(after));
    // the schedule drove the learning rate, and clipping reported norms
    assert_eq!(r.history[0].lr, 0.1 / 3.0);
    assert!(r
        .history
        .iter()
        .all(|m| m.grad_norm.is_some_and(|g| g > 0.0)));
    assert!(r.history.iter().all(|m| m.tokens_per_s > 0.0));
    // a second fit continues where the first stopped
    assert_eq!(trainer.start_step(), 40);
    trainer.config_mut().max_steps = 42;
    let r2 = trainer
        .fit(
            &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
        )
        .unwrap();
    assert_eq!(
        r2.history.iter().map(|m| m.step).collect::<Vec<_>>(),
        [41, 42]
    );
}

#[test]
fn resume_is_bit_identical() {
    let data = data();
    const N: u64 = 10;
    // evaluations every 5 steps, so that the last step of the first half
    // (always evaluated) is one the straight run evaluates too
    let config = |steps, dir| TrainConfig {
        eval_every: 5,
        ..config(steps, dir)
    };
    // 2N steps straight, checkpoints every 5
    let dir_a = run_dir("straight");
    let mut model_a = bigram(1);
    let mut opt_a = adamw();
    let straight = Trainer::new(config(2 * N, Some(dir_a.clone())))
        .fit(
            &mut model_a,
            &mut opt_a,
            &SCHEDULE,
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap();

    // N steps, stop (the final checkpoint is saved), then resume a fresh
    // model and optimizer from it in a new process-like state
    let dir_b = run_dir("halves");
    let mut model_b = bigram(1);
    let mut opt_b = adamw();
    let first = Trainer::new(config(N, Some(dir_b.clone())))
        .fit(
            &mut model_b,
            &mut opt_b,
            &SCHEDULE,
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap();
    assert_eq!(
        first.last_checkpoint.as_deref(),
        Some(checkpoint::step_dir(&dir_b, N).as_path())
    );
    drop((model_b, opt_b));
    let mut model_c = bigram(99); // another init: everything must come from the checkpoint
    let mut opt_c = adamw();
    let mut trainer = Trainer::new(config(2 * N, Some(dir_b.clone())));
    let st = trainer
        .resume(checkpoint::step_dir(&dir_b, N), &mut model_c, &mut opt_c)
        .unwrap();
    assert_eq!(st.step, N);
    assert_eq!(trainer.start_step(), N);
    let second = trainer
        .fit(
            &mut model_c,
            &mut opt_c,
            &SCHEDULE,
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap();

    let mut resumed = loss_bits(&first);
    resumed.extend(loss_bits(&second));
    assert_eq!(resumed, loss_bits(&straight));
    assert_eq!(weights(&model_c), weights(&model_a));
    assert_eq!(opt_c.state(), opt_a.state());
    assert_eq!(second.best_val_loss, straight.best_val_loss);

    // metrics.jsonl of the resumed run continues the first half's lines
    let lines = read_metrics(dir_b.join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=2 * N).collect::<Vec<_>>()
    );

    // resuming in the straight run's own folder from step 5 discards the
    // lines and checkpoints of steps 6..=20, then redoes them identically
    let mut model_d = bigram(7);
    let mut opt_d = adamw();
    let mut trainer = Trainer::new(config(2 * N, Some(dir_a.clone())));
    trainer
        .resume(checkpoint::step_dir(&dir_a, 5), &mut model_d, &mut opt_d)
        .unwrap();
    let redo = trainer
        .fit(
            &mut model_d,
            &mut opt_d,
            &SCHEDULE,
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap();
    assert_eq!(loss_bits(&redo), loss_bits(&straight)[5..]);
    assert_eq!(weights(&model_d), weights(&model_a));
    let lines = read_metrics(dir_a.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 2 * N as usize);
    for (line, m) in lines.iter().zip(&straight.history) {
        assert_eq!(line.step, m.step);
        assert!((line.train_loss - m.train_loss).abs() <= 1e-12 * m.train_loss.abs());
    }
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

#[test]
fn resume_with_nanogpt_batches_is_bit_identical() {
    // Batches from PyTorch's generator in nanoGPT's order: batch i is found
    // by replaying the generator, so a resumed run draws what a straight one
    // draws, evaluations included.
    const N: u64 = 6;
    let config = |steps, dir| TrainConfig {
        eval_every: 3,
        ..config(steps, dir)
    };
    let d = data();
    let source = NanoGptBatches::new(
        d.train,
        d.val,
        4,
        8,
        &config(2 * N, None),
        TorchGenerator::new(1337),
    )
    .unwrap();
    let fit = |trainer: &mut Trainer, model: &mut Bigram, opt: &mut Optimizer| {
        trainer
            .fit(model, opt, &SCHEDULE, &source, train_loss, eval_loss)
            .unwrap()
    };
    let (mut model_a, mut opt_a) = (bigram(1), adamw());
    let straight = fit(
        &mut Trainer::new(config(2 * N, None)),
        &mut model_a,
        &mut opt_a,
    );
    let dir = run_dir("nanogpt-halves");
    let (mut model_b, mut opt_b) = (bigram(1), adamw());
    let first = fit(
        &mut Trainer::new(config(N, Some(dir.clone()))),
        &mut model_b,
        &mut opt_b,
    );
    let (mut model_c, mut opt_c) = (bigram(42), adamw());
    let mut trainer = Trainer::new(config(2 * N, Some(dir.clone())));
    trainer
        .resume(checkpoint::step_dir(&dir, N), &mut model_c, &mut opt_c)
        .unwrap();
    let second = fit(&mut trainer, &mut model_c, &mut opt_c);
    let mut resumed = loss_bits(&first);
    resumed.extend(loss_bits(&second));
    assert_eq!(resumed, loss_bits(&straight));
    assert_eq!(weights(&model_c), weights(&model_a));
    // Evaluations use the batches drawn for their step, not a fixed set.
    let vals: Vec<f64> = straight.history.iter().filter_map(|m| m.val_loss).collect();
    assert_eq!(vals.len(), 4);
    assert_ne!(
        source.eval_batch(3, 0).unwrap(),
        source.eval_batch(6, 0).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_folder_holds_metrics_curve_and_checkpoints() {
    let data = data();
    let dir = run_dir("artifacts");
    let mut model = bigram(3);
    let mut opt = adamw();
    let r = Trainer::new(TrainConfig {
        keep_last: 2,
        ..config(22, Some(dir.clone()))
    })
    .fit(
        &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
    )
    .unwrap();
    assert_eq!(r.status, TrainStatus::Finished);

    // metrics.jsonl: one parseable object per step
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 22);
    for (i, v) in lines.iter().enumerate() {
        let step = i as u64 + 1;
        assert_eq!(v["step"].as_u64(), Some(step));
        for key in ["train_loss", "lr", "tokens_per_s", "elapsed", "grad_norm"] {
            assert!(v[key].as_f64().is_some(), "{key} in {v}");
        }
        // evaluated every 4 steps and at the last one
        assert_eq!(
            v.get("val_loss").is_some(),
            step.is_multiple_of(4) || step == 22,
            "{v}"
        );
    }
    let metrics = read_metrics(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics, r.history);

    // loss.svg: a well-formed picture with two curves and a legend
    let svg = std::fs::read_to_string(dir.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains(">train</text>") && svg.contains(">val</text>"));
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    assert!(!svg.contains("NaN"));

    // checkpoints: every 5 steps and the last, keeping the 2 latest
    let kept: Vec<u64> = checkpoint::list_checkpoints(&dir)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, [20, 22]);
    assert_eq!(
        checkpoint::latest_checkpoint(&dir).unwrap(),
        Some(checkpoint::step_dir(&dir, 22))
    );
    let last = checkpoint::step_dir(&dir, 22);
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "config.json",
        "tokenizer.json",
    ] {
        assert!(last.join(f).is_file(), "{f} missing");
    }
    let st = checkpoint::read_checkpoint_state(&last).unwrap();
    assert_eq!((st.step, st.seed, st.accum), (22, 5, 2));
    assert_eq!(
        checkpoint::read_checkpoint_config(&last).unwrap().unwrap()["model"],
        "bigram"
    );
    let tok =
        CharTokenizer::from_json(&std::fs::read_to_string(last.join("tokenizer.json")).unwrap())
            .unwrap();
    assert_eq!(tok, tokenizer());
    // the optimizer file holds `.m` and `.v` per parameter
    let (ostate, _) =
        zerfoo::train::load_optimizer_state(last.join("optimizer.safetensors")).unwrap();
    assert_eq!(ostate, opt.state());
    assert!(ostate.params.contains_key("emb.weight"));
    // no temporary files left behind
    for e in std::fs::read_dir(&last).unwrap() {
        assert!(!e.unwrap().file_name().to_string_lossy().contains(".tmp-"));
    }

    // the best checkpoint holds the step with the lowest validation loss
    let (best_step, best_val) = metrics
        .iter()
        .filter_map(|m| m.val_loss.map(|v| (m.step, v)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let best = checkpoint::best_dir(&dir);
    let bst = checkpoint::read_checkpoint_state(&best).unwrap();
    assert_eq!(bst.step, best_step);
    assert_eq!(bst.best_val_loss, Some(best_val));
    assert_eq!(r.best_val_loss, Some(best_val));
    let mut fresh = bigram(50);
    let mut fresh_opt = adamw();
    checkpoint::load_checkpoint(&best, &mut fresh, &mut fresh_opt).unwrap();
    let t = Trainer::new(config(1, None));
    assert_eq!(t.evaluate(&fresh, &data, eval_loss).unwrap(), best_val);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn best_checkpoint_follows_improvements() {
    // training that goes wrong after step 8: the best checkpoint stays at 8
    let data = data();
    let dir = run_dir("best");
    let mut model = bigram(4);
    let mut opt = adamw();
    let mut trainer = Trainer::new(TrainConfig {
        eval_every: 4,
        ..config(8, Some(dir.clone()))
    });
    trainer
        .fit(
            &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
        )
        .unwrap();
    let at8 = checkpoint::read_checkpoint_state(checkpoint::best_dir(&dir)).unwrap();
    assert_eq!(at8.step, 8);
    // now train with a learning rate that ruins the model: val rises, best stays
    trainer.config_mut().max_steps = 16;
    let r = trainer
        .fit(
            &mut model,
            &mut opt,
            &Constant(-0.5),
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap();
    assert!(r.history.last().unwrap().val_loss.unwrap() > at8.best_val_loss.unwrap());
    let still = checkpoint::read_checkpoint_state(checkpoint::best_dir(&dir)).unwrap();
    assert_eq!(still.step, 8);
    assert_eq!(r.best_val_loss, at8.best_val_loss);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The loss bits and final weights of `steps` steps from `bigram(1)`, with
/// nothing stopping or gating the run.
fn uninterrupted(data: &TokenBatches, steps: u64) -> (LossBits, Vec<u32>) {
    let mut m = bigram(1);
    let mut o = adamw();
    let r = Trainer::new(config(steps, None))
        .fit(&mut m, &mut o, &SCHEDULE, data, train_loss, eval_loss)
        .unwrap();
    (loss_bits(&r), weights(&m))
}

#[test]
fn stop_flag_saves_a_checkpoint_and_resumes_exactly() {
    let data = data();
    let straight = uninterrupted(&data, 12);

    let dir = run_dir("stop");
    let mut model = bigram(1);
    let mut opt = adamw();
    let mut trainer = Trainer::new(TrainConfig {
        ckpt_every: 0,
        ..config(12, Some(dir.clone()))
    });
    let flag = trainer.stop_flag();
    // "Ctrl-C" during step 6 (0-based): that step finishes, then the run stops
    let stopping = |m: &Bigram, b: &Batch, at: &MicroStep| {
        if at.step == 6 && at.micro == 1 {
            flag.store(true, Ordering::SeqCst);
        }
        train_loss(m, b, at)
    };
    let r = trainer
        .fit(&mut model, &mut opt, &SCHEDULE, &data, stopping, eval_loss)
        .unwrap();
    assert_eq!(r.status, TrainStatus::Stopped);
    assert_eq!(r.step, 7);
    assert_eq!(r.history.len(), 7);
    let saved = checkpoint::step_dir(&dir, 7);
    assert_eq!(r.last_checkpoint.as_deref(), Some(saved.as_path()));
    assert_eq!(checkpoint::read_checkpoint_state(&saved).unwrap().step, 7);
    assert!(
        !flag.load(Ordering::SeqCst),
        "fit lowers the flag when it returns"
    );
    assert!(dir.join("loss.svg").is_file());

    let mut fresh = bigram(2);
    let mut fresh_opt = adamw();
    let mut t2 = Trainer::new(config(12, Some(dir.clone())));
    let st = t2
        .resume_latest(&mut fresh, &mut fresh_opt)
        .unwrap()
        .unwrap();
    assert_eq!(st.step, 7);
    let rest = t2
        .fit(
            &mut fresh,
            &mut fresh_opt,
            &SCHEDULE,
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap();
    assert_eq!(rest.status, TrainStatus::Finished);
    let mut all = loss_bits(&r);
    all.extend(loss_bits(&rest));
    assert_eq!(all, straight.0);
    assert_eq!(weights(&fresh), straight.1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn step_gate_is_asked_before_each_step_and_stops_like_the_flag() {
    use std::sync::{Arc, Mutex};
    let data = data();
    let dir = run_dir("gate");
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let mut model = bigram(1);
    let mut opt = adamw();
    let mut trainer = Trainer::new(TrainConfig {
        ckpt_every: 0,
        step_gate: Some(StepGate::new(move |step| {
            log.lock().unwrap().push(step);
            step < 3
        })),
        ..config(12, Some(dir.clone()))
    });
    let r = trainer
        .fit(
            &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
        )
        .unwrap();
    // Asked about steps 0-3; step 3 refused: three steps ran, then the run
    // stopped with a checkpoint, as with the stop flag.
    assert_eq!(*asked.lock().unwrap(), [0, 1, 2, 3]);
    assert_eq!(r.status, TrainStatus::Stopped);
    assert_eq!((r.step, r.history.len()), (3, 3));
    let saved = checkpoint::step_dir(&dir, 3);
    assert_eq!(r.last_checkpoint.as_deref(), Some(saved.as_path()));
    assert_eq!(checkpoint::read_checkpoint_state(&saved).unwrap().step, 3);

    // A gate that lets everything through changes nothing: the same losses
    // and weights as a run without one.
    let plain = uninterrupted(&data, 6);
    let mut m = bigram(1);
    let mut o = adamw();
    let r = Trainer::new(TrainConfig {
        step_gate: Some(StepGate::new(|_| true)),
        ..config(6, None)
    })
    .fit(&mut m, &mut o, &SCHEDULE, &data, train_loss, eval_loss)
    .unwrap();
    assert_eq!(r.status, TrainStatus::Finished);
    assert_eq!((loss_bits(&r), weights(&m)), plain);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrlc_flag_saves_a_checkpoint() {
    // the process-wide flag that the Ctrl-C handler raises, raised by hand
    let data = data();
    let dir = run_dir("ctrlc");
    let mut model = bigram(1);
    let mut opt = adamw();
    let mut trainer = Trainer::new(TrainConfig {
        handle_ctrlc: true,
        ..config(12, Some(dir.clone()))
    });
    let at_3 = |m: &Bigram, b: &Batch, at: &MicroStep| {
        if at.step == 3 {
            zerfoo::train::request_stop();
        }
        train_loss(m, b, at)
    };
    let r = trainer
        .fit(&mut model, &mut opt, &SCHEDULE, &data, at_3, eval_loss)
        .unwrap();
    assert_eq!((r.status, r.step), (TrainStatus::Stopped, 4));
    assert!(zerfoo::train::ctrlc_pressed());
    assert_eq!(
        checkpoint::latest_checkpoint(&dir).unwrap(),
        Some(checkpoint::step_dir(&dir, 4))
    );
    // the next fit lowers the flag and continues
    let r = trainer
        .fit(
            &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
        )
        .unwrap();
    assert_eq!((r.status, r.step), (TrainStatus::Finished, 12));
    assert!(!zerfoo::train::ctrlc_pressed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fresh_run_refuses_a_folder_with_checkpoints() {
    let data = data();
    let dir = run_dir("occupied");
    let mut model = bigram(1);
    let mut opt = adamw();
    Trainer::new(config(5, Some(dir.clone())))
        .fit(
            &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
        )
        .unwrap();
    let mut other = bigram(2);
    let mut other_opt = adamw();
    let e = Trainer::new(config(5, Some(dir.clone())))
        .fit(
            &mut other,
            &mut other_opt,
            &SCHEDULE,
            &data,
            train_loss,
            eval_loss,
        )
        .unwrap_err();
    assert!(e.to_string().contains("already holds checkpoints"), "{e}");
    // the first run's files are untouched
    assert_eq!(read_metrics(dir.join("metrics.jsonl")).unwrap().len(), 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_finite_loss_stops_without_updating() {
    let data = data();
    let three_steps = {
        let mut m = bigram(1);
        let mut o = adamw();
        Trainer::new(config(3, None))
            .fit(&mut m, &mut o, &SCHEDULE, &data, train_loss, eval_loss)
            .unwrap();
        weights(&m)
    };
    let mut model = bigram(1);
    let mut opt = adamw();
    let nan_at_3 = |m: &Bigram, b: &Batch, at: &MicroStep| {
        let l = train_loss(m, b, at)?;
        Ok(if at.step == 3 { l * f64::NAN } else { l })
    };
    let r = Trainer::new(config(10, None))
        .fit(&mut model, &mut opt, &SCHEDULE, &data, nan_at_3, eval_loss)
        .unwrap();
    assert_eq!(r.status, TrainStatus::Diverged);
    assert_eq!(r.step, 3);
    assert_eq!(r.history.len(), 3);
    assert_eq!(opt.steps(), 3);
    // the bad step was not applied: the model is the one after 3 steps
    assert_eq!(weights(&model), three_steps);
}

#[test]
fn accumulation_averages_micro_batch_gradients() {
    // one SGD step with accum = 2 equals a step on the mean of the two
    // micro-batches' gradients
    let data = data();
    let init = bigram(8);
    let mut model = bigram(8);
    let mut opt = Optimizer::sgd(1.0, 0.0, 0.0, false);
    Trainer::new(TrainConfig {
        grad_clip: None,
        eval_batches: 0,
        ..config(1, None)
    })
    .fit(
        &mut model,
        &mut opt,
        &Constant(0.5),
        &data,
        train_loss,
        eval_loss,
    )
    .unwrap();
    let g = |i: u64| {
        let b = data.train_batch(i).unwrap();
        let loss = nll(&init, ids(&b).traced(), &b);
        loss.backward().get(&init.emb.weight).unwrap().to_vec()
    };
    let (g0, g1) = (g(0), g(1));
    let w0 = init.emb.weight.to_vec();
    let w1 = model.emb.weight.to_vec();
    for i in 0..w0.len() {
        let want = w0[i] - 0.5 * (g0[i] + g1[i]) / 2.0;
        assert!((w1[i] - want).abs() < 1e-6, "{i}: {} vs {want}", w1[i]);
    }
}

#[test]
fn zero_accum_is_an_error() {
    let data = data();
    let mut model = bigram(1);
    let mut opt = adamw();
    let e = Trainer::new(TrainConfig {
        accum: 0,
        ..config(1, None)
    })
    .fit(
        &mut model, &mut opt, &SCHEDULE, &data, train_loss, eval_loss,
    );
    assert!(e.is_err());
}
