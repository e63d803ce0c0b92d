//! All integration tests in one binary: one link and one monomorphization of
//! the generic kernels instead of one per file (CI compile time). The graph
//! memory test lives in its own binary because it reads a process-wide counter.

mod attention;
mod attn_ref;
mod checkpoint;
mod conv;
mod creation;
mod device_parity;
mod dtypes;
mod elementwise;
mod f8_fixture;
mod fused_attention;
mod gpt;
mod index_ops;
mod init;
mod layers;
mod llama_grad;
mod losses;
mod mask_rope_dropout;
mod matmul;
mod module_derive;
mod norm_softmax;
mod optim_state;
mod reduce;
mod shape_ops;
mod smoke_autograd;
mod torch_rng;
mod train_loop;
mod train_small;
mod transformer;
