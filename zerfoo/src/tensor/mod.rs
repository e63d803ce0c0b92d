//! [`Tensor`]: a shape, a dtype, a device and a tape state, all in the type.

mod create;
mod display;
pub(crate) mod rng;

use std::sync::Arc;

use zerfoo_kernels::{Backend, Cpu, Device, Dtype, FloatDtype, Layout};

use crate::autograd::{device_ok, record, NoTape, Tape, TapeState, TensorId};
use crate::shape::{Dims, Shape};

/// An n-dimensional array whose shape `S`, element type `E`, device `D` and
/// tape state `T` are part of its type.
///
/// Storage is shared (`Arc`) and copy-on-write; views such as permute, slice
/// and broadcast change only the [`Layout`].
///
/// ```
/// use zerfoo::prelude::*;
/// dim!(Rows = 2);
/// dim!(Cols = 3);
/// let a: Tensor<(Rows, Cols), f32> = Tensor::ones((Rows, Cols));
/// let b = a.clone().exp();
/// assert_eq!(b.dims(), [2, 3]);
/// assert!((b.to_vec()[0] - 1f32.exp()).abs() < 1e-6);
/// ```
pub struct Tensor<S: Shape, E: Dtype, D: Device = Cpu, T = NoTape> {
    pub(crate) shape: S,
    pub(crate) layout: Layout,
    pub(crate) data: Arc<D::Storage<E>>,
    pub(crate) id: TensorId,
    pub(crate) tape: T,
    pub(crate) device: D,
}

impl<S: Shape, E: Dtype, D: Device, T: Clone> Clone for Tensor<S, E, D, T> {
    /// A cheap clone: the storage is shared and the clone keeps the id and
    /// the tape, so using both in a graph accumulates their gradients.
    fn clone(&self) -> Self {
        Tensor {
            shape: self.shape,
            layout: self.layout,
            data: self.data.clone(),
            id: self.id,
            tape: self.tape.clone(),
            device: self.device.clone(),
        }
    }
}

impl<S: Shape, E: Dtype, D: Device, T> Tensor<S, E, D, T> {
    /// The shape value.
    pub fn shape(&self) -> S {
        self.shape
    }
    /// The run-time dims.
    pub fn dims(&self) -> Dims {
        self.shape.dims()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    /// The stable id gradients are keyed by.
    pub fn id(&self) -> TensorId {
        self.id
    }
    /// Where the elements live in storage (strides in elements).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }
    /// The runtime dtype name.
    pub fn dtype(&self) -> zerfoo_kernels::DType {
        E::DTYPE
    }
    /// The tape.
    pub fn tape(&self) -> &T {
        &self.tape
    }
    /// Whether the elements are dense and row-major.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// The elements in row-major order, copied to the host.
    ///
    /// Panics if the device fails to copy (see [`Tensor::try_to_vec`]).
    pub fn to_vec(&self) -> Vec<E> {
        self.try_to_vec()
            .unwrap_or_else(|e| panic!("copying a tensor to the host: {e}"))
    }
    /// The elements in row-major order, copied to the host, or the device's error.
    pub fn try_to_vec(&self) -> crate::Result<Vec<E>> {
        Ok(self.device.to_host(&self.data, &self.layout)?)
    }
    /// Elements as `f64`, row-major (handy in tests).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.to_vec().into_iter().map(|x| x.to_f64()).collect()
    }
    /// The single element of a one-element tensor.
    pub fn item(&self) -> E {
        assert_eq!(self.numel(), 1, "item() needs exactly one element");
        self.to_vec()[0]
    }
    /// Same data and id under another shape type of equal dims (no checks on dims).
    pub(crate) fn with_shape<S2: Shape>(self, shape: S2) -> Tensor<S2, E, D, T> {
        debug_assert_eq!(&*shape.dims(), self.layout.shape());
        Tensor {
            shape,
            layout: self.layout,
            data: self.data,
            id: self.id,
            tape: self.tape,
            device: self.device.clone(),
        }
    }

    /// Turns dynamic dims into static ones (or back), checking each at run time.
    ///
    /// The result shares storage, id and tape with `self`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(Dyn, Dyn), f32> = Tensor::zeros((Dyn(2), Dyn(3)));
    /// let y: Tensor<(U2, U3), f32> = x.clone().realize().unwrap();
    /// assert!(x.realize::<(U2, U4)>().is_err());
    /// # let _ = y;
    /// ```
    pub fn realize<S2: Shape>(self) -> crate::Result<Tensor<S2, E, D, T>> {
        let s2: S2 = crate::shape::shape_from_dims("realize", self.layout.shape())?;
        Ok(self.with_shape(s2))
    }
}

impl<S: Shape, E: Dtype, T> Tensor<S, E, Cpu, T> {
    /// The raw storage and layout (for kernels and I/O).
    pub fn storage(&self) -> (&[E], &Layout) {
        (&self.data, &self.layout)
    }
}

