//! Safetensors checkpoints: bit-exact round trips in every dtype, strict
//! loading errors that name the tensor, corrupt files, lenient mode.

use zerfoo::io::{self, LoadOptions};
use zerfoo::nn::Module;
use zerfoo::prelude::*;

dim!(Rows = 3);
dim!(Cols = 5);

#[derive(Module)]
struct AllDtypes {
    a: Tensor<(Rows, Cols), f64>,
    b: Tensor<(Rows, Cols), f32>,
    c: Tensor<(Rows, Cols), f16>,
    d: Tensor<(Rows, Cols), bf16>,
    e: Tensor<(Rows, Cols), F8E4M3>,
    f: Tensor<(Rows, Cols), F8E5M2>,
}

fn all_dtypes(seed: u64) -> AllDtypes {
    AllDtypes {
        a: Tensor::randn((Rows, Cols), seed),
        b: Tensor::randn((Rows, Cols), seed + 1),
        c: Tensor::randn((Rows, Cols), seed + 2),
        d: Tensor::randn((Rows, Cols), seed + 3),
        e: Tensor::randn((Rows, Cols), seed + 4),
        f: Tensor::randn((Rows, Cols), seed + 5),
    }
}

fn bits<E: Dtype>(t: &Tensor<(Rows, Cols), E>) -> Vec<u8> {
    io::to_le_bytes(&t.to_vec())
}

/// A path in a folder of its own (tests run concurrently; the leftover-file
/// check must see only its own writes).
fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("zerfoo-ckpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn round_trip_is_bit_exact_in_every_dtype() {
    let src = all_dtypes(10);
    let path = tmp("all.safetensors");
    io::save(&src, &path).unwrap();
    let mut dst = all_dtypes(99);
    let report = io::load(&mut dst, &path).unwrap();
    assert_eq!(report.loaded.len(), 6);
    assert_eq!(bits(&src.a), bits(&dst.a));
    assert_eq!(bits(&src.b), bits(&dst.b));
    assert_eq!(bits(&src.c), bits(&dst.c));
    assert_eq!(bits(&src.d), bits(&dst.d));
    assert_eq!(bits(&src.e), bits(&dst.e));
    assert_eq!(bits(&src.f), bits(&dst.f));
    // ids survive a load (gradients stay keyed to the same parameters)
    let before = dst.a.id();
    io::load(&mut dst, &path).unwrap();
    assert_eq!(dst.a.id(), before);
    // no temporary file is left beside the checkpoint (only this file's:
    // the other tests of this process save into the same folder meanwhile)
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".all.safetensors.tmp-")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[derive(Module)]
struct Small {
    w: Tensor<(Rows, Cols), f32>,
    b: Tensor<(Cols,), f32>,
}

#[derive(Module)]
struct SmallMissing {
    w: Tensor<(Rows, Cols), f32>,
}

#[derive(Module)]
struct SmallExtra {
    w: Tensor<(Rows, Cols), f32>,
    b: Tensor<(Cols,), f32>,
    extra: Tensor<(Cols,), f32>,
}

#[derive(Module)]
struct SmallWrongShape {
    w: Tensor<(Cols, Rows), f32>,
    b: Tensor<(Cols,), f32>,
}

#[derive(Module)]
struct SmallWrongDtype {
    w: Tensor<(Rows, Cols), f64>,
    b: Tensor<(Cols,), f32>,
}

fn small() -> Small {
    Small {
        w: Tensor::randn((Rows, Cols), 1),
        b: Tensor::randn((Cols,), 2),
    }
}

#[test]
fn strict_loading_names_the_offending_tensor() {
    let path = tmp("small.safetensors");
    io::save(&small(), &path).unwrap();

    let mut unexpected = SmallMissing {
        w: Tensor::zeros((Rows, Cols)),
    };
    let e = io::load(&mut unexpected, &path).unwrap_err().to_string();
    assert!(e.contains("`b`") && e.contains("not in the module"), "{e}");

    let mut missing = SmallExtra {
        w: Tensor::zeros((Rows, Cols)),
        b: Tensor::zeros((Cols,)),
        extra: Tensor::zeros((Cols,)),
    };
    let e = io::load(&mut missing, &path).unwrap_err().to_string();
    assert!(e.contains("`extra`") && e.contains("missing"), "{e}");

    let mut shape = SmallWrongShape {
        w: Tensor::zeros((Cols, Rows)),
        b: Tensor::zeros((Cols,)),
    };
    let e = io::load(&mut shape, &path).unwrap_err().to_string();
    assert!(
        e.contains("`w`") && e.contains("[3, 5]") && e.contains("[5, 3]"),
        "{e}"
    );

    let mut dtype = SmallWrongDtype {
        w: Tensor::zeros((Rows, Cols)),
        b: Tensor::zeros((Cols,)),
    };
    let e = io::load(&mut dtype, &path).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("dtype"), "{e}");
    // ... and with conversion allowed, f32 values load exactly into f64
    io::load_with(
        &mut dtype,
        &path,
        LoadOptions {
            convert_dtype: true,
            ..Default::default()
        },
    )
    .unwrap();
    let want: Vec<f64> = small().w.to_vec().iter().map(|&x| x as f64).collect();
    assert_eq!(dtype.w.to_vec(), want);
}

#[test]
fn lenient_loading_reports_what_it_skipped() {
    let path = tmp("lenient.safetensors");
    io::save(&small(), &path).unwrap();
    let mut m = SmallExtra {
        w: Tensor::zeros((Rows, Cols)),
        b: Tensor::zeros((Cols,)),
        extra: Tensor::zeros((Cols,)),
    };
    let r = io::load_with(
        &mut m,
        &path,
        LoadOptions {
            lenient: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.loaded, ["w", "b"]);
    assert_eq!(r.missing, ["extra"]);
    assert!(r.unexpected.is_empty());
    assert_eq!(m.w.to_vec(), small().w.to_vec());
}

#[test]
fn corrupt_and_truncated_files_are_clear_errors() {
    let good = io::to_safetensors_bytes(&small(), None).unwrap();
    let mut m = small();
    // every truncation of a valid file is an error, never a panic
    for cut in [0, 4, 8, 20, good.len() / 2, good.len() - 1] {
        let e = io::load_bytes_with(&mut m, &good[..cut], LoadOptions::default());
        assert!(
            matches!(e, Err(Error::Format { .. })),
            "cut at {cut}: {e:?}"
        );
    }
    // a header length that points past the end
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(io::load_bytes_with(&mut m, &bad, LoadOptions::default()).is_err());
    // garbage JSON in the header
    let mut bad = good.clone();
    for b in bad[8..20].iter_mut() {
        *b = b'!';
    }
    let e = io::load_bytes_with(&mut m, &bad, LoadOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("malformed safetensors checkpoint"),
        "{e}"
    );
    // a missing file names its path
    let e = io::load(&mut m, tmp("does-not-exist.safetensors")).unwrap_err();
    assert!(e.to_string().contains("does-not-exist.safetensors"), "{e}");
}
