//! Reverse-mode autograd with the tape in the type.
//!
//! A tensor's last type parameter is [`NoTape`] or [`Tape`]. Ops on a `Tape`
//! tensor record a [`Node`]: the ids of their inputs, the inputs' own nodes
//! and a backward closure. Binary ops merge tapes ([`Merge`]). Only a scalar
//! `Tape` tensor can call `backward()`, which walks the nodes in reverse
//! creation order (a valid reverse topological order, since a node is always
//! created after its inputs), runs each closure once and frees it.
//!
//! Every tensor that took part without a node of its own — parameters and the
//! traced input — ends up with a gradient in [`Gradients`], keyed by its
//! [`TensorId`], which in-place parameter updates preserve.

use core::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use zerfoo_kernels::{Backend, Cpu, FloatDtype, Layout};

use crate::shape::Shape;
use crate::tensor::Tensor;

/// A stable identity for a tensor (and its gradient). In-place updates keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TensorId {
    /// A fresh id, larger than every id handed out before.
    pub fn fresh() -> Self {
        TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// The backward closure of one node: reads the output's gradient from the
/// store and adds the inputs' gradients to it.
pub(crate) type BackwardFn = Box<dyn FnOnce(&mut GradStore) + Send>;

static LIVE_NODES: AtomicUsize = AtomicUsize::new(0);

/// Number of graph nodes alive in the process (to check that graphs are freed).
pub fn live_nodes() -> usize {
    LIVE_NODES.load(Ordering::SeqCst)
}

/// One recorded operation.
pub struct Node {
    id: TensorId,
    parents: Vec<Arc<Node>>,
    backward: Mutex<Option<BackwardFn>>,
    /// What the op offers the next op to fuse with its backward (a linear
    /// layer's activation, see `ops::matmul`), taken by the first op that
    /// does.
    fused: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Node {
    /// Takes what the op offered for fusing, if it is an `X` (see
    /// [`record_fused`]); `None` once taken.
    pub(crate) fn take_fused<X: 'static>(&self) -> Option<X> {
        let mut slot = self.fused.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|b| b.is::<X>()) {
            return None;
        }
        slot.take()?.downcast::<X>().ok().map(|b| *b)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        LIVE_NODES.fetch_sub(1, Ordering::SeqCst);
    }
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Node({:?})", self.id)
    }
}

/// No tape: ops record nothing. Model parameters are `NoTape`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoTape;

/// A tape: this tensor's value depends on a traced input, and ops on it are
/// recorded for `backward`.
#[derive(Clone, Debug, Default)]
pub struct Tape(Option<Arc<Node>>);

/// Whether a tensor records its ops: [`NoTape`] or [`Tape`].
///
/// Merging with `NoTape` or with itself gives `Self` back, so code generic
/// over the tape type (`fn f<T: TapeState>(..)`) can combine its input with
/// parameters (`w.retaped::<T>()`) without extra bounds.
pub trait TapeState:
    Clone
    + core::fmt::Debug
    + Send
    + Sync
    + 'static
    + Merge<NoTape, Out = Self>
    + Merge<Self, Out = Self>
{
    /// `true` for [`Tape`].
    const TRACKED: bool;
    /// The node that produced this tensor, if any.
    fn node(&self) -> Option<Arc<Node>>;
    /// The tape of an op's output, given the node it recorded.
    fn from_node(node: Option<Arc<Node>>) -> Self;
}

impl TapeState for NoTape {
    const TRACKED: bool = false;
    fn node(&self) -> Option<Arc<Node>> {
        None
    }
    fn from_node(_: Option<Arc<Node>>) -> Self {
        NoTape
    }
}

impl TapeState for Tape {
    const TRACKED: bool = true;
    fn node(&self) -> Option<Arc<Node>> {
        self.0.clone()
    }
    fn from_node(node: Option<Arc<Node>>) -> Self {
        Tape(node)
    }
}

/// A tensor that carries a tape (the only kind that can call `backward`).
#[diagnostic::on_unimplemented(
    message = "`backward` needs a tensor that carries a tape, but this one is `{Self}`",
    label = "no tape: nothing was recorded",
    note = "trace the input with `.traced()` before the forward pass"
)]
pub trait HasTape: TapeState {}
impl HasTape for Tape {}

