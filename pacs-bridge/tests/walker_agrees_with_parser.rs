//! The bounded walker protects dicom-object only if both end every element at the same place:
//! a length the walker read differently (a 32-bit length it took for 16 bits, a sequence of
//! defined length it did not descend) is a length the parser trusts unchecked. This walks every
//! Part 10 file of pydicom, pydicom-data and our fixtures with both, in every VR mode those
//! files use, and compares the element, sequence and item headers they met.

use dicom_parser::dataset::read::DataSetReader;
use dicom_parser::dataset::DataToken;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use pacs_bridge::dataset::{check_meta, structure, Mark};
use pacs_bridge::uids::Encoding;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: u32 = 0x7FE0_0010;

/// pydicom's own test files and pydicom-data's, where pip put them.
fn python_data_dirs() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, pydicom, data_store\n\
             print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))\n\
             print(os.path.join(os.path.dirname(data_store.__file__), 'data'))",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pydicom and pydicom-data must be installed (scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn files_below(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_below(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// The headers dicom-parser's token reader meets, in the walker's terms.
fn parser_structure(dataset: &[u8], transfer_syntax: &str) -> Result<Vec<Mark>, String> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| format!("no transfer syntax {transfer_syntax} in the registry"))?;
    let reader = DataSetReader::new_with_ts(dataset, ts).map_err(|e| e.to_string())?;
    let mut marks = Vec::new();
    let mut pending_pixel_header = false;
    for token in reader {
        match token.map_err(|e| e.to_string())? {
            // Encapsulated pixel data comes as its header, then the pixel sequence start.
            DataToken::ElementHeader(h) if h.tag.0 == 0x7FE0 && h.len.0 == UNDEFINED => {
                pending_pixel_header = true;
            }
            DataToken::ElementHeader(h) => marks.push(Mark::Element {
                tag: (u32::from(h.tag.0) << 16) | u32::from(h.tag.1),
                length: h.len.0,
            }),
            DataToken::PixelSequenceStart => {
                pending_pixel_header = false;
                marks.push(Mark::Sequence {
                    tag: PIXEL_DATA,
                    length: UNDEFINED,
                });
            }
            DataToken::SequenceStart { tag, len } => marks.push(Mark::Sequence {
                tag: (u32::from(tag.0) << 16) | u32::from(tag.1),
                length: len.0,
            }),
            DataToken::ItemStart { len } => marks.push(Mark::Item { length: len.0 }),
            _ => {}
        }
    }
    assert!(
        !pending_pixel_header,
        "pixel data header without its sequence"
    );
    Ok(marks)
}

fn inflate(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("inflate");
    out
}

#[test]
fn the_walker_and_dicom_parser_end_every_element_at_the_same_place() {
    let mut files = Vec::new();
    for dir in python_data_dirs() {
        files_below(&dir, &mut files);
    }
    files_below(&test_support::fixtures::fixtures(), &mut files);
    files.sort();
    let mut compared_by_syntax: BTreeMap<String, usize> = BTreeMap::new();
    let mut walker_stricter = Vec::new();
    let mut disagreements = Vec::new();
    for path in &files {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
            continue;
        }
        let Ok((meta_end, encoding)) = check_meta(&bytes, 1 << 30) else {
            continue;
        };
        let Ok(meta) = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..meta_end]) else {
            continue;
        };
        let syntax = meta.transfer_syntax().trim_end_matches('\0').to_string();
        let (dataset, encoding, parse_syntax) = match encoding {
            Encoding::DeflatedExplicitLittle => (
                inflate(&bytes[meta_end..]),
                Encoding::ExplicitLittle,
                "1.2.840.10008.1.2.1".to_string(),
            ),
            other => (bytes[meta_end..].to_vec(), other, syntax.clone()),
        };
        let walked = structure(&dataset, encoding);
        let parsed = parser_structure(&dataset, &parse_syntax);
        match (walked, parsed) {
            (Ok(w), Ok(p)) => {
                if w == p {
                    *compared_by_syntax.entry(syntax).or_default() += 1;
                } else {
                    let at = w.iter().zip(&p).position(|(a, b)| a != b);
                    disagreements.push(format!(
                        "{}: first difference at header {at:?}: walker {:?}, parser {:?} ({} vs {} headers)",
                        path.display(),
                        at.and_then(|i| w.get(i)),
                        at.and_then(|i| p.get(i)),
                        w.len(),
                        p.len()
                    ));
                }
            }
            // The walker may refuse what the parser would read (it is the stricter gate).
            (Err(e), Ok(_)) => walker_stricter.push(format!("{}: {e}", path.display())),
            // What the walker lets through, the parser must read as it did.
            (Ok(_), Err(e)) => disagreements.push(format!(
                "{}: walker accepts, parser fails: {e}",
                path.display()
            )),
            (Err(_), Err(_)) => {}
        }
    }
    println!("compared, by transfer syntax: {compared_by_syntax:?}");
    println!("refused by the walker only: {walker_stricter:#?}");
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    let compared: usize = compared_by_syntax.values().sum();
    assert!(compared >= 100, "only {compared} files compared");
    // Implicit VR, explicit little and big endian, deflated, and encapsulated syntaxes.
    for syntax in [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
    ] {
        assert!(
            compared_by_syntax.contains_key(syntax),
            "no file of {syntax} compared: {compared_by_syntax:?}"
        );
    }
}
