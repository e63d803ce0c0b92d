//! Rotary position embedding (RoPE), rotate-half convention (GPT-NeoX, HF
//! LLaMA/Gemma): on the last dim `hd` of a `(.., T, hd)` tensor, with
//! `h = hd / 2`,
//!
//! ```text
//! out[i]     = x[i] * cos(a_i) - x[i + h] * sin(a_i)
//! out[i + h] = x[i + h] * cos(a_i) + x[i] * sin(a_i)      (i < h)
//! a_i = (t + offset) * inv_freq[i],  inv_freq[i] = 1 / base^(2i / hd)
//! ```
//!
//! i.e. `x * cos + rotate_half(x) * sin` with `cos = cos(cat(a, a))`.

use num_traits::Zero;

use super::threads::for_each_chunk_mut;
use super::{CHUNK, PAR_THRESHOLD};
use crate::{FloatDtype, Layout, Real};

/// The `(cos, sin)` tables, `t_len x hd/2` row-major, in the compute type `A`.
///
/// The inverse frequencies and angles are computed in `A` the way PyTorch
/// builds them in that type (`1 / base^(2i/hd)`, then `position * inv_freq`,
/// one rounding each), and `cos`/`sin` are evaluated in `f64` on that angle
/// and rounded once to `A`. For `A = f64` this is the formula in `f64`.
pub fn rope_tables<A: Real>(t_len: usize, hd: usize, base: f64, offset: usize) -> (Vec<A>, Vec<A>) {
    let h = hd / 2;
    let inv: Vec<A> = (0..h)
        .map(|i| {
            let e = A::of_f64((2 * i) as f64) / A::of_f64(hd as f64);
            A::one() / A::of_f64(base.powf(e.as_f64()))
        })
        .collect();
    let mut cos = Vec::with_capacity(t_len * h);
    let mut sin = Vec::with_capacity(t_len * h);
    for t in 0..t_len {
        let pos = A::of_f64((t + offset) as f64);
        for &f in &inv {
            let ang = (pos * f).as_f64();
            cos.push(A::of_f64(ang.cos()));
            sin.push(A::of_f64(ang.sin()));
        }
    }
    (cos, sin)
}

/// Applies RoPE (or, with `inverse`, its inverse rotation — the backward)
/// to `src` of dims `(.., T, hd)` in any layout; the output is contiguous.
/// `hd` must be even.
pub fn rope<E: FloatDtype>(
    src: &[E],
    layout: &Layout,
    base: f64,
    offset: usize,
    inverse: bool,
) -> Vec<E> {
    let dims = layout.shape();
    let r = dims.len();
    assert!(r >= 2, "rope: needs at least two axes");
    let (t_len, hd) = (dims[r - 2], dims[r - 1]);
    assert!(hd % 2 == 0, "rope: the last dim must be even");
    let n = layout.numel();
    let mut out = vec![E::default(); n];
    if n == 0 {
        return out;
    }
    let h = hd / 2;
    let (cos, sin) = rope_tables::<E::Acc>(t_len, hd, base, offset);
    let rows_per_chunk = (CHUNK / hd).max(1);
    let body = |(c, chunk): (usize, &mut [E])| {
        let row0 = c * rows_per_chunk;
        let mut buf = vec![E::Acc::zero(); chunk.len()];
        let mut k = 0;
        layout.for_each_offset_in(row0 * hd, chunk.len(), |o| {
            buf[k] = src[o].to_acc();
            k += 1;
        });
        for (j, (x, y)) in buf.chunks(hd).zip(chunk.chunks_mut(hd)).enumerate() {
            let t = (row0 + j) % t_len;
            let (cs, sn) = (&cos[t * h..][..h], &sin[t * h..][..h]);
            for i in 0..h {
                let (x1, x2) = (x[i], x[i + h]);
                let (co, s) = (cs[i], if inverse { -sn[i] } else { sn[i] });
                y[i] = E::from_acc(x1 * co - x2 * s);
                y[i + h] = E::from_acc(x2 * co + x1 * s);
            }
        }
    };
    if n >= PAR_THRESHOLD {
        for_each_chunk_mut(&mut out, rows_per_chunk * hd, body);
    } else {
        out.chunks_mut(rows_per_chunk * hd)
            .enumerate()
            .for_each(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_pairs_by_position() {
        // T = 2, hd = 2: one frequency (1), angle = t + offset.
        let x = [1.0f64, 0.0, 1.0, 0.0];
        let l = Layout::contiguous(&[2, 2]);
        let y = rope(&x, &l, 10000.0, 1, false);
        let want = [1f64.cos(), 1f64.sin(), 2f64.cos(), 2f64.sin()];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
        let back = rope(&y, &l, 10000.0, 1, true);
        for (a, b) in back.iter().zip(x) {
            assert!((a - b).abs() < 1e-15);
        }
    }

    #[test]
    fn tables_use_hf_frequencies() {
        let (c, s) = rope_tables::<f64>(3, 4, 100.0, 0);
        // inv_freq = [1, 1/10]; row t=2: angles [2, 0.2]
        assert!((c[4] - 2f64.cos()).abs() < 1e-15 && (s[5] - 0.2f64.sin()).abs() < 1e-15);
    }

    #[test]
    fn parallel_chunks_match_serial_rows() {
        let (t, hd) = (64usize, 1024usize);
        let x: Vec<f32> = (0..t * hd).map(|i| ((i % 97) as f32) * 0.01).collect();
        let y = rope(&x, &Layout::contiguous(&[t, hd]), 10000.0, 3, false);
        let row = 37;
        let y1 = rope(
            &x[row * hd..(row + 1) * hd],
            &Layout::contiguous(&[1, hd]),
            10000.0,
            3 + row,
            false,
        );
        assert_eq!(&y[row * hd..(row + 1) * hd], &y1[..]);
    }
}
