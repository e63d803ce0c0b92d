//! A model generic over its dims and dtype with `Vec`, `[M; N]` and `Option`
//! fields, skipped config, renamed fields, and a dtype move.
use zerfoo::nn::{Linear, Module, RmsNorm};
use zerfoo::prelude::*;

#[derive(Module)]
struct Block<D: Dim, E: FloatDtype> {
    #[module(rename = "ff")]
    proj: Linear<D, D, E>,
    norm: RmsNorm<D, E>,
}

#[derive(Module)]
struct Model<V: Dim, D: Dim, E: FloatDtype, const H: usize> {
    embed: Tensor<(V, D), E>,
    blocks: Vec<Block<D, E>>,
    heads: [Linear<D, D, E>; H],
    final_norm: Option<RmsNorm<D, E>>,
    #[module(skip)]
    name: String,
}

fn count<V: Dim, D: Dim, E: FloatDtype, const H: usize>(m: &Model<V, D, E, H>) -> usize {
    m.num_params()
}

dim!(Vocab = 10);
dim!(Width = 4);

fn main() {
    let block = |s| Block {
        proj: Linear::new(Width, Width, false, s),
        norm: RmsNorm::new(Width, 1e-5),
    };
    let m: Model<Vocab, Width, f32, 2> = Model {
        embed: Tensor::randn((Vocab, Width), 0),
        blocks: vec![block(1), block(2)],
        heads: [Linear::new(Width, Width, true, 3), Linear::new(Width, Width, true, 4)],
        final_norm: Some(RmsNorm::new(Width, 1e-5)),
        name: "tiny".into(),
    };
    assert_eq!(count(&m), 40 + 2 * (16 + 4) + 2 * 20 + 4);
    assert_eq!(m.param_info()[1].path, "blocks.0.ff.weight");
    let h: Model<Vocab, Width, bf16, 2> = m.to_dtype::<bf16>();
    assert_eq!(h.name, "tiny");
    assert_eq!(h.num_params(), m.num_params());
}
