// An elementwise op between tensors on two devices does not compile.
use zerfoo::prelude::*;

dim!(Width = 2);

fn main() {
    let gpu = Cuda::new(0).unwrap();
    let a: Tensor<(Width,), f32, Cuda> = Tensor::<(Width,), f32>::ones((Width,)).to_device(&gpu);
    let b: Tensor<(Width,), f32> = Tensor::ones((Width,));
    let _ = a.add(b);
}
