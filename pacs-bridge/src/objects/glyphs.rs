//! A 5x7 bitmap font, hand-written, for the text burned into rendered images (the
//! "NOT FOR DIAGNOSTIC USE" banner of [`super::sc`]): A–Z, 0–9, space and a few punctuation
//! marks. Lower case is drawn as upper case; any other character as `?`. No DICOM, no I/O:
//! the same drawing serves a Secondary Capture and a PNG of the console.

/// Glyph cell: 5 columns by 7 rows, plus one blank column between characters.
pub const GLYPH_WIDTH: usize = 5;
pub const GLYPH_HEIGHT: usize = 7;
pub const ADVANCE: usize = GLYPH_WIDTH + 1;

/// Rows of a glyph, top first; bit 4 is the leftmost column.
pub type Glyph = [u8; GLYPH_HEIGHT];

/// The rows of `c`'s glyph (`?` for a character the font lacks).
pub fn glyph(c: char) -> Glyph {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ' ' => [0; GLYPH_HEIGHT],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        '\'' => [0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04], // '?'
    }
}

/// Pixels `text` spans along a row at `scale` (no trailing gap after the last character).
pub fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    (n * ADVANCE).saturating_sub(1) * scale
}

/// Draw `text` into an interleaved RGB buffer of `width` x `height` pixels with its top-left
/// corner at (`x`, `y`), each font pixel a `scale` x `scale` square of `colour`. Whatever
/// falls outside the buffer is clipped, never wrapped into the next row.
#[allow(clippy::too_many_arguments)]
pub fn draw_text(
    rgb: &mut [u8],
    width: usize,
    height: usize,
    x: usize,
    y: usize,
    scale: usize,
    text: &str,
    colour: [u8; 3],
) {
    // Bounded so that no offset below can overflow; no image is 65536 font pixels tall.
    let scale = scale.clamp(1, 1 << 16);
    for (i, c) in text.chars().enumerate() {
        let left = x.saturating_add(i.saturating_mul(ADVANCE * scale));
        if left >= width {
            break;
        }
        for (row, bits) in glyph(c).iter().enumerate() {
            for column in 0..GLYPH_WIDTH {
                if bits & (0x10 >> column) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    let py = y.saturating_add(row * scale + dy);
                    if py >= height {
                        break;
                    }
                    for dx in 0..scale {
                        let px = left.saturating_add(column * scale + dx);
                        if px >= width {
                            break;
                        }
                        let at = py
                            .checked_mul(width)
                            .and_then(|p| p.checked_add(px))
                            .and_then(|p| p.checked_mul(3));
                        if let Some(pixel) = at.and_then(|at| rgb.get_mut(at..at + 3)) {
                            pixel.copy_from_slice(&colour);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_fits_its_cell_and_letters_and_digits_are_distinct() {
        let chars: Vec<char> = ('A'..='Z').chain('0'..='9').collect();
        let glyphs: Vec<Glyph> = chars.iter().map(|c| glyph(*c)).collect();
        for (c, g) in chars.iter().zip(&glyphs) {
            assert!(g.iter().all(|row| *row < 0x20), "{c} is wider than 5");
            assert!(g.iter().any(|row| *row != 0), "{c} is blank");
            assert_ne!(*g, glyph('#'), "{c} looks like the unknown glyph");
        }
        for i in 0..glyphs.len() {
            for j in i + 1..glyphs.len() {
                assert_ne!(glyphs[i], glyphs[j], "{} and {}", chars[i], chars[j]);
            }
        }
        assert_eq!(glyph('a'), glyph('A'));
    }

    #[test]
    fn text_is_clipped_at_the_buffer_edge_not_wrapped() {
        // A 4-pixel-wide buffer: the first column of "H" lands, the rest is clipped.
        let (w, h) = (4, 9);
        let mut rgb = vec![0u8; w * h * 3];
        draw_text(&mut rgb, w, h, 0, 0, 1, "HH", [255, 255, 255]);
        let lit = |x: usize, y: usize| rgb[(y * w + x) * 3] == 255;
        assert!(lit(0, 0) && lit(0, 6) && !lit(0, 7) && !lit(0, 8));
        assert!(lit(1, 3) && !lit(1, 0));
        // Far off the buffer: nothing drawn, no panic.
        let mut none = vec![0u8; w * h * 3];
        draw_text(
            &mut none,
            w,
            h,
            usize::MAX - 3,
            usize::MAX - 3,
            7,
            "X",
            [9, 9, 9],
        );
        assert!(none.iter().all(|b| *b == 0));
    }

    #[test]
    fn widths_count_the_gaps_between_characters_only() {
        assert_eq!(text_width("", 3), 0);
        assert_eq!(text_width("A", 2), 10);
        assert_eq!(text_width("AB", 1), 11);
    }
}
