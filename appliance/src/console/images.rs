//! A result's segmentation drawn over its source slices, as PNG images made here.
//!
//! The SEG the job wrote (`results/<job>/seg.dcm`, as the outbox sends it) is read back
//! ([`pacs_bridge::objects::seg::decode`]) and re-projected onto the source series
//! ([`pacs_bridge::objects::seg::reproject`]), which is built again from the spool
//! ([`pacs_bridge::volume::build`]): what is drawn is what a viewer of the SEG would see, not
//! what inference held in memory. Each chosen slice goes through
//! [`pacs_bridge::objects::sc::render_slice`] (grey through the source's window, every
//! segment's outline in the label's colour from the model's manifest, the "NOT FOR DIAGNOSTIC
//! USE" banner) and is encoded as an 8-bit RGB PNG.
//!
//! Bounded: at most [`MAX_SLICES`] slices of a result are rendered (the one with the most
//! labelled pixels and others spread over the labelled range, or the middle slice when nothing
//! was found); one result is rendered at a time (a series volume in memory at once), and the
//! PNGs of the [`CACHED_RESULTS`] most recently viewed results are kept.

use super::views::JobRecord;
use pacs_bridge::objects::sc::{render_slice, window_for, SliceView, WARNING};
use pacs_bridge::objects::seg::{self, Segment};
use pacs_bridge::store::{self, index};
use pacs_bridge::volume::{self, Limits};
use radiant_core::Code;
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Slices rendered per result.
pub const MAX_SLICES: usize = 6;
/// Results whose PNGs stay in memory.
const CACHED_RESULTS: usize = 8;
/// Largest SEG file read.
const MAX_SEG_FILE_BYTES: u64 = 256 << 20;

/// One rendered slice.
#[derive(Debug, Clone)]
pub struct RenderedSlice {
    /// Index in the volume, from 0 (shown from 1).
    pub z: usize,
    /// Labelled pixels on the slice.
    pub labelled: usize,
    pub png: Arc<Vec<u8>>,
}

/// What the result page shows of a result's images.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub slices: Vec<RenderedSlice>,
    pub total_slices: usize,
    pub labelled_slices: usize,
    pub width: usize,
    pub height: usize,
    /// `issuer\\patient id` of the source; shown only to admins with `show_identifiers`.
    pub patient: Option<String>,
    /// Segments drawn: number, name, colour as `#rrggbb`.
    pub legend: Vec<(u8, String, String)>,
}

/// Why a result has no images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the job has no result (state {0})")]
    NotDone(String),
    #[error("the result has no SEG")]
    NoSeg,
    #[error("the source series is no longer in the spool (retention purged it)")]
    SourceGone,
    #[error("{0}")]
    Failed(String),
}

/// The rendering gate and the cache of rendered results.
#[derive(Default)]
pub struct Images {
    gate: Mutex<()>,
    cache: Mutex<VecDeque<(i64, Arc<Rendered>)>>,
}

impl Images {
    fn cached(&self, job: i64) -> Option<Arc<Rendered>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let at = cache.iter().position(|(id, _)| *id == job)?;
        let entry = cache.remove(at)?;
        let rendered = entry.1.clone();
        cache.push_front(entry);
        Some(rendered)
    }

    /// The rendered images of `job` (from the cache, or made now). `segments` gives the
    /// model's labels with their colours.
    pub fn get(
        &self,
        data_dir: &Path,
        job: &JobRecord,
        segments: &[Segment],
    ) -> Result<Arc<Rendered>, ImageError> {
        if let Some(r) = self.cached(job.id) {
            return Ok(r);
        }
        let _one_at_a_time = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = self.cached(job.id) {
            return Ok(r);
        }
        let rendered = Arc::new(render(data_dir, job, segments)?);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.push_front((job.id, rendered.clone()));
        cache.truncate(CACHED_RESULTS);
        Ok(rendered)
    }
}

