//! The manifests of the fixture files built by `scripts/fixtures.sh`, and the Part 10 helpers
//! the whole-system tests compare bytes with. Where the files are is `test_support::fixtures`.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use test_support::fixtures::{ct_series_dir, lesion_series_dir, pydicom_dir};

#[derive(Debug, Clone, Deserialize)]
pub struct TestFile {
    pub file: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub category: String,
    pub dataset_offset: usize,
}

impl TestFile {
    pub fn path(&self) -> PathBuf {
        pydicom_dir().join(&self.file)
    }
}

/// The pydicom / pydicom-data test files.
pub fn test_files() -> Vec<TestFile> {
    let text = std::fs::read_to_string(pydicom_dir().join("manifest.json"))
        .expect("read fixtures/pydicom/manifest.json");
    serde_json::from_str(&text).expect("parse fixtures/pydicom/manifest.json")
}

#[derive(Debug, Clone, Deserialize)]
pub struct Slice {
    pub file: String,
    pub sop_instance_uid: String,
    pub dataset_offset: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CtSeries {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub slices: Vec<Slice>,
}

impl CtSeries {
    pub fn load() -> CtSeries {
        let text = std::fs::read_to_string(ct_series_dir().join("manifest.json"))
            .expect("read fixtures/ct-series/manifest.json");
        serde_json::from_str(&text).expect("parse fixtures/ct-series/manifest.json")
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.slices
            .iter()
            .map(|s| ct_series_dir().join(&s.file))
            .collect()
    }
}

/// The dataset bytes of a Part 10 file: what follows its file meta group.
pub fn dataset_of(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    dataset_after_meta(&bytes)
        .unwrap_or_else(|| panic!("{} is not a Part 10 file", path.display()))
        .to_vec()
}

/// Skip preamble, "DICM" and the group-0002 elements (always explicit VR little endian).
pub fn dataset_after_meta(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return None;
    }
    let mut pos = 132;
    while pos + 8 <= bytes.len() && bytes[pos] == 0x02 && bytes[pos + 1] == 0x00 {
        let vr = &bytes[pos + 4..pos + 6];
        let (header, len) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC" | b"UR") {
            let len = u32::from_le_bytes(bytes.get(pos + 8..pos + 12)?.try_into().ok()?);
            (12, len as usize)
        } else {
            (
                8,
                u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize,
            )
        };
        pos += header + len;
    }
    bytes.get(pos..)
}

/// Inflate a deflated dataset (PS3.5 A.5: raw deflate, no zlib header).
pub fn inflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("inflate a deflated dataset");
    out
}

/// The 108-slice CT with an implanted lesion: its files in slice order and its Study Instance
/// UID.
pub fn lesion_series() -> (Vec<PathBuf>, String) {
    let text = std::fs::read_to_string(lesion_series_dir().join("manifest.json"))
        .expect("read fixtures/ct-series-lesion/manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&text).expect("parse fixtures/ct-series-lesion/manifest.json");
    let files = test_support::fixtures::lesion_series();
    let study = manifest["study_instance_uid"]
        .as_str()
        .expect("study_instance_uid in the lesion manifest")
        .to_string();
    (files, study)
}

/// The first `count` slices of `series` copied into `dir/study-N/` as a new study (its own
/// Study and Series Instance UIDs, new SOP Instance UIDs, by DCMTK's `dcmodify`). Returns the
/// Study Instance UID and the files.
pub fn new_study(series: &CtSeries, count: usize, dir: &Path, n: usize) -> (String, Vec<PathBuf>) {
    let study = format!("1.2.826.0.1.3680043.10.1138.{}.{n}", std::process::id());
    let folder = dir.join(format!("study-{n}"));
    std::fs::create_dir_all(&folder).expect("study folder");
    let files: Vec<PathBuf> = series.paths()[..count]
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let dst = folder.join(format!("{i}.dcm"));
            std::fs::copy(src, &dst).expect("copy a slice");
            dst
        })
        .collect();
    let out = std::process::Command::new("/usr/bin/dcmodify")
        .args(["-nb", "-gin"])
        .args(["-m", &format!("(0020,000D)={study}")])
        .args(["-m", &format!("(0020,000E)={study}.1")])
        .args(&files)
        .output()
        .expect("run dcmodify (apt-get install dcmtk)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (study, files)
}
