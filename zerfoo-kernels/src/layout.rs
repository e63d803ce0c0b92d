//! Strided layouts: a shape, strides (in elements) and an offset into storage.
//!
//! Views (permute, slice, broadcast) change only the layout; kernels read any
//! layout and write contiguous output.

/// The largest rank a tensor can have.
pub const MAX_RANK: usize = 6;

/// Where the elements of a tensor live inside its storage.
///
/// A broadcast dimension has stride 0. Strides are non-negative.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    rank: u8,
    shape: [usize; MAX_RANK],
    strides: [usize; MAX_RANK],
    /// Offset of element `[0, 0, ..]` in the storage.
    pub offset: usize,
}

impl core::fmt::Debug for Layout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Layout")
            .field("shape", &self.shape())
            .field("strides", &self.strides())
            .field("offset", &self.offset)
            .finish()
    }
}

impl Layout {
    /// A row-major contiguous layout for `shape`.
    ///
    /// ```
    /// use zerfoo_kernels::Layout;
    /// let l = Layout::contiguous(&[2, 3]);
    /// assert_eq!(l.strides(), &[3, 1]);
    /// ```
    pub fn contiguous(shape: &[usize]) -> Self {
        assert!(
            shape.len() <= MAX_RANK,
            "rank {} exceeds {MAX_RANK}",
            shape.len()
        );
        let mut l = Layout {
            rank: shape.len() as u8,
            shape: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            offset: 0,
        };
        l.shape[..shape.len()].copy_from_slice(shape);
        let mut s = 1;
        for i in (0..shape.len()).rev() {
            l.strides[i] = s;
            s *= shape[i];
        }
        l
    }

    /// A layout from explicit parts.
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> Self {
        assert_eq!(shape.len(), strides.len());
        assert!(shape.len() <= MAX_RANK);
        let mut l = Layout::contiguous(shape);
        l.strides[..strides.len()].copy_from_slice(strides);
        l.offset = offset;
        l
    }

