//! A Multi-frame True Color Secondary Capture (PS3.3 A.8.5.3) of a segmentation result: one
//! frame per source slice, in volume order, each the slice windowed to 8-bit grey with the
//! outline of every segment burned in in the segment's colour and a "NOT FOR DIAGNOSTIC USE"
//! banner on a dark bar across the top. It is for PACS viewers that show no SEG; the SEG
//! stays the result. Patient and study are copied from the source like the SEG's, UIDs are
//! derived from the job's seed, and the header references every source slice (General
//! Reference, C.12.4) and the source series (Common Instance Reference, C.12.2).
//!
//! The module owns two layers: [`render_slice`], which turns one slice into an RGB buffer and
//! knows nothing of DICOM (the console encodes the same rendering as PNG), and [`build`], which
//! renders every slice and wraps the frames in the IOD.

use super::glyphs::{self, GLYPH_HEIGHT};
use super::seg::Segment;
use super::{
    code, code_item, copy_patient_and_study, derived_uid, items, now_da_tm, part10, put_ds,
    put_empty, put_seq, put_sop_common, put_str, put_u16, referenced_instance, referenced_series,
    Creator, ObjectError,
};
use crate::volume::SeriesVolume;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use radiant_core::volume::{dot, Volume};
use std::collections::HashMap;

pub const MULTI_FRAME_TRUE_COLOR_SC_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.7.4";
/// Most Pixel Data bytes (rows x columns x 3 x slices) one SC may hold.
pub const MAX_PIXEL_BYTES: usize = 512 << 20;
/// The first banner line, always drawn.
pub const WARNING: &str = "NOT FOR DIAGNOSTIC USE";
pub const SERIES_DESCRIPTION: &str = "AI outlines (not for diagnostic use)";
/// Colour of the banner's bar and of its text.
pub const BAR: [u8; 3] = [24, 24, 24];
pub const TEXT: [u8; 3] = [255, 255, 255];

/// A VOI window (PS3.3 C.11.2.1.2) over modality values (HU for CT).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

impl Window {
    /// The window that spans `values` (non-finite ones ignored): their minimum is black, their
    /// maximum white; a constant or empty slice is black.
    pub fn spanning(values: &[f32]) -> Window {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.iter().filter(|v| v.is_finite()) {
            lo = lo.min(f64::from(*v));
            hi = hi.max(f64::from(*v));
        }
        if !(lo < hi) {
            let at = if lo.is_finite() { lo } else { 0.0 };
            // Width 1 centred half a unit above: the value itself maps to black.
            return Window {
                center: at + 0.5,
                width: 1.0,
            };
        }
        Window {
            center: (lo + hi) / 2.0,
            width: hi - lo,
        }
    }

    /// The 8-bit grey of `value`: the linear VOI function of PS3.3 C.11.2.1.2.1 for a width of
    /// 1 or more; a plain ramp over centre ± width / 2 for a narrower one (only a window
    /// spanning floating-point data is that narrow). A non-finite value is black.
    pub fn grey(&self, value: f32) -> u8 {
        let (x, c, w) = (f64::from(value), self.center, self.width);
        if !x.is_finite() || !c.is_finite() || !(w > 0.0) || !w.is_finite() {
            return 0;
        }
        let y = if w >= 1.0 {
            if x <= c - 0.5 - (w - 1.0) / 2.0 {
                0.0
            } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                255.0
            } else {
                ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
            }
        } else {
            ((x - (c - w / 2.0)) / w) * 255.0
        };
        y.round().clamp(0.0, 255.0) as u8
    }
}

/// One slice to render: modality values and labels, row by row.
#[derive(Debug, Clone, Copy)]
pub struct SliceView<'a> {
    pub columns: usize,
    pub rows: usize,
    pub values: &'a [f32],
    pub labels: &'a [u8],
}

impl<'a> SliceView<'a> {
    /// Slice `z` of `volume` with its part of `labels` (one label per voxel, volume order).
    pub fn of(volume: &'a Volume, labels: &'a [u8], z: usize) -> Result<Self, ObjectError> {
        let range = volume.rows.checked_mul(volume.columns).and_then(|plane| {
            let start = z.checked_mul(plane)?;
            Some(start..start.checked_add(plane)?)
        });
        let mismatch = || {
            ObjectError::Mismatch(format!(
                "slice {z} is not in a volume of {} voxels with a label map of {}",
                volume.voxels.len(),
                labels.len()
            ))
        };
        let range = range.ok_or_else(mismatch)?;
        Ok(SliceView {
            columns: volume.columns,
            rows: volume.rows,
            values: volume.voxels.get(range.clone()).ok_or_else(mismatch)?,
            labels: labels.get(range).ok_or_else(mismatch)?,
        })
    }
}

