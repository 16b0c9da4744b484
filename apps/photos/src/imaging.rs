//! The thumbnail work itself: decode (JPEG, PNG, WebP), turn by the EXIF orientation, resize
//! to each size with a Lanczos filter (SIMD), encode as JPEG. Everything here is plain
//! synchronous code with no oxwork in it, so the harness's floor runs the very same loop.

use std::io::Cursor;

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

/// The largest image accepted, in pixels (a 50-megapixel camera's); a header claiming more is
/// refused before anything is decoded (a decompression bomb is a few KB of PNG).
pub const MAX_PIXELS: u64 = 50_000_000;
/// The longest side accepted.
pub const MAX_SIDE: u32 = 20_000;

/// The sizes made of every photo: name and longest side in pixels. An image smaller than a
/// size is kept at its own size (never enlarged).
pub const SIZES: [(&str, u32); 3] = [("small", 160), ("medium", 480), ("large", 1200)];

/// JPEG quality of the thumbnails.
const QUALITY: u8 = 85;

/// One encoded size of a photo.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    /// One of [`SIZES`]' names.
    pub size: &'static str,
    pub width: u32,
    pub height: u32,
    /// The JPEG.
    pub jpeg: Vec<u8>,
}

/// What a photo turned into.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The format it was decoded from.
    pub format: &'static str,
    /// Width and height after orientation.
    pub width: u32,
    pub height: u32,
    pub thumbnails: Vec<Thumbnail>,
}

/// The formats taken, by their first bytes: what the upload endpoint checks before queueing.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => Some("jpeg"),
        Ok(ImageFormat::Png) => Some("png"),
        Ok(ImageFormat::WebP) => Some("webp"),
        _ => None,
    }
}

/// Makes every size of `bytes`, calling `progress` after each; an error says what is wrong
/// with the file in words a person can read.
pub fn process(bytes: &[u8], mut progress: impl FnMut(&Thumbnail)) -> Result<Processed, String> {
    let format = sniff(bytes).ok_or("not a JPEG, PNG or WebP image")?;
    if format == "jpeg" && !jpeg_is_whole(bytes) {
        // The JPEG decoder paints a cut-short file grey and carries on; an upload cut short
        // is better refused than shown half grey.
        return Err("the JPEG is cut short (it has no end marker)".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("unreadable: {e}"))?;
    // Dimensions are checked below, from the header, with a message a person can read; the
    // allocation limit is the decoder's own guard: room for the largest image taken in its
    // widest pixel format, and no more.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("not a valid {format} image: {e}"))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("{format} image of {w}x{h} pixels"));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS || w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "{w}x{h} pixels is more than the {} megapixels (or {MAX_SIDE} pixels a side) taken",
            MAX_PIXELS / 1_000_000
        ));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode this {format} image: {e}"))?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let rgba = img.into_rgba8();
    let source = Image::from_vec_u8(width, height, rgba.into_raw(), PixelType::U8x4)
        .map_err(|e| format!("internal: {e}"))?;
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    let mut thumbnails = Vec::with_capacity(SIZES.len());
    for (size, side) in SIZES {
        let (tw, th) = fit(width, height, side);
        let mut target = Image::new(tw, th, PixelType::U8x4);
        resizer
            .resize(&source, &mut target, &options)
            .map_err(|e| format!("resize to {tw}x{th} failed: {e}"))?;
        let rgb = over_white(target.buffer());
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
            .encode(&rgb, tw, th, image::ExtendedColorType::Rgb8)
            .map_err(|e| format!("JPEG encoding failed: {e}"))?;
        let t = Thumbnail {
            size,
            width: tw,
            height: th,
            jpeg,
        };
        progress(&t);
        thumbnails.push(t);
    }
    Ok(Processed {
        format,
        width,
        height,
        thumbnails,
    })
}