    /// The same elements of same-shaped layouts, in the same row-major
    /// order, with as few axes as they all allow: size-1 axes dropped and
    /// each axis merged into the next wherever, in every layout, its stride
    /// is the next one's stride times its size. Kernels walking several
    /// layouts together then get fewer, longer runs (a `[B, T, C]` tensor
    /// plus a broadcast `[T, C]` one: runs of `T * C`, not `C`).
    ///
    /// ```
    /// use zerfoo_kernels::Layout;
    /// let x = Layout::contiguous(&[12, 64, 128]);
    /// let pos = Layout::new(&[12, 64, 128], &[0, 128, 1], 0);
    /// let [x, pos] = Layout::coalesce([&x, &pos]);
    /// assert_eq!((x.shape(), x.strides()), (&[12, 8192][..], &[8192, 1][..]));
    /// assert_eq!((pos.shape(), pos.strides()), (&[12, 8192][..], &[0, 1][..]));
    /// ```
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn coalesce<const N: usize>(layouts: [&Layout; N]) -> [Layout; N] {
        let Some(first) = layouts.first() else {
            return layouts.map(|l| *l);
        };
        let shape = first.shape();
        for l in &layouts {
            assert_eq!(l.shape(), shape, "coalesce: shapes differ");
        }
        if shape.contains(&0) {
            return layouts.map(|l| *l);
        }
        // Merged axes, innermost first: (size, stride of each layout).
        let mut axes: Vec<(usize, [usize; N])> = Vec::with_capacity(shape.len());
        for d in (0..shape.len()).rev() {
            if shape[d] == 1 {
                continue;
            }
            let strides = layouts.map(|l| l.strides[d]);
            match axes.last_mut() {
                Some((size, inner)) if (0..N).all(|i| strides[i] == inner[i] * *size) => {
                    *size *= shape[d];
                }
                _ => axes.push((shape[d], strides)),
            }
        }
        if axes.is_empty() {
            axes.push((1, [1; N]));
        }
        axes.reverse();
        let dims: Vec<usize> = axes.iter().map(|a| a.0).collect();
        let mut i = 0;
        layouts.map(|l| {
            let strides: Vec<usize> = axes.iter().map(|a| a.1[i]).collect();
            i += 1;
            Layout::new(&dims, &strides, l.offset)
        })
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank as usize
    }
    /// The dims.
    pub fn shape(&self) -> &[usize] {
        &self.shape[..self.rank()]
    }
    /// The strides, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides[..self.rank()]
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }
    /// Whether the elements are row-major and dense (offset may be non-zero).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for i in (0..self.rank()).rev() {
            if self.shape[i] != 1 && self.strides[i] != expected {
                return false;
            }
            expected *= self.shape[i];
        }
        true
    }
    /// The storage index of the `i`-th element in row-major order.
    #[inline]
    pub fn index_of(&self, mut i: usize) -> usize {
        let mut off = self.offset;
        for d in (0..self.rank()).rev() {
            let n = self.shape[d];
            off += (i % n) * self.strides[d];
            i /= n;
        }
        off
    }
    /// Swaps two axes (a view).
    pub fn swap_axes(&mut self, a: usize, b: usize) {
        self.shape.swap(a, b);
        self.strides.swap(a, b);
    }
    /// Reorders axes: new axis `i` is old axis `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Self {
        assert_eq!(perm.len(), self.rank());
        let mut l = *self;
        for (i, &p) in perm.iter().enumerate() {
            l.shape[i] = self.shape[p];
            l.strides[i] = self.strides[p];
        }
        l
    }
    /// Narrows axis `axis` to `start..start + len` (a view).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Self {
        let mut l = *self;
        l.offset += start * self.strides[axis];
        l.shape[axis] = len;
        l
    }
    /// The same elements, in the same row-major order, under `dims` (as
    /// many elements) without moving any: `Some` view when every group of
    /// axes that `dims` splits or merges is laid out contiguously within
    /// itself (splitting the last axis of a narrowed view into heads, say),
    /// `None` when only a copy can reorder them (merging the axes of a
    /// transposed view).
    ///
    /// ```
    /// use zerfoo_kernels::Layout;
    /// // Columns 4..8 of a [2, 12] matrix, split into 2 heads of 2.
    /// let l = Layout::contiguous(&[2, 12]).narrow(1, 4, 4);
    /// let v = l.reshaped(&[2, 2, 2]).unwrap();
    /// assert_eq!((v.strides(), v.offset), (&[12, 2, 1][..], 4));
    /// // A transpose cannot be flattened without a copy.
    /// let mut t = Layout::contiguous(&[3, 4]);
    /// t.swap_axes(0, 1);
    /// assert!(t.reshaped(&[12]).is_none());
    /// ```
    pub fn reshaped(&self, dims: &[usize]) -> Option<Layout> {
        assert!(dims.len() <= MAX_RANK, "reshape: rank above {MAX_RANK}");
        assert_eq!(
            dims.iter().product::<usize>(),
            self.numel(),
            "reshape: element count"
        );
        if self.numel() == 0 || self.is_contiguous() {
            let c = Layout::contiguous(dims);
            return Some(Layout::new(dims, c.strides(), self.offset));
        }
        // The old axes that matter (size 1 never constrains a view).
        let old: Vec<(usize, usize)> = self
            .shape()
            .iter()
            .zip(self.strides())
            .filter(|(&n, _)| n != 1)
            .map(|(&n, &s)| (n, s))
            .collect();
        let mut strides = [0usize; MAX_RANK];
        let (mut oi, mut ni) = (0, 0);
        while ni < dims.len() {
            if dims[ni] == 1 {
                strides[ni] = 1;
                ni += 1;
                continue;
            }
            // Grow a group of old axes [oi, oj) and new ones [ni, nj) with
            // the same element count.
            let (mut oj, mut nj) = (oi + 1, ni + 1);
            let (mut po, mut pn) = (old[oi].0, dims[ni]);
            while po != pn {
                if po < pn {
                    po *= old[oj].0;
                    oj += 1;
                } else {
                    pn *= dims[nj];
                    nj += 1;
                }
            }
            // The group's old axes must nest: each one's stride spans the next.
            if (oi..oj - 1).any(|k| old[k].1 != old[k + 1].1 * old[k + 1].0) {
                return None;
            }
            // New strides from the group's innermost old stride outwards;
            // size-1 new axes inside the group get a harmless stride.
            let mut s = old[oj - 1].1;
            for k in (ni..nj).rev() {
                strides[k] = s;
                s *= dims[k];
            }
            (oi, ni) = (oj, nj);
        }
        Some(Layout::new(dims, &strides[..dims.len()], self.offset))
    }
    /// Sets dims and strides directly (used for broadcast views).
    pub fn with_dims(&self, shape: &[usize], strides: &[usize]) -> Self {
        Layout::new(shape, strides, self.offset)
    }

    /// Calls `f(storage_index)` for every element in row-major order,
    /// without a division per element.
    #[inline]
    pub fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        let rank = self.rank();
        let n = self.numel();
        if n == 0 {
            return;
        }
        if rank == 0 {
            f(self.offset);
            return;
        }
        let inner = self.shape[rank - 1];
        let inner_stride = self.strides[rank - 1];
        let mut idx = [0usize; MAX_RANK];
        let mut base = self.offset;
        let outer = n / inner;
        for _ in 0..outer {
            let mut off = base;
            for _ in 0..inner {
                f(off);
                off += inner_stride;
            }
            // advance the outer multi-index
            self.step(&mut idx, &mut base, rank - 1);
        }
    }

    /// Steps the multi-index `idx` over axes `0..axes` to the next position
    /// in row-major order, carrying into outer axes, and keeps its storage
    /// offset `off` in step.
    #[inline(always)]
    fn step(&self, idx: &mut [usize; MAX_RANK], off: &mut usize, axes: usize) {
        let mut d = axes;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            *off += self.strides[d];
            if idx[d] < self.shape[d] {
                break;
            }
            *off -= self.strides[d] * self.shape[d];
            idx[d] = 0;
        }
    }

    /// The multi-index and storage offset of element `i` (row-major order).
    fn position_of(&self, i: usize) -> ([usize; MAX_RANK], usize) {
        let mut idx = [0usize; MAX_RANK];
        let mut rem = i;
        let mut off = self.offset;
        for d in (0..self.rank()).rev() {
            idx[d] = rem % self.shape[d];
            rem /= self.shape[d];
            off += idx[d] * self.strides[d];
        }
        (idx, off)
    }

    /// Calls `f(storage_index)` for elements `start..start + count` (row-major order).
    #[inline]
    pub fn for_each_offset_in(&self, start: usize, count: usize, mut f: impl FnMut(usize)) {
        let rank = self.rank();
        if count == 0 {
            return;
        }
        if rank == 0 {
            f(self.offset);
            return;
        }
        let (mut idx, mut off) = self.position_of(start);
        for _ in 0..count {
            f(off);
            self.step(&mut idx, &mut off, rank);
        }
    }

    /// Calls `f(offset, len, stride)` for each run of elements along the
    /// last axis among elements `start..start + count` (row-major order):
    /// the run's elements sit at `offset + j * stride` for `j < len`. A
    /// kernel can then work on whole runs (a slice when `stride == 1`)
    /// instead of one index at a time.
    #[inline]
    pub fn for_each_run_in(
        &self,
        start: usize,
        count: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let rank = self.rank();
        if count == 0 {
            return;
        }
        if rank == 0 {
            f(self.offset, 1, 1);
            return;
        }
        let (inner, is) = (self.shape[rank - 1], self.strides[rank - 1]);
        let (mut idx, mut off) = self.position_of(start);
        let mut left = count;
        loop {
            let len = (inner - idx[rank - 1]).min(left);
            f(off, len, is);
            left -= len;
            if left == 0 {
                return;
            }
            // To the start of the next row.
            off -= idx[rank - 1] * is;
            idx[rank - 1] = 0;
            self.step(&mut idx, &mut off, rank - 1);
        }
    }

    /// The storage indices of all elements, in row-major order.
    pub fn offsets(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.numel());
        self.for_each_offset(|o| v.push(o));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_a_permuted_slice() {
        let l = Layout::contiguous(&[2, 3, 4])
            .permute(&[2, 0, 1])
            .narrow(0, 1, 2);
        let fast = l.offsets();
        let slow: Vec<usize> = (0..l.numel()).map(|i| l.index_of(i)).collect();
        assert_eq!(fast, slow);
        for (start, count) in [(0, l.numel()), (3, 7), (5, 1), (4, 8)] {
            let mut runs = Vec::new();
            l.for_each_run_in(start, count, |o, len, st| {
                runs.extend((0..len).map(|j| o + j * st))
            });
            assert_eq!(
                runs,
                slow[start..start + count],
                "runs from {start}, {count}"
            );
        }
        let mut part = Vec::new();
        l.for_each_offset_in(3, 7, |o| part.push(o));
        assert_eq!(part, slow[3..10]);
        assert_eq!(l.shape(), &[2, 2, 3]);
        assert!(!l.is_contiguous());
        assert!(Layout::contiguous(&[2, 3]).is_contiguous());
    }

    #[test]
    fn coalesce_keeps_every_offset_in_order() {
        let base = Layout::contiguous(&[3, 1, 4, 5]);
        let cases: Vec<[Layout; 3]> = vec![
            [base, base, base],
            // A broadcast operand, a permuted one and a narrowed one.
            [
                base,
                Layout::new(&[3, 1, 4, 5], &[0, 7, 5, 1], 2),
                Layout::contiguous(&[5, 1, 4, 3]).permute(&[3, 1, 2, 0]),
            ],
            [
                Layout::contiguous(&[3, 1, 6, 5]).narrow(2, 1, 4),
                base,
                Layout::new(&[3, 1, 4, 5], &[20, 0, 0, 0], 1),
            ],
            // All size-1 axes, and a scalar broadcast.
            [
                Layout::contiguous(&[1, 1]),
                Layout::new(&[1, 1], &[0, 0], 3),
                Layout::contiguous(&[1, 1]),
            ],
        ];
        for [a, b, c] in cases {
            let merged = Layout::coalesce([&a, &b, &c]);
            for (old, new) in [a, b, c].iter().zip(&merged) {
                assert_eq!(old.offsets(), new.offsets(), "{old:?} -> {new:?}");
                assert_eq!(new.shape(), merged[0].shape());
            }
        }
        // Only what every layout allows is merged.
        let [x, pos] = Layout::coalesce([&base, &Layout::new(&[3, 1, 4, 5], &[0, 0, 5, 1], 0)]);
        assert_eq!(x.shape(), &[3, 20]);
        assert_eq!(pos.strides(), &[0, 1]);
        let [t] = Layout::coalesce([&base.permute(&[0, 1, 3, 2])]);
        assert_eq!(t.shape(), &[3, 5, 4]);
    }

    #[test]
    fn broadcast_strides_repeat() {
        let l = Layout::new(&[2, 3], &[0, 1], 0);
        assert_eq!(l.offsets(), vec![0, 1, 2, 0, 1, 2]);
    }

    /// Every view `reshaped` offers visits the same storage offsets, in
    /// the same order, as the layout it came from; every refusal is a
    /// layout whose elements cannot be regrouped so.
    #[test]
    fn reshaped_views_keep_every_offset_in_order() {
        let base = Layout::contiguous(&[4, 6, 10]);
        let mut t01 = base;
        t01.swap_axes(0, 1);
        let mut t12 = base;
        t12.swap_axes(1, 2);
        let cases: Vec<(Layout, Vec<usize>, bool)> = vec![
            (base.narrow(2, 2, 6), vec![4, 6, 3, 2], true),
            (base.narrow(2, 2, 6), vec![24, 6], true),
            (base.narrow(1, 1, 4), vec![16, 10], false),
            (base.narrow(1, 1, 4), vec![4, 4, 2, 5], true),
            (base.narrow(1, 1, 4), vec![2, 2, 1, 4, 10], true),
            (t01, vec![6, 40], false),
            (t01, vec![6, 4, 2, 5], true),
            (t01, vec![24, 10], false),
            (t12, vec![4, 60], false),
            (t12, vec![2, 2, 10, 6], true),
            (t12, vec![4, 10, 3, 2], true),
            (
                Layout::contiguous(&[3, 1, 5]).narrow(2, 1, 2),
                vec![1, 3, 2],
                true,
            ),
        ];
        for (l, dims, view) in cases {
            let got = l.reshaped(&dims);
            assert_eq!(got.is_some(), view, "{:?} -> {dims:?}", l.shape());
            if let Some(v) = got {
                assert_eq!(v.shape(), &dims[..]);
                assert_eq!(v.offsets(), l.offsets(), "{:?} -> {dims:?}", l.shape());
            }
        }
    }
}
