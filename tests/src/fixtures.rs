//! Reading reference fixtures (safetensors files made with PyTorch & co.).
//!
//! [`load`] reads every tensor of a file into a [`FixtureTensor`]: its dtype,
//! shape, raw little-endian bytes and (for numeric dtypes) its values as
//! `f64`. [`load_fixture`] resolves a path under [`fixtures_dir`] and panics
//! with a message naming where it looked when the file is missing.
//!
//! ```ignore
//! let t = zerfoo_tests::fixtures::load_fixture("gemma3/expected.safetensors");
//! let logits = &t["logits"];
//! let x: Tensor<(U2, U24, U512), f32> = logits.to_tensor(Default::default()).unwrap();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use zerfoo::kernels::{bf16, f16, F8E4M3, F8E5M2};
use zerfoo::prelude::*;

pub use safetensors::Dtype as FixtureDtype;

use crate::fixtures_dir;

/// Why a fixture could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct FixtureError {
    /// The file (or `file:tensor`) concerned.
    pub what: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fixture `{}`: {}", self.what, self.reason)
    }
}

impl std::error::Error for FixtureError {}

/// `Result` with a [`FixtureError`].
pub type Result<T> = std::result::Result<T, FixtureError>;

/// One tensor of a fixture file.
#[derive(Debug, Clone, PartialEq)]
pub struct FixtureTensor {
    /// The safetensors dtype (`F32`, `BF16`, `I64`, `U8`, ...).
    pub dtype: FixtureDtype,
    /// The dims, row-major.
    pub shape: Vec<usize>,
    /// Every element as `f64`, row-major (exact for all supported dtypes
    /// except 64-bit integers beyond 2^53; use [`FixtureTensor::i64_values`]
    /// for token ids).
    pub values: Vec<f64>,
    /// The raw little-endian bytes, as stored.
    pub bytes: Vec<u8>,
}

impl FixtureTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The dtype's safetensors name: `"F32"`, `"BF16"`, `"I64"`, ...
    pub fn dtype_name(&self) -> String {
        format!("{:?}", self.dtype)
    }

    /// The elements as `i64`, exactly (integer dtypes only).
    pub fn i64_values(&self) -> Option<Vec<i64>> {
        let b = &self.bytes;
        Some(match self.dtype {
            FixtureDtype::I64 => chunks::<8>(b).map(i64::from_le_bytes).collect(),
            FixtureDtype::I32 => chunks::<4>(b)
                .map(|c| i32::from_le_bytes(c) as i64)
                .collect(),
            FixtureDtype::I16 => chunks::<2>(b)
                .map(|c| i16::from_le_bytes(c) as i64)
                .collect(),
            FixtureDtype::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            FixtureDtype::U32 => chunks::<4>(b)
                .map(|c| u32::from_le_bytes(c) as i64)
                .collect(),
            FixtureDtype::U16 => chunks::<2>(b)
                .map(|c| u16::from_le_bytes(c) as i64)
                .collect(),
            FixtureDtype::U8 | FixtureDtype::BOOL => b.iter().map(|&x| x as i64).collect(),
            _ => return None,
        })
    }

    /// The values rounded to `E` in a tensor of shape `shape`; an error if
    /// the dims differ from the fixture's.
    pub fn to_tensor<S: Shape, E: Dtype>(&self, shape: S) -> zerfoo::Result<Tensor<S, E>> {
        if *shape.dims() != self.shape[..] {
            return Err(zerfoo::Error::ShapeMismatch {
                op: "fixture",
                lhs: self.shape.clone(),
                rhs: shape.dims().to_vec(),
            });
        }
        Tensor::from_vec(shape, self.values.iter().map(|&v| E::from_f64(v)).collect())
    }
}

fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    b.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact gives N bytes"))
}