impl<S: Shape, E: Dtype> Tensor<S, E, Cpu, NoTape> {
    /// A tensor from row-major contiguous data; no length check (crate use).
    pub(crate) fn from_contiguous(shape: S, data: Vec<E>) -> Self {
        debug_assert_eq!(shape.numel(), data.len());
        Tensor::from_storage(shape, data, Cpu)
    }

    /// Mutable access to the elements (copy-on-write: storage shared with
    /// other tensors is copied first). The id is kept, so an in-place update
    /// of a parameter keeps its gradient key.
    pub fn data_mut(&mut self) -> &mut [E] {
        if !self.is_dense() {
            let v = self.to_vec();
            self.data = Arc::new(v);
            self.layout = Layout::contiguous(&self.shape.dims());
        }
        Arc::make_mut(&mut self.data).as_mut_slice()
    }
}

impl<S: Shape, E: Dtype, D: Device> Tensor<S, E, D, NoTape> {
    /// A tensor over row-major contiguous storage on `device` (crate use;
    /// the storage length is the caller's promise).
    pub(crate) fn from_storage(shape: S, data: D::Storage<E>, device: D) -> Self {
        Tensor {
            layout: Layout::contiguous(&shape.dims()),
            shape,
            data: Arc::new(data),
            id: TensorId::fresh(),
            tape: NoTape,
            device,
        }
    }

    /// Starts recording: ops on the result (and on everything computed from
    /// it) are recorded, and `backward()` gives a gradient for this tensor.
    pub fn traced(self) -> Tensor<S, E, D, Tape> {
        Tensor {
            shape: self.shape,
            layout: self.layout,
            data: self.data,
            id: self.id,
            tape: Tape::default(),
            device: self.device,
        }
    }

    /// This tensor with the tape type `T` of the computation it joins, keeping
    /// its id: with `T = Tape` it becomes a traced leaf, so ops applied to it
    /// (a transpose, a broadcast, `1 + w`) are recorded and its gradient
    /// reaches this id; with `T = NoTape` nothing changes.
    ///
    /// Parameters are `NoTape`, and an op on a `NoTape` tensor records nothing
    /// (it is a constant, as under `torch.no_grad`). A layer therefore calls
    /// `self.weight.retaped::<T>()` with its input's tape type before
    /// transforming the weight:
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let w: Tensor<(U2, U3), f64> = Tensor::randn(Default::default(), 0);
    /// let x: Tensor<(U4, U3), f64> = Tensor::randn(Default::default(), 1);
    /// let y = x.traced().matmul(w.retaped::<Tape>().t()).sum_all();
    /// assert!(y.backward().get(&w).is_some());
    /// ```
    pub fn retaped<T: TapeState>(&self) -> Tensor<S, E, D, T> {
        Tensor {
            shape: self.shape,
            layout: self.layout,
            data: self.data.clone(),
            id: self.id,
            tape: T::from_node(None),
            device: self.device.clone(),
        }
    }
}

impl<S: Shape, E: Dtype, D: Device, T> Tensor<S, E, D, T> {
    /// Whether the storage holds exactly this tensor's elements, row-major.
    pub(crate) fn is_dense(&self) -> bool {
        self.layout.is_contiguous()
            && self.layout.offset == 0
            && D::storage_len(&self.data) == self.numel()
    }

    /// A copy of this tensor on `device` (a fresh id, no tape: a new leaf,
    /// as PyTorch's `x.to("cuda")` of a parameter before training), or the
    /// device's error (no such GPU, out of memory).
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2,), f32> = Tensor::ones(Default::default());
    /// let y = x.try_to_device(&Cpu).unwrap();
    /// assert_eq!(y.to_vec(), [1.0, 1.0]);
    /// ```
    pub fn try_to_device<D2: Device>(
        &self,
        device: &D2,
    ) -> crate::Result<Tensor<S, E, D2, NoTape>> {
        let data = device.upload(self.try_to_vec()?)?;
        Ok(Tensor::from_storage(self.shape, data, device.clone()))
    }

    /// Panicking twin of [`Tensor::try_to_device`].
    #[track_caller]
    pub fn to_device<D2: Device>(&self, device: &D2) -> Tensor<S, E, D2, NoTape> {
        crate::error::or_panic(self.try_to_device(device))
    }

    /// A copy of this tensor in host memory (a fresh id, no tape), or the
    /// device's error.
    pub fn try_to_cpu(&self) -> crate::Result<Tensor<S, E, Cpu, NoTape>> {
        Ok(Tensor::from_contiguous(self.shape, self.try_to_vec()?))
    }

    /// Panicking twin of [`Tensor::try_to_cpu`].
    #[track_caller]
    pub fn to_cpu(&self) -> Tensor<S, E, Cpu, NoTape> {
        crate::error::or_panic(self.try_to_cpu())
    }
}