/// The SEG of a done job, relative to the data folder: the object the result names, else
/// where export writes it.
fn seg_path(job: &JobRecord) -> Option<PathBuf> {
    let named = job.result["objects"].as_array().and_then(|objects| {
        objects
            .iter()
            .find(|o| o["kind"] == "SEG")
            .and_then(|o| o["path"].as_str())
            .map(PathBuf::from)
    });
    named.or_else(|| {
        job.result
            .is_object()
            .then(|| crate::export::job_dir(job.id).join("seg.dcm"))
    })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::NoSeg,
        _ => ImageError::Failed(format!("cannot read the SEG: {e}")),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SEG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Failed(format!("cannot read the SEG: {e}")))?;
    if bytes.len() as u64 > MAX_SEG_FILE_BYTES {
        return Err(ImageError::Failed("the SEG is too large to draw".into()));
    }
    Ok(bytes)
}

fn render(data_dir: &Path, job: &JobRecord, segments: &[Segment]) -> Result<Rendered, ImageError> {
    if job.state != crate::db::JobState::Done {
        return Err(ImageError::NotDone(job.state.as_str().into()));
    }
    let relative = seg_path(job).ok_or(ImageError::NoSeg)?;
    // A path from the database stays inside the data folder.
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ImageError::Failed(
            "the stored SEG path is not a relative path".into(),
        ));
    }
    let bytes = read_bounded(&data_dir.join(relative))?;
    let decoded = seg::decode(&bytes).map_err(|e| ImageError::Failed(format!("SEG: {e}")))?;
    let failed = |e: &dyn std::fmt::Display| ImageError::Failed(e.to_string());
    let index = index::open_read_only(&store::index_path(data_dir)).map_err(|e| failed(&e))?;
    let files = index::series_of_study(&index, data_dir, &job.study_uid, &job.calling_ae)
        .map_err(|e| failed(&e))?
        .into_iter()
        .find(|s| s.series_uid == job.series_uid)
        .ok_or(ImageError::SourceGone)?
        .files;
    drop(index);
    let series = volume::build(&files, &Limits::default()).map_err(|e| failed(&e))?;
    let labels = seg::reproject(&decoded, &series).map_err(|e| failed(&e))?;
    let v = &series.volume;
    let plane = v.rows * v.columns;
    let per_slice: Vec<usize> = (0..v.slices)
        .map(|z| {
            labels
                .get(z * plane..(z + 1) * plane)
                .map(|s| s.iter().filter(|l| **l != 0).count())
                .unwrap_or(0)
        })
        .collect();
    let top = labels.iter().copied().max().unwrap_or(0);
    let finding: Vec<usize> = (0..v.slices)
        .map(|z| {
            labels
                .get(z * plane..(z + 1) * plane)
                .map(|s| s.iter().filter(|l| top != 0 && **l == top).count())
                .unwrap_or(0)
        })
        .collect();
    let chosen = choose_slices(&per_slice, &finding);
    let mut slices = Vec::new();
    for z in chosen {
        let view = SliceView::of(v, &labels, z).map_err(|e| failed(&e))?;
        let image = render_slice(&view, segments, window_for(&series, z), &[WARNING])
            .map_err(|e| failed(&e))?;
        slices.push(RenderedSlice {
            z,
            labelled: per_slice[z],
            png: Arc::new(encode_png(image.width, image.height, &image.pixels)?),
        });
    }
    Ok(Rendered {
        slices,
        total_slices: v.slices,
        labelled_slices: per_slice.iter().filter(|n| **n > 0).count(),
        width: v.columns,
        height: v.rows,
        patient: series.patient_identity(),
        legend: segments
            .iter()
            .map(|s| {
                let [r, g, b] = s.colour;
                (s.number, s.label.clone(), format!("#{r:02x}{g:02x}{b:02x}"))
            })
            .collect(),
    })
}

