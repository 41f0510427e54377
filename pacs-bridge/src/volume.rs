//! Series to volume: decode the pixel data of a series' instances (every transfer syntax the SCP
//! accepts that a maintained decoder handles), apply the modality rescale, and lay the slices
//! out by their position along the slice normal (PS3.3 C.7.6.2.1.1), never by file name or
//! Instance Number. Geometry comes from the headers: Image Position/Orientation (Patient) and
//! Pixel Spacing, or their functional-group equivalents in Enhanced multi-frame objects
//! (PS3.3 C.7.6.16). A series that cannot form one regular volume is refused with the reason.

use crate::codestream::{self, Codec, FrameShape};
use crate::dataset;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, VoiLutOption};
use radiant_core::volume::{cross, dot, Volume};
use radiant_core::Uid;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Bounds on what one series may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file read.
    pub max_file_bytes: u64,
    /// Most voxels in the volume (4 bytes each in memory).
    pub max_voxels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1 << 30,
            max_voxels: 1 << 28,
        }
    }
}

#[derive(Debug, Error)]
pub enum VolumeError {
    #[error("no DICOM files given")]
    Empty,
    #[error("cannot read {}: {reason}", radiant_core::redacted_path(.path))]
    Read { path: PathBuf, reason: String },
    #[error("{} is not a DICOM Part 10 file", radiant_core::redacted_path(.path))]
    NotPart10 { path: PathBuf },
    #[error("{}: transfer syntax {transfer_syntax} is not one we decode", radiant_core::redacted_path(.path))]
    UnsupportedTransferSyntax {
        path: PathBuf,
        transfer_syntax: String,
    },
    #[error("{}: malformed dataset: {source}", radiant_core::redacted_path(.path))]
    Malformed {
        path: PathBuf,
        #[source]
        source: dataset::DatasetError,
    },
    #[error("{}: missing or invalid {attribute} (absent, unreadable, or not a finite number)", radiant_core::redacted_path(.path))]
    MissingAttribute {
        path: PathBuf,
        attribute: &'static str,
    },
    #[error("{}: {reason}", radiant_core::redacted_path(.path))]
    UnsupportedCompression { path: PathBuf, reason: &'static str },
    #[error("{}: pixel data cannot be decoded: {reason}", radiant_core::redacted_path(.path))]
    Decode { path: PathBuf, reason: String },
    #[error("{}: {samples} samples per pixel; only single-channel (monochrome) images form a volume", radiant_core::redacted_path(.path))]
    NotMonochrome { path: PathBuf, samples: u16 },
    #[error("files belong to different series ({first} and {other})")]
    MixedSeries { first: Uid, other: Uid },
    #[error(
        "images of different sizes: {first_rows}x{first_columns} and {rows}x{columns} ({})",
        radiant_core::redacted_path(.path)
    )]
    MixedSizes {
        first_rows: u32,
        first_columns: u32,
        rows: u32,
        columns: u32,
        path: PathBuf,
    },
    #[error("images with different orientations ({})", radiant_core::redacted_path(.path))]
    MixedOrientations { path: PathBuf },
    #[error("images with different pixel spacing ({})", radiant_core::redacted_path(.path))]
    MixedSpacing { path: PathBuf },
    #[error("two slices at the same position {position:?} mm along the normal")]
    DuplicatePosition { position: f64 },
    #[error("uneven slice spacing: gap of {gap:.3} mm at {at:.3} mm where {expected:.3} mm is usual (missing slice?)")]
    UnevenSpacing { gap: f64, at: f64, expected: f64 },
    #[error("slice positions do not lie along the slice normal (tilted or sheared stack)")]
    NotAlongNormal,
    #[error("volume of {voxels} voxels exceeds the limit of {limit}")]
    TooLarge { voxels: usize, limit: usize },
}

/// Where each slice of a volume came from, in volume order.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSource {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// Frame number within the instance, from 0.
    pub frame: u32,
    pub position: [f64; 3],
}

/// A volume built from one series, with its DICOM identity for later result objects.
#[derive(Debug, Clone)]
pub struct SeriesVolume {
    pub volume: Volume,
    /// The dataset of the first instance without its Pixel Data: the patient and study
    /// attributes that result objects copy.
    pub header: InMemDicomObject,
    pub study_uid: String,
    pub series_uid: String,
    pub sources: Vec<SliceSource>,
}

