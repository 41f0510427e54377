//! Contract-2 packages: the manifest is refused key by key and field by field, the shipped
//! deepbet package verifies, and the runner's spatial modes, layouts, crop stage, decisions
//! and post-processing give exactly the labels they should, on series in several orientations,
//! through graphs whose output is known.

use models::head::Head;
use models::pipeline::run::{head_labels, run, trainable_inputs, PipelineModel};
use models::pipeline::{parse_manifest, Graph, PipelinePackage};
use models::registry::{AnyPackage, Registry};
use models::InferError;
use radiant_core::Volume;
use std::path::{Path, PathBuf};

fn deepbet_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deepbet/package")
}

fn deepbet_manifest() -> String {
    std::fs::read_to_string(deepbet_dir().join("manifest.toml")).unwrap()
}

fn refusal(text: &str) -> String {
    parse_manifest(Path::new("manifest.toml"), text)
        .unwrap_err()
        .to_string()
}

#[test]
fn the_shipped_deepbet_package_verifies_and_installs_with_its_licence() {
    let package = PipelinePackage::open(&deepbet_dir()).unwrap();
    let m = &package.manifest;
    assert_eq!((m.id.as_str(), m.licence.as_str()), ("deepbet", "MIT"));
    assert_eq!(m.stages.len(), 2);
    assert_eq!(m.segmentation_stage(), Some(1));
    let data = tempfile::tempdir().unwrap();
    let registry = Registry::new(data.path());
    let installed = registry.install(&deepbet_dir(), false).unwrap();
    assert!(installed.active);
    assert!(matches!(
        registry.open_active_any("deepbet").unwrap(),
        AnyPackage::Pipeline(_)
    ));
    let copy = data.path().join("models/deepbet/1.0.2");
    assert!(std::fs::read_to_string(copy.join("LICENSE"))
        .unwrap()
        .contains("University of Münster"));
    // A contract-1 opener says what the package is instead of failing on a key.
    let err = models::package::Package::open(&deepbet_dir()).unwrap_err();
    assert!(err.to_string().contains("contract-2"), "{err}");
}

