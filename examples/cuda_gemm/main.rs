//! Matrix-product throughput on an NVIDIA GPU through zerfoo's typed
//! `matmul` (cuBLAS underneath), per dtype, with a correctness check against
//! an f64 product on the CPU. `bench/gemm_cuda_vs_pytorch.py` runs this next
//! to `torch.mm` on the same GPU and prints the ratio.
//!
//! ```text
//! cargo build --release --features cuda --example cuda_gemm
//! target/release/examples/cuda_gemm --sizes 4096 --dtypes bf16,f32
//! ```
//!
//! Output, one line per (size, dtype), kept stable for the script:
//! `gemm <m> <k> <n> <dtype> <tf32 0|1> <ms> <tflops> <rel_err>`.

use std::time::Instant;

use clap::Parser;
use zerfoo::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "GEMM TFLOP/s on a CUDA GPU through zerfoo")]
struct Args {
    /// Square sizes `n` (an `n x n` by `n x n` product each).
    #[arg(long, value_delimiter = ',', default_value = "4096")]
    sizes: Vec<usize>,
    /// Element types: bf16, f16, f32, f64.
    #[arg(long, value_delimiter = ',', default_value = "bf16,f16,f32")]
    dtypes: Vec<String>,
    /// Timed products per (size, dtype), after `warmup` untimed ones.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed products first (module load, cuBLAS handle, allocator).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Let f32 products use TF32 tensor cores.
    #[arg(long)]
    tf32: bool,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
}

type Mat<E, D = Cpu> = Tensor<(Dyn, Dyn), E, D>;

/// `‖got - want‖ / ‖want‖`.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den).sqrt()
}

/// Times `iters` products of two `n x n` matrices in `E` on `dev`; returns
/// (ms per product, TFLOP/s, relative error of a 256-row slice against f64).
fn time_one<E: FloatDtype>(dev: &Cuda, n: usize, args: &Args) -> Result<(f64, f64, f64)> {
    let a32: Mat<f32> = Tensor::randn((Dyn(n), Dyn(n)), 1);
    let b32: Mat<f32> = Tensor::randn((Dyn(n), Dyn(n)), 2);
    let a: Mat<E, Cuda> = a32.clone().to_dtype::<E>().try_to_device(dev)?;
    let b: Mat<E, Cuda> = b32.clone().to_dtype::<E>().try_to_device(dev)?;
    for _ in 0..args.warmup {
        drop(a.clone().try_matmul(b.clone())?);
    }
    dev.synchronize()?;
    let start = Instant::now();
    let mut last = None;
    for _ in 0..args.iters {
        last = Some(a.clone().try_matmul(b.clone())?);
    }
    dev.synchronize()?;
    let secs = start.elapsed().as_secs_f64() / args.iters.max(1) as f64;
    let flops = 2.0 * (n as f64).powi(3);
    // Check the first rows of the last product against f64 on the CPU, from
    // the same (rounded) inputs.
    let c = last.expect("at least one product").to_f64_vec();
    let rows = n.min(256);
    let a_in = a.to_f64_vec();
    let b_in = b.to_f64_vec();
    let a_rows: Mat<f64> = Tensor::from_vec((Dyn(rows), Dyn(n)), a_in[..rows * n].to_vec())?;
    let b_all: Mat<f64> = Tensor::from_vec((Dyn(n), Dyn(n)), b_in)?;
    let want = a_rows.try_matmul(b_all)?.to_f64_vec();
    let err = rel_err(&c[..rows * n], &want);
    Ok((secs * 1e3, flops / secs / 1e12, err))
}

fn main() -> std::result::Result<(), String> {
    let args = Args::parse();
    let dev = Cuda::new(args.device).map_err(|e| Error::from(e).to_string())?;
    dev.set_allow_tf32(args.tf32);
    println!("device: {dev:?}");
    for &n in &args.sizes {
        for dt in &args.dtypes {
            let r = match dt.as_str() {
                "bf16" => time_one::<bf16>(&dev, n, &args),
                "f16" => time_one::<f16>(&dev, n, &args),
                "f32" => time_one::<f32>(&dev, n, &args),
                "f64" => time_one::<f64>(&dev, n, &args),
                d => return Err(format!("unknown dtype `{d}` (bf16, f16, f32, f64)")),
            };
            let (ms, tflops, err) = r.map_err(|e| format!("{dt} {n}: {e}"))?;
            let tf32 = u8::from(args.tf32 && dt == "f32");
            println!("gemm {n} {n} {n} {dt} {tf32} {ms:.4} {tflops:.2} {err:.3e}");
        }
    }
    Ok(())
}
