use zerfoo::nn::{AttentionConfig, MultiHeadAttention};
use zerfoo::prelude::*;

dim!(Model = 8);
dim!(Heads = 4);
dim!(HeadDim = 2);
dim!(KvHeads = 3);

fn main() {
    // 3 key/value heads cannot be shared out over 4 query heads
    let _attn: MultiHeadAttention<Model, Heads, HeadDim, f32, KvHeads> =
        MultiHeadAttention::new(Model, Heads, HeadDim, KvHeads, AttentionConfig::default(), 0);
}
