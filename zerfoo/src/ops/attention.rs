//! Fused scaled dot-product attention: `softmax(mask(scale * q kᵀ)) v` in
//! one kernel that never materializes the `Tq x Tk` scores (flash-style
//! online softmax over key blocks), with one autograd node whose backward
//! recomputes the probabilities block by block.
//!
//! The mask is described, not materialized: see [`AttentionMask`].

// Typed shapes in signatures are the point.
#![allow(clippy::type_complexity)]

use std::sync::Arc;

use zerfoo_kernels::cpu::attention::{AttnMask, HeadsOrder};
use zerfoo_kernels::{Backend, Device, DeviceError, FloatDtype, Layout};

use super::Merge3;
use crate::autograd::{device_ok, record, Merge, TapeState, TensorId};
use crate::error::or_panic;
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Which keys each query may not see in [`try_fused_attention`], described
/// rather than materialized. Positions are absolute: query row `i` is at
/// `q_offset + i`, key row `j` at `k_offset + j` (they differ when decoding
/// over a key/value cache).
///
/// A query that sees no key at all gets a zero output and zero gradients.
///
/// ```
/// use zerfoo::ops::AttentionMask;
/// let m = AttentionMask::causal().window(4).offsets(10, 7);
/// assert!(m.causal && m.window == Some(4) && m.q_offset == 10 && m.k_offset == 7);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttentionMask {
    /// Hide keys after the query: query at `qp` sees keys at `kp <= qp`.
    pub causal: bool,
    /// Sliding window `w`: query at `qp` sees keys in `(qp - w, qp]` (this
    /// implies the causal limit).
    pub window: Option<usize>,
    /// Key padding `(B, Tk)`, row-major, `true` for a padded key (hidden
    /// from every query and head of that batch row).
    pub padding: Option<Arc<Vec<bool>>>,
    /// Absolute position of the first query.
    pub q_offset: usize,
    /// Absolute position of the first key.
    pub k_offset: usize,
}

impl AttentionMask {
    /// Nothing hidden.
    pub fn none() -> Self {
        Self::default()
    }
    /// Causal: each query sees itself and earlier keys.
    pub fn causal() -> Self {
        AttentionMask {
            causal: true,
            ..Self::default()
        }
    }
    /// With a sliding window of `w` positions (implies causal).
    pub fn window(mut self, w: usize) -> Self {
        self.window = Some(w);
        self
    }
    /// With a `(B, Tk)` key padding mask (`true` = padded).
    pub fn padding(mut self, padding: Vec<bool>) -> Self {
        self.padding = Some(Arc::new(padding));
        self
    }
    /// With absolute positions of the first query and the first key.
    pub fn offsets(mut self, q_offset: usize, k_offset: usize) -> Self {
        self.q_offset = q_offset;
        self.k_offset = k_offset;
        self
    }
    /// The materialized `(B, Tq, Tk)` mask, row-major, `true` where a key is
    /// hidden from a query (the form [`try_scaled_dot_product_attention`]
    /// takes). `padding`, if any, must be `b * tk` long.
    ///
    /// [`try_scaled_dot_product_attention`]: crate::nn::try_scaled_dot_product_attention
    pub fn to_dense(&self, b: usize, tq: usize, tk: usize) -> Vec<bool> {
        let m = self.kernel();
        (0..b * tq * tk)
            .map(|n| !m.visible(n / (tq * tk), (n / tk) % tq, n % tk, tk))
            .collect()
    }
    /// Whether no key is ever hidden.
    pub fn is_none(&self) -> bool {
        !self.causal && self.window.is_none() && self.padding.is_none()
    }
    /// An error unless the padding, if any, is `(b, tk)`.
    fn check_padding(&self, b: usize, tk: usize) -> Result<()> {
        match &self.padding {
            Some(p) if p.len() != b * tk => Err(Error::ShapeMismatch {
                op: "fused attention padding mask",
                lhs: vec![p.len()],
                rhs: vec![b, tk],
            }),
            _ => Ok(()),
        }
    }
    fn kernel(&self) -> AttnMask<'_> {
        AttnMask {
            causal: self.causal,
            window: self.window,
            padding: self.padding.as_deref().map(Vec::as_slice),
            q_offset: self.q_offset,
            k_offset: self.k_offset,
        }
    }
}

