//! `Embedding`: a lookup table from token ids to vectors (`torch.nn.Embedding`).

use zerfoo_kernels::{Backend, Cpu, Device, FloatDtype, IntDtype};

use super::{init, Forward};
use crate::autograd::TapeState;
use crate::error::Result;
use crate::ops::AppendDim;
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;

/// `V` vectors of width `D`. Ids out of range are an error, never a panic
/// inside a kernel ([`Embedding::try_forward`]).
///
/// ```
/// use zerfoo::nn::{Embedding, Forward};
/// use zerfoo::prelude::*;
/// dim!(Vocab = 10);
/// dim!(Width = 4);
/// let emb: Embedding<Vocab, Width, f32> = Embedding::new(Vocab, Width, 0);
/// let ids = Tensor::<(U2, U3), i64>::from_vec(Default::default(), vec![1, 2, 3, 4, 5, 9]).unwrap();
/// assert_eq!(emb.forward(ids.clone()).dims(), [2, 3, 4]);
/// let bad = Tensor::<(U1,), i64>::from_vec(Default::default(), vec![10]).unwrap();
/// assert!(emb.try_forward(bad).is_err());
/// ```
#[derive(crate::nn::Module, Clone, Debug)]
pub struct Embedding<V: Dim, D: Dim, E: FloatDtype, Dv: Backend = Cpu> {
    /// `[vocab, width]`.
    pub weight: Tensor<(V, D), E, Dv>,
}

impl<V: Dim, D: Dim, E: FloatDtype> Embedding<V, D, E> {
    /// `N(0, 1)` initialization, as PyTorch.
    pub fn new(v: V, d: D, seed: u64) -> Self {
        Embedding {
            weight: init::normal((v, d), 1.0, seed),
        }
    }
}

impl<V: Dim, D: Dim, E: FloatDtype, Dv: Backend> Embedding<V, D, E, Dv> {
    /// Looks the ids up; an id outside `0..V` is an `Error::IndexOutOfRange`.
    /// The ids may live on any device (they are checked on the host).
    pub fn try_forward<S, I, Di, T>(
        &self,
        ids: Tensor<S, I, Di, T>,
    ) -> Result<Tensor<<S as AppendDim<D>>::Out, E, Dv, T>>
    where
        S: Shape + AppendDim<D>,
        I: IntDtype,
        Di: Device,
        T: TapeState,
    {
        self.weight.retaped::<T>().try_embedding(&ids)
    }
}

impl<V: Dim, D: Dim, E: FloatDtype, Dv: Backend, S, I, Di, T> Forward<Tensor<S, I, Di, T>>
    for Embedding<V, D, E, Dv>
where
    S: Shape + AppendDim<D>,
    I: IntDtype,
    Di: Device,
    T: TapeState,
{
    type Output = Tensor<<S as AppendDim<D>>::Out, E, Dv, T>;
    /// Panics with the `try_forward` message on an out-of-range id.
    fn forward(&self, ids: Tensor<S, I, Di, T>) -> Self::Output {
        crate::error::or_panic(self.try_forward(ids))
    }
}
