//! The simulated site shared by the fine-tuning tests: labelled cases made from the real head
//! CT of `fixtures/ct-series` (built by `scripts/fixtures.sh`), with lesions implanted in HU and
//! the reference backbone run on tract, as inference does.
//!
//! The raw pixels are read straight from the files (native little-endian int16, Pixel Data
//! last, as `scripts/make_fixtures.py` writes them; `models` parses no DICOM).

use learning::case::Case;
use learning::finetune::FineTuneConfig;
use models::backbone::Backend;
use models::head::Head;
use models::package::Package;
use models::preprocess;
use onnx_backends::TractBackend;
use radiant_core::rng::SplitMix64;
use radiant_core::volume::Volume;
use std::time::Instant;
use test_support::repo_root;

const SLICES_PER_CASE: usize = 10;

/// The 108-slice head CT: raw int16 pixels (rescale 1, 0: HU), 0.957 mm pixels, 1.5 mm apart.
fn fixture_volume() -> Volume {
    let (rows, columns) = (256usize, 256usize);
    let bytes = rows * columns * 2;
    let mut voxels = Vec::new();
    let mut slices = 0;
    for path in test_support::fixtures::ct_series() {
        let file = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // The last element: (7FE0,0010) OW, 2 reserved bytes, 4-byte length, then the pixels.
        let header = &file[file.len() - bytes - 12..file.len() - bytes];
        assert_eq!(
            header,
            [
                &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0][..],
                &(bytes as u32).to_le_bytes()
            ]
            .concat(),
            "slice {slices}: Pixel Data is not the last element"
        );
        voxels.extend(
            file[file.len() - bytes..]
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
        );
        slices += 1;
    }
    Volume {
        columns,
        rows,
        slices,
        spacing: [0.9570312, 0.9570312, 1.5],
        origin: [0.0; 3],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        normal: [0.0, 0.0, 1.0],
        voxels,
        modality: "CT".into(),
        frame_of_reference_uid: None,
    }
}

/// How a simulated site differs from the training data, and how many cases it labels.
pub struct SiteSpec {
    /// Seeds the choice of slice blocks and of lesion places and sizes.
    pub seed: u64,
    pub train_cases: usize,
    pub test_cases: usize,
    /// HU added inside a lesion (training data: 50 to 80).
    pub lesion_hu: f32,
    /// HU added to every voxel of a case (a scanner calibrated differently); 0 for none.
    pub hu_offset: f32,
}

/// The site's labelled cases, and the shipped head they were made with.
pub struct Site {
    pub head: Head,
    pub train: Vec<Case>,
    pub test: Vec<Case>,
}

fn backbone_features(
    backend: &mut TractBackend,
    package: &Package,
    volume: &Volume,
    slices: std::ops::Range<usize>,
) -> Vec<f32> {
    let spec = &package.manifest.input;
    let [rows, columns] = spec.size;
    let mut out = Vec::new();
    let mut start = slices.start;
    while start < slices.end {
        let end = (start + 16).min(slices.end);
        let input = preprocess::tensor(volume, spec, start..end);
        let shape = [end - start, spec.channels.len(), rows, columns];
        out.extend(backend.run(&input, shape).unwrap());
        start = end;
    }
    out
}