/// Fused attention of queries `q` `(B, H, Tq, D)` over keys `k`
/// `(B, H, Tk, D)` and values `v` `(B, H, Tk, Dv)`:
/// `softmax(mask(scale * q kᵀ)) v`, `(B, H, Tq, Dv)`, computed in the
/// dtype's compute type and rounded once. Inputs may be any view (permuted
/// heads included). One autograd node; the output's tape merges the three
/// inputs' tapes. Equal to [`try_scaled_dot_product_attention`] with the
/// materialized mask, in less memory and time.
///
/// Errors: a `Dyn` dim that differs between the operands, or a padding mask
/// that is not `B * Tk` long ([`Error::ShapeMismatch`]).
///
/// [`try_scaled_dot_product_attention`]: crate::nn::try_scaled_dot_product_attention
///
/// ```
/// use zerfoo::ops::{try_fused_attention, AttentionMask};
/// use zerfoo::prelude::*;
/// // one query, two keys with equal scores: the output averages the values
/// let q: Tensor<(U1, U1, U1, U1), f64> = Tensor::zeros(Default::default());
/// let k: Tensor<(U1, U1, U2, U1), f64> = Tensor::ones(Default::default());
/// let v = Tensor::<(U1, U1, U2, U1), f64>::from_vec(Default::default(), vec![1.0, 3.0]).unwrap();
/// let y = try_fused_attention(q, k, v, &AttentionMask::none(), 1.0).unwrap();
/// assert_eq!(y.to_vec(), [2.0]);
/// ```
pub fn try_fused_attention<B, H, Tq, Tk, D, Dv, E, Dev, T1, T2, T3>(
    q: Tensor<(B, H, Tq, D), E, Dev, T1>,
    k: Tensor<(B, H, Tk, D), E, Dev, T2>,
    v: Tensor<(B, H, Tk, Dv), E, Dev, T3>,
    mask: &AttentionMask,
    scale: f64,
) -> Result<Tensor<(B, H, Tq, Dv), E, Dev, Merge3<T1, T2, T3>>>
where
    B: Dim,
    H: Dim,
    Tq: Dim,
    Tk: Dim,
    D: Dim,
    Dv: Dim,
    E: FloatDtype,
    Dev: Backend,
    T1: TapeState + Merge<T2>,
    T2: TapeState,
    T3: TapeState,
    <T1 as Merge<T2>>::Out: Merge<T3>,
{
    let (b, h, tq, _) = q.shape();
    let dv = v.shape().3;
    let heads = [q.layout, k.layout, v.layout];
    let (data, id, tape, device) = attend(q, k, v, heads, mask, scale, HeadsOrder::HeadMajor)?;
    Ok(Tensor {
        layout: Layout::contiguous(&[b.size(), h.size(), tq.size(), dv.size()]),
        shape: (b, h, tq, dv),
        data,
        id,
        tape,
        device,
    })
}

