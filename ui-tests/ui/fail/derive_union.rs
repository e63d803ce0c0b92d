use zerfoo::nn::Module;

#[derive(Module)]
union Bits {
    a: f32,
    b: u32,
}

fn main() {}