impl SeriesVolume {
    /// Who the series is of, for grouping (never for a log): `issuer\\patient id` from its
    /// header, or `None` when the Patient ID is empty or absent.
    pub fn patient_identity(&self) -> Option<String> {
        let id = text(&self.header, tags::PATIENT_ID)?;
        let issuer = text(&self.header, tags::ISSUER_OF_PATIENT_ID).unwrap_or_default();
        Some(format!("{issuer}\\{id}"))
    }
}

/// The attributes routing rules look at, from one instance of a series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesAttributes {
    pub modality: String,
    pub body_part_examined: String,
    pub series_description: String,
    /// Image Type's values, in order.
    pub image_type: Vec<String>,
    /// Slice Thickness, mm, when present and a number.
    pub slice_thickness_mm: Option<f64>,
}

/// Read the routing attributes of the instance at `path` (checked as [`build`] checks every
/// file before parsing it).
pub fn series_attributes(path: &Path, limits: &Limits) -> Result<SeriesAttributes, VolumeError> {
    let object = read(path, limits)?;
    let image_type = object
        .element_opt(tags::IMAGE_TYPE)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.trim_end_matches(['\0', ' ']).trim().to_string())
        .collect();
    Ok(SeriesAttributes {
        modality: text(&object, tags::MODALITY).unwrap_or_default(),
        body_part_examined: text(&object, tags::BODY_PART_EXAMINED).unwrap_or_default(),
        series_description: text(&object, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        image_type,
        slice_thickness_mm: text(&object, tags::SLICE_THICKNESS)
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|t| t.is_finite()),
    })
}

/// One frame's geometry, before ordering.
struct Frame {
    instance: usize,
    frame: u32,
    position: Option<[f64; 3]>,
}

struct Instance {
    path: PathBuf,
    object: DefaultDicomObject,
    sop_instance_uid: String,
    sop_class_uid: String,
    rows: u32,
    columns: u32,
    orientation: [f64; 6],
    spacing: [f64; 2],
    thickness: Option<f64>,
}

/// JPEG Extended (Process 2 & 4).
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// Relative tolerance on slice gaps, and absolute tolerance on direction cosines.
const GAP_TOLERANCE: f64 = 0.05;
const COSINE_TOLERANCE: f64 = 1e-3;