/// [`try_fused_attention`] in flash-attn's order: queries `q`
/// `(B, Tq, H, D)`, keys `k` `(B, Tk, H, D)` and values `v`
/// `(B, Tk, H, Dv)` give the output `(B, Tq, H, Dv)`. Splitting a
/// `(B, T, H·D)` projection into heads and merging the output's heads back
/// are views, and so are their gradients: no transposing copy anywhere,
/// forward or backward (the heads-first form needs one per operand and
/// per gradient).
///
/// Errors: as [`try_fused_attention`].
///
/// ```
/// use zerfoo::ops::{try_fused_attention, try_fused_attention_bthd, AttentionMask};
/// use zerfoo::prelude::*;
/// let x: Tensor<(U2, U3, U8), f64> = Tensor::randn(Default::default(), 0);
/// let heads = || x.clone().split_heads::<U2, U4>(); // (2, 3, 2, 4)
/// let mask = AttentionMask::causal();
/// let y = try_fused_attention_bthd(heads(), heads(), heads(), &mask, 0.5).unwrap();
/// let t = || heads().transpose::<1, 2>(); // (2, 2, 3, 4)
/// let want = try_fused_attention(t(), t(), t(), &mask, 0.5).unwrap().transpose::<1, 2>();
/// for (a, b) in y.to_vec().iter().zip(want.to_vec()) {
///     assert!((a - b).abs() < 1e-12);
/// }
/// ```
pub fn try_fused_attention_bthd<B, H, Tq, Tk, D, Dv, E, Dev, T1, T2, T3>(
    q: Tensor<(B, Tq, H, D), E, Dev, T1>,
    k: Tensor<(B, Tk, H, D), E, Dev, T2>,
    v: Tensor<(B, Tk, H, Dv), E, Dev, T3>,
    mask: &AttentionMask,
    scale: f64,
) -> Result<Tensor<(B, Tq, H, Dv), E, Dev, Merge3<T1, T2, T3>>>
where
    B: Dim,
    H: Dim,
    Tq: Dim,
    Tk: Dim,
    D: Dim,
    Dv: Dim,
    E: FloatDtype,
    Dev: Backend,
    T1: TapeState + Merge<T2>,
    T2: TapeState,
    T3: TapeState,
    <T1 as Merge<T2>>::Out: Merge<T3>,
{
    let (b, tq, h, _) = q.shape();
    let dv = v.shape().3;
    let heads = [&q.layout, &k.layout, &v.layout].map(|l| l.permute(&[0, 2, 1, 3]));
    let (data, id, tape, device) = attend(q, k, v, heads, mask, scale, HeadsOrder::SeqMajor)?;
    Ok(Tensor {
        layout: Layout::contiguous(&[b.size(), tq.size(), h.size(), dv.size()]),
        shape: (b, tq, h, dv),
        data,
        id,
        tape,
        device,
    })
}

/// Self-attention straight from one projection: `qkv` `(B, T, 3·H·D)` holds
/// the queries, keys and values of `heads` heads of `head_dim` side by side
/// (as a fused `c_attn` projection gives them), and the output is
/// `(B, T, H, D)`, what [`try_fused_attention_bthd`] gives for the three
/// blocks split into heads. The difference is the backward: the kernel
/// writes the three gradients straight into one `(B, T, 3·H·D)` gradient of
/// `qkv`, where splitting costs a zeroed buffer and an add per block.
///
/// Errors: a last dim other than `3 · heads · head_dim`, or a padding mask
/// that is not `B * T` long ([`Error::ShapeMismatch`]).
///
/// ```
/// use zerfoo::ops::{try_fused_attention_bthd, try_fused_attention_qkv, AttentionMask};
/// use zerfoo::prelude::*;
/// let qkv: Tensor<(U2, U3, U24), f64> = Tensor::randn(Default::default(), 0);
/// let mask = AttentionMask::causal();
/// let y = try_fused_attention_qkv(qkv.clone(), U2::default(), U4::default(), &mask, 0.5).unwrap();
/// let part = |i: usize| qkv.clone().narrow::<Axis<2>>(8 * i, 8).split_heads::<U2, U4>();
/// let want = try_fused_attention_bthd(part(0), part(1), part(2), &mask, 0.5).unwrap();
/// assert_eq!(y.to_vec(), want.to_vec());
/// ```
pub fn try_fused_attention_qkv<B, T, W, H, D, E, Dev, Tp>(
    qkv: Tensor<(B, T, W), E, Dev, Tp>,
    heads: H,
    head_dim: D,
    mask: &AttentionMask,
    scale: f64,
) -> Result<Tensor<(B, T, H, D), E, Dev, Tp>>
where
    B: Dim,
    T: Dim,
    W: Dim,
    H: Dim,
    D: Dim,
    E: FloatDtype,
    Dev: Backend,
    Tp: TapeState,
{
    let (b, t, w) = qkv.shape();
    let (bs, ts, hs, ds) = (b.size(), t.size(), heads.size(), head_dim.size());
    let width = 3 * hs * ds;
    if w.size() != width {
        return Err(Error::ShapeMismatch {
            op: "fused qkv attention",
            lhs: vec![bs, ts, w.size()],
            rhs: vec![bs, ts, width],
        });
    }
    mask.check_padding(bs, ts)?;
    let qkv = qkv.contiguous();
    // Block `part` of the rows, read as `(B, H, T, D)`.
    let block = |part: usize| {
        let at = qkv.layout.offset + part * hs * ds;
        Layout::new(&[bs, hs, ts, ds], &[ts * width, ds, width, 1], at)
    };
    let (lq, lk, lv) = (block(0), block(1), block(2));
    let order = HeadsOrder::SeqMajor;
    let (x, kmask) = (&qkv.data, mask.kernel());
    let (out, lse) = forward_on(
        &qkv.device,
        Tp::TRACKED,
        [(x, &lq), (x, &lk), (x, &lv)],
        &kmask,
        scale,
        order,
    )?;
    let out = Arc::new(out);
    let out_id = TensorId::fresh();
    let tape = if Tp::TRACKED {
        let (x, in_id, dev) = (qkv.data.clone(), qkv.id, qkv.device.clone());
        let (o, mask) = (out.clone(), mask.clone());
        let dl = order.layout([bs, hs, ts, ds]);
        record::<Tp>(out_id, &[qkv.tape.node()], move |g| {
            if let Some(gy) = g.take_shared_on::<Dev, E>(out_id) {
                let grad = device_ok(dev.attention_backward_packed(
                    &x,
                    &lq,
                    &x,
                    &lk,
                    &x,
                    &lv,
                    &o,
                    &lse,
                    &gy,
                    &dl,
                    &mask.kernel(),
                    scale,
                ));
                g.accumulate_on(&dev, in_id, grad);
            }
        })
    } else {
        Tp::from_node(None)
    };
    Ok(Tensor {
        layout: Layout::contiguous(&[bs, ts, hs, ds]),
        shape: (b, t, heads, head_dim),
        data: out,
        id: out_id,
        tape,
        device: qkv.device,
    })
}

