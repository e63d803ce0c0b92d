use zerfoo::nn::Module;
use zerfoo::prelude::*;

dim!(Rows = 2);
dim!(Cols = 3);

// No dtype parameter: its f32 tensors cannot become bf16. (Make the struct
// generic over `E: FloatDtype` to move it.)
#[derive(Module)]
struct Fixed {
    weight: Tensor<(Rows, Cols), f32>,
}

fn main() {
    let m = Fixed { weight: Tensor::zeros((Rows, Cols)) };
    let _ = m.to_dtype::<bf16>();
}
