//! The committed conformance statement is what the code renders: a change to the SOP classes,
//! transfer syntaxes, refusals, TLS suites or default limits that did not regenerate
//! `docs/conformance.md` fails here.

use appliance::config::Config;
use std::path::Path;

#[test]
fn docs_conformance_md_is_what_the_code_renders() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/conformance.md");
    let committed = std::fs::read_to_string(&path).expect("docs/conformance.md is committed");
    let config = Config::embedded_default().expect("the embedded default parses");
    let rendered = appliance::conformance::render(&config);
    if committed != rendered {
        let first = committed
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(rendered.lines().count()));
        panic!(
            "docs/conformance.md differs from the code from line {}:\n  document: {:?}\n  code:     {:?}\n\
             run `appliance conformance --output docs/conformance.md`",
            first + 1,
            committed.lines().nth(first),
            rendered.lines().nth(first)
        );
    }
}
