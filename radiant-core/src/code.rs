//! A coded concept, as DICOM result objects and model manifests carry them.

use serde::{Deserialize, Serialize};

/// A coded concept: a code from a named coding scheme (SNOMED CT is `SCT`, LOINC `LN`, DICOM's
/// own `DCM`), with its human-readable meaning. Result objects carry these so that viewers and
/// other systems know what a label or finding is without parsing its name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Code {
    pub scheme: String,
    pub value: String,
    pub meaning: String,
}