/// Build the volume of the series held in `paths` (any order).
pub fn build(paths: &[PathBuf], limits: &Limits) -> Result<SeriesVolume, VolumeError> {
    if paths.is_empty() {
        return Err(VolumeError::Empty);
    }
    let mut instances = Vec::with_capacity(paths.len());
    let mut frames = Vec::new();
    let (mut series_uid, mut study_uid, mut modality, mut frame_of_reference) =
        (String::new(), String::new(), String::new(), None);
    let mut header = InMemDicomObject::new_empty();
    for (i, path) in paths.iter().enumerate() {
        let object = read(path, limits)?;
        let series = text(&object, tags::SERIES_INSTANCE_UID)
            .ok_or_else(|| missing(path, "Series Instance UID"))?;
        if i == 0 {
            series_uid = series;
            study_uid = text(&object, tags::STUDY_INSTANCE_UID)
                .ok_or_else(|| missing(path, "Study Instance UID"))?;
            modality = text(&object, tags::MODALITY).unwrap_or_default();
            frame_of_reference = text(&object, tags::FRAME_OF_REFERENCE_UID);
            header = InMemDicomObject::from_element_iter(
                object
                    .iter()
                    .filter(|e| e.header().tag != tags::PIXEL_DATA)
                    .cloned(),
            );
        } else if series != series_uid {
            return Err(VolumeError::MixedSeries {
                first: Uid::new(series_uid),
                other: Uid::new(series),
            });
        }
        let samples = uint(&object, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16;
        if samples != 1 {
            return Err(VolumeError::NotMonochrome {
                path: path.clone(),
                samples,
            });
        }
        let instance = describe(path, object)?;
        let count = uint(&instance.object, tags::NUMBER_OF_FRAMES)
            .unwrap_or(1)
            .max(1);
        // Number of Frames is the sender's word: bound what it makes us allocate (one entry per
        // frame here, its voxels later) before anything is pushed.
        let per_frame = u64::from(instance.rows) * u64::from(instance.columns);
        let planned = (frames.len() as u64 + u64::from(count)).saturating_mul(per_frame);
        if planned > limits.max_voxels as u64 {
            return Err(VolumeError::TooLarge {
                voxels: usize::try_from(planned).unwrap_or(usize::MAX),
                limit: limits.max_voxels,
            });
        }
        let positions = frame_positions(&instance.object, count);
        for frame in 0..count {
            frames.push(Frame {
                instance: i,
                frame,
                position: positions.get(frame as usize).copied().flatten(),
            });
        }
        instances.push(instance);
    }
    let reference = &instances[0];
    for inst in &instances[1..] {
        if (inst.rows, inst.columns) != (reference.rows, reference.columns) {
            return Err(VolumeError::MixedSizes {
                first_rows: reference.rows,
                first_columns: reference.columns,
                rows: inst.rows,
                columns: inst.columns,
                path: inst.path.clone(),
            });
        }
        if inst
            .orientation
            .iter()
            .zip(&reference.orientation)
            .any(|(a, b)| (a - b).abs() > COSINE_TOLERANCE)
        {
            return Err(VolumeError::MixedOrientations {
                path: inst.path.clone(),
            });
        }
        if inst
            .spacing
            .iter()
            .zip(&reference.spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4 * b.abs().max(1.0))
        {
            return Err(VolumeError::MixedSpacing {
                path: inst.path.clone(),
            });
        }
    }
    let [row_direction, column_direction, normal] = direction_cosines(&reference.orientation)
        .ok_or_else(|| missing(&reference.path, "Image Orientation (Patient)"))?;

    let (order, slice_gap) = order_frames(&frames, normal, &instances)?;
    let (rows, columns) = (reference.rows as usize, reference.columns as usize);
    let voxels_total = rows * columns * order.len();
    if voxels_total > limits.max_voxels {
        return Err(VolumeError::TooLarge {
            voxels: voxels_total,
            limit: limits.max_voxels,
        });
    }
    let mut voxels = vec![0f32; voxels_total];
    let per_slice = rows * columns;
    // Decode instance by instance (multi-frame objects once), placing each frame at its slot.
    let mut slot_of = vec![Vec::new(); instances.len()];
    for (slot, &f) in order.iter().enumerate() {
        slot_of[frames[f].instance].push((frames[f].frame, slot));
    }
    let options = convert_options();
    for (i, inst) in instances.iter().enumerate() {
        let frames = uint(&inst.object, tags::NUMBER_OF_FRAMES)
            .unwrap_or(1)
            .max(1);
        check_pixel_data(&inst.path, &inst.object, frames, limits)?;
        let decoded = contained(&inst.path, || inst.object.decode_pixel_data())?;
        for &(frame, slot) in &slot_of[i] {
            let values: Vec<f32> = contained(&inst.path, || {
                decoded.to_vec_frame_with_options(frame, &options)
            })?;
            if values.len() != per_slice {
                return Err(VolumeError::Decode {
                    path: inst.path.clone(),
                    reason: format!(
                        "frame {frame} has {} samples, expected {per_slice}",
                        values.len()
                    ),
                });
            }
            // A NaN or infinite Rescale Slope/Intercept makes every sample non-finite; nothing
            // downstream could tell such a volume from a real one.
            if values.iter().any(|v| !v.is_finite()) {
                return Err(VolumeError::Decode {
                    path: inst.path.clone(),
                    reason: format!(
                        "frame {frame} has samples that are not finite numbers after the modality rescale"
                    ),
                });
            }
            voxels[slot * per_slice..(slot + 1) * per_slice].copy_from_slice(&values);
        }
    }
    let sources: Vec<SliceSource> = order
        .iter()
        .map(|&f| {
            let inst = &instances[frames[f].instance];
            SliceSource {
                sop_instance_uid: inst.sop_instance_uid.clone(),
                sop_class_uid: inst.sop_class_uid.clone(),
                frame: frames[f].frame,
                position: frames[f].position.unwrap_or([0.0; 3]),
            }
        })
        .collect();
    let origin = sources[0].position;
    Ok(SeriesVolume {
        header,
        volume: Volume {
            columns,
            rows,
            slices: order.len(),
            spacing: [reference.spacing[1], reference.spacing[0], slice_gap],
            origin,
            row_direction,
            column_direction,
            normal,
            voxels,
            modality,
            frame_of_reference_uid: frame_of_reference,
        },
        study_uid,
        series_uid,
        sources,
    })
}

/// Decode every frame of one file (rescale applied), without any geometry: for single objects
/// that carry no Image Position/Orientation, and to check a decoder on its own.
pub fn decode_frames(path: &Path, limits: &Limits) -> Result<Vec<Vec<f32>>, VolumeError> {
    let object = read(path, limits)?;
    let count = uint(&object, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    check_pixel_data(path, &object, count, limits)?;
    let decoded = contained(path, || object.decode_pixel_data())?;
    (0..count)
        .map(|frame| {
            contained(path, || {
                decoded.to_vec_frame_with_options(frame, &convert_options())
            })
        })
        .collect()
}

/// Before any decoder runs: what decoding `object`'s `frames` frames allocates is bounded by
/// the volume it becomes (four bytes a voxel), and the codestream header of every compressed
/// frame agrees with Rows, Columns, Samples per Pixel and Bits Allocated
/// ([`crate::codestream`]), so a header that declares its own larger image never reaches a
/// decoder.
fn check_pixel_data(
    path: &Path,
    object: &DefaultDicomObject,
    frames: u32,
    limits: &Limits,
) -> Result<(), VolumeError> {
    let refuse = |reason: String| VolumeError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let rows = uint(object, tags::ROWS).ok_or_else(|| missing(path, "Rows"))?;
    let columns = uint(object, tags::COLUMNS).ok_or_else(|| missing(path, "Columns"))?;
    let samples = uint(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits = uint(object, tags::BITS_ALLOCATED).ok_or_else(|| missing(path, "Bits Allocated"))?;
    // PS3.3 C.7.6.3.1: 1 or 3 samples; 8, 16 or 32 bits for the images we read.
    if !matches!(samples, 1 | 3) || !matches!(bits, 8 | 16 | 32) {
        return Err(refuse(format!(
            "{samples} samples per pixel of {bits} bits allocated: not an image we read"
        )));
    }
    // Bits Stored is 1 to Bits Allocated (PS3.3 C.7.6.3.1.1); the modality LUT the decoder
    // builds has 2^(Bits Stored) entries (the fuzzer's 32-bit one took 10 s a frame).
    let stored = uint(object, tags::BITS_STORED).unwrap_or(bits);
    if !(1..=bits).contains(&stored) {
        return Err(refuse(format!(
            "Bits Stored {stored} is not between 1 and Bits Allocated ({bits})"
        )));
    }
    let decoded_bytes = u64::from(frames)
        .saturating_mul(u64::from(rows) * u64::from(columns))
        .saturating_mul(u64::from(samples) * u64::from(bits / 8));
    let budget = (limits.max_voxels as u64).saturating_mul(4);
    if decoded_bytes > budget {
        return Err(refuse(format!(
            "decoding {frames} frames of {rows}x{columns}x{samples} samples would take {decoded_bytes} bytes; at most {budget} are decoded"
        )));
    }
    let transfer_syntax = object_transfer_syntax(object);
    let Some(codec) = Codec::of(&transfer_syntax) else {
        return Ok(());
    };
    let pixel_data = object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| missing(path, "Pixel Data"))?;
    let fragments = pixel_data.value().fragments().ok_or_else(|| {
        refuse("the transfer syntax is encapsulated but Pixel Data is not".into())
    })?;
    let offsets = pixel_data.value().offset_table().unwrap_or(&[]);
    let starts = frame_starts(codec, fragments, offsets, frames).map_err(refuse)?;
    let shape = FrameShape {
        rows,
        columns,
        samples_per_pixel: samples as u16,
        bits_allocated: bits as u16,
    };
    for (frame, &start) in starts.iter().enumerate() {
        codestream::check_frame(codec, &fragments[start], shape)
            .map_err(|e| refuse(format!("frame {frame}: {e}")))?;
    }
    Ok(())
}

/// The transfer syntax of a parsed Part 10 object, without trailing padding.
fn object_transfer_syntax(object: &DefaultDicomObject) -> String {
    object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string()
}

/// The index of the fragment each frame starts in (PS3.5 A.4): one fragment per frame when
/// the counts agree (always so for RLE), else the Basic Offset Table when present, else the
/// fragments that begin a codestream.
fn frame_starts(
    codec: Codec,
    fragments: &[Vec<u8>],
    offsets: &[u32],
    frames: u32,
) -> Result<Vec<usize>, String> {
    let frames = frames as usize;
    if frames == 1 && !fragments.is_empty() {
        return Ok(vec![0]);
    }
    if fragments.len() == frames {
        return Ok((0..frames).collect());
    }
    if codec == Codec::Rle || fragments.len() < frames {
        return Err(format!("{} fragments for {frames} frames", fragments.len()));
    }
    let starts: Vec<usize> = if offsets.is_empty() {
        (0..fragments.len())
            .filter(|&i| codec.starts_frame(&fragments[i]))
            .collect()
    } else {
        // Offsets count from the first fragment's item tag; each item adds 8 bytes of header.
        let mut position = 0u64;
        let mut at = Vec::with_capacity(fragments.len());
        for f in fragments {
            at.push(position);
            position += f.len() as u64 + 8;
        }
        offsets
            .iter()
            .map(|o| {
                at.binary_search(&u64::from(*o)).map_err(|_| {
                    format!("the offset table entry {o} is not the start of a fragment")
                })
            })
            .collect::<Result<_, _>>()?
    };
    if starts.len() != frames {
        return Err(format!(
            "{} frames found in {} fragments; Number of Frames is {frames}",
            starts.len(),
            fragments.len()
        ));
    }
    Ok(starts)
}

/// Run one step of a pixel-data decoder of the DICOM dependency behind a panic boundary.
/// Its codecs index out of range when a frame decodes to more or fewer bytes than the header
/// says (short RLE segments, a JPEG codestream larger than declared): such a file is a
/// [`VolumeError::Decode`] naming the panic, like any other undecodable file, and the thread
/// that asked goes on. The decoder's state is local to the call, so nothing half-updated
/// outlives the panic.
fn contained<T, E: std::fmt::Display>(
    path: &Path,
    step: impl FnOnce() -> Result<T, E>,
) -> Result<T, VolumeError> {
    let failed = |reason: String| VolumeError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    match radiant_core::contain(step) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(panic) => Err(failed(format!("the pixel-data decoder panicked ({panic})"))),
    }
}

/// Modality rescale applied (Hounsfield units for CT), no VOI windowing.
fn convert_options() -> ConvertOptions {
    ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Default)
        .with_voi_lut(VoiLutOption::Identity)
}

