//! Shared by the attention and transformer tests: an independent f64
//! implementation of attention written as explicit loops over batches,
//! heads and positions (reading only the layer's weights and settings), and
//! a finite-difference check of every parameter's gradient.

#![allow(dead_code)]

use zerfoo::nn::{Linear, Module, MultiHeadAttention, ParamVisitorMut, RmsNorm};
use zerfoo::prelude::*;
use zerfoo_tests::{check_grad1, numeric_grad, rel_err};

/// A linear layer as plain vectors: `y = W x + b`, `W` row-major `[out, in]`.
pub struct Lin {
    pub w: Vec<f64>,
    pub b: Option<Vec<f64>>,
    pub out: usize,
    pub inp: usize,
}

impl Lin {
    pub fn of<I: Dim, O: Dim>(l: &Linear<I, O, f64>) -> Self {
        let d = l.weight.dims();
        Lin {
            w: l.weight.to_f64_vec(),
            b: l.bias.as_ref().map(|b| b.to_f64_vec()),
            out: d[0],
            inp: d[1],
        }
    }

    /// Applies the layer to each row (of `inp` values) of `x`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut y = Vec::with_capacity(x.len() / self.inp * self.out);
        for row in x.chunks(self.inp) {
            for o in 0..self.out {
                let mut acc = self.b.as_ref().map_or(0.0, |b| b[o]);
                for (i, &xi) in row.iter().enumerate() {
                    acc += self.w[o * self.inp + i] * xi;
                }
                y.push(acc);
            }
        }
        y
    }
}

/// RMS norm of one vector: `x / sqrt(mean(x²) + eps) * w` (or `* (1 + w)`).
pub struct Rms {
    pub w: Vec<f64>,
    pub eps: f64,
    pub offset: bool,
}

impl Rms {
    pub fn of<D: Dim>(n: &RmsNorm<D, f64>) -> Self {
        Rms {
            w: n.weight.to_f64_vec(),
            eps: n.eps,
            offset: n.offset,
        }
    }
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + self.eps).sqrt();
        x.iter()
            .zip(&self.w)
            .map(|(v, w)| v * r * if self.offset { 1.0 + w } else { *w })
            .collect()
    }
}

/// Layer norm of one vector (biased variance).
pub fn layer_norm(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let r = 1.0 / (var + eps).sqrt();
    (0..x.len())
        .map(|i| (x[i] - mean) * r * w[i] + b[i])
        .collect()
}

/// Rotate-half RoPE of one head vector at position `pos`.
pub fn rope(x: &[f64], pos: usize, base: f64) -> Vec<f64> {
    let half = x.len() / 2;
    let mut y = x.to_vec();
    for i in 0..half {
        let inv = 1.0 / base.powf(2.0 * i as f64 / x.len() as f64);
        let a = pos as f64 * inv;
        let (c, s) = (a.cos(), a.sin());
        y[i] = x[i] * c - x[i + half] * s;
        y[i + half] = x[i + half] * c + x[i] * s;
    }
    y
}

/// An attention layer's weights and settings, run with explicit loops.
pub struct RefAttn {
    pub q: Lin,
    pub k: Lin,
    pub v: Lin,
    pub o: Lin,
    pub qn: Option<Rms>,
    pub kn: Option<Rms>,
    pub d: usize,
    pub h: usize,
    pub kvh: usize,
    pub hd: usize,
    pub causal: bool,
    pub window: Option<usize>,
    pub rope: Option<f64>,
    pub scale: f64,
}

impl RefAttn {
    pub fn of<D: Dim, H: Dim, Hd: Dim, KvH: Dim>(
        m: &MultiHeadAttention<D, H, Hd, f64, KvH>,
    ) -> Self {
        let hd = m.head_dim().size();
        RefAttn {
            q: Lin::of(&m.q_proj),
            k: Lin::of(&m.k_proj),
            v: Lin::of(&m.v_proj),
            o: Lin::of(&m.o_proj),
            qn: m.q_norm.as_ref().map(Rms::of),
            kn: m.k_norm.as_ref().map(Rms::of),
            d: m.d_model().size(),
            h: m.heads().size(),
            kvh: m.kv_heads().size(),
            hd,
            causal: m.config.causal,
            window: m.config.window,
            rope: m.config.rope_base,
            scale: m.config.scale.unwrap_or(1.0 / (hd as f64).sqrt()),
        }
    }