/// Which slices to draw, given the labelled pixels of each (`per_slice`) and the pixels of
/// the highest label found anywhere (`finding`, the model's last label: a lesion within the
/// organ): the slice with the most of that label, the slice with the most labelled pixels,
/// and others spread evenly over the labelled ones, at most [`MAX_SLICES`] in all, in order;
/// the middle slice when none is labelled.
pub fn choose_slices(per_slice: &[usize], finding: &[usize]) -> Vec<usize> {
    let labelled: Vec<usize> = (0..per_slice.len()).filter(|z| per_slice[*z] > 0).collect();
    if labelled.is_empty() {
        return if per_slice.is_empty() {
            Vec::new()
        } else {
            vec![per_slice.len() / 2]
        };
    }
    let most = |counts: &[usize]| {
        (0..counts.len())
            .filter(|z| counts[*z] > 0)
            .max_by_key(|z| (counts[*z], std::cmp::Reverse(*z)))
    };
    let mut chosen: Vec<usize> = most(finding).into_iter().chain(most(per_slice)).collect();
    let spread = MAX_SLICES.saturating_sub(chosen.len()).min(labelled.len());
    for i in 0..spread {
        let at = match spread {
            1 => labelled.len() / 2,
            _ => i * (labelled.len() - 1) / (spread - 1),
        };
        chosen.push(labelled[at]);
    }
    chosen.sort_unstable();
    chosen.dedup();
    chosen.truncate(MAX_SLICES);
    chosen
}

/// An 8-bit RGB PNG of `pixels` (R, G, B interleaved, rows from the top).
pub fn encode_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, ImageError> {
    let fail = |e: png::EncodingError| ImageError::Failed(format!("PNG: {e}"));
    let (w, h) = (
        u32::try_from(width).map_err(|_| ImageError::Failed("image too wide".into()))?,
        u32::try_from(height).map_err(|_| ImageError::Failed("image too tall".into()))?,
    );
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(pixels).map_err(fail)?;
        writer.finish().map_err(fail)?;
    }
    Ok(out)
}

/// The segments of a model's labels, for drawing: the manifest's name and colour (codes are
/// not drawn).
pub fn segments_of(labels: &[models::package::LabelSpec]) -> Vec<Segment> {
    let none = || Code {
        scheme: String::new(),
        value: String::new(),
        meaning: String::new(),
    };
    labels
        .iter()
        .filter(|l| l.value != 0)
        .map(|l| Segment {
            number: l.value,
            label: l.name.clone(),
            category: l.category.clone().unwrap_or_else(none),
            property_type: l.property_type.clone().unwrap_or_else(none),
            colour: l.colour,
        })
        .collect()
}

/// Colours for segment numbers 1 to 255 when the model's manifest is not at hand.
pub fn fallback_segments() -> Vec<Segment> {
    const PALETTE: [[u8; 3]; 6] = [
        [255, 64, 64],
        [64, 200, 255],
        [255, 210, 0],
        [80, 220, 80],
        [255, 120, 255],
        [255, 150, 40],
    ];
    (1..=255u8)
        .map(|n| Segment {
            number: n,
            label: format!("segment {n}"),
            category: Code {
                scheme: String::new(),
                value: String::new(),
                meaning: String::new(),
            },
            property_type: Code {
                scheme: String::new(),
                value: String::new(),
                meaning: String::new(),
            },
            colour: PALETTE[usize::from(n - 1) % PALETTE.len()],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slices_with_the_most_finding_and_the_most_labels_are_always_among_those_chosen() {
        assert_eq!(choose_slices(&[], &[]), Vec::<usize>::new());
        assert_eq!(choose_slices(&[0, 0, 0, 0], &[0; 4]), vec![2]);
        assert_eq!(choose_slices(&[0, 3, 0], &[0; 3]), vec![1]);
        let mut per_slice = vec![0; 100];
        for (z, n) in per_slice.iter_mut().enumerate().skip(20).take(40) {
            *n = z;
        }
        let mut finding = vec![0; 100];
        finding[33] = 5;
        let chosen = choose_slices(&per_slice, &finding);
        assert!((4..=MAX_SLICES).contains(&chosen.len()), "{chosen:?}");
        for z in [20, 33, 59] {
            assert!(chosen.contains(&z), "{z} not in {chosen:?}");
        }
        assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{chosen:?}");
    }

    #[test]
    fn an_encoded_png_has_the_signature_and_the_size() {
        let png = encode_png(3, 2, &[255; 18]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[16..24], &[0, 0, 0, 3, 0, 0, 0, 2]);
    }
}