/// Whether a JPEG has its end marker after its image data: entropy-coded data never holds
/// `FF D9` (a data `FF` is followed by `00`), so a file cut short has none after the first
/// start-of-scan. (Bytes a camera appends after the end marker do not matter.)
fn jpeg_is_whole(bytes: &[u8]) -> bool {
    let Some(scan) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The size that fits `w`x`h` within `side` on its longest edge, aspect kept, never enlarged.
pub fn fit(w: u32, h: u32, side: u32) -> (u32, u32) {
    let longest = w.max(h);
    if longest <= side {
        return (w, h);
    }
    let scale = f64::from(side) / f64::from(longest);
    let tw = ((f64::from(w) * scale).round() as u32).clamp(1, side);
    let th = ((f64::from(h) * scale).round() as u32).clamp(1, side);
    (tw, th)
}

/// RGBA (straight alpha) laid over white, as RGB: a JPEG has no transparency.
fn over_white(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let a = u16::from(px[3]);
        for c in &px[..3] {
            rgb.push(((u16::from(*c) * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{bomb_png, encode, jpeg_with_orientation, marked};

    #[test]
    fn every_format_gives_three_sizes_that_fit_and_keep_the_aspect() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
            let bytes = encode(&marked(1600, 900), format);
            let mut seen = Vec::new();
            let p = process(&bytes, |t| seen.push(t.size)).expect("processed");
            assert_eq!(seen, ["small", "medium", "large"]);
            let dims: Vec<(u32, u32)> = p.thumbnails.iter().map(|t| (t.width, t.height)).collect();
            assert_eq!(dims, [(160, 90), (480, 270), (1200, 675)], "{format:?}");
            for t in &p.thumbnails {
                let back = image::load_from_memory(&t.jpeg).expect("a JPEG");
                assert_eq!((back.width(), back.height()), (t.width, t.height));
            }
        }
    }

    #[test]
    fn a_small_image_is_not_enlarged() {
        let p = process(&encode(&marked(100, 60), ImageFormat::Png), |_| {}).expect("ok");
        assert!(p
            .thumbnails
            .iter()
            .all(|t| (t.width, t.height) == (100, 60)));
    }

    #[test]
    fn exif_orientation_is_honoured() {
        // Stored 400x200 with "rotate 90 clockwise to view": shown 200x400, and the red
        // quarter (stored top-left) ends top-right.
        let bytes = jpeg_with_orientation(&marked(400, 200), 6);
        let p = process(&bytes, |_| {}).expect("ok");
        assert_eq!((p.width, p.height), (200, 400));
        let large = image::load_from_memory(&p.thumbnails[2].jpeg)
            .expect("jpeg")
            .to_rgb8();
        let top_right = large.get_pixel(large.width() * 3 / 4, large.height() / 8);
        let top_left = large.get_pixel(large.width() / 4, large.height() / 8);
        assert!(top_right[0] > 200 && top_right[2] < 60, "{top_right:?}");
        assert!(top_left[2] > 200 && top_left[0] < 60, "{top_left:?}");
    }

    #[test]
    fn a_decompression_bomb_is_refused_by_its_header() {
        let bytes = bomb_png(30_000, 30_000);
        assert!(bytes.len() < 1000, "{} bytes", bytes.len());
        let err = process(&bytes, |_| {}).expect_err("refused");
        assert!(err.contains("megapixels"), "{err}");
    }

    #[test]
    fn garbage_truncated_and_empty_files_are_refused_with_a_reason() {
        let good = encode(&marked(300, 200), ImageFormat::Jpeg);
        let png = encode(&marked(300, 200), ImageFormat::Png);
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("text", b"hello, I am not a picture".to_vec()),
            ("truncated jpeg", good[..good.len() / 3].to_vec()),
            ("truncated png", png[..png.len() / 2].to_vec()),
            ("jpeg magic then junk", {
                let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
                v.extend(std::iter::repeat_n(0x41u8, 5000));
                v
            }),
        ] {
            let r = std::panic::catch_unwind(|| process(&bytes, |_| {}));
            match r {
                Ok(Err(why)) => assert!(!why.is_empty(), "{what}"),
                Ok(Ok(_)) => panic!("{what}: accepted"),
                Err(_) => panic!("{what}: the decoder panicked"),
            }
        }
    }

    #[test]
    fn transparency_becomes_white() {
        assert_eq!(over_white(&[10, 20, 30, 0]), [255, 255, 255]);
        assert_eq!(over_white(&[10, 20, 30, 255]), [10, 20, 30]);
    }
}