/// An 8-bit RGB image, pixels interleaved (R, G, B), row by row from the top left.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Render `slice`: grey through `window`; every pixel of a segment's label that touches
/// (4-neighbourhood) another label or the image edge in that segment's colour, the interior
/// left grey; then the `banner` lines (see [`banner_height`]) in [`TEXT`] on a [`BAR`] across
/// the top. Labels no segment names are not drawn. No DICOM here: the console's PNG is this.
pub fn render_slice(
    slice: &SliceView,
    segments: &[Segment],
    window: Window,
    banner: &[&str],
) -> Result<RgbImage, ObjectError> {
    let (w, h) = (slice.columns, slice.rows);
    let plane = w
        .checked_mul(h)
        .filter(|p| p.checked_mul(3).is_some())
        .ok_or_else(|| ObjectError::Mismatch(format!("a slice of {w}x{h} pixels")))?;
    if slice.values.len() != plane || slice.labels.len() != plane {
        return Err(ObjectError::Mismatch(format!(
            "a {w}x{h} slice with {} values and {} labels",
            slice.values.len(),
            slice.labels.len()
        )));
    }
    // The first segment naming a label gives its colour; label 0 is background.
    let mut colour_of: [Option<[u8; 3]>; 256] = [None; 256];
    for s in segments.iter().rev().filter(|s| s.number != 0) {
        colour_of[usize::from(s.number)] = Some(s.colour);
    }
    let labels = slice.labels;
    let mut pixels = Vec::with_capacity(plane * 3);
    for (i, value) in slice.values.iter().enumerate() {
        let (x, y, label) = (i % w, i / w, labels[i]);
        let outline = colour_of[usize::from(label)].filter(|_| {
            x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == h
                || labels[i - 1] != label
                || labels[i + 1] != label
                || labels[i - w] != label
                || labels[i + w] != label
        });
        match outline {
            Some(colour) => pixels.extend_from_slice(&colour),
            None => {
                let g = window.grey(*value);
                pixels.extend_from_slice(&[g, g, g]);
            }
        }
    }
    let layout = Banner::layout(w, h, banner);
    for pixel in pixels[..layout.height * w * 3].chunks_exact_mut(3) {
        pixel.copy_from_slice(&BAR);
    }
    for (line, x, y) in &layout.lines {
        glyphs::draw_text(&mut pixels, w, h, *x, *y, layout.scale, line, TEXT);
    }
    Ok(RgbImage {
        width: w,
        height: h,
        pixels,
    })
}

/// Rows of a `width` x `height` image that the bar of `banner` covers (0 for no lines).
pub fn banner_height(width: usize, height: usize, banner: &[&str]) -> usize {
    Banner::layout(width, height, banner).height
}

/// Where the banner goes. The font scale grows with the image (one font pixel per 256 image
/// pixels of the shorter side) but shrinks until the first line fits the width; at scale 1 a
/// first line that is still too wide is clipped (an image under 134 pixels wide), and every
/// later line is drawn only when it fits whole. Lines are centred; the bar is clipped to the
/// image.
struct Banner<'a> {
    scale: usize,
    height: usize,
    /// Text with its top-left corner.
    lines: Vec<(&'a str, usize, usize)>,
}

