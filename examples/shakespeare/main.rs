//! Trains a character-level GPT on Tiny Shakespeare (nanoGPT's
//! `shakespeare_char` CPU config) and samples from it.
//!
//! ```text
//! cargo run --release --example shakespeare
//! cargo run --release --example shakespeare -- --max-iters 20 --eval-every 10
//! cargo run --release --example shakespeare -- sample --checkpoint runs/shakespeare/checkpoints/best --prompt "ROMEO:" --tokens 200
//! # on an NVIDIA GPU (the CUDA backend is the `cuda` feature)
//! cargo run --release --features cuda --example shakespeare -- --device cuda --dtype bf16
//! # ... and where the GPU's time goes, per kernel
//! ZERFOO_CUDA_PROFILE=1 cargo run --release --features cuda --example shakespeare -- --device cuda --max-iters 20
//! # where the CPU's time goes, per kernel and product shape
//! ZERFOO_PROFILE=1 cargo run --release --example shakespeare -- --max-iters 20
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use zerfoo::data::{Batch, TokenDataset, TorchGenerator};
use zerfoo::models::{sample_from_checkpoint, GenerateOpts, Gpt, GptConfig};
use zerfoo::nn::Module;
use zerfoo::optim::{no_decay_on_norms_and_biases, CosineWithWarmup, GroupConfig, Optimizer};
use zerfoo::prelude::*;
use zerfoo::tokenizer::{CharTokenizer, Tokenizer};
use zerfoo::train::{
    BatchSource, MicroStep, NanoGptBatches, Progress, StepGate, TokenBatches, TrainConfig,
    TrainReport, Trainer,
};

#[derive(Parser, Debug)]
#[command(about = "Train a character-level GPT on Tiny Shakespeare")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    width: usize,
    /// Context length.
    #[arg(long, default_value_t = 64)]
    block: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 12)]
    batch: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    max_iters: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 1e-4)]
    min_lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// AdamW beta1.
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    /// AdamW beta2.
    #[arg(long, default_value_t = 0.99)]
    beta2: f64,
    /// Weight decay (not on biases and norms).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Dropout on the embeddings.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Biases in the linear layers and LayerNorms (nanoGPT's default: none).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    bias: bool,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 250)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 20)]
    eval_iters: usize,
    /// Checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    ckpt_every: u64,
    /// Seed of the weights and the batches.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Random draws of the weights and batches: `torch` draws them from
    /// PyTorch's generator in nanoGPT's order (with the same seed, the
    /// weights and batches of nanoGPT's own run); `counter` uses zerfoo's
    /// counter-based draws.
    #[arg(long, value_enum, default_value_t = RngKind::Torch)]
    rng: RngKind,
    /// Run folder (metrics, loss.svg, checkpoints).
    #[arg(long, default_value = "runs/shakespeare")]
    out_dir: PathBuf,
    /// Resume from this checkpoint folder.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Device: `cpu`, `cuda` / `cuda:N` (an NVIDIA GPU; build with
    /// `--features cuda`), or `cuda-emulated` (the CUDA kernels run on the
    /// host: very slow, for checking the GPU path without a GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dtype: f32, f64, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Characters to sample at the end.
    #[arg(long, default_value_t = 500)]
    sample_tokens: usize,
    /// Run each step only when told to (for the side-by-side benchmark's
    /// `--paired` mode): before each step, print `ready STEP` on stdout and
    /// wait for a line on stdin; `go` runs the step, anything else (or the
    /// end of stdin) stops the run.
    #[arg(long, default_value_t = false)]
    step_gate: bool,
}

/// Where the initial weights and the batches come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RngKind {
    /// PyTorch's generator, in nanoGPT's order of draws.
    Torch,
    /// zerfoo's counter-based draws.
    Counter,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate text from a checkpoint.
    Sample {
        /// A checkpoint folder (e.g. runs/shakespeare/checkpoints/best).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text to continue.
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Characters to generate.
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        /// Sampling temperature (0: greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Keep only the k most likely characters.
        #[arg(long, default_value_t = 200)]
        top_k: usize,
        /// Sampler seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() {
    // Kernels start on `main` itself instead of waking pool threads per op.
    let _ = zerfoo::init_cpu_threads(None);
    // Freed activations are reused from the heap, not mapped again per step.
    zerfoo::retain_freed_memory();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // ZERFOO_PROFILE=1: where the CPU's time went
    if let Some(table) = zerfoo::profile::report() {
        println!("{table}");
    }
}

