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

// ---- dtype moves -------------------------------------------------------

use std::marker::PhantomData;
use zerfoo::nn::{LayerNorm, Linear, RmsNorm, ToDtype};

dim!(Feat = 4);
dim!(Hid = 6);

/// A block generic over its width and dtype, with a skipped config value.
#[derive(Module, Clone)]
struct Block<D: Dim, E: FloatDtype> {
    proj: Linear<D, D, E>,
    norm: RmsNorm<D, E>,
    #[module(skip)]
    tag: String,
}

/// A wrapper generic over a sub-module: `to_dtype` converts the sub-module.
#[derive(Module)]
struct Residual<M: Module> {
    inner: M,
    #[module(skip)]
    gain: f64,
}

/// Nested, generic over dims, dtype and a const: `Vec`, `[M; N]`, `Option`,
/// a field with a fixed dtype, a `PhantomData` of the dtype.
#[derive(Module)]
struct Model<I: Dim, H: Dim, E: FloatDtype, const N: usize> {
    inp: Linear<I, H, E>,
    blocks: Vec<Residual<Block<H, E>>>,
    pair: [Tensor<(H,), E>; N],
    head: Option<Linear<H, I, E>>,
    /// Kept in f32 whatever `E` is.
    fixed: LayerNorm<H, f32>,
    #[module(skip)]
    _dtype: PhantomData<E>,
    #[module(skip)]
    eps: f64,
}

fn model_f64() -> Model<Feat, Hid, f64, 2> {
    let block = |seed| Residual {
        inner: Block {
            proj: Linear::new(Hid, Hid, true, seed),
            norm: RmsNorm {
                weight: Tensor::randn((Hid,), seed + 1),
                eps: 1e-5,
                offset: false,
            },
            tag: format!("block{seed}"),
        },
        gain: 0.5,
    };
    Model {
        inp: Linear::new(Feat, Hid, true, 1),
        blocks: vec![block(10), block(20)],
        pair: [Tensor::randn((Hid,), 3), Tensor::randn((Hid,), 4)],
        head: Some(Linear::new(Hid, Feat, false, 5)),
        fixed: LayerNorm {
            weight: Tensor::randn((Hid,), 6),
            bias: Some(Tensor::randn((Hid,), 7)),
            eps: 1e-6,
        },
        _dtype: PhantomData,
        eps: 0.25,
    }
}

/// Every parameter as f64, by path.
fn values<M: Module>(m: &M) -> Vec<(String, DType, Vec<f64>)> {
    struct All(Vec<(String, DType, Vec<f64>)>);
    impl zerfoo::nn::ParamVisitor for All {
        fn visit<S: Shape, E: FloatDtype, D: Backend>(&mut self, path: &str, p: &Tensor<S, E, D>) {
            self.0.push((path.to_string(), E::DTYPE, p.to_f64_vec()));
        }
    }
    let mut a = All(Vec::new());
    m.visit_params("", &mut a);
    a.0
}

#[test]
fn to_dtype_moves_a_nested_generic_model_f64_f32_bf16() {
    let m64 = model_f64();
    let m32: Model<Feat, Hid, f32, 2> = m64.to_dtype::<f32>();
    let m16: Model<Feat, Hid, bf16, 2> = m32.to_dtype::<bf16>();
    let (v64, v32, v16) = (values(&m64), values(&m32), values(&m16));
    assert_eq!(v64.len(), 13);
    assert_eq!(v64.len(), v32.len());
    assert_eq!(v64.len(), v16.len());
    for ((a, b), c) in v64.iter().zip(&v32).zip(&v16) {
        assert_eq!(a.0, b.0);
        assert_eq!(a.0, c.0);
        if a.0.starts_with("fixed.") {
            // a fixed-dtype field keeps its dtype and its values
            assert_eq!((a.1, b.1, c.1), (DType::F32, DType::F32, DType::F32));
            assert_eq!(a.2, b.2);
            assert_eq!(a.2, c.2);
            continue;
        }
        assert_eq!(
            (a.1, b.1, c.1),
            (DType::F64, DType::F32, DType::BF16),
            "{}",
            a.0
        );
        // rounded once, to nearest even, at each move
        let want32: Vec<f64> = a.2.iter().map(|&x| x as f32 as f64).collect();
        let want16: Vec<f64> = b.2.iter().map(|&x| bf16::from_f64(x).to_f64()).collect();
        assert_eq!(b.2, want32, "{}", a.0);
        assert_eq!(c.2, want16, "{}", a.0);
    }
    // configuration is cloned, ids are fresh, counts are unchanged
    assert_eq!(m16.blocks[1].inner.tag, "block20");
    assert_eq!(m16.blocks[0].gain, 0.5);
    assert_eq!(m16.blocks[0].inner.norm.eps, 1e-5);
    assert_eq!(m16.eps, 0.25);
    assert_ne!(m32.inp.weight.id(), m64.inp.weight.id());
    assert_eq!(m16.num_params(), m64.num_params());
    assert!(m16.head.is_some());
    // a no-op move still builds new tensors
    let again: Model<Feat, Hid, f64, 2> = m64.to_dtype::<f64>();
    assert_eq!(values(&again), v64);
    assert_ne!(again.pair[0].id(), m64.pair[0].id());
}