/// Decodes little-endian elements of `dtype` to `f64`; `None` for dtypes
/// without a plain numeric reading (F4, F6, E8M0, FNUZ, complex).
fn decode(dtype: FixtureDtype, b: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        FixtureDtype::F64 => chunks::<8>(b).map(f64::from_le_bytes).collect(),
        FixtureDtype::F32 => chunks::<4>(b)
            .map(|c| f32::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::F16 => chunks::<2>(b)
            .map(|c| f16::from_le_bytes(c).to_f64())
            .collect(),
        FixtureDtype::BF16 => chunks::<2>(b)
            .map(|c| bf16::from_le_bytes(c).to_f64())
            .collect(),
        FixtureDtype::F8_E4M3 => b.iter().map(|&x| F8E4M3(x).to_f32() as f64).collect(),
        FixtureDtype::F8_E5M2 => b.iter().map(|&x| F8E5M2(x).to_f32() as f64).collect(),
        FixtureDtype::I64 => chunks::<8>(b)
            .map(|c| i64::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::I32 => chunks::<4>(b)
            .map(|c| i32::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::I16 => chunks::<2>(b)
            .map(|c| i16::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::I8 => b.iter().map(|&x| x as i8 as f64).collect(),
        FixtureDtype::U64 => chunks::<8>(b)
            .map(|c| u64::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::U32 => chunks::<4>(b)
            .map(|c| u32::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::U16 => chunks::<2>(b)
            .map(|c| u16::from_le_bytes(c) as f64)
            .collect(),
        FixtureDtype::U8 | FixtureDtype::BOOL => b.iter().map(|&x| x as f64).collect(),
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file.
///
/// Numeric dtypes (F64, F32, F16, BF16, F8 E4M3/E5M2, signed and unsigned
/// integers, BOOL) get their values as `f64`; any other dtype is an error.
pub fn load(path: impl AsRef<Path>) -> Result<HashMap<String, FixtureTensor>> {
    let path = path.as_ref();
    let err = |what: String, reason: String| FixtureError { what, reason };
    let buf = std::fs::read(path).map_err(|e| err(path.display().to_string(), e.to_string()))?;
    let st = SafeTensors::deserialize(&buf).map_err(|e| {
        err(
            path.display().to_string(),
            format!("not a safetensors file: {e}"),
        )
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let what = format!("{}:{name}", path.display());
        let dtype = view.dtype();
        let bytes = view.data().to_vec();
        let values = decode(dtype, &bytes)
            .ok_or_else(|| err(what.clone(), format!("unsupported dtype {dtype:?}")))?;
        let t = FixtureTensor {
            dtype,
            shape: view.shape().to_vec(),
            values,
            bytes,
        };
        if t.values.len() != t.numel() {
            return Err(err(
                what,
                format!(
                    "{} values for shape {:?} ({} elements)",
                    t.values.len(),
                    t.shape,
                    t.numel()
                ),
            ));
        }
        out.insert(name, t);
    }
    Ok(out)
}

/// The path of a fixture under [`fixtures_dir`]; panics, naming the folder
/// it looked in, when the file is not there.
#[track_caller]
pub fn fixture_path(relative: &str) -> PathBuf {
    let dir = normalize(&fixtures_dir());
    let path = dir.join(relative);
    if !path.is_file() {
        panic!(
            "fixture `{relative}` not found: looked for {} (fixtures folder {}, {}). \
             The reference fixtures live in `../shared/fixtures` beside the repository; \
             set ZERFOO_FIXTURES to use another folder.",
            path.display(),
            dir.display(),
            if dir.is_dir() {
                "which exists"
            } else {
                "which does not exist"
            },
        );
    }
    path
}

/// Removes `.` and `dir/..` from a path without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// [`load`]s a fixture under [`fixtures_dir`]; panics with a clear message
/// if it is missing or unreadable.
#[track_caller]
pub fn load_fixture(relative: &str) -> HashMap<String, FixtureTensor> {
    let path = fixture_path(relative);
    load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Looks up one tensor, panicking with the names available when it is absent.
#[track_caller]
pub fn get<'a>(tensors: &'a HashMap<String, FixtureTensor>, name: &str) -> &'a FixtureTensor {
    tensors.get(name).unwrap_or_else(|| {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        panic!("fixture has no tensor `{name}`; it has {names:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn le<const N: usize, T: Copy>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }

    /// Writes one tensor of each supported dtype and reads it back.
    #[test]
    fn reads_every_common_dtype() {
        let f32b = le(&[1.5f32, -2.0, 0.25, 3.0e5, -0.0, 7.0], f32::to_le_bytes);
        let f64b = le(&[0.1f64, -1e300], f64::to_le_bytes);
        let f16b = le(
            &[f16::from_f32(0.5), f16::from_f32(-65504.0)],
            f16::to_le_bytes,
        );
        let bf16b = le(
            &[bf16::from_f32(1.0), bf16::from_f32(-3.0e38)],
            bf16::to_le_bytes,
        );
        let i64b = le(&[-3i64, 1 << 60], i64::to_le_bytes);
        let u8b = vec![0u8, 255, 7];
        let path = std::env::temp_dir().join(format!("zerfoo-fixture-{}.st", std::process::id()));
        let views = vec![
            (
                "a",
                TensorView::new(FixtureDtype::F32, vec![2, 3], &f32b).unwrap(),
            ),
            (
                "b",
                TensorView::new(FixtureDtype::F64, vec![2], &f64b).unwrap(),
            ),
            (
                "c",
                TensorView::new(FixtureDtype::F16, vec![2, 1], &f16b).unwrap(),
            ),
            (
                "d",
                TensorView::new(FixtureDtype::BF16, vec![2], &bf16b).unwrap(),
            ),
            (
                "e",
                TensorView::new(FixtureDtype::I64, vec![2], &i64b).unwrap(),
            ),
            (
                "f",
                TensorView::new(FixtureDtype::U8, vec![3], &u8b).unwrap(),
            ),
        ];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let t = load(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(t.len(), 6);
        assert_eq!(t["a"].shape, [2, 3]);
        assert_eq!(t["a"].dtype_name(), "F32");
        assert_eq!(t["a"].values, [1.5, -2.0, 0.25, 3.0e5, -0.0, 7.0]);
        assert!(t["a"].values[4].is_sign_negative());
        assert_eq!(t["a"].bytes, f32b);
        assert_eq!(t["b"].values, [0.1, -1e300]);
        assert_eq!(t["c"].values, [0.5, -65504.0]);
        assert_eq!(t["c"].shape, [2, 1]);
        assert_eq!(t["d"].values, [1.0, bf16::from_f32(-3.0e38).to_f64()]);
        assert_eq!(t["e"].values, [-3.0, (1i64 << 60) as f64]);
        assert_eq!(t["e"].i64_values().unwrap(), [-3, 1 << 60]);
        assert_eq!(t["f"].values, [0.0, 255.0, 7.0]);
        assert_eq!(t["a"].i64_values(), None);
        let x: Tensor<(U2, U3), f32> = t["a"].to_tensor(Default::default()).unwrap();
        assert_eq!(x.to_vec(), [1.5, -2.0, 0.25, 3.0e5, -0.0, 7.0]);
        assert!(t["a"]
            .to_tensor::<_, f32>((U3::default(), U2::default()))
            .is_err());
    }

    #[test]
    fn missing_or_bad_files_are_errors() {
        let e = load("/nonexistent/zerfoo.safetensors").unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/zerfoo.safetensors"),
            "{e}"
        );
        let path = std::env::temp_dir().join(format!("zerfoo-bad-{}.st", std::process::id()));
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let e = load(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(e.reason.contains("not a safetensors file"), "{e}");
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
    }
}