fn run(args: Args) -> std::result::Result<(), String> {
    if let Some(Cmd::Sample {
        checkpoint,
        prompt,
        tokens,
        temperature,
        top_k,
        seed,
    }) = &args.cmd
    {
        let opts = GenerateOpts {
            temperature: *temperature,
            top_k: Some(*top_k),
            top_p: None,
            seed: *seed,
        };
        let text =
            sample_from_checkpoint(checkpoint, prompt, *tokens, opts).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    match args.device.as_str() {
        "cpu" => with_dtype(&args, &Cpu),
        #[cfg(feature = "cuda")]
        d if d == "cuda" || d.starts_with("cuda:") => {
            let ordinal = match d.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("`{d}`: expected cuda or cuda:N"))?,
                None => 0,
            };
            let dev = Cuda::new(ordinal).map_err(|e| Error::from(e).to_string())?;
            println!("device: {dev:?}");
            with_dtype(&args, &dev)?;
            // ZERFOO_CUDA_PROFILE=1: where the GPU's time went
            if let Some(table) = dev.profile_report().map_err(|e| e.to_string())? {
                println!("{table}");
            }
            Ok(())
        }
        #[cfg(feature = "cuda")]
        "cuda-emulated" => {
            let cap = zerfoo::kernels::cuda::Capability::new(9, 0);
            let dev = Cuda::emulated(cap).map_err(|e| Error::from(e).to_string())?;
            with_dtype(&args, &dev)
        }
        #[cfg(not(feature = "cuda"))]
        d if d.starts_with("cuda") => Err(format!(
            "device `{d}`: this binary was built without the CUDA backend; \
             rebuild with `--features cuda`"
        )),
        d => Err(format!("unknown device `{d}` (cpu, cuda, cuda:N)")),
    }
}

fn with_dtype<D: Backend>(args: &Args, dev: &D) -> std::result::Result<(), String> {
    match args.dtype.as_str() {
        "f32" => train::<f32, D>(args, dev),
        "f64" => train::<f64, D>(args, dev),
        "f16" => train::<f16, D>(args, dev),
        "bf16" => train::<bf16, D>(args, dev),
        d => return Err(format!("unknown dtype `{d}` (f32, f64, f16 or bf16)")),
    }
    .map_err(|e| e.to_string())
}

/// The bundled corpus: next to the sources this binary was built from, or,
/// for a binary copied to another machine, under the working directory.
fn corpus() -> std::io::Result<String> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shakespeare/input.txt");
    let here = Path::new("examples/shakespeare/input.txt");
    let path = if built.exists() {
        built.as_path()
    } else {
        here
    };
    std::fs::read_to_string(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{} (nor {}): {e}", built.display(), here.display()),
        )
    })
}

/// The `--step-gate` check: announces the step on stdout, then runs it if
/// stdin's next line is `go`.
fn stdin_gate(step: u64) -> bool {
    use std::io::{BufRead, Write};
    let announced = {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {step}").and_then(|_| out.flush())
    };
    if announced.is_err() {
        return false;
    }
    let mut line = String::new();
    matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) && line.trim() == "go"
}

/// Trains `model` on `data` with the loss and evaluation of a GPT.
fn fit_on<E: FloatDtype, D: Backend, S: BatchSource<Batch = Batch>>(
    trainer: &mut Trainer,
    model: &mut Gpt<E, D>,
    opt: &mut Optimizer,
    schedule: &CosineWithWarmup,
    data: &S,
) -> Result<TrainReport> {
    trainer.fit(
        model,
        opt,
        schedule,
        data,
        |m: &Gpt<E, D>, b: &Batch, s: &MicroStep| {
            let (x, y) = ids(b)?;
            m.try_loss_train(x.traced(), &y, s.seed)
        },
        |m: &Gpt<E, D>, b: &Batch| {
            let (x, y) = ids(b)?;
            m.try_loss(x, &y)
        },
    )
}

fn gpt_config(args: &Args, vocab: usize) -> GptConfig {
    GptConfig {
        vocab,
        block: args.block,
        layers: args.layers,
        heads: args.heads,
        width: args.width,
        dropout: args.dropout,
        bias: args.bias,
    }
}

type Ids = Tensor<(Dyn, Dyn), i64>;

fn ids(b: &Batch) -> Result<(Ids, Ids)> {
    let shape = (Dyn(b.batch), Dyn(b.block));
    Ok((
        Tensor::from_vec(shape, b.inputs.clone())?,
        Tensor::from_vec(shape, b.targets.clone())?,
    ))
}

