//! Compile-time error cases live in `ui/`; `tests/ui.rs` runs them with trybuild.