impl<'a> Banner<'a> {
    fn layout(width: usize, height: usize, banner: &[&'a str]) -> Banner<'a> {
        let Some(first) = banner.first() else {
            return Banner {
                scale: 1,
                height: 0,
                lines: Vec::new(),
            };
        };
        let mut scale = (width.min(height) / 256).clamp(1, 64);
        while scale > 1 && glyphs::text_width(first, scale) + 4 * scale > width {
            scale -= 1;
        }
        let (pad, gap) = (2 * scale, 2 * scale);
        let mut lines = Vec::new();
        let mut y = pad;
        for (i, line) in banner.iter().enumerate() {
            let text_width = glyphs::text_width(line, scale);
            if i > 0 && text_width + 2 * pad > width {
                continue;
            }
            let x = width.saturating_sub(text_width) / 2;
            lines.push((*line, x, y));
            y += GLYPH_HEIGHT * scale + gap;
        }
        Banner {
            scale,
            height: (y - gap + pad).min(height),
            lines,
        }
    }
}

/// The banner of an SC made by `creator`: [`WARNING`], then the model's name and version.
pub fn banner_lines(creator: &Creator) -> Vec<String> {
    vec![
        WARNING.to_string(),
        format!("{} {}", creator.model_name, creator.model_version),
    ]
}

/// The window for slice `z` of `series`: the source's first Window Center/Width (top level,
/// else the shared Frame VOI LUT of an enhanced object), else one spanning the slice. The
/// voxels are already in modality units (rescale applied by [`crate::volume`]), as the
/// window is (PS3.3 C.11.2.1.2: VOI follows the Modality LUT).
pub fn window_for(series: &SeriesVolume, z: usize) -> Window {
    let first = |o: &InMemDicomObject, tag: Tag| {
        o.element_opt(tag)
            .ok()
            .flatten()?
            .to_multi_float64()
            .ok()?
            .first()
            .copied()
            .filter(|v| v.is_finite())
    };
    let of = |o: &InMemDicomObject| {
        let (center, width) = (
            first(o, tags::WINDOW_CENTER)?,
            first(o, tags::WINDOW_WIDTH)?,
        );
        (width >= 1.0).then_some(Window { center, width })
    };
    let shared = || {
        let groups = items(&series.header, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first()?;
        of(items(groups, tags::FRAME_VOILUT_SEQUENCE).first()?)
    };
    of(&series.header).or_else(shared).unwrap_or_else(|| {
        let v = &series.volume;
        let plane = v.rows.saturating_mul(v.columns);
        let start = z.saturating_mul(plane);
        let values = v
            .voxels
            .get(start..start.saturating_add(plane))
            .unwrap_or(&[]);
        Window::spanning(values)
    })
}

/// An SC as written.
pub type WrittenSc = super::Written;

/// Encode the outline SC of `labels` (one label value per source voxel, in volume order) over
/// `series`. `uid_seed` names the result (job key): the same seed gives the same UIDs.
pub fn build(
    series: &SeriesVolume,
    labels: &[u8],
    segments: &[Segment],
    creator: &Creator,
    uid_seed: &str,
) -> Result<WrittenSc, ObjectError> {
    let volume = &series.volume;
    let (columns, rows, slices) = (volume.columns, volume.rows, volume.slices);
    if slices == 0 || columns == 0 || rows == 0 {
        return Err(ObjectError::Mismatch(format!(
            "the series is {columns}x{rows}x{slices} voxels: no image to copy"
        )));
    }
    let (Ok(rows16), Ok(columns16)) = (u16::try_from(rows), u16::try_from(columns)) else {
        return Err(ObjectError::Mismatch(format!(
            "{rows}x{columns} pixels do not fit Rows and Columns"
        )));
    };
    let pixel_bytes = rows
        .checked_mul(columns)
        .and_then(|p| p.checked_mul(3))
        .and_then(|p| p.checked_mul(slices))
        .filter(|b| *b <= MAX_PIXEL_BYTES)
        .ok_or_else(|| ObjectError::Encode {
            object: "Secondary Capture",
            reason: format!(
                "{slices} RGB frames of {rows}x{columns} exceed {MAX_PIXEL_BYTES} bytes"
            ),
        })?;
    if volume.voxels.len() != rows * columns * slices {
        return Err(ObjectError::Mismatch(format!(
            "the volume holds {} voxels for {columns}x{rows}x{slices}",
            volume.voxels.len()
        )));
    }
    if labels.len() != volume.voxels.len() {
        return Err(ObjectError::Mismatch(format!(
            "label map has {} voxels, the series {}",
            labels.len(),
            volume.voxels.len()
        )));
    }
    if series.sources.len() != slices {
        return Err(ObjectError::Mismatch(format!(
            "{} slice sources for {slices} slices",
            series.sources.len()
        )));
    }
    let sop_instance_uid = derived_uid(&[uid_seed, "sc-instance"]);
    let series_instance_uid = derived_uid(&[uid_seed, "sc-series"]);
    let (date, time) = now_da_tm();

    // Frames in volume order: frame n is slice n (and item n of the Source Image Sequence).
    let banner = banner_lines(creator);
    let banner: Vec<&str> = banner.iter().map(String::as_str).collect();
    let mut pixels = Vec::with_capacity(pixel_bytes + 1);
    for z in 0..slices {
        let slice = SliceView::of(volume, labels, z)?;
        let image = render_slice(&slice, segments, window_for(series, z), &banner)?;
        pixels.extend_from_slice(&image.pixels);
    }
    if pixels.len() % 2 == 1 {
        pixels.push(0); // OB values have even length (PS3.5 7.1.1)
    }

    let mut o = InMemDicomObject::new_empty();
    copy_patient_and_study(&series.header, &mut o);
    put_sop_common(
        &mut o,
        MULTI_FRAME_TRUE_COLOR_SC_STORAGE,
        &sop_instance_uid,
        &date,
        &time,
        creator,
    );
    // General Series (C.7.3.1): "OT", so that no hanging protocol takes it for a source image.
    put_str(&mut o, tags::MODALITY, VR::CS, "OT");
    put_str(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series_instance_uid,
    );
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "9903");
    put_str(&mut o, tags::SERIES_DESCRIPTION, VR::LO, SERIES_DESCRIPTION);
    put_str(&mut o, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut o, tags::SERIES_TIME, VR::TM, &time);
    // Laterality (Type 2C): the source's when it has one, else empty. No Frame of Reference:
    // the Multi-frame True Color SC IOD has no such module (dciodvfy calls it an extension).
    match series.header.get(tags::LATERALITY) {
        Some(element) => {
            o.put(element.clone());
        }
        None => put_empty(&mut o, tags::LATERALITY, VR::CS),
    }
    // SC Equipment (C.8.6.1): a workstation rendering.
    put_str(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put_str(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER,
        VR::LO,
        super::MANUFACTURER,
    );
    put_str(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER_MODEL_NAME,
        VR::LO,
        super::MODEL_NAME,
    );
    put_str(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
        VR::LO,
        &fit(&creator.software_version, 64),
    );
    // General Image (C.7.6.1).
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    o.put(DataElement::new(
        tags::PATIENT_ORIENTATION,
        VR::CS,
        PrimitiveValue::Strs(
            [
                orientation_letters(volume.row_direction),
                orientation_letters(volume.column_direction),
            ]
            .into(),
        ),
    ));
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    o.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["DERIVED", "SECONDARY"].map(String::from).into()),
    ));
    put_str(
        &mut o,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &fit(
            &format!(
                "Source slices windowed to 8-bit grey with the outlines of the segments of \
                 {} {} ({}) burned in, and a {WARNING} banner",
                creator.model_name, creator.model_version, creator.backend
            ),
            1024,
        ),
    );
    put_str(&mut o, tags::IMAGE_COMMENTS, VR::LT, WARNING);
    // General Reference (C.12.4): item n is the source of frame n.
    put_seq(&mut o, tags::SOURCE_IMAGE_SEQUENCE, source_images(series));
    // Common Instance Reference (C.12.2): the source series, in this same study.
    put_seq(
        &mut o,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![referenced_series(series, 0..series.sources.len())],
    );
    // Image Pixel (C.7.6.3) as Multi-frame True Color SC Image (C.8.6.3) constrains it.
    put_u16(&mut o, tags::SAMPLES_PER_PIXEL, 3);
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_u16(&mut o, tags::PLANAR_CONFIGURATION, 0);
    put_u16(&mut o, tags::ROWS, rows16);
    put_u16(&mut o, tags::COLUMNS, columns16);
    put_u16(&mut o, tags::BITS_ALLOCATED, 8);
    put_u16(&mut o, tags::BITS_STORED, 8);
    put_u16(&mut o, tags::HIGH_BIT, 7);
    put_u16(&mut o, tags::PIXEL_REPRESENTATION, 0);
    put_str(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    // Multi-frame (C.7.6.6): frames step along the slice normal.
    put_str(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, &slices.to_string());
    o.put(DataElement::new(
        tags::FRAME_INCREMENT_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![tags::SLICE_LOCATION_VECTOR].into()),
    ));
    let locations: Vec<f64> = (0..slices)
        .map(|z| dot(volume.position(0.0, 0.0, z as f64), volume.normal))
        .collect();
    put_ds(&mut o, tags::SLICE_LOCATION_VECTOR, &locations);
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixels.into()),
    ));
    let bytes = part10(
        o,
        MULTI_FRAME_TRUE_COLOR_SC_STORAGE,
        &sop_instance_uid,
        "Secondary Capture",
    )?;
    Ok(WrittenSc {
        bytes,
        sop_instance_uid,
        series_instance_uid,
        frames: slices,
    })
}

