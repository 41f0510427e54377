//! Model packages (design.md section 3): a folder with `manifest.toml`, the frozen
//! `backbone.onnx`, the trainable `head.safetensors`, `card.md`, and optionally the shipped
//! reference validation set (read by [`crate::validation`]). Loading checks the manifest field
//! by field and every model file against its SHA-256 before anything runs.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest manifest we read.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Most cases a reference validation set may declare.
pub const MAX_VALIDATION_CASES: usize = 1024;

#[derive(Debug, Error)]
pub enum PackageError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: file missing from the package")]
    MissingFile { path: PathBuf },
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: SHA-256 is {actual}, the manifest says {expected}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    pub task: String,
    #[serde(default)]
    pub description: String,
    /// The SPDX licence expression of the package's weights and data files (the code that
    /// runs them is the repository's); the card says why.
    pub licence: String,
    pub intended_use: String,
    #[serde(default)]
    pub provenance: toml::Table,
    pub input: InputSpec,
    pub backbone: BackboneSpec,
    pub head: HeadSpec,
    pub labels: Vec<LabelSpec>,
    pub classification: Option<ClassificationSpec>,
    /// What result reports say the examination was; needed to export a report.
    pub report: Option<ReportSpec>,
    /// The reference validation set the gate scores candidates on; older packages have none.
    pub validation: Option<ValidationSpec>,
    #[serde(default)]
    pub metrics: toml::Table,
}

use radiant_core::Code;

/// What the model expects and how a volume becomes its input tensor.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub modality: String,
    pub min_slices: usize,
    /// Rows and columns of each model slice.
    pub size: [usize; 2],
    /// In-plane spacing of the model grid, mm.
    pub spacing_mm: f64,
    /// One channel per intensity window.
    pub channels: Vec<WindowSpec>,
    /// Value assumed outside the source image (HU for CT).
    pub outside_value: f32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub name: String,
    pub center: f32,
    pub width: f32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    pub file: String,
    pub sha256: String,
    pub input: String,
    pub output: String,
    pub features: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    pub file: String,
    pub sha256: String,
    pub hidden: usize,
    /// Pixels of each class a labelled case keeps for learning (a class-balanced sample of
    /// the model grid, `learning::sampled`); 1 to [`MAX_SAMPLES_PER_CLASS`].
    #[serde(default = "default_samples_per_class")]
    pub samples_per_class: usize,
}

/// Most pixels or voxels of each class a case keeps for learning (either contract).
pub const MAX_SAMPLES_PER_CLASS: usize = 65_536;

/// What a contract-1 case keeps of each class when the manifest does not say: the fine-tune's
/// default pixels per class and case (`learning::finetune::FineTuneConfig`).
pub const DEFAULT_SAMPLES_PER_CLASS: usize = 1024;

fn default_samples_per_class() -> usize {
    DEFAULT_SAMPLES_PER_CLASS
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub value: u8,
    pub name: String,
    /// Recommended display colour, sRGB.
    pub colour: [u8; 3],
    /// The general kind of thing the label is (an anatomical structure, a morphologically
    /// abnormal one, ...). Needed to export a segmentation.
    pub category: Option<Code>,
    /// What the label is, specifically. Needed to export a segmentation.
    #[serde(rename = "type")]
    pub property_type: Option<Code>,
    /// Where the segments of a received correction overlap, the label of higher priority
    /// takes the voxel (a lesion painted over the brain it lies in); default: the label's
    /// value.
    #[serde(default)]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassificationSpec {
    pub name: String,
    /// The finding whose presence the probability is about. Needed to export a report.
    pub finding: Option<Code>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// The examination the model reads (e.g. LOINC 24725-4 "CT Head").
    pub procedure: Code,
}

/// The shipped reference validation set: a safetensors file in the package
/// ([`crate::validation`] documents its tensors).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    pub file: String,
    pub sha256: String,
    /// Number of cases in the file; the reader checks it.
    pub cases: usize,
}

