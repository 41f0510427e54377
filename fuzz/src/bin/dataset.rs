//! The bounded dataset walker (`pacs_bridge::dataset::inspect`, and `inspect_before_parse`, the
//! walk the readers do before dicom-object parses) in every encoding: the first
//! input byte picks the encoding, the rest is the dataset.
//!
//! Properties: `inspect` and `inspect_before_parse` return (never panic, never read out of
//! bounds, inflate at most their limit); what the stricter `inspect_before_parse` accepts,
//! `inspect` accepts with the same identity; a walk that succeeds ends exactly on an element
//! boundary, so the same bytes
//! with one more well-formed top-level element appended also walk, to the same identity; and
//! an explicit little endian dataset that walks walks the same once deflated (PS3.5 A.5).

use pacs_bridge::dataset::{self, DatasetError};
use pacs_bridge::uids::Encoding;
use std::io::Write;

const INFLATE_LIMIT: usize = 1 << 20;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}

fn check(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 4 {
        0 => Encoding::ExplicitLittle,
        1 => Encoding::ImplicitLittle,
        2 => Encoding::ExplicitBig,
        _ => Encoding::DeflatedExplicitLittle,
    };
    let standard = dataset::inspect(bytes, encoding, INFLATE_LIMIT);
    let as_parsed = dataset::inspect_before_parse(bytes, encoding, INFLATE_LIMIT);
    if radiant_fuzz::show_results() {
        eprintln!("inspect: {standard:?}\ninspect_before_parse: {as_parsed:?}");
    }
    // The parser's gate only adds refusals to the standard walk.
    if let Ok(identity) = &as_parsed {
        assert_eq!(
            standard.as_ref(),
            Ok(identity),
            "the parser's gate let through more"
        );
    }
    let Ok(identity) = standard else {
        return;
    };
    if encoding == Encoding::DeflatedExplicitLittle {
        return;
    }
    // (0009,0010) LO "FUZZ": a private creator, not an identifying attribute.
    let appended = match encoding {
        Encoding::ImplicitLittle => [&[0x09, 0, 0x10, 0, 4, 0, 0, 0][..], b"FUZZ"].concat(),
        Encoding::ExplicitBig => [&[0, 0x09, 0, 0x10, b'L', b'O', 0, 4][..], b"FUZZ"].concat(),
        _ => [&[0x09, 0, 0x10, 0, b'L', b'O', 4, 0][..], b"FUZZ"].concat(),
    };
    let longer = [bytes, &appended[..]].concat();
    assert_eq!(
        dataset::inspect(&longer, encoding, INFLATE_LIMIT),
        Ok(identity.clone()),
        "a walk that succeeded did not end on an element boundary"
    );
    if encoding == Encoding::ExplicitLittle {
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        deflate.write_all(bytes).expect("deflate into memory");
        let deflated = deflate.finish().expect("deflate into memory");
        let inflated = dataset::inspect(&deflated, Encoding::DeflatedExplicitLittle, INFLATE_LIMIT);
        match inflated {
            Ok(id) => assert_eq!(id, identity, "deflated dataset reads differently"),
            // Only a dataset larger than the inflate limit may fail once deflated.
            Err(DatasetError::InflatedTooLarge { .. }) => assert!(bytes.len() > INFLATE_LIMIT),
            Err(e) => panic!("deflated copy of a readable dataset refused: {e}"),
        }
    }
}
