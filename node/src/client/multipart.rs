//! A `multipart/form-data` body for one file and a few text fields, streamed: the text parts
//! and the file part's header are built in memory, the file is read as the request is sent,
//! and the total length is known up front (no chunked encoding).

use std::io::{Cursor, Read};

/// The parts of a body around the file's bytes.
#[derive(Debug, Clone)]
pub struct Body {
    boundary: String,
    head: Vec<u8>,
    tail: Vec<u8>,
    file_len: u64,
}

/// A random boundary; 128 random bits make a collision with the file's bytes implausible.
pub fn random_boundary() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock still makes a boundary unlikely to occur in media.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    format!("ytcaption-{}", hex::encode(bytes))
}

/// A header parameter value: quotes and line breaks cannot appear inside it.
fn quoted(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .map(|c| if c == '"' { '\'' } else { c })
        .collect()
}

impl Body {
    /// Text `fields` first, then the file part `file_field` named `filename` of `file_len`
    /// bytes.
    pub fn new(
        boundary: String,
        fields: &[(&str, String)],
        file_field: &str,
        filename: &str,
        file_len: u64,
    ) -> Body {
        let mut head = Vec::new();
        for (name, value) in fields {
            head.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{value}\r\n",
                    quoted(name)
                )
                .as_bytes(),
            );
        }
        head.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                quoted(file_field),
                quoted(filename)
            )
            .as_bytes(),
        );
        let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
        Body {
            boundary,
            head,
            tail,
            file_len,
        }
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// Total bytes on the wire.
    pub fn content_length(&self) -> u64 {
        self.head.len() as u64 + self.file_len + self.tail.len() as u64
    }

    /// The body, reading the file's bytes from `file` (at most the announced length).
    pub fn reader<R: Read>(self, file: R) -> impl Read {
        Cursor::new(self.head)
            .chain(file.take(self.file_len))
            .chain(Cursor::new(self.tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_well_formed_and_its_length_exact() {
        let body = Body::new(
            "B".into(),
            &[("language", "en".to_string())],
            "file",
            "my \"talk\".wav",
            4,
        );
        assert_eq!(body.content_type(), "multipart/form-data; boundary=B");
        let len = body.content_length();
        let mut out = Vec::new();
        body.reader(&b"RIFFextra"[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len() as u64, len);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "--B\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n\
             --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"my 'talk'.wav\"\r\n\
             Content-Type: application/octet-stream\r\n\r\nRIFF\r\n--B--\r\n"
        );
    }

    #[test]
    fn boundaries_differ() {
        let a = random_boundary();
        assert!(a.starts_with("ytcaption-") && a.len() == 42, "{a}");
        assert_ne!(a, random_boundary());
    }
}