/// The tape of a binary op's output: tracked if either input is.
pub trait Merge<R> {
    /// [`Tape`] if either side is.
    type Out: TapeState;
}
impl Merge<NoTape> for NoTape {
    type Out = NoTape;
}
impl Merge<Tape> for NoTape {
    type Out = Tape;
}
impl Merge<NoTape> for Tape {
    type Out = Tape;
}
impl Merge<Tape> for Tape {
    type Out = Tape;
}

/// One gradient buffer behind the type erasure of [`GradStore`]: the
/// device's storage and the device, so sums and scaling run where the
/// gradient lives. The storage may be shared with other tensors' entries
/// (an addition hands its output's gradient to both operands, see
/// [`GradStore::accumulate_shared_on`]); it is copied only when written
/// while shared, or taken while another entry still holds it.
struct Grad<D: Backend, E: FloatDtype> {
    dev: D,
    data: Arc<D::Storage<E>>,
}

impl<D: Backend, E: FloatDtype> Grad<D, E> {
    /// The storage, made this entry's own first if it is shared.
    fn unique_mut(&mut self) -> &mut D::Storage<E> {
        if Arc::get_mut(&mut self.data).is_none() {
            self.data = Arc::new(copy_of(&self.dev, &self.data));
        }
        Arc::get_mut(&mut self.data).expect("just made unique")
    }
}

/// A copy of contiguous gradient storage on its device.
fn copy_of<D: Backend, E: FloatDtype>(dev: &D, data: &D::Storage<E>) -> D::Storage<E> {
    let layout = Layout::contiguous(&[D::storage_len(data)]);
    device_ok(dev.contiguous(data, &layout))
}

/// The storage itself when nothing else holds it, else a copy.
fn owned<D: Backend, E: FloatDtype>(dev: &D, data: Arc<D::Storage<E>>) -> D::Storage<E> {
    Arc::try_unwrap(data).unwrap_or_else(|shared| copy_of(dev, &shared))
}

