//! Neural-network building blocks: the [`Module`] traversal, [`Forward`],
//! and (with `#[derive(Module)]`) user models.

mod embedding;
pub mod init;
mod linear;
mod module;
mod norm;

pub use embedding::Embedding;
pub use linear::Linear;
pub use module::{
    join_path, DtypeEq, FixedDtype, Forward, Module, ParamInfo, ParamVisitor, ParamVisitorMut,
    ToDtype,
};
pub use norm::{LayerNorm, RmsNorm};
pub use zerfoo_macros::Module;
