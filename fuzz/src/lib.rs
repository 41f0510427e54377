//! Helpers the fuzz targets share. Each target in `src/bin/` feeds AFL++'s input to one
//! parser of the appliance through its public entry point (the same code the daemon runs)
//! and checks a property: a round trip where one is cheap, otherwise "returns Ok or a typed
//! Err, never panics, never allocates beyond its bound" (AFL++ runs with a memory limit, see
//! `scripts/fuzz.sh`).

/// Whether to print each result to stderr (`FUZZ_SHOW=1`), to see how far a seed or a
/// crashing input gets when replayed by hand: `FUZZ_SHOW=1 target/release/seg < INPUT`.
pub fn show_results() -> bool {
    std::env::var_os("FUZZ_SHOW").is_some()
}

/// Splits one fuzz input into several files (a series): the parts between occurrences of
/// [`FILE_SEPARATOR`], at most `max` of them (the rest stays in the last part).
pub fn split_files(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < max {
        match find(rest, FILE_SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// Marks the boundary between two files in a `volume` input.
pub const FILE_SEPARATOR: &[u8] = b"RADIANT-FUZZ-NEXT-FILE";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_split_at_the_separator_up_to_the_maximum() {
        let joined = [&b"a"[..], FILE_SEPARATOR, b"b", FILE_SEPARATOR, b"c"].concat();
        assert_eq!(split_files(&joined, 4), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(split_files(&joined, 2).len(), 2);
        assert_eq!(split_files(b"plain", 4), vec![&b"plain"[..]]);
    }
}