/// The fused attention's forward on `dev` for `q`, `k`, `v` (each with
/// its `(B, H, T, W)` layout): the output and the state its backward
/// reads. A recorded step (`backward`) asks for the training forward,
/// which on the CPU also keeps the softmax probabilities
/// ([`attention_forward_for_backward`](zerfoo_kernels::device::AttentionKernels::attention_forward_for_backward));
/// evaluation and generation keep only the log-sum-exp.
#[allow(clippy::type_complexity)]
fn forward_on<Dev: Backend, E: FloatDtype>(
    dev: &Dev,
    backward: bool,
    [(q, ql), (k, kl), (v, vl)]: [(&Dev::Storage<E>, &Layout); 3],
    mask: &AttnMask<'_>,
    scale: f64,
    order: HeadsOrder,
) -> core::result::Result<(Dev::Storage<E>, Dev::Storage<E::Acc>), DeviceError> {
    if backward {
        dev.attention_forward_for_backward(q, ql, k, kl, v, vl, mask, scale, order)
    } else {
        dev.attention_forward(q, ql, k, kl, v, vl, mask, scale, order)
    }
}

/// The output of [`try_fused_attention`] and [`try_fused_attention_bthd`]:
/// storage, id, tape and device.
type Attended<E, Dev, T> = (Arc<<Dev as Device>::Storage<E>>, TensorId, T, Dev);

