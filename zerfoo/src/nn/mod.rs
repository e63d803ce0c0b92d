//! Neural-network building blocks: the [`Module`] traversal, [`Forward`],
//! and (with `#[derive(Module)]`) user models.

mod conv;
mod embedding;
pub mod init;
mod linear;
mod module;
mod norm;

pub use conv::{AvgPool2d, BatchNorm2d, Buffer, Conv2d, Flatten, MaxPool2d};
pub use embedding::Embedding;
pub use linear::Linear;
pub use module::{join_path, Forward, Module, ParamInfo, ParamVisitor, ParamVisitorMut};
pub use norm::{LayerNorm, RmsNorm};
pub use zerfoo_macros::Module;
