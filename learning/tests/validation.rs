//! The reference validation set: the shipped set loads, runs through the real backbone on
//! tract, and the shipped head scores on it close to the card's held-out metrics; a corrupt or
//! mismatched file is a typed error, never a panic or a huge allocation.

use learning::evaluate;
use learning::validation::{ReferenceSet, ValidationError};
use models::head::Head;
use models::package::Package;
use onnx_backends::TractBackend;
use safetensors::{tensor::TensorView, Dtype};
use std::path::{Path, PathBuf};

fn package() -> Package {
    Package::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference/head-ct"))
        .unwrap()
}

#[test]
fn the_shipped_head_scores_on_the_shipped_reference_set_near_the_cards_held_out_metrics() {
    let package = package();
    let set = ReferenceSet::load(&package)
        .unwrap()
        .expect("the reference package ships a validation set");
    assert_eq!(set.cases.len(), 8);
    assert_eq!(set.cases.iter().filter(|c| c.finding).count(), 4);
    let mut backend = TractBackend::load(&package.backbone_path()).unwrap();
    let t = std::time::Instant::now();
    let cases = set
        .cases(&mut backend, package.manifest.backbone.features)
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let head = Head::load(
        &std::fs::read(package.head_path()).unwrap(),
        &package.manifest,
    )
    .unwrap();
    let scores = evaluate::score(&head, &cases).unwrap();
    eprintln!(
        "reference set: {} cases, {} slices, backbone {seconds:.1} s; Dice intracranial {:.4}, \
         lesion {:.4}; AUROC {:?}; study probabilities {:.3?} (findings {:?}); card: 0.9831, \
         0.8784, 0.9583",
        cases.len(),
        cases.iter().map(|c| c.slices).sum::<usize>(),
        scores.dice[0],
        scores.dice[1],
        scores.auroc,
        scores.study_probabilities,
        cases.iter().map(|c| c.finding).collect::<Vec<_>>(),
    );
    assert!(scores.dice[0] > 0.95, "{scores:?}");
    assert!(scores.dice[1] > 0.6, "{scores:?}");
    assert!(scores.auroc.is_some_and(|a| a >= 0.75), "{scores:?}");
}

/// The shipped file's tensors, to be rebuilt with one thing wrong.
struct Parts {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl Parts {
    fn shipped() -> (Parts, Vec<u8>) {
        let bytes = std::fs::read(package().validation_path().unwrap()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        (Parts { tensors }, bytes)
    }

    fn with(mut self, name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Parts {
        self.tensors.retain(|t| t.0 != name);
        self.tensors
            .push((name.into(), dtype, shape.to_vec(), data));
        self
    }

    fn without(mut self, name: &str) -> Parts {
        self.tensors.retain(|t| t.0 != name);
        self
    }

    fn data(&self, name: &str) -> Vec<u8> {
        self.tensors.iter().find(|t| t.0 == name).unwrap().3.clone()
    }

    fn bytes(&self) -> Vec<u8> {
        let views = self.tensors.iter().map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        });
        safetensors::serialize(views, None).unwrap()
    }
}

fn parse(bytes: &[u8]) -> Result<ReferenceSet, ValidationError> {
    ReferenceSet::from_bytes(
        bytes,
        &package().manifest,
        &PathBuf::from("validation.safetensors"),
    )
}

fn refused(bytes: &[u8], says: &str) {
    match parse(bytes) {
        Err(e @ ValidationError::Format { .. }) => {
            assert!(e.to_string().contains(says), "{e} (expected {says:?})")
        }
        other => panic!("expected a format error saying {says:?}, got {other:?}"),
    }
}

#[test]
fn a_corrupt_or_mismatched_validation_file_is_a_format_error_naming_the_problem() {
    let (parts, shipped) = Parts::shipped();
    // The rebuilt file is a valid set: every refusal below comes from the one change.
    assert_eq!(parse(&parts.bytes()).unwrap(), parse(&shipped).unwrap());

    refused(&shipped[..shipped.len() - 1], "not safetensors");
    refused(&shipped[..5], "not safetensors");
    // A header length of 2^64 - 1: refused before anything is allocated for it.
    let mut huge = shipped.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    refused(&huge, "not safetensors");

    let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let counts = |v: &[u32]| {
        Parts::shipped()
            .0
            .with("slices", Dtype::U32, &[v.len()], u32s(v))
    };
    // Counts that claim more slices than the file holds (4 * 2^32 - 4): a shape error, no
    // allocation of that many slices.
    refused(&counts(&[u32::MAX; 8]).bytes(), "input has shape");
    refused(
        &counts(&[10, 10, 10, 10, 10, 10, 10, 0]).bytes(),
        "case 7 has no slices",
    );
    // Seven cases where the manifest says eight.
    refused(
        &counts(&[10, 10, 10, 10, 10, 10, 20]).bytes(),
        "the manifest says 8",
    );
    refused(&counts(&[]).bytes(), "slices has shape");
    let as_u8 = Parts::shipped()
        .0
        .with("slices", Dtype::U8, &[8], vec![10; 8]);
    refused(&as_u8.bytes(), "not U32");

    refused(
        &Parts::shipped().0.without("labels").bytes(),
        "tensor labels missing",
    );
    let input = parts.data("input");
    let short = Parts::shipped().0.with(
        "input",
        Dtype::U8,
        &[79, 3, 64, 64],
        input[..79 * 3 * 64 * 64].to_vec(),
    );
    refused(&short.bytes(), "input has shape");
    // Two channels where the manifest has three.
    let two = Parts::shipped().0.with(
        "input",
        Dtype::U8,
        &[80, 2, 64, 64],
        input[..80 * 2 * 64 * 64].to_vec(),
    );
    refused(&two.bytes(), "input has shape");

    let mut labels = parts.data("labels");
    labels[1234] = 3;
    let label3 = Parts::shipped()
        .0
        .with("labels", Dtype::U8, &[80, 64, 64], labels);
    refused(&label3.bytes(), "label 3, the model has 3 classes");

    let mut finding = parts.data("finding");
    finding[2] = 2;
    let finding2 = Parts::shipped().0.with("finding", Dtype::U8, &[8], finding);
    refused(&finding2.bytes(), "finding must be");

    let mut ml = parts.data("pixel_ml");
    ml[8..16].copy_from_slice(&f64::NAN.to_le_bytes());
    let nan = Parts::shipped().0.with("pixel_ml", Dtype::F64, &[8], ml);
    refused(&nan.bytes(), "pixel volume NaN ml");
}

#[test]
fn a_package_without_a_validation_set_has_none_and_a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut package = package();
    package.manifest.validation = None;
    assert!(ReferenceSet::load(&package).unwrap().is_none());

    let mut package = self::package();
    package.dir = dir.path().to_path_buf();
    assert!(matches!(
        ReferenceSet::load(&package),
        Err(ValidationError::Io { .. })
    ));
    // A file larger than any set may be (sparse: costs no disk) is refused unread.
    std::fs::File::create(package.validation_path().unwrap())
        .unwrap()
        .set_len(learning::validation::MAX_FILE_BYTES + 1)
        .unwrap();
    assert!(matches!(
        ReferenceSet::load(&package),
        Err(ValidationError::TooLarge { .. })
    ));
}
