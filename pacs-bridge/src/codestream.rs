//! What a compressed frame says about itself, read from its codestream header before any
//! decoder sees it. JPEG (ITU-T T.81 B.2.2), JPEG-LS (T.87 C.2.2) and JPEG 2000 (T.800 A.5.1)
//! headers carry their own image size and component count, and the decoders allocate from
//! those, not from Rows and Columns; an RLE frame (PS3.5 G.3.1) names its segments. A frame
//! whose header disagrees with the dataset's Image Pixel module is refused here, so a header
//! that lies never becomes an allocation (a decompression bomb) or an index past a buffer.

use thiserror::Error;

/// The compression of an encapsulated transfer syntax we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Jpeg,
    JpegLs,
    Jpeg2000,
    Rle,
}

impl Codec {
    /// The codec of an encapsulated transfer syntax; `None` for native (uncompressed) ones.
    pub fn of(transfer_syntax: &str) -> Option<Codec> {
        match transfer_syntax {
            "1.2.840.10008.1.2.5" => Some(Codec::Rle),
            "1.2.840.10008.1.2.4.50"
            | "1.2.840.10008.1.2.4.51"
            | "1.2.840.10008.1.2.4.57"
            | "1.2.840.10008.1.2.4.70" => Some(Codec::Jpeg),
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some(Codec::JpegLs),
            "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => Some(Codec::Jpeg2000),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Jpeg => "JPEG",
            Codec::JpegLs => "JPEG-LS",
            Codec::Jpeg2000 => "JPEG 2000",
            Codec::Rle => "RLE",
        }
    }

    /// Whether `fragment` begins a codestream of this codec (used to find frame starts when
    /// there is no Basic Offset Table).
    pub fn starts_frame(self, fragment: &[u8]) -> bool {
        match self {
            Codec::Jpeg | Codec::JpegLs => fragment.starts_with(&[0xFF, 0xD8]),
            Codec::Jpeg2000 => {
                fragment.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
                    || fragment.starts_with(&JP2_SIGNATURE)
            }
            Codec::Rle => false,
        }
    }
}

/// What the dataset's Image Pixel module says one frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameShape {
    pub rows: u32,
    pub columns: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
}

/// Most tiles a JPEG 2000 frame may declare: the decoder keeps state per tile, and T.800 itself
/// caps the tile index at 65534.
pub const MAX_J2K_TILES: u64 = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodestreamError {
    #[error("the {codec} codestream is truncated before its {what}")]
    Truncated {
        codec: &'static str,
        what: &'static str,
    },
    #[error("the {codec} frame has no {what}")]
    Missing {
        codec: &'static str,
        what: &'static str,
    },
    #[error(
        "the {codec} codestream declares {rows}x{columns} pixels with {samples} samples; \
         the dataset says {expected_rows}x{expected_columns} with {expected_samples}"
    )]
    Mismatch {
        codec: &'static str,
        rows: u32,
        columns: u32,
        samples: u16,
        expected_rows: u32,
        expected_columns: u32,
        expected_samples: u16,
    },
    #[error("the {codec} codestream declares {precision}-bit samples; Bits Allocated is {bits_allocated}")]
    Precision {
        codec: &'static str,
        precision: u8,
        bits_allocated: u16,
    },
    #[error("the JPEG 2000 codestream declares {tiles} tiles; at most {MAX_J2K_TILES} are read")]
    TooManyTiles { tiles: u64 },
    #[error("the RLE header is invalid: {0}")]
    Rle(String),
}

/// Check the first fragment of one frame against the dataset's shape.
pub fn check_frame(
    codec: Codec,
    fragment: &[u8],
    shape: FrameShape,
) -> Result<(), CodestreamError> {
    let declared = match codec {
        Codec::Jpeg | Codec::JpegLs => jpeg_frame_header(codec, fragment)?,
        Codec::Jpeg2000 => j2k_image_size(fragment)?,
        Codec::Rle => return check_rle(fragment, shape),
    };
    if (declared.rows, declared.columns, declared.samples)
        != (shape.rows, shape.columns, shape.samples_per_pixel)
    {
        return Err(CodestreamError::Mismatch {
            codec: codec.name(),
            rows: declared.rows,
            columns: declared.columns,
            samples: declared.samples,
            expected_rows: shape.rows,
            expected_columns: shape.columns,
            expected_samples: shape.samples_per_pixel,
        });
    }
    if u16::from(declared.precision) > shape.bits_allocated {
        return Err(CodestreamError::Precision {
            codec: codec.name(),
            precision: declared.precision,
            bits_allocated: shape.bits_allocated,
        });
    }
    Ok(())
}

