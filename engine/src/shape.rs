//! Shapes, dimension indices and strided layouts. Transposes, narrows and broadcasts are layouts
//! over the same storage, not copies.

use crate::{Error, Result};

/// A dimension index: `usize` counts from the front, `i32` may be negative to count from the end.
pub trait Dim: Copy {
    fn resolve(self, rank: usize, op: &'static str, shape: &[usize]) -> Result<usize>;
}

impl Dim for usize {
    fn resolve(self, rank: usize, op: &'static str, shape: &[usize]) -> Result<usize> {
        if self < rank {
            Ok(self)
        } else {
            Err(Error::DimOutOfRange { op, dim: self as i64, rank, shape: shape.to_vec() })
        }
    }
}

impl Dim for i32 {
    fn resolve(self, rank: usize, op: &'static str, shape: &[usize]) -> Result<usize> {
        let d = if self < 0 { self as i64 + rank as i64 } else { self as i64 };
        if d >= 0 && (d as usize) < rank {
            Ok(d as usize)
        } else {
            Err(Error::DimOutOfRange { op, dim: self as i64, rank, shape: shape.to_vec() })
        }
    }
}

pub fn elem_count(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s = 1;
    for (d, st) in shape.iter().zip(strides.iter_mut()).rev() {
        *st = s;
        s *= *d;
    }
    strides
}

/// The shape two operands broadcast to (numpy rules, aligned at the last dimension).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shapes_note(op, &[a, b], "cannot broadcast"));
        };
    }
    Ok(out)
}

/// Shape, strides (in elements) and offset of a tensor's view into its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.len(), strides.len());
        Layout { shape, strides, offset }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn elem_count(&self) -> usize {
        elem_count(&self.shape)
    }

    /// Row-major contiguous (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// If contiguous, the range of storage it covers.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.elem_count())
    }

    /// The same elements in the same order as runs: `(outer, len, stride)` where each offset of
    /// `outer` starts a run of `len` elements `stride` apart. Adjacent dims that step through memory
    /// as one are merged first (size-1 dims dropped), so a run is as long as the layout allows
    /// (a whole row of a permuted view with a contiguous last dim, for example).
    pub fn runs(&self) -> (Layout, usize, usize) {
        let mut shape: Vec<usize> = Vec::with_capacity(self.rank());
        let mut strides: Vec<usize> = Vec::with_capacity(self.rank());
        for (&d, &st) in self.shape.iter().zip(&self.strides) {
            if d == 1 {
                continue;
            }
            match (shape.last_mut(), strides.last_mut()) {
                (Some(pd), Some(ps)) if *ps == st * d => {
                    *pd *= d;
                    *ps = st;
                }
                _ => {
                    shape.push(d);
                    strides.push(st);
                }
            }
        }
        let (len, stride) = match (shape.pop(), strides.pop()) {
            (Some(d), Some(st)) => (d, st),
            _ => (usize::from(self.elem_count() > 0), 1),
        };
        (Layout { shape, strides, offset: self.offset }, len, stride)
    }

    /// Storage offsets of every element in row-major order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }

    pub fn permute(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut shape = self.shape.clone();
        shape[dim] = len;
        Layout { shape, strides: self.strides.clone(), offset: self.offset + start * self.strides[dim] }
    }

    /// Broadcast to `shape` (which must be a valid broadcast target): new or size-1 dims get stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Layout {
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.rank() {
            strides[extra + i] = if self.shape[i] == shape[extra + i] { self.strides[i] } else { 0 };
        }
        Layout { shape: shape.to_vec(), strides, offset: self.offset }
    }

    /// A reshaped view if the memory order allows it without a copy.
    pub fn reshape_view(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: self.offset });
        }
        None
    }
}

/// Iterator over the storage offsets of a strided layout in row-major order.
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
    remaining: usize,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        let remaining = layout.elem_count();
        StridedOffsets {
            layout,
            index: vec![0; layout.rank()],
            next: (remaining > 0).then_some(layout.offset),
            remaining,
        }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.next = None;
            return Some(cur);
        }
        let mut off = cur;
        for d in (0..self.index.len()).rev() {
            self.index[d] += 1;
            off += self.layout.strides[d];
            if self.index[d] < self.layout.shape[d] {
                break;
            }
            off -= self.layout.strides[d] * self.index[d];
            self.index[d] = 0;
        }
        self.next = Some(off);
        Some(cur)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}

/// Size of the rows a last-dim op works on: (rows, width).
pub(crate) fn rows_of(shape: &[usize]) -> (usize, usize) {
    let w = shape.last().copied().unwrap_or(1);
    let n: usize = shape.iter().product();
    (n.checked_div(w).unwrap_or(0), w)
}

/// Split `[outer, d, inner]` around `dim`.
pub(crate) fn split_at_dim(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = shape[..dim].iter().product();
    let inner = shape[dim + 1..].iter().product();
    (outer, shape[dim], inner)
}
