//! Paths of the fixture files `scripts/fixtures.sh` builds in `<repo>/fixtures/` (gitignored):
//! the 108-slice head CT (`ct-series`), the same CT with an implanted lesion
//! (`ct-series-lesion`), pip's pydicom / pydicom-data test files (`pydicom`), and the T1 MRI
//! series (`mr/<name>`, `scripts/make_mr_fixtures.py`), each folder with a `manifest.json`.
//! Every function fails with what to run when they are missing.

use std::path::PathBuf;

/// Slices in `ct-series` and `ct-series-lesion`, named `slice_000.dcm` to `slice_107.dcm`.
pub const CT_SLICES: usize = 108;

/// The `fixtures/` folder; panics, naming the command that builds it, when it is incomplete.
pub fn fixtures() -> PathBuf {
    let dir = crate::repo_root().join("fixtures");
    for part in ["ct-series", "ct-series-lesion", "pydicom"] {
        let manifest = dir.join(part).join("manifest.json");
        assert!(
            manifest.is_file(),
            "fixtures missing: {} does not exist; run `bash scripts/fixtures.sh` first",
            manifest.display()
        );
    }
    dir
}

/// The folder of the 108-slice head CT.
pub fn ct_series_dir() -> PathBuf {
    fixtures().join("ct-series")
}

/// The 108 slices of the head CT, in file order (which is slice order).
pub fn ct_series() -> Vec<PathBuf> {
    slices(ct_series_dir())
}

/// The folder of the head CT with an implanted lesion.
pub fn lesion_series_dir() -> PathBuf {
    fixtures().join("ct-series-lesion")
}

/// The 108 slices of the head CT with an implanted lesion, in slice order.
pub fn lesion_series() -> Vec<PathBuf> {
    slices(lesion_series_dir())
}

/// The folder of the pydicom / pydicom-data test files.
pub fn pydicom_dir() -> PathBuf {
    fixtures().join("pydicom")
}

/// One pydicom test file by name (`CT_small.dcm`); panics when it is not there.
pub fn pydicom(name: &str) -> PathBuf {
    let path = pydicom_dir().join(name);
    assert!(
        path.is_file(),
        "{} missing: run `bash scripts/fixtures.sh` first",
        path.display()
    );
    path
}

/// The folder of one T1 MRI series (`colin27-axial`, `colin27-sagittal`, `colin27-oblique`,
/// `mni152-axial`), with `truth.u8` and `source.nii.gz` beside its slices.
pub fn mr_series_dir(name: &str) -> PathBuf {
    let dir = fixtures().join("mr").join(name);
    assert!(
        dir.join("manifest.json").is_file(),
        "MR fixture {name} missing: run `bash scripts/fixtures.sh` first"
    );
    dir
}

/// The slices of one T1 MRI series, in slice order (`slice_NNN.dcm`).
pub fn mr_series(name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(mr_series_dir(name))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "dcm"));
    files.sort();
    files
}

fn slices(dir: PathBuf) -> Vec<PathBuf> {
    (0..CT_SLICES)
        .map(|i| dir.join(format!("slice_{i:03}.dcm")))
        .collect()
}