/// Cases of a simulated site: blocks of slices of the real CT, shifted by `hu_offset`, two
/// thirds of them with one spherical lesion of `lesion_hu` (radius 6 to 12 mm) implanted deep
/// in the intracranial space. Labels: intracranial space as the reference head finds it on the
/// clean scan, the lesion where a model pixel's sample point lies in the sphere.
pub fn build_site(site: &SiteSpec) -> Site {
    let t = Instant::now();
    let package = Package::open(&repo_root().join("models/reference/head-ct")).unwrap();
    let head = Head::load(
        &std::fs::read(package.head_path()).unwrap(),
        &package.manifest,
    )
    .unwrap();
    let mut backend = TractBackend::load(&package.backbone_path()).unwrap();
    let clean = fixture_volume();
    let spec = package.manifest.input.clone();
    let [rows, columns] = spec.size;
    let plane = rows * columns;
    let f = head.features;

    // Intracranial space on the model grid: the reference head on the clean scan.
    let features = backbone_features(&mut backend, &package, &clean, 0..clean.slices);
    let probs = head.probabilities(&features, clean.slices, plane);
    let inside: Vec<bool> = probs
        .chunks_exact(head.classes)
        .map(|p| p[1] + p[2] > p[0])
        .collect();
    let area = |z: usize| {
        inside[z * plane..(z + 1) * plane]
            .iter()
            .filter(|b| **b)
            .count()
    };
    // Blocks whose middle slice has a large intracranial area.
    let starts: Vec<usize> = (0..clean.slices - SLICES_PER_CASE)
        .filter(|z| area(z + SLICES_PER_CASE / 2) > 600)
        .collect();
    assert!(starts.len() > 10, "too few brain slices: {}", starts.len());

    let pixel_ml = spec.spacing_mm * spec.spacing_mm * clean.spacing[2] / 1000.0;
    let mut rng = SplitMix64::new(site.seed);
    let mut cases = Vec::new();
    for index in 0..site.train_cases + site.test_cases {
        let first = starts[rng.below(starts.len())];
        let range = first..first + SLICES_PER_CASE;
        let mut volume = clean.clone();
        if site.hu_offset != 0.0 {
            let block =
                range.start * clean.rows * clean.columns..range.end * clean.rows * clean.columns;
            volume.voxels[block]
                .iter_mut()
                .for_each(|v| *v += site.hu_offset);
        }
        let mut labels: Vec<u8> = inside[range.start * plane..range.end * plane]
            .iter()
            .map(|b| u8::from(*b))
            .collect();
        let lesion = index % 3 != 2;
        if lesion {
            let radius_mm = 6.0 + 6.0 * rng.uniform();
            let mid = first + SLICES_PER_CASE / 2;
            // A centre whose model-grid neighbourhood (radius + 8 mm) is all intracranial.
            let reach = ((radius_mm + 8.0) / spec.spacing_mm).ceil() as isize;
            let centre = loop {
                let p = rng.below(plane);
                let (i, j) = ((p / columns) as isize, (p % columns) as isize);
                let deep = (-reach..=reach).all(|di| {
                    (-reach..=reach).all(|dj| {
                        let (a, b) = (i + di, j + dj);
                        a >= 0
                            && b >= 0
                            && (a as usize) < rows
                            && (b as usize) < columns
                            && inside[mid * plane + a as usize * columns + b as usize]
                    })
                });
                if deep {
                    break (i as usize, j as usize);
                }
            };
            let (cx, cy) = preprocess::source_index(&clean, &spec, centre.0, centre.1);
            let cz = mid as f64;
            let [sx, sy, sz] = clean.spacing;
            let dist = |x: f64, y: f64, z: f64| {
                (((x - cx) * sx).powi(2) + ((y - cy) * sy).powi(2) + ((z - cz) * sz).powi(2)).sqrt()
            };
            for z in range.clone() {
                for y in 0..clean.rows {
                    for x in 0..clean.columns {
                        if dist(x as f64, y as f64, z as f64) <= radius_mm {
                            volume.voxels[(z * clean.rows + y) * clean.columns + x] +=
                                site.lesion_hu;
                        }
                    }
                }
                for i in 0..rows {
                    for j in 0..columns {
                        let (x, y) = preprocess::source_index(&clean, &spec, i, j);
                        if dist(x, y, z as f64) <= radius_mm {
                            labels[(z - first) * plane + i * columns + j] = 2;
                        }
                    }
                }
            }
        }
        let features = backbone_features(&mut backend, &package, &volume, range);
        assert_eq!(features.len(), SLICES_PER_CASE * f * plane);
        cases.push(Case {
            id: format!("site-case-{index}"),
            slices: SLICES_PER_CASE,
            plane,
            features,
            labels,
            finding: Some(lesion),
            pixel_ml,
            class_counts: None,
        });
    }
    let test = cases.split_off(site.train_cases);
    eprintln!(
        "fixture: {} training and {} held-out cases of {SLICES_PER_CASE} slices in {:.1} s",
        cases.len(),
        test.len(),
        t.elapsed().as_secs_f64()
    );
    Site {
        head,
        train: cases,
        test,
    }
}

/// The fine-tuning settings of the site tests: FedProx toward the global head (mu 0.01),
/// lesions weighted 3 as in training, 512 pixels per class per case.
pub fn fine_tune_config() -> FineTuneConfig {
    FineTuneConfig {
        seed: 7,
        epochs: 8,
        batch: 1024,
        learning_rate: 3e-3,
        mu: 0.01,
        class_weights: Some(vec![1.0, 1.0, 3.0]),
        pixels_per_class: 512,
        ..FineTuneConfig::default()
    }
}