/// Order frames along the normal and check the stack is regular; returns the order and the
/// slice spacing.
fn order_frames(
    frames: &[Frame],
    normal: [f64; 3],
    instances: &[Instance],
) -> Result<(Vec<usize>, f64), VolumeError> {
    if frames.len() == 1 {
        let thickness = instances[0].thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
        return Ok((vec![0], thickness));
    }
    let mut keyed = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let position = f
            .position
            .ok_or_else(|| missing(&instances[f.instance].path, "Image Position (Patient)"))?;
        keyed.push((dot(position, normal), i));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = keyed.windows(2).map(|w| w[1].0 - w[0].0).collect();
    if let Some(w) = keyed.windows(2).find(|w| w[1].0 - w[0].0 < 1e-3) {
        return Err(VolumeError::DuplicatePosition { position: w[0].0 });
    }
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let expected = sorted[sorted.len() / 2];
    for (i, gap) in gaps.iter().enumerate() {
        if (gap - expected).abs() > GAP_TOLERANCE * expected {
            return Err(VolumeError::UnevenSpacing {
                gap: *gap,
                at: keyed[i].0,
                expected,
            });
        }
    }
    // Consecutive positions must differ by a multiple of the normal only.
    for w in keyed.windows(2) {
        let (a, b) = (
            frames[w[0].1].position.unwrap_or_default(),
            frames[w[1].1].position.unwrap_or_default(),
        );
        let step = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let along = dot(step, normal);
        let off: f64 = (0..3)
            .map(|k| (step[k] - along * normal[k]).powi(2))
            .sum::<f64>()
            .sqrt();
        if off > GAP_TOLERANCE * expected {
            return Err(VolumeError::NotAlongNormal);
        }
    }
    Ok((keyed.into_iter().map(|(_, i)| i).collect(), expected))
}

