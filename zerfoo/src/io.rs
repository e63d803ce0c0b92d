//! Checkpoints as safetensors files, by the dotted paths of the
//! [`Module`] traversal.
//!
//! Loading is strict by default: a missing, unexpected, mis-shaped or
//! wrong-dtype tensor is an error naming it. [`LoadOptions`] opts into a
//! lenient mode (which reports what it skipped) and into dtype conversion.
//! Writes are atomic: a temporary file in the same folder, then a rename.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use zerfoo_kernels::{bf16, f16, Backend, DType, Dtype, FloatDtype, F8E4M3, F8E5M2};

use crate::autograd::NoTape;
use crate::nn::{Module, ParamVisitor, ParamVisitorMut};
use crate::shape::Shape;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The safetensors dtype of a zerfoo dtype.
pub fn safetensors_dtype(d: DType) -> StDtype {
    match d {
        DType::F8E4M3 => StDtype::F8_E4M3,
        DType::F8E5M2 => StDtype::F8_E5M2,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::I64 => StDtype::I64,
        DType::U32 => StDtype::U32,
        #[allow(unreachable_patterns)]
        _ => StDtype::U8,
    }
}

fn zerfoo_dtype(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F8_E4M3 => DType::F8E4M3,
        StDtype::F8_E5M2 => DType::F8E5M2,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::I64 => DType::I64,
        StDtype::U32 => DType::U32,
        _ => return None,
    })
}

/// Little-endian bytes of a slice of elements.
pub fn to_le_bytes<E: Dtype>(values: &[E]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * E::DTYPE.size_in_bytes());
    for &v in values {
        let x = v.to_f64();
        match E::DTYPE {
            DType::F8E4M3 => out.push(F8E4M3::from_f64(x).to_bits()),
            DType::F8E5M2 => out.push(F8E5M2::from_f64(x).to_bits()),
            DType::F16 => out.extend(f16::from_f64(x).to_bits().to_le_bytes()),
            DType::BF16 => out.extend(bf16::from_f64(x).to_bits().to_le_bytes()),
            DType::F32 => out.extend((x as f32).to_le_bytes()),
            DType::F64 => out.extend(x.to_le_bytes()),
            DType::I64 => out.extend((x as i64).to_le_bytes()),
            DType::U32 => out.extend((x as u32).to_le_bytes()),
            #[allow(unreachable_patterns)]
            _ => out.push(x as u8),
        }
    }
    out
}