/// One item per source slice, in volume order; a frame of a multi-frame source is named by
/// its Referenced Frame Number.
fn source_images(series: &SeriesVolume) -> Vec<InMemDicomObject> {
    let mut per_instance: HashMap<&str, usize> = HashMap::new();
    for s in &series.sources {
        *per_instance.entry(s.sop_instance_uid.as_str()).or_default() += 1;
    }
    series
        .sources
        .iter()
        .map(|s| {
            let mut item = referenced_instance(s);
            let multi_frame = per_instance
                .get(s.sop_instance_uid.as_str())
                .is_some_and(|n| *n > 1);
            if s.frame > 0 || multi_frame {
                put_str(
                    &mut item,
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    &(u64::from(s.frame) + 1).to_string(),
                );
            }
            put_seq(
                &mut item,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code_item(&code(
                    "DCM",
                    "121322",
                    "Source image for image processing operation",
                ))],
            );
            item
        })
        .collect()
}

/// Patient Orientation letters of a direction (PS3.3 C.7.6.1.1.1): +x is L, +y P, +z H; each
/// axis that contributes more than a quarter, the largest first.
fn orientation_letters(direction: [f64; 3]) -> String {
    let mut axes: Vec<(f64, char)> = direction
        .iter()
        .zip([('L', 'R'), ('P', 'A'), ('H', 'F')])
        .map(|(v, (plus, minus))| (v.abs(), if *v >= 0.0 { plus } else { minus }))
        .filter(|(m, _)| *m > 0.25)
        .collect();
    axes.sort_by(|a, b| b.0.total_cmp(&a.0));
    axes.into_iter().map(|(_, letter)| letter).collect()
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn fit(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_linear_voi_function() {
        // PS3.3 C.11.2.1.2.1: centre 40, width 80 maps 0 and below to black, 80 to white.
        let w = Window {
            center: 40.0,
            width: 80.0,
        };
        assert_eq!(w.grey(-1000.0), 0);
        assert_eq!(w.grey(0.0), 0);
        assert_eq!(w.grey(80.0), 255);
        assert_eq!(w.grey(39.5), 128);
        assert_eq!(w.grey(f32::NAN), 0);
        let span = Window::spanning(&[-3.0, 7.0, f32::NAN, 2.0]);
        assert_eq!((span.grey(-3.0), span.grey(7.0)), (0, 255));
        // Constant, empty and narrow-float slices do not divide by zero.
        assert_eq!(Window::spanning(&[5.0; 4]).grey(5.0), 0);
        assert_eq!(Window::spanning(&[]).grey(0.0), 0);
        let narrow = Window::spanning(&[0.25, 0.75]);
        assert_eq!(
            (narrow.grey(0.25), narrow.grey(0.5), narrow.grey(0.75)),
            (0, 128, 255)
        );
    }

    #[test]
    fn orientation_letters_name_the_patient_directions() {
        assert_eq!(orientation_letters([1.0, 0.0, 0.0]), "L");
        assert_eq!(orientation_letters([0.0, -1.0, 0.0]), "A");
        assert_eq!(orientation_letters([0.0, 0.6, -0.8]), "FP");
    }

    #[test]
    fn the_banner_shrinks_to_fit_and_clips_on_tiny_images() {
        for (w, h) in [(512, 512), (1024, 64), (100, 100), (3, 2), (0, 0)] {
            let b = Banner::layout(w, h, &[WARNING, "HEAD-CT-ICH 0.1.0"]);
            assert!(b.height <= h);
            if w >= 200 {
                assert_eq!(b.lines.len(), 2, "{w}x{h}");
            }
        }
        assert_eq!(Banner::layout(512, 512, &[WARNING]).scale, 2);
        assert_eq!(banner_height(512, 512, &[]), 0);
        // Rendering a 1x1 slice with a banner is no panic.
        let slice = SliceView {
            columns: 1,
            rows: 1,
            values: &[0.0],
            labels: &[1],
        };
        let image = render_slice(&slice, &[], Window::spanning(&[0.0]), &[WARNING]).unwrap();
        assert_eq!(image.pixels.len(), 3);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(fit("abc", 2), "ab");
        assert_eq!(fit("aé", 2), "a");
        assert_eq!(fit("x", 10), "x");
    }
}
