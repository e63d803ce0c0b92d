//! `Debug` and `Display` like PyTorch's (`torch._tensor_str` with default
//! print options): nested brackets, values right-aligned to one width, four
//! decimals (`1.5000`), integer-valued floats as `1.`, scientific notation
//! (`1.0000e-05`) when magnitudes span more than 1000× or leave
//! `[1e-4, 1e8]`, tensors over 1000 elements summarized with `...`, rows
//! wrapped at 80 columns — then our dtype and shape.

use core::fmt;

use zerfoo_kernels::{Device, Dtype};

use super::Tensor;
use crate::shape::Shape;

/// Dims longer than `2 * EDGE` print their first and last `EDGE` entries
/// only, when the tensor has more than `SUMMARIZE_ABOVE` elements.
const EDGE: usize = 3;
const SUMMARIZE_ABOVE: usize = 1000;
/// Rows of numbers wrap to stay within this many columns.
const LINE_WIDTH: usize = 80;
/// `tensor(` — the indent of every continuation line.
const PREFIX: &str = "tensor(";

/// How every element of one tensor is written (PyTorch's `_Formatter`).
struct Formatter {
    float: bool,
    int_mode: bool,
    sci_mode: bool,
    width: usize,
}

/// Python's `"{:.4e}".format(x)`: `1.5000e-05`, `-2.0000e+10`, `nan`, `inf`.
fn sci(x: f64) -> String {
    if !x.is_finite() {
        return nonfinite(x).to_string();
    }
    let s = format!("{x:.4e}");
    let (mantissa, exp) = s.split_once('e').expect("`{:e}` writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes an integer exponent");
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

fn nonfinite(x: f64) -> &'static str {
    if x.is_nan() {
        "nan"
    } else if x > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

impl Formatter {
    /// Chooses the mode and width from the values that will be shown.
    fn new(shown: &[f64], float: bool) -> Self {
        let mut f = Formatter {
            float,
            int_mode: true,
            sci_mode: false,
            width: 1,
        };
        if !float {
            f.width = shown
                .iter()
                .map(|&v| (v as i64).to_string().len())
                .max()
                .unwrap_or(1)
                .max(1);
            return f;
        }
        let vals: Vec<f64> = shown
            .iter()
            .copied()
            .filter(|v| v.is_finite() && *v != 0.0)
            .collect();
        if vals.is_empty() {
            return f;
        }
        let min = vals.iter().map(|v| v.abs()).fold(f64::INFINITY, f64::min);
        let max = vals.iter().map(|v| v.abs()).fold(0.0, f64::max);
        f.int_mode = vals.iter().all(|v| *v == v.ceil());
        let wide = max / min > 1000.0 || max > 1.0e8;
        f.sci_mode = if f.int_mode {
            wide
        } else {
            wide || min < 1.0e-4
        };
        let len = |v: &f64| {
            if f.sci_mode {
                sci(*v).len()
            } else if f.int_mode {
                format!("{v:.0}").len() + 1
            } else {
                format!("{v:.4}").len()
            }
        };
        f.width = vals.iter().map(len).max().unwrap_or(1).max(1);
        f
    }

    /// One element, right-aligned to the common width.
    fn format(&self, x: f64) -> String {
        let s = if !self.float {
            (x as i64).to_string()
        } else if !x.is_finite() {
            nonfinite(x).to_string()
        } else if self.sci_mode {
            sci(x)
        } else if self.int_mode {
            format!("{x:.0}.")
        } else {
            format!("{x:.4}")
        };
        format!("{s:>w$}", w = self.width)
    }
}

/// The indices of one dim that are shown.
fn shown_indices(n: usize, summarize: bool) -> Vec<usize> {
    if summarize && n > 2 * EDGE {
        (0..EDGE).chain(n - EDGE..n).collect()
    } else {
        (0..n).collect()
    }
}

/// Collects the values that will be shown (row-major), for the formatter.
fn shown_values(values: &[f64], dims: &[usize], summarize: bool, out: &mut Vec<f64>) {
    let Some((&n, rest)) = dims.split_first() else {
        out.push(values[0]);
        return;
    };
    let stride: usize = rest.iter().product();
    for i in shown_indices(n, summarize) {
        shown_values(&values[i * stride..(i + 1) * stride], rest, summarize, out);
    }
}

/// PyTorch's `_tensor_str_with_formatter`: `indent` is the column the
/// opening bracket of this level sits after.
fn tensor_str(
    values: &[f64],
    dims: &[usize],
    indent: usize,
    summarize: bool,
    f: &Formatter,
) -> String {
    let Some((&n, rest)) = dims.split_first() else {
        return f.format(values[0]);
    };
    let skip = summarize && n > 2 * EDGE;
    if rest.is_empty() {
        // a row of numbers, wrapped to the line width
        let per_line = ((LINE_WIDTH.saturating_sub(indent)) / (f.width + 2)).max(1);
        let mut items: Vec<String> = Vec::new();
        for i in shown_indices(n, summarize) {
            if skip && i == n - EDGE {
                items.push(" ...".into());
            }
            items.push(f.format(values[i]));
        }
        let lines: Vec<String> = items.chunks(per_line).map(|c| c.join(", ")).collect();
        let sep = format!(",\n{}", " ".repeat(indent + 1));
        return format!("[{}]", lines.join(&sep));
    }
    let stride: usize = rest.iter().product();
    let mut slices: Vec<String> = Vec::new();
    for i in shown_indices(n, summarize) {
        if skip && i == n - EDGE {
            slices.push("...".into());
        }
        let sub = &values[i * stride..(i + 1) * stride];
        slices.push(tensor_str(sub, rest, indent + 1, summarize, f));
    }
    let sep = format!(",{}{}", "\n".repeat(dims.len() - 1), " ".repeat(indent + 1));
    format!("[{}]", slices.join(&sep))
}

/// The bracketed values, as PyTorch prints them inside `tensor(...)`.
fn format_values<E: Dtype>(values: &[E], dims: &[usize]) -> String {
    if values.is_empty() {
        return "[]".into();
    }
    let values: Vec<f64> = values.iter().map(|v| v.to_f64()).collect();
    let summarize = values.len() > SUMMARIZE_ABOVE;
    let mut shown = Vec::new();
    shown_values(&values, dims, summarize, &mut shown);
    let f = Formatter::new(&shown, E::DTYPE.is_float());
    tensor_str(&values, dims, PREFIX.len(), summarize, &f)
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
        let body = format_values(&self.to_vec(), &self.dims());
        write!(
            f,
            "{PREFIX}{body}, dtype={}, shape={:?}",
            E::DTYPE,
            &*self.dims()
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn show(values: &[f64], dims: &[usize]) -> String {
        format_values(values, dims)
    }

    #[test]
    fn python_style_scientific() {
        assert_eq!(sci(1.5e-5), "1.5000e-05");
        assert_eq!(sci(-2.0e10), "-2.0000e+10");
        assert_eq!(sci(0.0), "0.0000e+00");
        assert_eq!(sci(1e100), "1.0000e+100");
        assert_eq!(sci(f64::NEG_INFINITY), "-inf");
    }

    #[test]
    fn modes() {
        assert_eq!(show(&[1.0, -2.5, 3.0], &[3]), "[ 1.0000, -2.5000,  3.0000]");
        assert_eq!(show(&[1.0, 2.0, 3.0], &[3]), "[1., 2., 3.]");
        assert_eq!(show(&[1e-5, 1.0], &[2]), "[1.0000e-05, 1.0000e+00]");
        assert_eq!(show(&[1.5, f64::NAN], &[2]), "[1.5000,    nan]");
        assert_eq!(show(&[1.0, f64::INFINITY], &[2]), "[1., inf]");
        assert_eq!(show(&[0.0, -0.0], &[2]), "[0., -0.]");
        assert_eq!(show(&[3.5], &[]), "3.5000");
    }
}
