//! Permuting and transposing axes: views whose backward applies the inverse permutation.

use zerfoo_kernels::{Backend, FloatDtype, Layout, MAX_RANK};

use crate::autograd::{device_ok, record, TapeState, TensorId};
use crate::shape::{PermuteAxes, Shape, SwapAxes};
use crate::tensor::Tensor;

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// The view with axis `i` taken from old axis `perm[i]`; `out` is the permuted shape.
    pub(crate) fn permute_view<S2: Shape>(
        self,
        perm: &'static [usize],
        out: S2,
    ) -> Tensor<S2, E, D, T> {
        debug_assert_eq!(perm.len(), S::RANK);
        let layout = self.layout.permute(perm);
        let out_id = TensorId::fresh();
        let (in_id, dev) = (self.id, self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(gy) = g.take_on::<D, E>(out_id) {
                // Old axis `perm[i]` is new axis `i`: read gy back through the inverse.
                let mut inv = [0usize; MAX_RANK];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                let l = Layout::contiguous(layout.shape()).permute(&inv[..perm.len()]);
                g.accumulate_on(&dev, in_id, device_ok(dev.contiguous(&gy, &l)));
            }
        });
        Tensor {
            shape: out,
            layout,
            data: self.data,
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// Reorders the axes (a view, no copy): with `P = PermN<p0, p1, ..>` new
    /// axis `i` is old axis `p_i`. Markers exist for ranks 2 to 5; a marker
    /// that is not a permutation of the shape's axes does not compile.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x = Tensor::<(U2, U3), f32>::from_vec(Default::default(), vec![0., 1., 2., 3., 4., 5.]).unwrap();
    /// let y: Tensor<(U3, U2), f32> = x.permute::<Perm2<1, 0>>();
    /// assert_eq!(y.to_vec(), [0., 3., 1., 4., 2., 5.]);
    /// ```
    ///
    /// ```compile_fail
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2, U3, U4), f32> = Tensor::zeros(Default::default());
    /// let _ = x.permute::<Perm3<0, 0, 1>>(); // not a permutation
    /// ```
    pub fn permute<P>(self) -> Tensor<<S as PermuteAxes<P>>::Permuted, E, D, T>
    where
        S: PermuteAxes<P>,
    {
        let out = self.shape.permuted();
        self.permute_view(S::PERM, out)
    }

    /// Swaps axes `I` and `J` (a view), at any rank: `x.transpose::<0, 2>()`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2, U3, U4), f32> = Tensor::zeros(Default::default());
    /// let y: Tensor<(U4, U3, U2), f32> = x.transpose::<0, 2>();
    /// # let _ = y;
    /// ```
    pub fn transpose<const I: usize, const J: usize>(
        self,
    ) -> Tensor<<S as SwapAxes<I, J>>::Swapped, E, D, T>
    where
        S: SwapAxes<I, J>,
    {
        let out = self.shape.swapped();
        self.permute_view(<S as SwapAxes<I, J>>::PERM, out)
    }
}
