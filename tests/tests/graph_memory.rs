//! The graph is released after `backward()`: live nodes do not grow over
//! many steps. Alone in its own test binary, because the node counter is
//! process-wide and other tests would move it concurrently.

use zerfoo::prelude::*;

dim!(Rows = 3);
dim!(Cols = 4);

#[test]
fn graph_is_freed_after_backward() {
    let w: Tensor<(Rows, Cols), f32> = Tensor::randn((Rows, Cols), 1);
    let run = || {
        let x: Tensor<(Rows, Cols), f32> = Tensor::randn((Rows, Cols), 2);
        let loss = (x.traced() * w.clone()).tanh().sum_all();
        assert!(zerfoo::autograd::live_nodes() >= 3);
        let g = loss.backward();
        assert!(g.get(&w).is_some());
    };
    run();
    let before = zerfoo::autograd::live_nodes();
    for _ in 0..100 {
        run();
    }
    assert_eq!(zerfoo::autograd::live_nodes(), before);
}