#[test]
fn to_dtype_on_layers_and_parameterless_modules() {
    // a struct with no dtype parameter and no parameters converts to itself
    let c = Chain {
        a: Scale(2.0),
        b: Scale(3.0),
    };
    let c2: Chain = c.to_dtype::<bf16>();
    let x: Tensor<(U2,), f32> = Tensor::ones((U2::default(),));
    assert_eq!(c2.forward(x).to_vec(), [6.0, 6.0]);
    // ... and one holding f32 tensors only moves to f32 (a copy)
    let a = Affine::<f32>::new(4, true);
    let a32: Affine<f32> = a.to_dtype::<f32>();
    assert_eq!(a32.weight.to_vec(), a.weight.to_vec());
    #[derive(Module)]
    struct F32Only {
        w: Tensor<(Out, In), f32>,
        act: Scale,
    }
    let f = F32Only {
        w: Tensor::randn((Out, In), 9),
        act: Scale(1.5),
    };
    let f2: F32Only = f.to_dtype::<f32>();
    assert_eq!(f2.w.to_vec(), f.w.to_vec());
    assert_ne!(f2.w.id(), f.w.id());
    assert_eq!(f2.act.0, 1.5);
    // the plain impls
    let v: Vec<Tensor<(U2,), f32>> = vec![Tensor::ones((U2::default(),))];
    let v16: Vec<Tensor<(U2,), f16>> = ToDtype::<f16>::convert_dtype(&v);
    assert_eq!(v16[0].to_vec(), [f16::ONE, f16::ONE]);
    let o: Option<Tensor<(U2,), f32>> = None;
    assert!(ToDtype::<f64>::convert_dtype(&o).is_none());
    // a mixed model moves and still runs forward
    let m: Model<Feat, Hid, f32, 2> = model_f64().to_dtype::<f32>();
    let x: Tensor<(Dyn, Feat), f32> = Tensor::ones((Dyn(3), Feat));
    let y = m.head.as_ref().unwrap().forward(m.inp.forward(x));
    assert_eq!(y.dims(), [3, 4]);
}

// ---- sequential with real layers ----------------------------------------

dim!(Out3 = 3);

/// A tiny activation layer.
#[derive(Module, Clone, Copy)]
struct Relu;

impl<S: Shape, E: FloatDtype, T: zerfoo::autograd::TapeState> Forward<Tensor<S, E, Cpu, T>>
    for Relu
{
    type Output = Tensor<S, E, Cpu, T>;
    fn forward(&self, x: Tensor<S, E, Cpu, T>) -> Self::Output {
        x.relu()
    }
}

#[derive(Module)]
#[module(sequential)]
struct Mlp<E: FloatDtype> {
    up: Linear<Feat, Hid, E>,
    act: Relu,
    down: Linear<Hid, Out3, E>,
}

#[test]
fn sequential_mlp_of_linears_matches_the_hand_chain_and_moves_dtype() {
    let mlp = Mlp::<f64> {
        up: Linear::new(Feat, Hid, true, 1),
        act: Relu,
        down: Linear::new(Hid, Out3, true, 2),
    };
    let x: Tensor<(Dyn, Feat), f64> = Tensor::randn((Dyn(5), Feat), 3);
    let y = mlp.forward(x.clone());
    let hand = mlp.down.forward(mlp.up.forward(x.clone()).relu());
    assert_eq!(y.to_vec(), hand.to_vec());
    assert_eq!(y.dims(), [5, 3]);
    // gradients flow through the derived forward
    let g = mlp
        .forward(x.clone().traced())
        .square()
        .mean_all()
        .backward();
    assert!(g.get(&mlp.up.weight).is_some() && g.get(&mlp.down.bias.clone().unwrap()).is_some());
    let m32: Mlp<f32> = mlp.to_dtype::<f32>();
    let y32 = m32.forward(x.to_dtype::<f32>());
    for (a, b) in y32.to_vec().iter().zip(y.to_vec()) {
        assert!((*a as f64 - b).abs() < 1e-5);
    }
}

/// A stack generic over its layer type.
#[derive(Module)]
struct Stack<M: Module> {
    layers: Vec<M>,
    last: Option<M>,
}

#[test]
fn to_dtype_through_a_stack_of_generic_layers() {
    let s = Stack {
        layers: vec![Linear::<Feat, Feat, f64>::new(Feat, Feat, true, 1)],
        last: Some(Linear::new(Feat, Feat, false, 2)),
    };
    let s16: Stack<Linear<Feat, Feat, f16>> = s.to_dtype::<f16>();
    assert_eq!(
        s16.layers[0].weight.to_vec(),
        s.layers[0]
            .weight
            .to_vec()
            .iter()
            .map(|&x| f16::from_f64(x))
            .collect::<Vec<_>>()
    );
    assert_eq!(s16.num_params(), s.num_params());
}