    /// Queries from `xq` `(b, tq, d)`, keys/values from `xkv` `(b, tk, d)`;
    /// `pad` `(b, tk)` hides keys. For self-attention (`self_attn`), causal,
    /// window and rotary positions apply, queries at `q_off + i`, keys at
    /// `k_off + j`. Returns `(b, tq, d)`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        b: usize,
        xq: &[f64],
        tq: usize,
        xkv: &[f64],
        tk: usize,
        pad: Option<&[bool]>,
        q_off: usize,
        k_off: usize,
        self_attn: bool,
    ) -> Vec<f64> {
        let (h, hd, d) = (self.h, self.hd, self.d);
        let (q, k, v) = (self.q.apply(xq), self.k.apply(xkv), self.v.apply(xkv));
        let group = h / self.kvh;
        let mut heads_out = vec![0.0; b * tq * h * hd];
        for bb in 0..b {
            for hh in 0..h {
                let kv = hh / group;
                let slice = |src: &[f64], row: usize, width: usize, head: usize| -> Vec<f64> {
                    src[row * width + head * hd..][..hd].to_vec()
                };
                let mut keys = Vec::new();
                let mut vals = Vec::new();
                for j in 0..tk {
                    let mut kj = slice(&k, bb * tk + j, self.kvh * hd, kv);
                    if let Some(n) = &self.kn {
                        kj = n.apply(&kj);
                    }
                    if let (true, Some(base)) = (self_attn, self.rope) {
                        kj = rope(&kj, k_off + j, base);
                    }
                    keys.push(kj);
                    vals.push(slice(&v, bb * tk + j, self.kvh * hd, kv));
                }
                for i in 0..tq {
                    let mut qi = slice(&q, bb * tq + i, h * hd, hh);
                    if let Some(n) = &self.qn {
                        qi = n.apply(&qi);
                    }
                    if let (true, Some(base)) = (self_attn, self.rope) {
                        qi = rope(&qi, q_off + i, base);
                    }
                    let (qp, limited) = (
                        q_off + i,
                        self_attn && (self.causal || self.window.is_some()),
                    );
                    let visible: Vec<bool> = (0..tk)
                        .map(|j| {
                            let kp = k_off + j;
                            let padded = pad.is_some_and(|p| p[bb * tk + j]);
                            let future = limited && kp > qp;
                            let old = self_attn && self.window.is_some_and(|w| kp + w <= qp);
                            !(padded || future || old)
                        })
                        .collect();
                    let scores: Vec<f64> = (0..tk)
                        .map(|j| {
                            self.scale * qi.iter().zip(&keys[j]).map(|(a, c)| a * c).sum::<f64>()
                        })
                        .collect();
                    let max = (0..tk)
                        .filter(|&j| visible[j])
                        .map(|j| scores[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = (0..tk)
                        .map(|j| {
                            if visible[j] {
                                (scores[j] - max).exp()
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let sum: f64 = w.iter().sum();
                    let out = &mut heads_out[((bb * tq + i) * h + hh) * hd..][..hd];
                    if sum > 0.0 {
                        for j in 0..tk {
                            for e in 0..hd {
                                out[e] += w[j] / sum * vals[j][e];
                            }
                        }
                    }
                }
            }
        }
        let y = self.o.apply(&heads_out);
        debug_assert_eq!(y.len(), b * tq * d);
        y
    }

    /// Self-attention of `x` `(b, t, d)` from position 0.
    pub fn self_attention(&self, b: usize, x: &[f64], t: usize, pad: Option<&[bool]>) -> Vec<f64> {
        self.run(b, x, t, x, t, pad, 0, 0, true)
    }
}

/// Adds `delta` to element `index` of parameter number `target` (traversal order).
struct Perturb {
    target: usize,
    index: usize,
    delta: f64,
    seen: usize,
}

impl ParamVisitorMut for Perturb {
    fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, _: &str, p: &mut Tensor<S, E, D>) {
        if self.seen == self.target {
            let mut d = p.to_vec();
            d[self.index] = E::from_f64(d[self.index].to_f64() + self.delta);
            p.assign(d).unwrap();
        }
        self.seen += 1;
    }
}

/// Checks the gradient of `loss` with respect to the input `x` and to every
/// parameter of `m` against central differences (step 1e-6). Parameter
/// gradients are compared all together, relative to the largest one (some,
/// like a key bias under softmax, are exactly zero), and each must exist.
#[track_caller]
pub fn check_module_grads<S: Shape, M: Module + Clone>(
    m: &M,
    x: Tensor<S, f64>,
    loss: impl Fn(&M, Tensor<S, f64, Cpu, Tape>) -> Tensor<(), f64, Cpu, Tape>,
) {
    check_grad1(x.clone(), |xt| loss(m, xt));
    let grads = loss(m, x.clone().traced()).backward();
    let (mut analytic, mut numeric) = (Vec::new(), Vec::new());
    for (k, info) in m.param_info().iter().enumerate() {
        let g = grads
            .get_vec::<f64>(info.id)
            .unwrap_or_else(|| panic!("parameter `{}` got no gradient", info.path));
        let n: usize = info.dims.iter().product();
        assert_eq!(g.len(), n, "{}", info.path);
        analytic.extend_from_slice(g);
        let num = numeric_grad(&vec![0.0; n], 1e-6, |v| {
            let i = v
                .iter()
                .position(|&e| e != 0.0)
                .expect("one element perturbed");
            let mut mp = m.clone();
            mp.visit_params_mut(
                "",
                &mut Perturb {
                    target: k,
                    index: i,
                    delta: v[i],
                    seen: 0,
                },
            );
            loss(&mp, x.clone().traced()).item()
        });
        numeric.extend(num);
    }
    let e = rel_err(&analytic, &numeric);
    assert!(
        e <= 1e-6,
        "parameter gradients: rel err {e:e}\nanalytic {analytic:?}\nnumeric  {numeric:?}"
    );
}