#[test]
fn a_tampered_graph_is_refused_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deepbet_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let graph = dir.path().join("brain_256.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&graph, bytes).unwrap();
    let err = AnyPackage::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("brain_256.onnx") && err.contains("the manifest says"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused_by_name_wherever_they_are() {
    let text = deepbet_manifest();
    for (from, to, key) in [
        ("contract = 2\n", "contract = 2\nspeed = 1\n", "speed"),
        (
            "grid = \"model\"",
            "grid = \"model\"\ncolour_map = 1",
            "colour_map",
        ),
        (
            "{ op = \"zscore\" }",
            "{ op = \"zscore\", scale = 2 }",
            "scale",
        ),
        (
            "orientation = \"RAS\"",
            "orientation = \"RAS\"\nflip = true",
            "flip",
        ),
        ("margin = 0.1 }", "margin = 0.1, padding = 3 }", "padding"),
    ] {
        assert!(text.contains(from), "{from}");
        let err = refusal(&text.replacen(from, to, 1));
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn fields_that_cannot_work_are_refused_naming_the_field() {
    let text = deepbet_manifest();
    for (from, to, expect) in [
        (
            "region = { stage = \"bbox\"",
            "region = { stage = \"brain\"",
            "region.stage \"brain\" is not an earlier stage",
        ),
        (
            "high = 99.5, from = \"bbox\"",
            "high = 99.5, from = \"nope\"",
            "from \"nope\" is not an earlier stage",
        ),
        (
            "layout = \"NCDHW\"",
            "layout = \"NCHW\"",
            "does not fit spatial",
        ),
        (
            "shape = [128, 128, 128]",
            "shape = [128, 128]",
            "shape must be 3 sizes",
        ),
        (
            "shape = [128, 128, 128]",
            "shape = [128, 0, 128]",
            "shape must be 3 sizes",
        ),
        (
            "threshold = 0.5\ngrid = \"region\"",
            "grid = \"region\"",
            "decision",
        ),
        (
            "low = 0.5, high = 99.5 }",
            "low = 99.5, high = 0.5 }",
            "0 <= low < high",
        ),
        ("margin = 0.1", "margin = -0.1", "region.margin"),
        ("contract = 2", "contract = 3", "contract = 3"),
        ("min_slices = 16", "min_slices = 0", "min_slices"),
        (
            "{ op = \"largest-component\", connectivity = 26 }, { op = \"fill-holes\" }",
            "{ op = \"largest-component\", connectivity = 5 }",
            "connectivity must be 6, 18 or 26",
        ),
        ("licence = \"MIT\"", "licence = \"MIT and more\"", "licence"),
    ] {
        assert!(text.contains(from), "{from}");
        let err = refusal(&text.replacen(from, to, 1));
        assert!(err.contains(expect), "{expect}: {err}");
    }
    // The segmentation stage must decide as many classes as there are labels.
    let two_labels = text.replace(
        "[report]",
        "[[labels]]\nvalue = 2\nname = \"more\"\ncolour = [1, 2, 3]\n\n[report]",
    );
    assert!(refusal(&two_labels).contains("decides 1 classes but the manifest has 2 labels"));
}

/// Gives its input back (one channel in, one out), or a transform of it.
struct Fixed {
    f: fn(&[f32], &[usize]) -> Vec<f32>,
}

impl Graph for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }
    fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<f32>, InferError> {
        Ok((self.f)(input, shape))
    }
    fn run_outputs(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &[&str],
    ) -> Result<Vec<Vec<f32>>, InferError> {
        Ok(outputs.iter().map(|_| (self.f)(input, shape)).collect())
    }
}

fn identity(input: &[f32], _: &[usize]) -> Vec<f32> {
    input.to_vec()
}

/// NHWC with one channel in, two logits out per pixel: background 0, foreground 10·x − 5.
fn two_logits_nhwc(input: &[f32], _: &[usize]) -> Vec<f32> {
    input.iter().flat_map(|x| [0.0, 10.0 * x - 5.0]).collect()
}

/// NCHW with the slab's slices as channels: gives the middle one back.
fn middle_channel(input: &[f32], shape: &[usize]) -> Vec<f32> {
    let (n, c, plane) = (shape[0], shape[1], shape[2] * shape[3]);
    (0..n)
        .flat_map(|i| {
            let at = (i * c + c / 2) * plane;
            input[at..at + plane].to_vec()
        })
        .collect()
}

fn mean(input: &[f32], _: &[usize]) -> Vec<f32> {
    vec![input.iter().sum::<f32>() / input.len() as f32]
}

const SIZE: [usize; 3] = [16, 24, 20]; // columns, rows, slices

/// A volume of `SIZE` with 100 inside the box (columns 4..10, rows 6..18, slices 5..13) and 0
/// elsewhere, in the orientation given by its row and column directions.
fn volume(row: [f64; 3], column: [f64; 3]) -> (Volume, Vec<u8>) {
    let normal = [
        row[1] * column[2] - row[2] * column[1],
        row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0],
    ];
    let [nc, nr, ns] = SIZE;
    let mut voxels = vec![0f32; nc * nr * ns];
    let mut truth = vec![0u8; voxels.len()];
    for s in 5..13 {
        for r in 6..18 {
            for c in 4..10 {
                voxels[(s * nr + r) * nc + c] = 100.0;
                truth[(s * nr + r) * nc + c] = 1;
            }
        }
    }
    let volume = Volume {
        columns: nc,
        rows: nr,
        slices: ns,
        spacing: [1.0, 1.5, 2.0],
        origin: [0.0; 3],
        row_direction: row,
        column_direction: column,
        normal,
        voxels,
        modality: "MR".into(),
        frame_of_reference_uid: None,
    };
    (volume, truth)
}

const ORIENTATIONS: [([f64; 3], [f64; 3]); 3] = [
    ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),  // axial
    ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]), // sagittal
    ([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]), // coronal
];

const HEADER: &str = r#"contract = 2
id = "synthetic"
version = "0.0.1"
task = "segmentation"
licence = "CC0-1.0"
intended_use = "Tests only."
[input]
modality = "MR"
min_slices = 4
orientation = "RAS"
"#;

const LABEL: &str = r#"
[[labels]]
value = 7
name = "box"
colour = [255, 0, 0]
"#;

