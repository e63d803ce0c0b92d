//! Rotary position embedding ([`crate::cpu::rotary`]), rotate-half
//! convention: tables built on the device the way the CPU builds them, and
//! the rotation (its inverse is the backward: the same rotation with `sin`
//! negated, as on the CPU).

use super::CudaFloat;
use crate::cuda::device::{check_layout, grid_for, same_device};
use crate::cuda::{CudaBuffer, CudaDevice, CudaDtype, CudaError, Family};
use crate::{Layout, Real};

/// The `(cos, sin)` tables, `t_len x hd/2` row-major, in the compute type
/// `A` (`f32` or `f64`), built on the device like
/// [`crate::cpu::rotary::rope_tables`]: the inverse frequency
/// `1 / base^(2i/hd)` and the angle `(t + offset) * inv_freq` rounded to `A`,
/// `cos`/`sin` evaluated in `f64` and rounded once.
pub fn rope_tables<A: CudaDtype + Real + crate::Dtype>(
    dev: &CudaDevice,
    t_len: usize,
    hd: usize,
    base: f64,
    offset: usize,
) -> Result<(CudaBuffer<A>, CudaBuffer<A>), CudaError> {
    let op = "rope_tables";
    let n = t_len * (hd / 2);
    let mut cos = dev.alloc::<A>(n)?;
    let mut sin = dev.alloc::<A>(n)?;
    if n > 0 {
        dev.launch(op, Family::Rotary, A::DTYPE, "rope_tables")?
            .u64(t_len)
            .u64(hd)
            .f64(base)
            .u64(offset)
            .ptr_mut(&mut cos)
            .ptr_mut(&mut sin)
            .run(grid_for(n))?;
    }
    Ok((cos, sin))
}

/// `(T, hd)` of a `(.., T, hd)` layout with even `hd`.
fn rope_dims(op: &str, layout: &Layout) -> Result<(usize, usize), CudaError> {
    let dims = layout.shape();
    let r = dims.len();
    if r < 2 || !dims[r - 1].is_multiple_of(2) {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!("needs (.., T, hd) with an even hd, got {dims:?}"),
        ));
    }
    Ok((dims[r - 2], dims[r - 1]))
}

/// Applies the rotation of the tables `(cos, sin)` (from [`rope_tables`],
/// at least `T x hd/2`) to `src` of dims `(.., T, hd)` in any layout, or
/// with `inverse` its inverse (the backward). Contiguous output.
pub fn rope_apply<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    tables: (&CudaBuffer<E::Acc>, &CudaBuffer<E::Acc>),
    inverse: bool,
) -> Result<CudaBuffer<E>, CudaError> {
    let op = "rope";
    let dev = src.device();
    dev.check(op, E::DTYPE)?;
    same_device(op, dev, tables.0.device())?;
    same_device(op, dev, tables.1.device())?;
    check_layout(op, layout, src.len())?;
    let (t_len, hd) = rope_dims(op, layout)?;
    let need = t_len * (hd / 2);
    if tables.0.len() < need || tables.1.len() < need {
        return Err(CudaError::new(
            format!("shape check for `{op}`"),
            format!(
                "tables of {} and {} entries for {t_len} positions x {}",
                tables.0.len(),
                tables.1.len(),
                hd / 2
            ),
        ));
    }
    let n = layout.numel();
    let mut y = dev.alloc::<E>(n)?;
    if n == 0 {
        return Ok(y);
    }
    let rows = n / hd;
    dev.launch(op, Family::Rotary, E::DTYPE, "rope_apply")?
        .ptr(src)
        .layout(layout)
        .u64(rows)
        .u64(t_len)
        .u64(hd)
        .ptr(tables.0)
        .ptr(tables.1)
        .i32(i32::from(inverse))
        .ptr_mut(&mut y)
        .run(grid_for(rows * (hd / 2)))?;
    Ok(y)
}

/// Applies RoPE (or, with `inverse`, its inverse rotation — the backward)
/// to `src` of dims `(.., T, hd)` in any layout, positions starting at
/// `offset`; `hd` must be even. Contiguous output. Builds the tables on
/// each call; keep them with [`rope_tables`] + [`rope_apply`] to reuse.
pub fn rope<E: CudaFloat>(
    src: &CudaBuffer<E>,
    layout: &Layout,
    base: f64,
    offset: usize,
    inverse: bool,
) -> Result<CudaBuffer<E>, CudaError> {
    let (t_len, hd) = rope_dims("rope", layout)?;
    src.device().check("rope", E::DTYPE)?;
    let tables = rope_tables::<E::Acc>(src.device(), t_len, hd, base, offset)?;
    rope_apply(src, layout, (&tables.0, &tables.1), inverse)
}
