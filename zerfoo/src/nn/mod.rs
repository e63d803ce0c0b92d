//! Neural-network building blocks: the [`Module`] traversal, [`Forward`],
//! and (with `#[derive(Module)]`) user models.

mod module;

pub use module::{join_path, Forward, Module, ParamInfo, ParamVisitor, ParamVisitorMut};
pub use zerfoo_macros::Module;
