//! `#[derive(Module)]`: dotted paths, nesting, containers, skip/rename,
//! generic structs, and sequential forward chaining.

use zerfoo::nn::{Forward, Module};
use zerfoo::prelude::*;

dim!(In = 3);
dim!(Out = 2);

#[derive(Module)]
struct Affine<E: FloatDtype> {
    weight: Tensor<(Out, In), E>,
    #[module(rename = "b")]
    bias: Option<Tensor<(Out,), E>>,
    #[module(skip)]
    _name: &'static str,
}

impl<E: FloatDtype> Affine<E> {
    fn new(seed: u64, bias: bool) -> Self {
        Affine {
            weight: Tensor::randn((Out, In), seed),
            bias: bias.then(|| Tensor::zeros((Out,))),
            _name: "affine",
        }
    }
}

#[derive(Module)]
struct Net {
    first: Affine<f32>,
    blocks: Vec<Affine<f32>>,
    pair: [Tensor<(U4,), f64>; 2],
}

#[test]
fn paths_counts_and_ids() {
    let net = Net {
        first: Affine::new(1, true),
        blocks: vec![Affine::new(2, false), Affine::new(3, true)],
        pair: [
            Tensor::zeros((U4::default(),)),
            Tensor::ones((U4::default(),)),
        ],
    };
    let info = net.param_info();
    let paths: Vec<&str> = info.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "first.weight",
            "first.b",
            "blocks.0.weight",
            "blocks.1.weight",
            "blocks.1.b",
            "pair.0",
            "pair.1"
        ]
    );
    assert_eq!(net.num_params(), 6 + 2 + 6 + 6 + 2 + 4 + 4);
    assert_eq!(info[0].id, net.first.weight.id());
    assert_eq!(info[5].dtype, DType::F64);
    assert_eq!(info[6].dims, [4]);
}

/// Multiplies by a constant: a layer with no parameters.
#[derive(Module)]
struct Scale(#[module(skip)] f64);

impl<S: Shape, T: zerfoo::autograd::TapeState> Forward<Tensor<S, f32, Cpu, T>> for Scale {
    type Output = Tensor<S, f32, Cpu, T>;
    fn forward(&self, x: Tensor<S, f32, Cpu, T>) -> Self::Output {
        x.mul_scalar(self.0)
    }
}

#[derive(Module)]
#[module(sequential)]
struct Chain {
    a: Scale,
    b: Scale,
}

#[test]
fn sequential_chains_forward() {
    let c = Chain {
        a: Scale(2.0),
        b: Scale(3.0),
    };
    let x: Tensor<(U2,), f32> = Tensor::ones((U2::default(),));
    assert_eq!(c.forward(x).to_vec(), [6.0, 6.0]);
    assert_eq!(c.num_params(), 0);
}