/// Image size, components and sample precision as a codestream header declares them.
#[derive(Debug, PartialEq, Eq)]
struct Declared {
    rows: u32,
    columns: u32,
    samples: u16,
    precision: u8,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The frame header (SOFn of T.81, SOF55 of T.87) of a JPEG or JPEG-LS codestream: the markers
/// after SOI are walked by their lengths until a frame header, and a scan or the end before it
/// is an error.
fn jpeg_frame_header(codec: Codec, bytes: &[u8]) -> Result<Declared, CodestreamError> {
    let name = codec.name();
    let truncated = |what| CodestreamError::Truncated { codec: name, what };
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(CodestreamError::Missing {
            codec: name,
            what: "start-of-image marker",
        });
    }
    let mut at = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes (T.81 B.1.1.2).
        if bytes.get(at) != Some(&0xFF) {
            return Err(truncated("frame header"));
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let marker = *bytes.get(at).ok_or_else(|| truncated("frame header"))?;
        at += 1;
        let is_frame_header = match codec {
            // SOF0..SOF15 but DHT (C4), JPG (C8) and DAC (CC).
            Codec::Jpeg => (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker),
            _ => marker == 0xF7,
        };
        if is_frame_header {
            let precision = *bytes.get(at + 2).ok_or_else(|| truncated("frame header"))?;
            let rows = be16(bytes, at + 3).ok_or_else(|| truncated("frame header"))?;
            let columns = be16(bytes, at + 5).ok_or_else(|| truncated("frame header"))?;
            let samples = *bytes.get(at + 7).ok_or_else(|| truncated("frame header"))?;
            return Ok(Declared {
                rows: u32::from(rows),
                columns: u32::from(columns),
                samples: u16::from(samples),
                precision,
            });
        }
        match marker {
            // Start of scan or end of image before any frame header.
            0xDA | 0xD9 => {
                return Err(CodestreamError::Missing {
                    codec: name,
                    what: "frame header before its first scan",
                })
            }
            // Markers without a length segment (RSTm, TEM).
            0xD0..=0xD7 | 0x01 => {}
            _ => {
                let length = be16(bytes, at).ok_or_else(|| truncated("frame header"))?;
                if length < 2 {
                    return Err(truncated("frame header"));
                }
                at += usize::from(length);
            }
        }
    }
}

/// The JP2 file signature box (T.800 I.5.1): a frame sent as a JP2 file instead of a bare
/// codestream.
const JP2_SIGNATURE: [u8; 12] = [
    0, 0, 0, 0x0C, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A,
];

/// The image size (SIZ, T.800 A.5.1) of a JPEG 2000 codestream, or of the codestream in a JP2
/// file's contiguous codestream box.
fn j2k_image_size(bytes: &[u8]) -> Result<Declared, CodestreamError> {
    let name = Codec::Jpeg2000.name();
    let truncated = |what| CodestreamError::Truncated { codec: name, what };
    let codestream = if bytes.starts_with(&JP2_SIGNATURE) {
        jp2_codestream(bytes).ok_or(CodestreamError::Missing {
            codec: name,
            what: "contiguous codestream box in its JP2 file",
        })?
    } else {
        bytes
    };
    if !codestream.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Err(CodestreamError::Missing {
            codec: name,
            what: "SOC and SIZ markers at its start",
        });
    }
    let siz = |offset: usize| be32(codestream, 4 + offset).ok_or_else(|| truncated("SIZ segment"));
    // Offsets from the Lsiz field: Rsiz 2, Xsiz 4, Ysiz 8, XOsiz 12, YOsiz 16, XTsiz 20,
    // YTsiz 24, XTOsiz 28, YTOsiz 32, Csiz 36, then Ssiz of the first component at 38.
    let (x, y, x0, y0) = (siz(4)?, siz(8)?, siz(12)?, siz(16)?);
    let (tile_x, tile_y, tile_x0, tile_y0) = (siz(20)?, siz(24)?, siz(28)?, siz(32)?);
    let components = be16(codestream, 4 + 36).ok_or_else(|| truncated("SIZ segment"))?;
    let precision = codestream
        .get(4 + 38)
        .map(|s| (s & 0x7F) + 1)
        .ok_or_else(|| truncated("SIZ segment"))?;
    let invalid = |what: &'static str| CodestreamError::Missing { codec: name, what };
    let columns = x
        .checked_sub(x0)
        .filter(|w| *w > 0)
        .ok_or(invalid("image width in its SIZ segment"))?;
    let rows = y
        .checked_sub(y0)
        .filter(|h| *h > 0)
        .ok_or(invalid("image height in its SIZ segment"))?;
    let across = x
        .checked_sub(tile_x0)
        .zip((tile_x > 0).then_some(tile_x))
        .map(|(w, t)| u64::from(w).div_ceil(u64::from(t)))
        .ok_or(invalid("valid tile grid in its SIZ segment"))?;
    let down = y
        .checked_sub(tile_y0)
        .zip((tile_y > 0).then_some(tile_y))
        .map(|(h, t)| u64::from(h).div_ceil(u64::from(t)))
        .ok_or(invalid("valid tile grid in its SIZ segment"))?;
    let tiles = across.saturating_mul(down);
    if tiles > MAX_J2K_TILES {
        return Err(CodestreamError::TooManyTiles { tiles });
    }
    Ok(Declared {
        rows,
        columns,
        samples: components,
        precision,
    })
}