/// Decodes little-endian `bytes` of dtype `d` into `f64`s (exact for every
/// float dtype; `None` for a dtype zerfoo does not read).
pub fn decode_f64(d: StDtype, bytes: &[u8]) -> Option<Vec<f64>> {
    Some(match d {
        StDtype::F8_E4M3 => bytes
            .iter()
            .map(|&b| F8E4M3::from_bits(b).to_f32() as f64)
            .collect(),
        StDtype::F8_E5M2 => bytes
            .iter()
            .map(|&b| F8E5M2::from_bits(b).to_f32() as f64)
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        StDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        StDtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        StDtype::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        StDtype::U8 => bytes.iter().map(|&b| b as f64).collect(),
        _ => return None,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed
/// and synced, then renamed over `path`. A crash leaves either the old file
/// or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |p: &Path, e: std::io::Error| Error::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

struct Collect(Vec<(String, DType, Vec<usize>, Vec<u8>)>);
impl ParamVisitor for Collect {
    fn visit<S: Shape, E: FloatDtype, D: Backend>(
        &mut self,
        path: &str,
        p: &Tensor<S, E, D, NoTape>,
    ) {
        self.0.push((
            path.to_string(),
            E::DTYPE,
            p.dims().to_vec(),
            to_le_bytes(&p.to_vec()),
        ));
    }
}

/// Serializes a module's parameters (and optional string metadata) to
/// safetensors bytes.
pub fn to_safetensors_bytes<M: Module>(
    module: &M,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut c = Collect(Vec::new());
    module.visit_params("", &mut c);
    let mut seen = BTreeSet::new();
    for (name, ..) in &c.0 {
        if !seen.insert(name.clone()) {
            return Err(Error::Checkpoint {
                tensor: name.clone(),
                reason: "two parameters share this path".into(),
            });
        }
    }
    let views: Vec<(String, TensorView<'_>)> =
        c.0.iter()
            .map(|(name, d, shape, bytes)| {
                TensorView::new(safetensors_dtype(*d), shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Format {
                        what: "tensor".into(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, metadata).map_err(|e| Error::Format {
        what: "safetensors output".into(),
        reason: e.to_string(),
    })
}

/// Saves a module's parameters to a safetensors file (atomically), named by
/// their dotted paths.
pub fn save<M: Module>(module: &M, path: impl AsRef<Path>) -> Result<()> {
    save_with_metadata(module, path, None)
}

/// Like [`save`], with string metadata in the header.
pub fn save_with_metadata<M: Module>(
    module: &M,
    path: impl AsRef<Path>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = to_safetensors_bytes(module, metadata)?;
    write_atomic(path.as_ref(), &bytes)
}

/// How [`load_with`] treats a checkpoint that does not fit exactly.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Skip missing, unexpected and mis-shaped tensors instead of failing,
    /// and list them in the [`LoadReport`].
    pub lenient: bool,
    /// Convert a tensor stored in another float dtype (e.g. bf16 weights into
    /// an f32 model) instead of failing.
    pub convert_dtype: bool,
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters that were set.
    pub loaded: Vec<String>,
    /// Parameters with no tensor in the file (lenient mode).
    pub missing: Vec<String>,
    /// Tensors in the file that no parameter matched (lenient mode).
    pub unexpected: Vec<String>,
    /// Parameters skipped because of a shape or dtype mismatch, with why (lenient mode).
    pub mismatched: Vec<(String, String)>,
}

struct Assign<'a> {
    file: &'a SafeTensors<'a>,
    opts: LoadOptions,
    report: LoadReport,
    error: Option<Error>,
}

impl Assign<'_> {
    fn fail(&mut self, tensor: &str, reason: String) {
        if self.opts.lenient {
            self.report.mismatched.push((tensor.to_string(), reason));
        } else if self.error.is_none() {
            self.error = Some(Error::Checkpoint {
                tensor: tensor.to_string(),
                reason,
            });
        }
    }
}

impl ParamVisitorMut for Assign<'_> {
    fn visit<S: Shape, E: FloatDtype, D: Backend>(
        &mut self,
        path: &str,
        p: &mut Tensor<S, E, D, NoTape>,
    ) {
        if self.error.is_some() {
            return;
        }
        let view = match self.file.tensor(path) {
            Ok(v) => v,
            Err(_) => {
                if self.opts.lenient {
                    self.report.missing.push(path.to_string());
                } else {
                    self.error = Some(Error::Checkpoint {
                        tensor: path.to_string(),
                        reason: "missing from the checkpoint".into(),
                    });
                }
                return;
            }
        };
        if view.shape() != &*p.dims() {
            let why = format!(
                "shape {:?} in the checkpoint, {:?} in the module",
                view.shape(),
                &*p.dims()
            );
            return self.fail(path, why);
        }
        let file_dtype = zerfoo_dtype(view.dtype());
        if file_dtype != Some(E::DTYPE)
            && !(self.opts.convert_dtype && file_dtype.is_some_and(|d| d.is_float()))
        {
            let why = format!(
                "dtype {:?} in the checkpoint, {} in the module",
                view.dtype(),
                E::DTYPE
            );
            return self.fail(path, why);
        }
        let Some(values) = decode_f64(view.dtype(), view.data()) else {
            return self.fail(path, format!("unsupported dtype {:?}", view.dtype()));
        };
        let host: Vec<E> = values.into_iter().map(E::from_f64).collect();
        if let Err(e) = p.assign(host) {
            self.error = Some(e);
            return;
        }
        self.report.loaded.push(path.to_string());
    }
}

/// Parses safetensors bytes, turning every malformation into [`Error::Format`].
pub fn parse_safetensors<'a>(bytes: &'a [u8], what: &str) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| Error::Format {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Reads a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads parameters from safetensors bytes into `module`.
pub fn load_bytes_with<M: Module>(
    module: &mut M,
    bytes: &[u8],
    opts: LoadOptions,
) -> Result<LoadReport> {
    let file = parse_safetensors(bytes, "safetensors checkpoint")?;
    let mut a = Assign {
        file: &file,
        opts,
        report: LoadReport::default(),
        error: None,
    };
    module.visit_params_mut("", &mut a);
    if let Some(e) = a.error {
        return Err(e);
    }
    let mut report = a.report;
    let known: BTreeSet<String> = module.param_info().into_iter().map(|p| p.path).collect();
    let mut unexpected: BTreeMap<String, ()> = BTreeMap::new();
    for name in file.names() {
        if !known.contains(name) {
            unexpected.insert(name.to_string(), ());
        }
    }
    if let Some((name, _)) = unexpected.iter().next() {
        if !opts.lenient {
            return Err(Error::Checkpoint {
                tensor: name.clone(),
                reason: "in the checkpoint but not in the module".into(),
            });
        }
    }
    report.unexpected = unexpected.into_keys().collect();
    Ok(report)
}

/// Loads a safetensors file into `module`, strictly: every parameter must be
/// present with its shape and dtype, and the file must hold nothing else.
pub fn load<M: Module>(module: &mut M, path: impl AsRef<Path>) -> Result<LoadReport> {
    load_with(module, path, LoadOptions::default())
}

/// Loads with [`LoadOptions`].
pub fn load_with<M: Module>(
    module: &mut M,
    path: impl AsRef<Path>,
    opts: LoadOptions,
) -> Result<LoadReport> {
    let bytes = read_file(path.as_ref())?;
    load_bytes_with(module, &bytes, opts)
}