/// What [`GradStore`] and [`Gradients`] do with a gradient whose device and
/// dtype they do not know statically.
trait GradBuf: Any + Send + Sync {
    /// `self += other` (same device and dtype).
    fn add_boxed(&mut self, id: TensorId, other: Box<dyn GradBuf>);
    /// `self *= factor`.
    fn scale_by(&mut self, factor: f64);
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<D: Backend, E: FloatDtype> GradBuf for Grad<D, E> {
    fn add_boxed(&mut self, id: TensorId, other: Box<dyn GradBuf>) {
        let other = other
            .into_any()
            .downcast::<Grad<D, E>>()
            .unwrap_or_else(|_| {
                panic!("internal error: gradient of {id:?} changed device or dtype")
            });
        let dev = self.dev.clone();
        device_ok(dev.add_assign(self.unique_mut(), &other.data));
    }
    fn scale_by(&mut self, factor: f64) {
        let dev = self.dev.clone();
        device_ok(dev.scale(self.unique_mut(), factor));
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The value of a device call inside a backward pass, or a panic with the
/// device's message (a backward closure has no error channel).
#[track_caller]
pub(crate) fn device_ok<R>(r: Result<R, zerfoo_kernels::DeviceError>) -> R {
    r.unwrap_or_else(|e| panic!("{}", crate::Error::from(e)))
}

/// Type-erased gradient buffers, keyed by tensor id. Each is contiguous
/// storage of the tensor's own device and dtype.
#[derive(Default)]
pub struct GradStore {
    grads: HashMap<TensorId, Box<dyn GradBuf>>,
}

impl GradStore {
    /// Removes and returns the gradient of `id` (a CPU tensor's).
    pub(crate) fn take<E: FloatDtype>(&mut self, id: TensorId) -> Option<Vec<E>> {
        self.take_on::<Cpu, E>(id)
    }

    /// Removes and returns the gradient of `id`, on its device `D` (a copy
    /// if another entry still shares it).
    pub(crate) fn take_on<D: Backend, E: FloatDtype>(
        &mut self,
        id: TensorId,
    ) -> Option<D::Storage<E>> {
        let g = self.take_grad::<D, E>(id)?;
        Some(owned(&g.dev, g.data))
    }

    /// Removes and returns the gradient of `id`, possibly shared with other
    /// entries: for a backward that only reads it (no copy).
    pub(crate) fn take_shared_on<D: Backend, E: FloatDtype>(
        &mut self,
        id: TensorId,
    ) -> Option<Arc<D::Storage<E>>> {
        Some(self.take_grad::<D, E>(id)?.data)
    }

    fn take_grad<D: Backend, E: FloatDtype>(&mut self, id: TensorId) -> Option<Grad<D, E>> {
        let b = self.grads.remove(&id)?;
        Some(*b.into_any().downcast::<Grad<D, E>>().unwrap_or_else(|_| {
            panic!("internal error: gradient of {id:?} stored with another device or dtype")
        }))
    }

    /// Adds `grad` (contiguous, on `dev`) to the gradient of `id`.
    pub(crate) fn accumulate_on<D: Backend, E: FloatDtype>(
        &mut self,
        dev: &D,
        id: TensorId,
        grad: D::Storage<E>,
    ) {
        self.accumulate_shared_on(dev, id, Arc::new(grad));
    }

    /// [`accumulate_on`](Self::accumulate_on) with storage that other
    /// entries may share: a tensor with no gradient yet takes it as it is
    /// (no copy until someone writes it while shared).
    pub(crate) fn accumulate_shared_on<D: Backend, E: FloatDtype>(
        &mut self,
        dev: &D,
        id: TensorId,
        grad: Arc<D::Storage<E>>,
    ) {
        match self.grads.get_mut(&id) {
            Some(b) => {
                let acc = b
                    .as_any_mut()
                    .downcast_mut::<Grad<D, E>>()
                    .expect("internal error: gradient device or dtype changed");
                debug_assert_eq!(D::storage_len(&acc.data), D::storage_len(&grad));
                device_ok(dev.add_assign(acc.unique_mut(), &grad));
            }
            None => {
                let g = Grad {
                    dev: dev.clone(),
                    data: grad,
                };
                self.grads.insert(id, Box::new(g));
            }
        }
    }

    /// The gradient of `id` so far, if it has one, for a backward that adds
    /// its own part straight into it (see `ops::norm`).
    pub(crate) fn existing_mut_on<D: Backend, E: FloatDtype>(
        &mut self,
        id: TensorId,
    ) -> Option<&mut D::Storage<E>> {
        self.get_mut::<D, E>(id)
    }

    /// The gradient buffer of `id` on `dev` (`len` zeros if it has none
    /// yet), for a backward that adds into part of it (narrow, split).
    pub(crate) fn grad_mut_on<D: Backend, E: FloatDtype>(
        &mut self,
        dev: &D,
        id: TensorId,
        len: usize,
    ) -> &mut D::Storage<E> {
        let b = self.grads.entry(id).or_insert_with(|| {
            Box::new(Grad::<D, E> {
                dev: dev.clone(),
                data: Arc::new(device_ok(dev.zeros::<E>(len))),
            })
        });
        let g = b
            .as_any_mut()
            .downcast_mut::<Grad<D, E>>()
            .expect("internal error: gradient device or dtype changed");
        debug_assert_eq!(D::storage_len(&g.data), len);
        g.unique_mut()
    }

    fn get<D: Backend, E: FloatDtype>(&self, id: TensorId) -> Option<&D::Storage<E>> {
        self.grads
            .get(&id)
            .and_then(|b| b.as_any().downcast_ref::<Grad<D, E>>())
            .map(|g| &*g.data)
    }

    fn get_mut<D: Backend, E: FloatDtype>(&mut self, id: TensorId) -> Option<&mut D::Storage<E>> {
        self.grads
            .get_mut(&id)
            .and_then(|b| b.as_any_mut().downcast_mut::<Grad<D, E>>())
            .map(|g| g.unique_mut())
    }
}

/// Gradients of a loss with respect to every tensor that fed it without a
/// node of its own (parameters and traced inputs), keyed by [`TensorId`].
pub struct Gradients {
    store: GradStore,
}

impl Gradients {
    /// The gradient of `t`, shaped like `t` (a copy, on `t`'s device), or
    /// `None` if `t` did not take part.
    pub fn get<S: Shape, E: FloatDtype, D: Backend, T>(
        &self,
        t: &Tensor<S, E, D, T>,
    ) -> Option<Tensor<S, E, D, NoTape>> {
        let g = self.store.get::<D, E>(t.id())?;
        let l = zerfoo_kernels::Layout::contiguous(&t.dims());
        let data = device_ok(t.device.contiguous(g, &l));
        Some(Tensor::from_storage(t.shape(), data, t.device.clone()))
    }

    /// The gradient of the tensor with this id on device `D`, as contiguous
    /// storage.
    pub fn get_storage<D: Backend, E: FloatDtype>(&self, id: TensorId) -> Option<&D::Storage<E>> {
        self.store.get::<D, E>(id)
    }

    /// The gradient of the tensor with this id on device `D`, mutably.
    pub fn get_storage_mut<D: Backend, E: FloatDtype>(
        &mut self,
        id: TensorId,
    ) -> Option<&mut D::Storage<E>> {
        self.store.get_mut::<D, E>(id)
    }

    /// The gradient of the CPU tensor with this id, as a flat row-major vector.
    pub fn get_vec<E: FloatDtype>(&self, id: TensorId) -> Option<&[E]> {
        self.store.get::<Cpu, E>(id).map(|v| v.as_slice())
    }

    /// The gradient of the CPU tensor with this id, mutably (e.g. for clipping).
    pub fn get_vec_mut<E: FloatDtype>(&mut self, id: TensorId) -> Option<&mut Vec<E>> {
        self.store.get_mut::<Cpu, E>(id)
    }

    /// Adds `scale * grad` (contiguous storage on `dev`) to the gradient of
    /// `id` on that device, creating it if absent, in the dtype's compute
    /// type (on the CPU rounding once per element). Gradient accumulation
    /// over micro-batches uses it with `scale = 1 / accum`.
    pub fn accumulate_scaled_on<D: Backend, E: FloatDtype>(
        &mut self,
        dev: &D,
        id: TensorId,
        grad: &D::Storage<E>,
        scale: f64,
    ) {
        match self.store.get_mut::<D, E>(id) {
            Some(acc) => device_ok(dev.add_scaled(acc, grad, scale)),
            None => {
                let l = zerfoo_kernels::Layout::contiguous(&[D::storage_len(grad)]);
                let mut g = device_ok(dev.contiguous(grad, &l));
                if scale != 1.0 {
                    device_ok(dev.scale(&mut g, scale));
                }
                self.store.accumulate_on(dev, id, g);
            }
        }
    }

    /// Removes the gradient of the CPU tensor `id` and returns it.
    pub fn remove<E: FloatDtype>(&mut self, id: TensorId) -> Option<Vec<E>> {
        self.store.take::<E>(id)
    }

    /// Removes the gradient of the tensor `id` on device `D` and returns it.
    pub fn remove_storage<D: Backend, E: FloatDtype>(
        &mut self,
        id: TensorId,
    ) -> Option<D::Storage<E>> {
        self.store.take_on::<D, E>(id)
    }

    /// The ids that have a gradient.
    pub fn ids(&self) -> impl Iterator<Item = TensorId> + '_ {
        self.store.grads.keys().copied()
    }

    /// How many tensors have a gradient.
    pub fn len(&self) -> usize {
        self.store.grads.len()
    }

    /// Whether no tensor has a gradient.
    pub fn is_empty(&self) -> bool {
        self.store.grads.is_empty()
    }

    /// No gradients: the start of a sum over micro-batches.
    pub fn new() -> Self {
        Gradients {
            store: GradStore::default(),
        }
    }

    /// Adds every gradient in `other` to this set (gradient accumulation:
    /// `total.accumulate(loss.backward())` per micro-batch). Each sum is
    /// computed in the dtype's compute type and rounded once, like `backward`.
    ///
    /// There is no `zero_grad`: parameters hold no gradient buffer, so
    /// starting a fresh [`Gradients::new`] (or dropping the sum) is all it takes.
    ///
    /// ```
    /// use zerfoo::prelude::*;
    /// let w: Tensor<(U2,), f32> = Tensor::ones(Default::default());
    /// let mut total = Gradients::new();
    /// for k in [1.0, 2.0] {
    ///     total.accumulate(w.retaped::<Tape>().mul_scalar(k).sum_all().backward());
    /// }
    /// assert_eq!(total.get(&w).unwrap().to_vec(), [3.0, 3.0]);
    /// ```
    pub fn accumulate(&mut self, other: Gradients) {
        for (id, g) in other.store.grads {
            match self.store.grads.get_mut(&id) {
                Some(acc) => acc.add_boxed(id, g),
                None => {
                    self.store.grads.insert(id, g);
                }
            }
        }
    }

    /// Multiplies every gradient by `factor` (e.g. `1 / micro_batches` to
    /// average an accumulated sum), in the compute type, rounding once per
    /// element.
    pub fn scale(&mut self, factor: f64) {
        for g in self.store.grads.values_mut() {
            g.scale_by(factor);
        }
    }
}

impl Default for Gradients {
    fn default() -> Self {
        Gradients::new()
    }
}

/// Records an op whose output has id `out` and whose inputs carry `tapes`.
/// `backward` runs only if some input is tracked.
pub(crate) fn record<T: TapeState>(
    out: TensorId,
    parents: &[Option<Arc<Node>>],
    backward: impl FnOnce(&mut GradStore) + Send + 'static,
) -> T {
    record_with(out, parents, backward, None)
}

/// [`record`], and `fused` offered to the op that consumes the output (it
/// may take it with [`Node::take_fused`] and then owes this op's backward
/// what they agreed on).
pub(crate) fn record_fused<T: TapeState, X: Send + 'static>(
    out: TensorId,
    parents: &[Option<Arc<Node>>],
    backward: impl FnOnce(&mut GradStore) + Send + 'static,
    fused: X,
) -> T {
    record_with(out, parents, backward, Some(Box::new(fused)))
}

fn record_with<T: TapeState>(
    out: TensorId,
    parents: &[Option<Arc<Node>>],
    backward: impl FnOnce(&mut GradStore) + Send + 'static,
    fused: Option<Box<dyn Any + Send>>,
) -> T {
    if !T::TRACKED {
        return T::from_node(None);
    }
    LIVE_NODES.fetch_add(1, Ordering::SeqCst);
    let node = Node {
        id: out,
        parents: parents.iter().flatten().cloned().collect(),
        backward: Mutex::new(Some(Box::new(backward))),
        fused: Mutex::new(fused),
    };
    T::from_node(Some(Arc::new(node)))
}

/// Runs backward from a scalar with id `root_id` produced by `root`.
pub(crate) fn run_backward<D: Backend, E: FloatDtype>(
    dev: &D,
    root_id: TensorId,
    root: Option<Arc<Node>>,
) -> Gradients {
    let mut store = GradStore::default();
    let one = device_ok(dev.upload(vec![E::from_acc(num_traits::One::one())]));
    store.accumulate_on::<D, E>(dev, root_id, one);
    let mut nodes: BTreeMap<TensorId, Arc<Node>> = BTreeMap::new();
    let mut stack: Vec<Arc<Node>> = root.into_iter().collect();
    while let Some(n) = stack.pop() {
        if nodes.contains_key(&n.id) {
            continue;
        }
        for p in &n.parents {
            if !nodes.contains_key(&p.id) {
                stack.push(p.clone());
            }
        }
        nodes.insert(n.id, n);
    }
    while let Some((id, node)) = nodes.pop_last() {
        let f = node
            .backward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(f) = f {
            f(&mut store);
        }
        // `id` was produced by an op: its gradient is an intermediate.
        store.grads.remove(&id);
    }
    Gradients { store }
}