fn train<E: FloatDtype, D: Backend>(args: &Args, dev: &D) -> Result<()> {
    let text = corpus().map_err(|e| Error::Format {
        what: "input.txt".into(),
        reason: e.to_string(),
    })?;
    let tok = CharTokenizer::from_corpus(&text);
    let (train, val) = TokenDataset::new(tok.encode(&text)?).split(0.9)?;
    let cfg = gpt_config(args, tok.vocab_size());
    let mut gen = TorchGenerator::new(args.seed);
    let model = match args.rng {
        RngKind::Torch => Gpt::<E>::try_new_nanogpt(cfg, &mut gen)?,
        RngKind::Counter => Gpt::<E>::try_new(cfg, args.seed)?,
    };
    let mut model: Gpt<E, D> = model.try_to_device(dev)?;
    // The model's sizes (read back by `sample`) plus the training settings.
    let mut run_config = cfg.to_json();
    let training = json!({
        "dtype": args.dtype, "batch": args.batch, "max_iters": args.max_iters,
        "lr": args.lr, "min_lr": args.min_lr, "warmup": args.warmup,
        "betas": [args.beta1, args.beta2], "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip, "seed": args.seed,
        "rng": format!("{:?}", args.rng).to_lowercase(),
    });
    if let (Some(all), Value::Object(more)) = (run_config.as_object_mut(), training) {
        all.extend(more);
    }
    println!("config: {run_config}");
    println!(
        "{} parameters, {} train / {} val characters, vocabulary {}",
        model.num_params(),
        train.len(),
        val.len(),
        cfg.vocab
    );
    let mut opt = Optimizer::adamw(args.lr, (args.beta1, args.beta2), 1e-8, args.weight_decay)
        .with_groups(
            vec![
                GroupConfig {
                    weight_decay: args.weight_decay,
                    lr_scale: 1.0,
                },
                GroupConfig {
                    weight_decay: 0.0,
                    lr_scale: 1.0,
                },
            ],
            no_decay_on_norms_and_biases,
        );
    let schedule = CosineWithWarmup {
        max_lr: args.lr,
        min_lr: args.min_lr,
        warmup: args.warmup,
        decay_steps: args.max_iters as usize,
    };
    let train_config = TrainConfig {
        max_steps: args.max_iters,
        grad_clip: (args.grad_clip > 0.0).then_some(args.grad_clip),
        eval_every: args.eval_every,
        eval_batches: args.eval_iters,
        ckpt_every: args.ckpt_every,
        seed: args.seed,
        run_dir: Some(args.out_dir.clone()),
        progress: Progress::Auto,
        handle_ctrlc: true,
        config: Some(run_config),
        tokenizer_json: Some(tok.to_json()),
        step_gate: args.step_gate.then(|| StepGate::new(stdin_gate)),
        ..Default::default()
    };
    let mut trainer = Trainer::new(train_config.clone());
    if let Some(dir) = &args.resume {
        let st = trainer.resume(dir, &mut model, &mut opt)?;
        println!("resumed from {} at step {}", dir.display(), st.step);
    }
    let started = Instant::now();
    let start_step = trainer.start_step();
    let (batch, block) = (args.batch, args.block);
    let report = match args.rng {
        RngKind::Torch => {
            let data = NanoGptBatches::new(train, val, batch, block, &train_config, gen)?;
            fit_on(&mut trainer, &mut model, &mut opt, &schedule, &data)?
        }
        RngKind::Counter => {
            let seed = args.seed;
            let data = TokenBatches {
                train,
                val,
                batch,
                block,
                seed,
            };
            fit_on(&mut trainer, &mut model, &mut opt, &schedule, &data)?
        }
    };
    let steps = report.step.saturating_sub(start_step).max(1);
    for m in report.history.iter().filter(|m| m.val_loss.is_some()) {
        println!(
            "step {:>5}: train loss {:.4}, val loss {:.4}",
            m.step,
            m.train_loss,
            m.val_loss.unwrap_or(f64::NAN)
        );
    }
    println!(
        "{:?} after {} steps, {:.1} ms/iteration",
        report.status,
        report.step,
        started.elapsed().as_secs_f64() * 1e3 / steps as f64
    );
    let prompt = tok.encode("\n")?;
    let opts = GenerateOpts {
        temperature: 0.8,
        top_k: Some(200),
        top_p: None,
        seed: args.seed,
    };
    let out = model.generate(&prompt, args.sample_tokens, opts, true)?;
    println!("--- sample ---\n{}\n--------------", tok.decode(&out)?);
    println!(
        "saved: metrics and loss.svg in {}, checkpoints in {}",
        args.out_dir.display(),
        args.out_dir.join("checkpoints").display()
    );
    if let Some(best) = report.best_val_loss {
        println!("best val loss {best:.4}");
    }
    Ok(())
}
