//! `multipart/form-data` bodies (RFC 7578), parsed from the whole body in memory.

use bytes::Bytes;
use memchr::memmem;

use super::request::UploadedFile;

/// Text fields and uploaded files of a multipart body.
pub(crate) type Parts = (Vec<(String, String)>, Vec<UploadedFile>);

/// Fields and files of a multipart body, or why it is malformed.
pub(crate) fn parse(body: &Bytes, boundary: &str, spill_over: usize) -> Result<Parts, String> {
    let delimiter = format!("--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let mut fields = Vec::new();
    let mut files = Vec::new();
    let Some(first) = finder.find(body) else {
        return Err("multipart body without its boundary".into());
    };
    let mut pos = first + delimiter.len();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok((fields, files));
        }
        if !rest.starts_with(b"\r\n") {
            return Err("malformed multipart boundary line".into());
        }
        pos += 2;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let (head_len, parsed) = match httparse::parse_headers(&body[pos..], &mut headers) {
            Ok(httparse::Status::Complete((n, h))) => (n, h),
            Ok(httparse::Status::Partial) => return Err("truncated multipart part headers".into()),
            Err(e) => return Err(format!("bad multipart part headers: {e}")),
        };
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for h in parsed.iter() {
            let value = String::from_utf8_lossy(h.value);
            if h.name.eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').skip(1) {
                    if let Some((k, v)) = param.split_once('=') {
                        let v = v.trim().trim_matches('"').to_string();
                        match k.trim().to_ascii_lowercase().as_str() {
                            "name" => name = Some(v),
                            "filename" => filename = Some(v),
                            _ => {}
                        }
                    }
                }
            } else if h.name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.into_owned());
            }
        }
        pos += head_len;
        let end_marker = format!("\r\n{delimiter}");
        let Some(len) = memmem::find(&body[pos..], end_marker.as_bytes()) else {
            return Err("multipart part without a closing boundary".into());
        };
        let data = body.slice(pos..pos + len);
        pos += len + end_marker.len();
        let name = name.ok_or("multipart part without a name")?;
        match filename {
            Some(f) => files.push(
                UploadedFile::new(name, Some(f), content_type, data, spill_over)
                    .map_err(|e| format!("cannot store an upload: {e}"))?,
            ),
            None => fields.push((name, String::from_utf8_lossy(&data).into_owned())),
        }
    }
}

/// The boundary parameter of a `multipart/form-data` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_files() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile body\r\n--XyZ--\r\n",
        );
        let (fields, files) = parse(&body, "XyZ", 1024).expect("valid");
        assert_eq!(fields, vec![("title".to_string(), "hello".to_string())]);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename.as_deref(), Some("a.txt"));
        assert_eq!(&files[0].bytes().expect("bytes")[..], b"file body");
    }

    #[test]
    fn large_files_spill_to_disk_and_vanish_on_drop() {
        let mut body =
            b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"big\"\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 5000));
        body.extend_from_slice(b"\r\n--b--");
        let (_, files) = parse(&Bytes::from(body), "b", 1000).expect("valid");
        let path = files[0].temp_path().expect("spilled").to_path_buf();
        assert!(path.exists());
        assert_eq!(files[0].bytes().expect("read").len(), 5000);
        drop(files);
        assert!(!path.exists(), "temporary file left behind");
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let body =
            Bytes::from_static(b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nno end");
        assert!(parse(&body, "b", 10).is_err());
        assert!(parse(&Bytes::from_static(b"garbage"), "b", 10).is_err());
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("text/plain"), None);
    }
}