/// The content of the first `jp2c` box of a JP2 file (T.800 I.5.4), walking boxes by length.
fn jp2_codestream(bytes: &[u8]) -> Option<&[u8]> {
    let mut at = 0usize;
    while at < bytes.len() {
        let length = be32(bytes, at)? as usize;
        let kind = bytes.get(at + 4..at + 8)?;
        let (header, length) = match length {
            // Extended length in the next 8 bytes.
            1 => (
                16,
                usize::try_from(u64::from_be_bytes(
                    bytes.get(at + 8..at + 16)?.try_into().ok()?,
                ))
                .ok()?,
            ),
            // The box runs to the end of the file.
            0 => (8, bytes.len() - at),
            n => (8, n),
        };
        if kind == b"jp2c" {
            return bytes.get(at + header..);
        }
        if length < header {
            return None;
        }
        at = at.checked_add(length)?;
    }
    None
}

/// An RLE frame's header (PS3.5 G.5): 1 to 15 segments, one per byte of each sample, at
/// increasing offsets inside the frame, the first right after the 64-byte header.
fn check_rle(bytes: &[u8], shape: FrameShape) -> Result<(), CodestreamError> {
    let invalid = |reason: String| CodestreamError::Rle(reason);
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| {
                invalid(format!(
                    "{} bytes, shorter than its 64-byte header",
                    bytes.len()
                ))
            })
    };
    let segments = word(0)?;
    let expected = u32::from(shape.samples_per_pixel) * u32::from(shape.bits_allocated).div_ceil(8);
    if segments != expected {
        return Err(invalid(format!(
            "{segments} segments; {} samples of {} bits need {expected}",
            shape.samples_per_pixel, shape.bits_allocated
        )));
    }
    let mut previous = 0u32;
    for i in 1..=segments as usize {
        let offset = word(i)?;
        let in_order = if i == 1 {
            offset == 64
        } else {
            offset > previous
        };
        if !in_order || offset as usize >= bytes.len() {
            return Err(invalid(format!(
                "segment {i} starts at {offset}, outside the {} bytes of the frame or out of order",
                bytes.len()
            )));
        }
        previous = offset;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: FrameShape = FrameShape {
        rows: 512,
        columns: 512,
        samples_per_pixel: 1,
        bits_allocated: 16,
    };

    /// SOI, an APP0 segment, then a frame header (`sof`) for `rows` x `columns`, 1 component.
    fn jpeg(sof: u8, rows: u16, columns: u16) -> Vec<u8> {
        let mut b = vec![
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xFF, sof,
        ];
        b.extend_from_slice(&[0x00, 0x0B, 12]);
        b.extend_from_slice(&rows.to_be_bytes());
        b.extend_from_slice(&columns.to_be_bytes());
        b.extend_from_slice(&[1, 1, 0x11, 0]);
        b.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02]);
        b
    }

    fn j2k(width: u32, height: u32, tile: u32) -> Vec<u8> {
        let mut b = vec![0xFF, 0x4F, 0xFF, 0x51, 0x00, 0x29, 0x00, 0x00];
        for v in [width, height, 0, 0, tile, tile, 0, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&[0x00, 0x01, 0x0F, 0x01, 0x01]);
        b
    }

    #[test]
    fn a_jpeg_frame_that_matches_the_dataset_passes_and_a_larger_one_is_a_bomb_refused() {
        assert_eq!(check_frame(Codec::Jpeg, &jpeg(0xC3, 512, 512), CT), Ok(()));
        let err = check_frame(Codec::Jpeg, &jpeg(0xC3, 65535, 65535), CT).unwrap_err();
        assert!(
            err.to_string()
                .contains("declares 65535x65535 pixels with 1 samples; the dataset says 512x512"),
            "{err}"
        );
        // JPEG-LS has its own frame header marker (SOF55); a T.81 SOF is not it.
        assert_eq!(
            check_frame(Codec::JpegLs, &jpeg(0xF7, 512, 512), CT),
            Ok(())
        );
        assert!(matches!(
            check_frame(Codec::JpegLs, &jpeg(0xC3, 512, 512), CT),
            Err(CodestreamError::Missing { .. })
        ));
    }

    #[test]
    fn a_jpeg_header_cut_short_or_without_a_frame_header_is_an_error_not_a_panic() {
        let whole = jpeg(0xC0, 512, 512);
        // Every cut before the component count (byte 18) loses part of the frame header.
        for end in 0..19 {
            assert!(
                check_frame(Codec::Jpeg, &whole[..end], CT).is_err(),
                "cut at {end}"
            );
        }
        assert!(check_frame(Codec::Jpeg, &[0xFF, 0xD8, 0xFF, 0xDA, 0, 2], CT).is_err());
        assert!(check_frame(Codec::Jpeg, &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0], CT).is_err());
    }

    #[test]
    fn a_jpeg_2000_frame_is_checked_for_size_components_and_tile_count() {
        assert_eq!(
            check_frame(Codec::Jpeg2000, &j2k(512, 512, 512), CT),
            Ok(())
        );
        assert!(matches!(
            check_frame(Codec::Jpeg2000, &j2k(40000, 40000, 40000), CT),
            Err(CodestreamError::Mismatch { rows: 40000, .. })
        ));
        // One-pixel tiles: 262144 tiles for a 512x512 image.
        assert_eq!(
            check_frame(Codec::Jpeg2000, &j2k(512, 512, 1), CT),
            Err(CodestreamError::TooManyTiles { tiles: 262144 })
        );
        let mut zero_tile = j2k(512, 512, 0);
        assert!(check_frame(Codec::Jpeg2000, &zero_tile, CT).is_err());
        zero_tile.truncate(20);
        assert!(check_frame(Codec::Jpeg2000, &zero_tile, CT).is_err());
    }

    #[test]
    fn a_jp2_file_is_read_through_its_codestream_box() {
        let mut file = JP2_SIGNATURE.to_vec();
        file.extend_from_slice(&[0, 0, 0, 8, b'f', b't', b'y', b'p']);
        let stream = j2k(512, 256, 512);
        file.extend_from_slice(&((stream.len() + 8) as u32).to_be_bytes());
        file.extend_from_slice(b"jp2c");
        file.extend_from_slice(&stream);
        assert!(matches!(
            check_frame(Codec::Jpeg2000, &file, CT),
            Err(CodestreamError::Mismatch {
                rows: 256,
                columns: 512,
                ..
            })
        ));
    }

    #[test]
    fn an_rle_header_needs_one_segment_per_sample_byte_in_order_inside_the_frame() {
        let mut frame = vec![0u8; 200];
        frame[0..4].copy_from_slice(&2u32.to_le_bytes());
        frame[4..8].copy_from_slice(&64u32.to_le_bytes());
        frame[8..12].copy_from_slice(&120u32.to_le_bytes());
        assert_eq!(check_frame(Codec::Rle, &frame, CT), Ok(()));
        frame[8..12].copy_from_slice(&900u32.to_le_bytes());
        assert!(check_frame(Codec::Rle, &frame, CT).is_err());
        frame[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(check_frame(Codec::Rle, &frame, CT).is_err());
        assert!(check_frame(Codec::Rle, &frame[..10], CT).is_err());
    }
}
