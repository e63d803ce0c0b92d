//! Every compile-time error zerfoo promises, pinned with its message.
//!
//! Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p zerfoo-ui-tests` and read them: the
//! first line of each must name the operation in plain words.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
    #[cfg(feature = "cuda")]
    t.compile_fail("ui/cuda/*.rs");
}
