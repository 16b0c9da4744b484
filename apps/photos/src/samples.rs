//! Images made on the spot, for the tests and the benchmark harness: pictures whose
//! orientation is visible, a JPEG carrying an EXIF orientation, and a decompression bomb's
//! header.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

/// A `w`x`h` picture whose top-left quarter is red and the rest blue.
pub fn marked(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        if x < w / 2 && y < h / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

/// A `w`x`h` picture with detail everywhere (gradients and stripes, varied by `seed`), as
/// costly to encode as a photo.
pub fn detailed(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            seed.wrapping_mul(37).wrapping_add((x / 7 + y / 5) as u8),
        ])
    })
}

/// `img` encoded as `format`.
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    // Encoding an in-memory RGB image into a Vec fails only on a bug of the encoder.
    img.write_to(&mut out, format).expect("encode a sample");
    out.into_inner()
}

/// `img` as a JPEG carrying an EXIF APP1 segment with `orientation` (1-8).
pub fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let plain = encode(img, ImageFormat::Jpeg);
    // TIFF header (little-endian), one IFD entry: 0x0112 SHORT 1 = orientation.
    let mut tiff = vec![b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0];
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

/// The start of a decompression bomb: a valid PNG header for a `w`x`h` greyscale image and
/// the first bytes of its data, a few hundred bytes in all (the whole bomb would decode to
/// `w * h` bytes). A decoder that trusts the header allocates the lot.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // A zlib stream's header and one stored block of zero rows (filter byte 0 and pixels).
    let mut idat = vec![0x78, 0x01, 0x00, 0x00, 0x01, 0xFF, 0xFE];
    idat.extend(std::iter::repeat_n(0u8, 256));
    chunk(&mut out, b"IDAT", &idat);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A `w`x`h` PNG of noise: it does not compress, so it is about `3 * w * h` bytes.
pub fn noise_png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let img = RgbImage::from_fn(w, h, |_, _| Rgb([rng.u8(..), rng.u8(..), rng.u8(..)]));
    encode(&img, ImageFormat::Png)
}

/// A visitor id for tests and the harness, as the page's cookie carries it.
pub const VISITOR: &str = "0123456789abcdef0123456789abcdef";

/// The `Cookie` header's value a browser that loaded the page sends (with [`VISITOR`]).
pub fn visitor_cookie() -> String {
    format!("{}={VISITOR}", crate::web::VISITOR_COOKIE)
}

/// The upload form as the page sends it: the tab's id, and each file under `photos`. Returns
/// the `Content-Type` (with its boundary) and the body.
pub fn upload_form(tab: &str, files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----oxworkphotosboundary7f3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"tab\"\r\n\r\n{tab}\r\n")
            .as_bytes(),
    );
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"photos\"; \
                 filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_is_the_png_one() {
        assert_eq!(super::crc32(b"IEND"), 0xAE42_6082);
    }
}
