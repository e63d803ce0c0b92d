//! Seeded weight initialization: reproducible, and with the moments and
//! bounds each scheme promises.

use zerfoo::nn::init;
use zerfoo::prelude::*;

dim!(Fan = 256);
dim!(Out = 128);

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    (mean, var.sqrt(), max)
}

#[test]
fn schemes_have_their_promised_spread_and_are_reproducible() {
    let shape = (Out, Fan);
    let (fan_in, fan_out) = (256.0f64, 128.0f64);
    // normal(std)
    let w: Tensor<(Out, Fan), f64> = init::normal(shape, 0.02, 1);
    let (m, s, _) = stats(&w.to_vec());
    assert!(
        m.abs() < 0.002 && (s / 0.02 - 1.0).abs() < 0.03,
        "normal: {m} {s}"
    );
    // Xavier uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out)), std = b / sqrt(3)
    let b = (6.0 / (fan_in + fan_out)).sqrt();
    let w: Tensor<(Out, Fan), f64> = init::xavier_uniform(shape, 256, 128, 1.0, 2);
    let (_, s, max) = stats(&w.to_vec());
    assert!(max <= b && max > 0.99 * b, "xavier bound {max} vs {b}");
    assert!((s / (b / 3f64.sqrt()) - 1.0).abs() < 0.03);
    // Xavier normal: std = sqrt(2 / (fan_in + fan_out))
    let w: Tensor<(Out, Fan), f64> = init::xavier_normal(shape, 256, 128, 1.0, 3);
    let (_, s, _) = stats(&w.to_vec());
    assert!((s / (2.0 / (fan_in + fan_out)).sqrt() - 1.0).abs() < 0.03);
    // Kaiming uniform / normal for ReLU
    let w: Tensor<(Out, Fan), f64> = init::kaiming_uniform(shape, 256, 4);
    let (_, _, max) = stats(&w.to_vec());
    assert!(max <= (6.0 / fan_in).sqrt());
    let w: Tensor<(Out, Fan), f64> = init::kaiming_normal(shape, 256, 5);
    let (_, s, _) = stats(&w.to_vec());
    assert!((s / (2.0 / fan_in).sqrt() - 1.0).abs() < 0.03);
    // PyTorch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    let w: Tensor<(Out, Fan), f32> = init::torch_default(shape, 256, 6);
    assert!(w.to_vec().iter().all(|x| x.abs() <= 1.0 / 16.0));
    // same seed, same tensor; another seed, another tensor
    let a: Tensor<(Out, Fan), f32> = init::kaiming_normal(shape, 256, 9);
    let b2: Tensor<(Out, Fan), f32> = init::kaiming_normal(shape, 256, 9);
    let c: Tensor<(Out, Fan), f32> = init::kaiming_normal(shape, 256, 10);
    assert_eq!(a.to_vec(), b2.to_vec());
    assert_ne!(a.to_vec(), c.to_vec());
}