fn model(stages: &str, graphs: Vec<Box<dyn Graph>>, extra: &str) -> PipelineModel {
    let text = format!("{HEADER}{stages}{LABEL}{extra}");
    let manifest = parse_manifest(Path::new("manifest.toml"), &text).unwrap();
    PipelineModel::new(
        PipelinePackage {
            dir: PathBuf::new(),
            manifest,
        },
        graphs,
    )
    .unwrap()
}

fn stage(name: &str, body: &str) -> String {
    format!(
        "[[stages]]\nname = \"{name}\"\nfile = \"{name}.onnx\"\nsha256 = \"{}\"\ninput = \"x\"\noutput = \"y\"\n{body}\n",
        "0".repeat(64)
    )
}

const WINDOW: &str = r#"channels = [[{ op = "window", center = 50.0, width = 100.0 }]]"#;

#[test]
fn a_crop_stage_after_a_coarse_stage_finds_the_box_exactly_in_every_orientation() {
    let coarse = stage(
        "coarse",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"volume\"\nshape = [8, 8, 8]\n{WINDOW}\n\
             postprocess = [{{ op = \"largest-component\", connectivity = 26 }}]\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5\ngrid = \"model\""
        ),
    );
    let fine = stage(
        "fine",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"patches\"\nshape = [4, 4, 4]\noverlap = 0.5\n\
             region = {{ stage = \"coarse\", margin = 0.5 }}\n{WINDOW}\n\
             postprocess = [{{ op = \"fill-holes\" }}]\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    for (row, column) in ORIENTATIONS {
        let (v, truth) = volume(row, column);
        let mut m = model(
            &format!("{coarse}{fine}"),
            vec![
                Box::new(Fixed { f: identity }),
                Box::new(Fixed { f: identity }),
            ],
            "",
        );
        let result = run(&mut m, &v).unwrap();
        let expected: Vec<u8> = truth.iter().map(|t| t * 7).collect();
        assert_eq!(result.label_map, expected, "orientation {row:?} {column:?}");
        assert_eq!(result.labels[0].voxels, 6 * 12 * 8);
        let stages = &result.timings.stages;
        assert_eq!(stages.len(), 2);
        // The crop is smaller than the volume on some axis and still holds the box.
        let whole: usize = SIZE.iter().product();
        let crop: usize = stages[1].region.iter().map(|[lo, hi]| hi - lo).product();
        assert!(crop < whole, "{:?}", stages[1].region);
    }
}

#[test]
fn a_resampled_volume_comes_back_onto_every_source_voxel() {
    let seg = stage(
        "seg",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"volume\"\nshape = [16, 16, 16]\nresize = \"linear\"\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    let text = format!("{HEADER}{seg}{LABEL}").replace(
        "orientation = \"RAS\"\n",
        "orientation = \"RAS\"\nresample = { spacing_mm = [2.0, 2.0, 2.0], interpolation = \"linear\" }\n",
    );
    let manifest = parse_manifest(Path::new("manifest.toml"), &text).unwrap();
    let mut m = PipelineModel::new(
        PipelinePackage {
            dir: PathBuf::new(),
            manifest,
        },
        vec![Box::new(Fixed { f: identity })],
    )
    .unwrap();
    for (row, column) in ORIENTATIONS {
        let (v, truth) = volume(row, column);
        let result = run(&mut m, &v).unwrap();
        assert_eq!(result.label_map.len(), truth.len());
        let both = result
            .label_map
            .iter()
            .zip(&truth)
            .filter(|(l, t)| **l == 7 && **t == 1)
            .count();
        let ours = result.label_map.iter().filter(|l| **l == 7).count();
        let dice = 2.0 * both as f64 / (ours + truth.iter().filter(|t| **t == 1).count()) as f64;
        // 2 mm voxels and back: the box's edges move by at most a voxel.
        // (0.909 in each orientation when written; a box flipped on one axis gives < 0.7.)
        assert!(dice > 0.88, "Dice {dice} for {row:?} {column:?}");
    }
}

