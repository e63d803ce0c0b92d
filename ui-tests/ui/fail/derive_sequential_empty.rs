use zerfoo::nn::Module;

#[derive(Module)]
#[module(sequential)]
struct Config {
    #[module(skip)]
    eps: f64,
    #[module(skip)]
    name: String,
}

fn main() {}
