//! Every mistake gets a compile error on the user's token, one file per mistake, with the
//! expected output in the `.stderr` beside it. Regenerate with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/pass/*.rs");
}