#[test]
fn slices_in_channels_last_layout_with_softmax_argmax_give_the_box() {
    let slices = stage(
        "slices",
        &format!(
            "layout = \"NHWC\"\nspatial = \"slice\"\nshape = [16, 24]\nslice_axis = 2\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"softmax\"\nchannels = 2\n\
             decision = \"argmax\""
        ),
    );
    let (v, truth) = volume(ORIENTATIONS[0].0, ORIENTATIONS[0].1);
    let mut m = model(&slices, vec![Box::new(Fixed { f: two_logits_nhwc })], "");
    let result = run(&mut m, &v).unwrap();
    let expected: Vec<u8> = truth.iter().map(|t| t * 7).collect();
    assert_eq!(result.label_map, expected);
}

#[test]
fn a_slab_stage_sees_each_slice_between_its_neighbours() {
    let slab = stage(
        "slab",
        &format!(
            "layout = \"NCHW\"\nspatial = \"slab\"\nslab = 3\nshape = [16, 24]\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    let (v, truth) = volume(ORIENTATIONS[0].0, ORIENTATIONS[0].1);
    let mut m = model(&slab, vec![Box::new(Fixed { f: middle_channel })], "");
    let result = run(&mut m, &v).unwrap();
    let expected: Vec<u8> = truth.iter().map(|t| t * 7).collect();
    assert_eq!(result.label_map, expected);
}

#[test]
fn a_study_stage_gives_the_finding_probability() {
    let seg = stage(
        "seg",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"volume\"\nshape = [16, 24, 20]\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    let study = stage(
        "study",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"volume\"\nshape = [16, 24, 20]\n{WINDOW}\n\
             [stages.scores]\nper = \"study\"\nactivation = \"none\"\nchannels = 1\n\
             codes = [{{ scheme = \"SCT\", value = \"12738006\", meaning = \"Brain\" }}]"
        ),
    );
    let (v, _) = volume(ORIENTATIONS[0].0, ORIENTATIONS[0].1);
    let mut m = model(
        &format!("{seg}{study}"),
        vec![Box::new(Fixed { f: identity }), Box::new(Fixed { f: mean })],
        "[classification]\nname = \"box present\"\n",
    );
    let result = run(&mut m, &v).unwrap();
    let expected = (6 * 12 * 8) as f64 / (16 * 24 * 20) as f64;
    let p = result.finding_probability.unwrap();
    assert!((p - expected).abs() < 1e-6, "{p} vs {expected}");
    assert_eq!(result.finding.as_deref(), Some("box present"));
}

#[test]
fn a_graph_that_misbehaves_or_finds_nothing_fails_the_study_with_the_reason() {
    let one = |f: fn(&[f32], &[usize]) -> Vec<f32>| -> Vec<Box<dyn Graph>> {
        vec![Box::new(Fixed { f })]
    };
    let seg = stage(
        "seg",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"volume\"\nshape = [8, 8, 8]\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    let (v, _) = volume(ORIENTATIONS[0].0, ORIENTATIONS[0].1);
    let short = run(&mut model(&seg, one(mean), ""), &v).unwrap_err();
    assert!(
        short
            .to_string()
            .contains("stage seg: the graph gave 1 values"),
        "{short}"
    );
    let nan = run(
        &mut model(&seg, one(|i, _| vec![f32::NAN; i.len()]), ""),
        &v,
    )
    .unwrap_err();
    assert!(nan.to_string().contains("non-finite"), "{nan}");
    // A crop after a stage that found nothing is a named error, not a panic.
    let crop = stage(
        "crop",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"volume\"\nshape = [8, 8, 8]\n\
             region = {{ stage = \"seg\" }}\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    let mut empty = model(
        &format!("{seg}{crop}"),
        vec![
            Box::new(Fixed {
                f: |i, _| vec![0.0; i.len()],
            }),
            Box::new(Fixed { f: identity }),
        ],
        "",
    );
    let err = run(&mut empty, &v).unwrap_err();
    assert!(matches!(err, InferError::EmptyRegion { .. }), "{err}");
    // Patches so small that a study would take hours are refused with the count.
    let tiny = stage(
        "tiny",
        &format!(
            "layout = \"NCDHW\"\nspatial = \"patches\"\nshape = [1, 1, 1]\noverlap = 0.5\n{WINDOW}\n\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5"
        ),
    );
    let many = run(&mut model(&tiny, one(identity), ""), &v).unwrap_err();
    assert!(many.to_string().contains("7680 patches"), "{many}");
    // The wrong modality is refused before anything runs.
    let mut ct = v.clone();
    ct.modality = "CT".into();
    assert!(matches!(
        run(&mut model(&seg, one(identity), ""), &ct).unwrap_err(),
        InferError::WrongModality { .. }
    ));
}

/// A trainable stage's graph: its declared output is sigmoid(l1 − l0), and it also gives the
/// class logits (l0 = 0, l1 = 10·x − 5) and one feature per 2×2×2 cell (the cell's mean).
struct WithHeadInputs;

impl WithHeadInputs {
    /// Per item (one channel in): its logits l0 then l1.
    fn logits(input: &[f32], shape: &[usize]) -> Vec<f32> {
        let size: usize = shape[2..].iter().product();
        input
            .chunks(size)
            .flat_map(|item| {
                let mut out = vec![0f32; size];
                out.extend(item.iter().map(|x| 10.0 * x - 5.0));
                out
            })
            .collect()
    }

    /// Per item: the mean of every 2×2(×2) cell; a 4D input is a batch of slices.
    fn cells(input: &[f32], shape: &[usize]) -> Vec<f32> {
        let volume = shape.len() == 5;
        let (d, h, w) = if volume {
            (shape[2], shape[3], shape[4])
        } else {
            (1, shape[2], shape[3])
        };
        let (cd, weight) = if volume { (d / 2, 8.0) } else { (1, 4.0) };
        input
            .chunks(d * h * w)
            .flat_map(|item| {
                let mut out = vec![0f32; cd * (h / 2) * (w / 2)];
                for i in 0..d {
                    for j in 0..h {
                        for k in 0..w {
                            let ci = if volume { i / 2 } else { 0 };
                            out[(ci * (h / 2) + j / 2) * (w / 2) + k / 2] +=
                                item[(i * h + j) * w + k] / weight;
                        }
                    }
                }
                out
            })
            .collect()
    }
}

impl Graph for WithHeadInputs {
    fn name(&self) -> &'static str {
        "with-head-inputs"
    }
    fn run(&mut self, input: &[f32], _: &[usize]) -> Result<Vec<f32>, InferError> {
        Ok(input
            .iter()
            .map(|x| 1.0 / (1.0 + (-(10.0 * x - 5.0)).exp()))
            .collect())
    }
    fn run_outputs(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &[&str],
    ) -> Result<Vec<Vec<f32>>, InferError> {
        outputs
            .iter()
            .map(|name| match *name {
                "class_logits" => Ok(Self::logits(input, shape)),
                "features" => Ok(Self::cells(input, shape)),
                other => Err(InferError::Backend(format!("no output {other}"))),
            })
            .collect()
    }
}

const TRAINABLE: &str = r#"[stages.trainable]
head = "head.safetensors"
head_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
logits = "class_logits"
features = "features"
channels = 1
stride = 2
hidden = 4
samples_per_class = 64
"#;

fn trainable_stage(spatial: &str, trainable: &str) -> String {
    let (layout, shape) = match spatial {
        "volume" => ("NCDHW", "[8, 8, 8]"),
        _ => ("NCHW", "[8, 8]"),
    };
    stage(
        "seg",
        &format!(
            "layout = \"{layout}\"\nspatial = \"{spatial}\"\nshape = {shape}\n{WINDOW}\n\
             {trainable}\
             [stages.scores]\nper = \"voxel\"\nactivation = \"none\"\nchannels = 1\n\
             decision = \"threshold\"\nthreshold = 0.5\ngrid = \"region\""
        ),
    )
}

/// The head that gives the graph's logits back: hidden units +l0, −l0, +l1, −l1.
fn identity_head() -> Head {
    Head {
        features: 3,
        hidden: 4,
        classes: 2,
        w1: vec![
            1.0, 0.0, 0.0, //
            -1.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, //
            0.0, -1.0, 0.0,
        ],
        b1: vec![0.0; 4],
        w2: vec![1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0],
        b2: vec![0.0; 2],
        cls_w: [0.0; 2],
        cls_b: 0.0,
    }
}

#[test]
fn a_trainable_stage_runs_its_head_in_place_of_the_graph_output_and_hands_learning_its_inputs() {
    for ((row, column), spatial) in ORIENTATIONS
        .iter()
        .flat_map(|o| [(*o, "volume"), (*o, "slice")])
    {
        let (v, truth) = volume(row, column);
        let mut m = model(
            &trainable_stage(spatial, TRAINABLE),
            vec![Box::new(WithHeadInputs)],
            "",
        );
        // No head: the graph's own output (the box, as well as 8 voxels a side can say).
        let graph_only = run(&mut m, &v).unwrap().label_map;
        assert!(graph_only.contains(&7) && graph_only.contains(&0));
        // The head that reproduces the graph decides the same voxels.
        m.set_head(Some(identity_head())).unwrap();
        assert!(run(&mut m, &v).unwrap().label_map == graph_only);
        // The head is what decides: one that favours the label everywhere labels everything.
        let mut everywhere = identity_head();
        everywhere.b2 = vec![0.0, 100.0];
        m.set_head(Some(everywhere)).unwrap();
        assert!(run(&mut m, &v).unwrap().label_map.iter().all(|l| *l == 7));

        // Learning's inputs: the truth lands on the graph grid exactly where the image's
        // box does (the same reorientation, crop and resize), and the features are the cells'.
        let inputs = trainable_inputs(&mut m, &v, &truth).unwrap();
        assert_eq!((inputs.classes, inputs.channels), (2, 1));
        match spatial {
            "volume" => assert_eq!((inputs.shape, inputs.stride), ([8; 3], [2; 3])),
            // The region's slices along the slice axis, each resized to 8×8.
            _ => assert_eq!(
                (&inputs.shape[1..], inputs.stride),
                (&[8, 8][..], [1, 2, 2])
            ),
        }
        let voxels = inputs.voxels();
        for (i, label) in inputs.labels.iter().enumerate() {
            let inside = inputs.logits[voxels + i] > 0.0;
            assert_eq!(
                *label == 1,
                inside,
                "voxel {i}, {spatial}, orientation {row:?} {column:?}"
            );
        }
        assert!(inputs.labels.contains(&1) && inputs.labels.contains(&0));
        let mut x = [0f32; 3];
        inputs.inputs_of(0, &mut x);
        assert_eq!(x[2], inputs.features[0]);
        // With the identity head, deciding on the inputs gives back the graph grid's truth.
        let decided = head_labels(&m.package.manifest, &identity_head(), &inputs).unwrap();
        assert_eq!(decided, inputs.labels);
    }
}

#[test]
fn a_head_or_a_trainable_section_that_cannot_fit_is_refused_by_name() {
    let mut m = model(
        &trainable_stage("volume", TRAINABLE),
        vec![Box::new(WithHeadInputs)],
        "",
    );
    let mut wide = identity_head();
    wide.features = 4;
    wide.w1 = vec![0.0; 16];
    let err = m.set_head(Some(wide)).unwrap_err().to_string();
    assert!(err.contains("4/4/2") && err.contains("3/4/2"), "{err}");
    // A model without a trainable stage takes no head.
    let (v, truth) = volume(ORIENTATIONS[0].0, ORIENTATIONS[0].1);
    let mut plain = model(
        &trainable_stage("volume", ""),
        vec![Box::new(WithHeadInputs)],
        "",
    );
    assert!(plain.set_head(Some(identity_head())).is_err());
    assert!(trainable_inputs(&mut plain, &v, &truth)
        .unwrap_err()
        .to_string()
        .contains("no trainable stage"));
    let text = |stages: String| format!("{HEADER}{stages}{LABEL}");
    assert!(refusal(&text(
        trainable_stage("volume", TRAINABLE).replace("NCDHW", "NDHWC")
    ))
    .contains("a channels-first layout (NCDHW, NCHW)"));
    assert!(refusal(&text(trainable_stage(
        "volume",
        &TRAINABLE.replace("stride = 2", "stride = 3")
    )))
    .contains("trainable.stride"));
    assert!(refusal(&text(trainable_stage(
        "volume",
        &TRAINABLE.replace("hidden = 4", "hidden = 4\nlayers = 2")
    )))
    .contains("layers"));
}
