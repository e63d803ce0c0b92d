//! Dims are compared by value: differently named dims of equal size line up,
//! and a `Dyn` dim lines up with a static one (checked at run time).
use zerfoo::prelude::*;

dim!(Hidden = 768);
dim!(Embed = 768);
dim!(Batch = 4);

fn main() {
    let x: Tensor<(Batch, Hidden), f32> = Tensor::ones((Batch, Hidden));
    let e: Tensor<(Batch, Embed), f32> = Tensor::ones((Batch, Embed));
    let y: Tensor<(Batch, Hidden), f32> = x.add(e);
    assert_eq!(y.dims(), [4, 768]);

    let d: Tensor<(Dyn, Hidden), f32> = Tensor::ones((Dyn(4), Hidden));
    let z: Tensor<(Batch, Hidden), f32> = y.add(d);
    assert_eq!(z.to_vec()[0], 3.0);

    // a Dyn dim that disagrees is a run-time error, not a compile error
    let bad: Tensor<(Dyn, Hidden), f32> = Tensor::ones((Dyn(5), Hidden));
    assert!(z.try_add(bad).is_err());
}