/// A package whose manifest parsed, whose files exist and match their hashes.
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Package {
    /// Load and verify the package in `dir`.
    pub fn open(dir: &Path) -> Result<Package, PackageError> {
        let manifest_path = dir.join("manifest.toml");
        let manifest = read_manifest(&manifest_path)?;
        let package = Package {
            dir: dir.to_path_buf(),
            manifest,
        };
        package.verify()?;
        Ok(package)
    }

    pub fn backbone_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.backbone.file)
    }

    pub fn head_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.head.file)
    }

    /// The reference validation set's file, when the manifest names one.
    pub fn validation_path(&self) -> Option<PathBuf> {
        self.manifest
            .validation
            .as_ref()
            .map(|v| self.dir.join(&v.file))
    }

    /// Check the backbone, the head and the validation set (when there is one) against the
    /// manifest's SHA-256.
    pub fn verify(&self) -> Result<(), PackageError> {
        let mut files = vec![
            (self.backbone_path(), &self.manifest.backbone.sha256),
            (self.head_path(), &self.manifest.head.sha256),
        ];
        if let (Some(path), Some(spec)) = (self.validation_path(), &self.manifest.validation) {
            files.push((path, &spec.sha256));
        }
        for (path, expected) in files {
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(PackageError::HashMismatch {
                    path,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

fn read_manifest(path: &Path) -> Result<Manifest, PackageError> {
    let text = read_manifest_text(path)?;
    parse_manifest(path, &text)
}

/// The text of `manifest.toml`, refused above [`MAX_MANIFEST_BYTES`].
pub fn read_manifest_text(path: &Path) -> Result<String, PackageError> {
    let meta = std::fs::metadata(path).map_err(|_| PackageError::MissingFile {
        path: path.to_path_buf(),
    })?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(PackageError::Manifest {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(|e| PackageError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The model contract a manifest's text declares: its `contract` key, 1 when absent (the
/// per-slice backbone and head of the first packages), or 2 (a pipeline of graphs,
/// [`crate::pipeline`]).
pub fn contract_of(path: &Path, text: &str) -> Result<u32, PackageError> {
    let invalid = |reason: String| PackageError::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    match table.get("contract") {
        None => Ok(1),
        Some(toml::Value::Integer(2)) => Ok(2),
        Some(v) => Err(invalid(format!(
            "contract = {v} is not a contract this appliance runs (absent for 1, or 2)"
        ))),
    }
}

/// The checks every contract shares: id, version, licence and labels.
pub fn check_common(
    id: &str,
    version: &str,
    licence: &str,
    labels: &[LabelSpec],
) -> Result<(), String> {
    let checks: [(bool, &str); 4] = [
        (is_name(id), "id must be 1-64 characters of [a-z0-9-]"),
        (
            is_spdx_expression(licence),
            "licence must be the SPDX licence expression of the weights (e.g. Apache-2.0, \
             GPL-2.0-or-later, MIT); explain it in the card",
        ),
        (is_semver(version), "version must be MAJOR.MINOR.PATCH"),
        (
            labels.iter().all(|l| l.value > 0)
                && labels
                    .iter()
                    .enumerate()
                    .all(|(i, l)| labels[..i].iter().all(|o| o.value != l.value)),
            "label values must be distinct and above 0",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, reason)) => Err((*reason).to_string()),
        None => Ok(()),
    }
}

/// Parse and check a manifest's text, field by field; `path` only names it in errors. This is
/// what [`Package::open`] does after reading at most 64 KiB of `manifest.toml`; public so that
/// `fuzz/` exercises it without a file.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Manifest, PackageError> {
    let invalid = |reason: String| PackageError::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    if contract_of(path, text)? != 1 {
        return Err(invalid(
            "a contract-2 manifest: open it as a pipeline package (models::pipeline)".into(),
        ));
    }
    let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let m = &manifest;
    check_common(&m.id, &m.version, &m.licence, &m.labels).map_err(invalid)?;
    let checks: [(bool, &str); 7] = [
        (
            !m.input.channels.is_empty(),
            "input.channels must not be empty",
        ),
        (
            m.input.channels.iter().all(|c| c.width > 0.0),
            "input.channels widths must be positive",
        ),
        (
            m.input.size.iter().all(|s| (8..=1024).contains(s)),
            "input.size must be between 8 and 1024",
        ),
        (
            m.input.spacing_mm > 0.0,
            "input.spacing_mm must be positive",
        ),
        (
            (1..=1024).contains(&m.backbone.features) && (1..=1024).contains(&m.head.hidden),
            "backbone.features and head.hidden must be between 1 and 1024",
        ),
        (
            is_hex64(&m.backbone.sha256) && is_hex64(&m.head.sha256),
            "sha256 values must be 64 hex digits",
        ),
        (
            !m.labels.is_empty() && m.labels.iter().all(|l| l.value > 0),
            "labels must list at least one label with a value above 0",
        ),
    ];
    if let Some((_, reason)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(invalid((*reason).to_string()));
    }
    if !(1..=MAX_SAMPLES_PER_CLASS).contains(&m.head.samples_per_class) {
        return Err(invalid(format!(
            "head.samples_per_class must be between 1 and {MAX_SAMPLES_PER_CLASS}"
        )));
    }
    if let Some(v) = &m.validation {
        if !is_hex64(&v.sha256) {
            return Err(invalid("validation.sha256 must be 64 hex digits".into()));
        }
        if !(1..=MAX_VALIDATION_CASES).contains(&v.cases) {
            return Err(invalid(format!(
                "validation.cases must be between 1 and {MAX_VALIDATION_CASES}"
            )));
        }
    }
    let validation_file = m.validation.as_ref().map(|v| &v.file);
    for file in [&m.backbone.file, &m.head.file]
        .into_iter()
        .chain(validation_file)
    {
        if file.contains('/') || file.contains("..") || file.is_empty() {
            return Err(invalid(format!(
                "{file:?} must be a plain file name in the package"
            )));
        }
    }
    Ok(manifest)
}

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_semver(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The shape of an SPDX licence expression: identifiers (`[A-Za-z0-9][A-Za-z0-9.+-]*`,
/// `LicenseRef-...` included) joined by AND, OR and WITH, with parentheses; at most 128 bytes.
/// Whether an identifier is on the SPDX list is not checked.
fn is_spdx_expression(s: &str) -> bool {
    let spaced = s.replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let identifier = |t: &str| {
        t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
            && !["AND", "OR", "WITH"].contains(&t)
    };
    let mut depth = 0i32;
    let mut expect_operand = true;
    for t in &tokens {
        match *t {
            "(" if expect_operand => depth += 1,
            ")" if !expect_operand && depth > 0 => depth -= 1,
            "AND" | "OR" | "WITH" if !expect_operand => expect_operand = true,
            t if expect_operand && identifier(t) => expect_operand = false,
            _ => return false,
        }
    }
    s.len() <= 128 && !tokens.is_empty() && !expect_operand && depth == 0
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, PackageError> {
    let file = std::fs::File::open(path).map_err(|_| PackageError::MissingFile {
        path: path.to_path_buf(),
    })?;
    radiant_core::digest::sha256_hex(file).map_err(|e| PackageError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::is_spdx_expression;

    #[test]
    fn licence_expressions_have_the_spdx_shape() {
        for ok in [
            "Apache-2.0",
            "GPL-2.0-or-later",
            "MIT",
            "CC0-1.0",
            "GPL-2.0-or-later AND MIT",
            "(MIT OR Apache-2.0) AND GPL-2.0+",
            "GPL-2.0-or-later WITH Classpath-exception-2.0",
            "LicenseRef-vendor-eula",
        ] {
            assert!(is_spdx_expression(ok), "{ok}");
        }
        for bad in [
            "",
            "Apache-2.0 (code and weights, as the repository)",
            "MIT OR",
            "AND MIT",
            "(MIT",
            "MIT)",
            "MIT; rm -rf",
            "-MIT",
        ] {
            assert!(!is_spdx_expression(bad), "{bad}");
        }
    }
}
