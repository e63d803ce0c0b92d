//! Absolute positions added to token embeddings `(B, T, D)`: the fixed
//! sinusoidal table of "Attention Is All You Need" ([`SinusoidalPositions`])
//! and a learned table ([`LearnedPositions`], GPT-2's `wpe`). Rotary
//! positions live in the attention ([`AttentionConfig::rope`](super::AttentionConfig::rope)).

// Typed shapes in signatures are the point of these layers.
#![allow(clippy::type_complexity)]

use zerfoo_kernels::{Backend, Cpu, FloatDtype};

use super::attention::retype;
use super::{init, Forward};
use crate::autograd::TapeState;
use crate::error::or_panic;
use crate::shape::{Axis, Dim, SameDim};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Names position encodings in shape errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct PositionEncoding;

/// The fixed sinusoidal table, no parameters: for position `p` and
/// `i < D / 2`,
///
/// ```text
/// pe[p, 2i]     = sin(p / base^(2i / D))
/// pe[p, 2i + 1] = cos(p / base^(2i / D))
/// ```
///
/// with `base = 10000`, computed in f64 and rounded once. The forward pass
/// adds `pe[offset..offset + T]` to every sequence of `(B, T, D)`.
///
/// ```
/// use zerfoo::nn::SinusoidalPositions;
/// use zerfoo::prelude::*;
/// dim!(Width = 4);
/// let pe = SinusoidalPositions::new(Width).table::<_, f64>(U2::default(), 0).to_vec();
/// assert_eq!(pe[..4], [0.0, 1.0, 0.0, 1.0]); // position 0
/// assert!((pe[4] - 1f64.sin()).abs() < 1e-15 && (pe[6] - 0.01f64.sin()).abs() < 1e-15);
/// ```
#[derive(crate::nn::Module, Clone, Copy, Debug)]
pub struct SinusoidalPositions<D: Dim> {
    #[module(skip)]
    d: D,
    /// The wavelength base (10000).
    #[module(skip)]
    pub base: f64,
}

impl<D: Dim> SinusoidalPositions<D> {
    /// The table over `d` features with base 10000.
    pub fn new(d: D) -> Self {
        SinusoidalPositions { d, base: 10000.0 }
    }

    /// The rows for positions `offset..offset + t`, `(T, D)`.
    pub fn table<T: Dim, E: FloatDtype>(&self, t: T, offset: usize) -> Tensor<(T, D), E> {
        let d = self.d.size();
        let base = self.base;
        Tensor::from_fn((t, self.d), move |n| {
            let (p, j) = ((offset + n / d) as f64, n % d);
            let angle = p / base.powf((j - j % 2) as f64 / d as f64);
            E::from_f64(if j % 2 == 0 { angle.sin() } else { angle.cos() })
        })
    }

    /// `x + pe[offset..offset + T]` (broadcast over the batch); an error if
    /// a `Dyn` width is not `D`.
    pub fn try_forward_at<B: Dim, T: Dim, D2, E: FloatDtype, Dv: Backend, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        offset: usize,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, PositionEncoding>,
    {
        let (b, t, _) = x.shape();
        let x = retype("sinusoidal positions", x, (b, t, self.d))?;
        let pe = self
            .table::<T, E>(t, offset)
            .try_to_device(x.device())?
            .broadcast::<_, Axis<0>>((b, t, self.d));
        Ok(x + pe)
    }

    /// `x + pe[0..T]`.
    pub fn try_forward<B: Dim, T: Dim, D2, E: FloatDtype, Dv: Backend, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, PositionEncoding>,
    {
        self.try_forward_at(x, 0)
    }

    /// Panicking twin of [`try_forward_at`](Self::try_forward_at).
    #[track_caller]
    pub fn forward_at<B: Dim, T: Dim, D2, E: FloatDtype, Dv: Backend, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        offset: usize,
    ) -> Tensor<(B, T, D), E, Dv, Tp>
    where
        D2: SameDim<D, PositionEncoding>,
    {
        or_panic(self.try_forward_at(x, offset))
    }
}

impl<D, B, T, D2, E, Dv, Tp> Forward<Tensor<(B, T, D2), E, Dv, Tp>> for SinusoidalPositions<D>
where
    D: Dim,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, PositionEncoding>,
    E: FloatDtype,
    Dv: Backend,
    Tp: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, Tp>;
    #[track_caller]
    fn forward(&self, x: Tensor<(B, T, D2), E, Dv, Tp>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}

