//! `Debug` and `Display` like PyTorch's: nested brackets, aligned values,
//! long dims summarized with `...`, then dtype and shape.

use core::fmt;

use zerfoo_kernels::{Device, Dtype};

use super::Tensor;
use crate::shape::Shape;

/// Dims longer than this print their first and last [`EDGE`] entries only
/// (when the tensor has more than [`SUMMARIZE_ABOVE`] elements).
const EDGE: usize = 3;
const SUMMARIZE_ABOVE: usize = 1000;

fn format_values<E: Dtype>(values: &[E], dims: &[usize], out: &mut String) {
    let summarize = values.len() > SUMMARIZE_ABOVE;
    let is_float = E::DTYPE.is_float();
    let texts: Vec<String> = values
        .iter()
        .map(|v| {
            let x = v.to_f64();
            if !is_float {
                format!("{x}")
            } else if x.is_nan() {
                "nan".into()
            } else if x.is_infinite() {
                if x > 0.0 { "inf" } else { "-inf" }.into()
            } else {
                format!("{x:.4}")
            }
        })
        .collect();
    let width = texts.iter().map(|t| t.len()).max().unwrap_or(1);
    fn rec(
        texts: &[String],
        dims: &[usize],
        depth: usize,
        width: usize,
        summarize: bool,
        out: &mut String,
    ) {
        if dims.is_empty() {
            out.push_str(&format!("{:>width$}", texts[0]));
            return;
        }
        let n = dims[0];
        let stride: usize = dims[1..].iter().product();
        out.push('[');
        let skip = summarize && n > 2 * EDGE;
        let mut first = true;
        for i in 0..n {
            if skip && i == EDGE {
                out.push_str(if dims.len() == 1 { ", ..." } else { ",\n" });
                if dims.len() > 1 {
                    out.push_str(&" ".repeat(depth + 8));
                    out.push_str("...");
                }
            }
            if skip && (EDGE..n - EDGE).contains(&i) {
                continue;
            }
            if !first {
                if dims.len() == 1 {
                    out.push_str(", ");
                } else {
                    out.push(',');
                    out.push_str(&"\n".repeat(dims.len() - 1));
                    out.push_str(&" ".repeat(depth + 8));
                }
            }
            first = false;
            rec(
                &texts[i * stride..(i + 1) * stride],
                &dims[1..],
                depth + 1,
                width,
                summarize,
                out,
            );
        }
        out.push(']');
    }
    rec(&texts, dims, 0, width, summarize, out);
}

impl<S: Shape, E: Dtype, D: Device, T> fmt::Display for Tensor<S, E, D, T> {
    /// ```
    /// use zerfoo::prelude::*;
    /// let t = Tensor::<(U2, U2), f32>::from_vec((U2::default(), U2::default()), vec![1.0, -2.5, 3.0, 4.0]).unwrap();
    /// assert_eq!(
    ///     t.to_string(),
    ///     "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]], dtype=f32, shape=[2, 2])"
    /// );
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("tensor(");
        format_values(&self.to_vec(), &self.dims(), &mut s);
        write!(f, "{s}, dtype={}, shape={:?}", E::DTYPE, &*self.dims())?;
        let dev = self.device.name();
        if dev != "cpu" {
            write!(f, ", device={dev}")?;
        }
        f.write_str(")")
    }
}

impl<S: Shape, E: Dtype, D: Device, T> fmt::Debug for Tensor<S, E, D, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor {{ shape: {:?}, dtype: {}, device: {}, tape: {}, id: {:?} }}\n{}",
            self.shape,
            E::DTYPE,
            self.device.name(),
            core::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or(""),
            self.id,
            self
        )
    }
}