impl<S: Shape, E: FloatDtype, D: Backend, T: TapeState> Tensor<S, E, D, T> {
    /// Drops the tape: the result records nothing and gets a fresh id, so no
    /// gradient flows through it.
    pub fn detach(self) -> Tensor<S, E, D, NoTape> {
        Tensor {
            shape: self.shape,
            layout: self.layout,
            data: self.data,
            id: TensorId::fresh(),
            tape: NoTape,
            device: self.device,
        }
    }

    /// The storage, dense and owned by this tensor alone (copied first when
    /// it is a view or shared), for in-place updates that keep the id.
    pub(crate) fn storage_mut(&mut self) -> crate::Result<&mut D::Storage<E>> {
        if !self.is_dense() || Arc::get_mut(&mut self.data).is_none() {
            let copy = self.device.contiguous(&self.data, &self.layout)?;
            self.data = Arc::new(copy);
            self.layout = Layout::contiguous(&self.shape.dims());
        }
        Ok(Arc::get_mut(&mut self.data).expect("storage was just made unique"))
    }

    /// Replaces every element with `values` (row-major, copied to this
    /// tensor's device), keeping the id: how a [`ParamVisitorMut`](crate::nn::ParamVisitorMut)
    /// overwrites a parameter on any device. An error if the count differs
    /// or the device fails.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let mut w: Tensor<(U2,), f32> = Tensor::zeros(Default::default());
    /// let id = w.id();
    /// w.assign(vec![1.0, 2.0]).unwrap();
    /// assert_eq!((w.to_vec(), w.id()), (vec![1.0, 2.0], id));
    /// assert!(w.assign(vec![1.0]).is_err());
    /// ```
    pub fn assign(&mut self, values: Vec<E>) -> crate::Result<()> {
        if values.len() != self.numel() {
            return Err(crate::Error::ShapeMismatch {
                op: "assign",
                lhs: self.dims().to_vec(),
                rhs: vec![values.len()],
            });
        }
        self.data = Arc::new(self.device.upload(values)?);
        self.layout = Layout::contiguous(&self.shape.dims());
        Ok(())
    }

    /// A contiguous tensor with the same values (a copy only when needed).
    pub fn contiguous(self) -> Self {
        if self.is_dense() {
            return self;
        }
        let data = device_ok(self.device.contiguous(&self.data, &self.layout));
        let out_id = TensorId::fresh();
        let (in_id, shape, dev) = (self.id, self.shape, self.device.clone());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(go) = g.take_on::<D, E>(out_id) {
                g.accumulate_on::<D, E>(&dev, in_id, go);
            }
        });
        Tensor {
            layout: Layout::contiguous(&shape.dims()),
            shape,
            data: Arc::new(data),
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// Converts every element to `E2` (rounding to nearest even); the gradient
    /// flows back converted to `E`.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U3,), f32> = Tensor::full((U3::default(),), 1.0 / 3.0);
    /// let h = x.to_dtype::<bf16>();
    /// assert_eq!(h.to_vec()[0], bf16::from_f32(1.0 / 3.0));
    /// ```
    pub fn to_dtype<E2: FloatDtype>(self) -> Tensor<S, E2, D, T> {
        let data = device_ok(self.device.convert::<E, E2>(&self.data, &self.layout));
        let out_id = TensorId::fresh();
        let (in_id, dev, dims) = (self.id, self.device.clone(), self.shape.dims());
        let tape = record::<T>(out_id, &[self.tape.node()], move |g| {
            if let Some(go) = g.take_on::<D, E2>(out_id) {
                let l = Layout::contiguous(&dims);
                let gi = device_ok(dev.convert::<E2, E>(&go, &l));
                g.accumulate_on::<D, E>(&dev, in_id, gi);
            }
        });
        Tensor {
            layout: Layout::contiguous(&self.shape.dims()),
            shape: self.shape,
            data: Arc::new(data),
            id: out_id,
            tape,
            device: self.device,
        }
    }

    /// Computes the gradient of this scalar with respect to every tensor
    /// that fed it without a node of its own (parameters, traced inputs).
    /// The graph is freed as it is walked.
    ///
    /// Compiles only for a scalar (rank-0) tensor that carries a tape:
    ///
    /// ```compile_fail
    /// use zerfoo::prelude::*;
    /// let x: Tensor<(U2,), f32> = Tensor::ones((U2::default(),));
    /// let _ = x.sum::<Axis<0>>().backward(); // no tape
    /// ```
    pub fn backward(self) -> crate::autograd::Gradients
    where
        S: crate::shape::ScalarShape,
        T: crate::autograd::HasTape,
    {
        crate::autograd::run_backward::<D, E>(&self.device, self.id, self.tape.node())
    }
}