/// A learned table of `MaxT` position vectors of width `D` (GPT-2's
/// `wpe`), added to `(B, T, D)` inputs. Positions at or beyond `MaxT` are an
/// [`Error::IndexOutOfRange`].
///
/// ```
/// use zerfoo::nn::{Forward, LearnedPositions};
/// use zerfoo::prelude::*;
/// dim!(MaxLen = 4);
/// dim!(Width = 3);
/// let pos: LearnedPositions<MaxLen, Width, f32> = LearnedPositions::new(MaxLen, Width, 0);
/// let x: Tensor<(U2, Dyn, Width), f32> = Tensor::zeros((U2::default(), Dyn(3), Width));
/// assert_eq!(pos.forward(x.clone()).dims(), [2, 3, 3]);
/// assert!(pos.try_forward_at(x, 2).is_err()); // positions 2..5, but only 4 rows
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct LearnedPositions<MaxT: Dim, D: Dim, E: FloatDtype, Dv: Backend = Cpu> {
    /// `[max positions, width]`.
    pub weight: Tensor<(MaxT, D), E, Dv>,
}

impl<MaxT: Dim, D: Dim, E: FloatDtype> LearnedPositions<MaxT, D, E> {
    /// `N(0, 0.02²)` initialization (GPT-2) from `seed`.
    pub fn new(max_t: MaxT, d: D, seed: u64) -> Self {
        LearnedPositions {
            weight: init::normal((max_t, d), 0.02, seed),
        }
    }
}

impl<MaxT: Dim, D: Dim, E: FloatDtype, Dv: Backend> LearnedPositions<MaxT, D, E, Dv> {
    /// `x + weight[offset..offset + T]` (broadcast over the batch). Errors:
    /// `offset + T > MaxT` ([`Error::IndexOutOfRange`]), a `Dyn` width that
    /// is not `D`.
    pub fn try_forward_at<B: Dim, T: Dim, D2, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        offset: usize,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, PositionEncoding>,
    {
        let (b, t, _) = x.shape();
        let (max_t, d) = self.weight.shape();
        let x = retype("learned positions", x, (b, t, d))?;
        let end = offset.saturating_add(t.size());
        if end > max_t.size() {
            return Err(Error::IndexOutOfRange {
                op: "learned positions",
                index: i64::try_from(end - 1).unwrap_or(i64::MAX),
                size: max_t.size(),
            });
        }
        let rows = self
            .weight
            .retaped::<Tp>()
            .narrow::<Axis<0>>(offset, t.size());
        let rows = retype("learned positions", rows, (t, d))?;
        Ok(x + rows.broadcast::<_, Axis<0>>((b, t, d)))
    }

    /// `x + weight[0..T]`.
    pub fn try_forward<B: Dim, T: Dim, D2, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
    ) -> Result<Tensor<(B, T, D), E, Dv, Tp>>
    where
        D2: SameDim<D, PositionEncoding>,
    {
        self.try_forward_at(x, 0)
    }

    /// Panicking twin of [`try_forward_at`](Self::try_forward_at).
    #[track_caller]
    pub fn forward_at<B: Dim, T: Dim, D2, Tp: TapeState>(
        &self,
        x: Tensor<(B, T, D2), E, Dv, Tp>,
        offset: usize,
    ) -> Tensor<(B, T, D), E, Dv, Tp>
    where
        D2: SameDim<D, PositionEncoding>,
    {
        or_panic(self.try_forward_at(x, offset))
    }
}

impl<MaxT, D, E, Dv, B, T, D2, Tp> Forward<Tensor<(B, T, D2), E, Dv, Tp>>
    for LearnedPositions<MaxT, D, E, Dv>
where
    MaxT: Dim,
    D: Dim,
    E: FloatDtype,
    Dv: Backend,
    B: Dim,
    T: Dim,
    D2: Dim + SameDim<D, PositionEncoding>,
    Tp: TapeState,
{
    type Output = Tensor<(B, T, D), E, Dv, Tp>;
    #[track_caller]
    fn forward(&self, x: Tensor<(B, T, D2), E, Dv, Tp>) -> Self::Output {
        or_panic(self.try_forward(x))
    }
}