/// The fused attention of `q`, `k`, `v`, each read through its layout in
/// `heads` as `(B, H, T, W)`; the output and the gradients are stored in
/// `order`, so that they are contiguous in the callers' shapes. Shapes in
/// errors are the callers' (in `order`).
fn attend<S1, S2, S3, E, Dev, T1, T2, T3>(
    q: Tensor<S1, E, Dev, T1>,
    k: Tensor<S2, E, Dev, T2>,
    v: Tensor<S3, E, Dev, T3>,
    heads: [Layout; 3],
    mask: &AttentionMask,
    scale: f64,
    order: HeadsOrder,
) -> Result<Attended<E, Dev, Merge3<T1, T2, T3>>>
where
    S1: Shape,
    S2: Shape,
    S3: Shape,
    E: FloatDtype,
    Dev: Backend,
    T1: TapeState + Merge<T2>,
    T2: TapeState,
    T3: TapeState,
    <T1 as Merge<T2>>::Out: Merge<T3>,
{
    let [ql, kl, vl] = heads;
    let (qd, kd, vd) = (ql.shape(), kl.shape(), vl.shape());
    let mismatch = |lhs: &Layout, rhs: &Layout| Error::ShapeMismatch {
        op: "fused attention",
        lhs: order.stored_dims(lhs.shape()),
        rhs: order.stored_dims(rhs.shape()),
    };
    if qd[0] != kd[0] || qd[1] != kd[1] || qd[3] != kd[3] {
        return Err(mismatch(&ql, &kl));
    }
    if kd[..3] != vd[..3] {
        return Err(mismatch(&kl, &vl));
    }
    mask.check_padding(kd[0], kd[2])?;
    let out_dims = [qd[0], qd[1], qd[2], vd[3]];
    type Out<T1, T2, T3> = Merge3<T1, T2, T3>;
    let (qx, kx, vx, kmask) = (&q.data, &k.data, &v.data, mask.kernel());
    let (out, lse) = forward_on(
        &q.device,
        Out::<T1, T2, T3>::TRACKED,
        [(qx, &ql), (kx, &kl), (vx, &vl)],
        &kmask,
        scale,
        order,
    )?;
    let out = Arc::new(out);
    let out_id = TensorId::fresh();
    let tape = if Out::<T1, T2, T3>::TRACKED {
        let parents = [q.tape.node(), k.tape.node(), v.tape.node()];
        let (qs, ks, vs) = (
            (q.data.clone(), ql, q.id),
            (k.data.clone(), kl, k.id),
            (v.data.clone(), vl, v.id),
        );
        let (o, mask) = (out.clone(), mask.clone());
        // The output's gradient is contiguous in the caller's shape.
        let dl = order.layout(out_dims);
        let dev = q.device.clone();
        record::<Out<T1, T2, T3>>(out_id, &parents, move |g| {
            if let Some(gy) = g.take_shared_on::<Dev, E>(out_id) {
                // Only read: it may stay shared (see `GradStore::take_shared_on`).
                let (gq, gk, gv) = device_ok(dev.attention_backward(
                    &qs.0,
                    &qs.1,
                    &ks.0,
                    &ks.1,
                    &vs.0,
                    &vs.1,
                    &o,
                    &lse,
                    &gy,
                    &dl,
                    &mask.kernel(),
                    scale,
                    order,
                ));
                g.accumulate_on(&dev, qs.2, gq);
                g.accumulate_on(&dev, ks.2, gk);
                g.accumulate_on(&dev, vs.2, gv);
            }
        })
    } else {
        Out::<T1, T2, T3>::from_node(None)
    };
    Ok((out, out_id, tape, q.device))
}

/// Panicking twin of [`try_fused_attention`].
#[track_caller]
pub fn fused_attention<B, H, Tq, Tk, D, Dv, E, Dev, T1, T2, T3>(
    q: Tensor<(B, H, Tq, D), E, Dev, T1>,
    k: Tensor<(B, H, Tk, D), E, Dev, T2>,
    v: Tensor<(B, H, Tk, Dv), E, Dev, T3>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<(B, H, Tq, Dv), E, Dev, Merge3<T1, T2, T3>>
where
    B: Dim,
    H: Dim,
    Tq: Dim,
    Tk: Dim,
    D: Dim,
    Dv: Dim,
    E: FloatDtype,
    Dev: Backend,
    T1: TapeState + Merge<T2>,
    T2: TapeState,
    T3: TapeState,
    <T1 as Merge<T2>>::Out: Merge<T3>,
{
    or_panic(try_fused_attention(q, k, v, mask, scale))
}

/// Panicking twin of [`try_fused_attention_bthd`].
#[track_caller]
pub fn fused_attention_bthd<B, H, Tq, Tk, D, Dv, E, Dev, T1, T2, T3>(
    q: Tensor<(B, Tq, H, D), E, Dev, T1>,
    k: Tensor<(B, Tk, H, D), E, Dev, T2>,
    v: Tensor<(B, Tk, H, Dv), E, Dev, T3>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<(B, Tq, H, Dv), E, Dev, Merge3<T1, T2, T3>>
where
    B: Dim,
    H: Dim,
    Tq: Dim,
    Tk: Dim,
    D: Dim,
    Dv: Dim,
    E: FloatDtype,
    Dev: Backend,
    T1: TapeState + Merge<T2>,
    T2: TapeState,
    T3: TapeState,
    <T1 as Merge<T2>>::Out: Merge<T3>,
{
    or_panic(try_fused_attention_bthd(q, k, v, mask, scale))
}
