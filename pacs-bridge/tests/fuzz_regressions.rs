//! Inputs the fuzz targets (`fuzz/`, AFL++) found crashing, kept as regressions: each file in
//! `fuzz/regressions/TARGET/` is fed here through the same entry point and must give a typed
//! error (or, for a geometry bug, the behaviour the fix promises). Test names say what must
//! stay true.

use pacs_bridge::dataset::DatasetError;
use pacs_bridge::objects::seg;
use pacs_bridge::objects::sr_read::{self, SrReadError};
use pacs_bridge::objects::ObjectError;
use std::path::PathBuf;

fn regression(target: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target)
        .join(name)
}

fn bytes(target: &str, name: &str) -> Vec<u8> {
    let path = regression(target, name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// In implicit VR, (0040,A730) and its kin are sequences only by the data dictionary.
/// dicom-parser, which builds the object after the walk, reads their items and allocates what
/// each nested element declares before reading it: 3 GB for one Code Scheme Designator in a
/// 4 KB SEG (AFL++ `seg` target, out of memory). The walker now walks such sequences item by
/// item (PS3.5 7.5) and refuses the length.
#[test]
fn a_seg_whose_implicit_sequence_declares_gigabytes_is_refused_before_parsing() {
    let err = seg::decode(&bytes("seg", "implicit_sequence_item_declares_3gb.dcm")).unwrap_err();
    let ObjectError::Decode(reason) = err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains("(0008,0102)") && reason.contains("declares 3267543746 bytes"),
        "{reason}"
    );
}

/// A UN of undefined length holds implicit VR items (PS3.5 6.2.2), and the walker checked them
/// so; dicom-parser reads them in the dataset's explicit VR, where this 26 KB SEG's private
/// element is a UT declaring 4 GB. Made by hand after the fuzzer's finding above, from the
/// same gap between what the walker checks and what the parser reads. The readers now walk
/// as the parser reads (`dataset::inspect_as_parsed`).
#[test]
fn a_seg_whose_un_items_declare_gigabytes_as_the_parser_reads_them_is_refused() {
    let err = seg::decode(&bytes("seg", "un_items_read_explicit_declare_4gb.dcm")).unwrap_err();
    let ObjectError::Decode(reason) = err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains("(0009,0010)") && reason.contains("declares 4026531840 bytes"),
        "{reason}"
    );
}

/// dicom-parser reads `length / size` binary numbers and moves on without the remainder, so
/// a length that is not a multiple of the size shifts every header it reads after it (PS3.5
/// 6.2 allows no such length). A Code Value turned SL of 6 bytes (explicit VR), and a group
/// length of 6 bytes (implicit VR, UL by the dictionary), made it zero-fill gigabytes for
/// a value read from the middle of another: about a second per 4 KB SEG (AFL++ `seg`
/// target, hangs). Both are refused by the walker now.
#[test]
fn a_seg_with_a_binary_number_of_a_length_its_vr_cannot_have_is_refused() {
    for (name, element) in [
        ("code_value_as_sl_of_6_bytes.dcm", "(0008,0100)"),
        ("implicit_group_length_of_6_bytes.dcm", "(2070,0000)"),
    ] {
        let started = std::time::Instant::now();
        let err = seg::decode(&bytes("seg", name)).unwrap_err();
        let ObjectError::Decode(reason) = err else {
            panic!("{name}: {err:?}");
        };
        assert!(
            reason.contains(element) && reason.contains("not a multiple"),
            "{name}: {reason}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{name}"
        );
    }
}

/// The same hole in the SR reader: an SR in implicit VR whose Code Value declares 4 GB.
#[test]
fn an_sr_whose_implicit_sequence_declares_gigabytes_is_refused_before_parsing() {
    let err =
        sr_read::decode_findings(&bytes("sr_read", "implicit_sequence_item_declares_4gb.dcm"))
            .unwrap_err();
    assert!(
        matches!(
            err,
            SrReadError::Malformed(DatasetError::LengthBeyondEnd {
                group: 0x0008,
                element: 0x0100,
                declared: 0xF000_0000,
                ..
            })
        ),
        "{err:?}"
    );
}