/// The unit row direction, column direction and slice normal of an Image Orientation
/// (Patient) (PS3.3 C.7.6.2.1.1), or `None` unless both directions are unit vectors within 1%
/// and orthogonal within 0.01 (the cosine of the angle between them). Values as written (a
/// few decimals) are normalised here: everything that places voxels in patient space
/// (`Volume::position`, the SEG's frame positions, `seg::reproject`) takes these vectors to be
/// unit length, and a direction 1% too long would move the last slice of a stack by 2% of its
/// length without any check noticing. Public for `fuzz/`, whose SEG target builds series as
/// this module does.
pub fn direction_cosines(orientation: &[f64; 6]) -> Option<[[f64; 3]; 3]> {
    let unit = |v: [f64; 3]| {
        let length = dot(v, v).sqrt();
        ((length - 1.0).abs() <= 0.01).then(|| v.map(|x| x / length))
    };
    let row = unit([orientation[0], orientation[1], orientation[2]])?;
    let column = unit([orientation[3], orientation[4], orientation[5]])?;
    if dot(row, column).abs() > 0.01 {
        return None;
    }
    let normal = cross(row, column);
    let length = dot(normal, normal).sqrt();
    Some([row, column, normal.map(|x| x / length)])
}

fn missing(path: &Path, attribute: &'static str) -> VolumeError {
    VolumeError::MissingAttribute {
        path: path.to_path_buf(),
        attribute,
    }
}

/// Read a Part 10 file: bounded size, a transfer syntax we accept, and a dataset whose every
/// declared length the bounded walker has checked before `dicom-object` parses it.
fn read(path: &Path, limits: &Limits) -> Result<DefaultDicomObject, VolumeError> {
    let fail = |reason: String| VolumeError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > limits.max_file_bytes {
        return Err(fail(format!(
            "{size} bytes exceeds the limit of {}",
            limits.max_file_bytes
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(VolumeError::NotPart10 {
            path: path.to_path_buf(),
        });
    }
    // Walked before parsed: the meta group and then the dataset, every length checked against
    // the bytes there and the nesting bounded, before dicom-object builds anything from them.
    let walk_limit = limits.max_file_bytes as usize * 4;
    let (meta_end, encoding) = dataset::check_meta(&bytes, walk_limit).map_err(|e| match e {
        dataset::MetaError::TransferSyntax(transfer_syntax) => {
            VolumeError::UnsupportedTransferSyntax {
                path: path.to_path_buf(),
                transfer_syntax,
            }
        }
        dataset::MetaError::Malformed(reason) => fail(format!("file meta group: {reason}")),
    })?;
    dataset::inspect_before_parse(&bytes[meta_end..], encoding, walk_limit).map_err(|source| {
        VolumeError::Malformed {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let file = dicom_object::from_reader(&bytes[128..]).map_err(|e| fail(e.to_string()))?;
    let transfer_syntax = object_transfer_syntax(&file);
    // jpeg-decoder, the maintained pure-Rust JPEG decoder, reads 8-bit samples only.
    if transfer_syntax == JPEG_EXTENDED && uint(&file, tags::BITS_STORED).unwrap_or(8) > 8 {
        return Err(VolumeError::UnsupportedCompression {
            path: path.to_path_buf(),
            reason: "JPEG Extended with 12-bit samples: no maintained Rust decoder reads it; \
                     have the sender use JPEG Lossless or an uncompressed transfer syntax",
        });
    }
    Ok(file)
}

fn describe(path: &Path, object: DefaultDicomObject) -> Result<Instance, VolumeError> {
    let rows = uint(&object, tags::ROWS).ok_or_else(|| missing(path, "Rows"))?;
    let columns = uint(&object, tags::COLUMNS).ok_or_else(|| missing(path, "Columns"))?;
    let orientation = floats(&object, tags::IMAGE_ORIENTATION_PATIENT)
        .or_else(|| {
            functional_group(
                &object,
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
            )
        })
        .and_then(|v| <[f64; 6]>::try_from(v).ok())
        .ok_or_else(|| missing(path, "Image Orientation (Patient)"))?;
    let spacing = floats(&object, tags::PIXEL_SPACING)
        .or_else(|| functional_group(&object, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING))
        .and_then(|v| <[f64; 2]>::try_from(v).ok())
        .filter(|s| s.iter().all(|x| *x > 0.0))
        .ok_or_else(|| missing(path, "Pixel Spacing"))?;
    let thickness = floats(&object, tags::SLICE_THICKNESS)
        .or_else(|| {
            functional_group(
                &object,
                tags::PIXEL_MEASURES_SEQUENCE,
                tags::SLICE_THICKNESS,
            )
        })
        .and_then(|v| v.first().copied());
    let [row, column, _] = direction_cosines(&orientation).ok_or_else(|| {
        missing(
            path,
            "Image Orientation (Patient) (not two orthogonal unit vectors)",
        )
    })?;
    let orientation = [row[0], row[1], row[2], column[0], column[1], column[2]];
    Ok(Instance {
        path: path.to_path_buf(),
        sop_instance_uid: text(&object, tags::SOP_INSTANCE_UID)
            .ok_or_else(|| missing(path, "SOP Instance UID"))?,
        sop_class_uid: text(&object, tags::SOP_CLASS_UID)
            .ok_or_else(|| missing(path, "SOP Class UID"))?,
        object,
        rows,
        columns,
        orientation,
        spacing,
        thickness,
    })
}

/// Image Position (Patient) of each frame: the top-level attribute for single-frame objects,
/// the Plane Position Sequence of each per-frame functional group for Enhanced ones.
fn frame_positions(object: &InMemDicomObject, count: u32) -> Vec<Option<[f64; 3]>> {
    if let Some(p) = floats(object, tags::IMAGE_POSITION_PATIENT) {
        return vec![<[f64; 3]>::try_from(p).ok()];
    }
    let per_frame = object
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items());
    match per_frame {
        Some(items) => items
            .iter()
            .take(count as usize)
            .map(|item| {
                nested(
                    item,
                    tags::PLANE_POSITION_SEQUENCE,
                    tags::IMAGE_POSITION_PATIENT,
                )
                .and_then(|v| <[f64; 3]>::try_from(v).ok())
            })
            .collect(),
        None => Vec::new(),
    }
}

/// A value from the Shared Functional Groups Sequence, or else the first per-frame group.
fn functional_group(object: &InMemDicomObject, sequence: Tag, tag: Tag) -> Option<Vec<f64>> {
    for groups in [
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
    ] {
        let first = object
            .element_opt(groups)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .and_then(|items| items.first());
        if let Some(v) = first.and_then(|item| nested(item, sequence, tag)) {
            return Some(v);
        }
    }
    None
}

fn nested(item: &InMemDicomObject, sequence: Tag, tag: Tag) -> Option<Vec<f64>> {
    let inner = item
        .element_opt(sequence)
        .ok()
        .flatten()?
        .items()?
        .first()?;
    floats(inner, tag)
}

/// The numbers of a decimal or float attribute; `None` when absent, unparsable, empty, or when
/// any value is not finite: "NaN" and "inf" parse as floats, and every comparison with a NaN
/// is false, so a NaN position or orientation would pass each geometry check unnoticed.
fn floats(object: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    object
        .element_opt(tag)
        .ok()
        .flatten()?
        .to_multi_float64()
        .ok()
        .filter(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
}

fn uint(object: &InMemDicomObject, tag: Tag) -> Option<u32> {
    object.element_opt(tag).ok().flatten()?.to_int::<u32>().ok()
}

fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = object.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let s = s.trim_end_matches(['\0', ' ']).trim();
    (!s.is_empty()).then(|| s.to_string())
}
