//! What an upload is, decided from its first bytes, never from what the client says: the
//! declared `Content-Type` and the file name's extension are only checked against it.
//!
//! Markup is refused outright, whatever it is declared as: SVG and HTML can carry scripts
//! that a browser runs when the file is opened from our storage's origin.

/// How many leading bytes [`sniff`] needs to decide.
pub const SNIFF_LEN: usize = 512;

/// A type Canopy recognises from magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `image/jpeg`.
    Jpeg,
    /// `image/png`.
    Png,
    /// `image/webp`.
    Webp,
    /// `image/gif`.
    Gif,
    /// `application/pdf`.
    Pdf,
}

impl FileType {
    /// Every recognised type (also the default allow-list).
    pub const ALL: [FileType; 5] = [Self::Jpeg, Self::Png, Self::Webp, Self::Gif, Self::Pdf];

    /// The media type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Pdf => "application/pdf",
        }
    }

    /// The type whose media type is `mime` (as [`Self::mime`] spells it), if any.
    pub fn from_mime(mime: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.mime() == mime)
    }

    /// File name extensions that go with the type (lowercase, first preferred).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Self::Jpeg => &["jpg", "jpeg", "jpe", "jfif"],
            Self::Png => &["png"],
            Self::Webp => &["webp"],
            Self::Gif => &["gif"],
            Self::Pdf => &["pdf"],
        }
    }

    /// Whether it is an image (thumbnails are made of images only).
    pub fn is_image(self) -> bool {
        !matches!(self, Self::Pdf)
    }
}

/// Why an upload's type is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// SVG or HTML (active content).
    #[error("SVG and HTML files are not accepted")]
    Markup,
    /// The bytes are of no type Canopy accepts.
    #[error("the file's type is not one Canopy accepts")]
    Unknown,
    /// The client declared another type than the bytes have.
    #[error("the file is {actual} but was declared as {declared}")]
    DeclaredMismatch {
        /// What the bytes are.
        actual: &'static str,
        /// What the client said.
        declared: String,
    },
    /// The file name's extension belongs to another type.
    #[error("the file is {actual} but its name ends in .{extension}")]
    ExtensionMismatch {
        /// What the bytes are.
        actual: &'static str,
        /// The name's extension.
        extension: String,
    },
}

/// The type of a file starting with `head` (at least [`SNIFF_LEN`] bytes, or the whole
/// file if shorter).
pub fn sniff(head: &[u8]) -> Result<FileType, TypeError> {
    if head.is_empty() {
        return Err(TypeError::Empty);
    }
    let found = if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(FileType::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(FileType::Png)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(FileType::Webp)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(FileType::Gif)
    } else if head.starts_with(b"%PDF-") {
        Some(FileType::Pdf)
    } else {
        None
    };
    match found {
        Some(kind) => Ok(kind),
        None if is_markup(head) => Err(TypeError::Markup),
        None => Err(TypeError::Unknown),
    }
}

/// Whether `head` looks like SVG, HTML or XML (after a BOM and white space).
fn is_markup(head: &[u8]) -> bool {
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let lower: Vec<u8> = text[start..]
        .iter()
        .take(SNIFF_LEN)
        .map(u8::to_ascii_lowercase)
        .collect();
    let markers: [&[u8]; 6] = [
        b"<?xml",
        b"<svg",
        b"<!doctype",
        b"<html",
        b"<script",
        b"<!--",
    ];
    markers.iter().any(|m| lower.starts_with(m))
        || contains(&lower, b"<svg")
        || contains(&lower, b"<html")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks what the client said against what the bytes are. An absent declaration,
/// `application/octet-stream` and a name without extension say nothing.
pub fn check_claims(
    actual: FileType,
    declared: Option<&str>,
    file_name: Option<&str>,
) -> Result<(), TypeError> {
    if let Some(declared) = declared {
        let essence = declared
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let same = essence == actual.mime()
            || (actual == FileType::Jpeg && essence == "image/jpg")
            || essence == "application/octet-stream"
            || essence.is_empty();
        if !same {
            return Err(TypeError::DeclaredMismatch {
                actual: actual.mime(),
                declared: essence,
            });
        }
    }
    if let Some(extension) = file_name
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| !ext.is_empty())
        && !actual.extensions().contains(&extension.as_str())
    {
        return Err(TypeError::ExtensionMismatch {
            actual: actual.mime(),
            extension,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0";

    #[test]
    fn magic_bytes_decide_the_type() {
        assert_eq!(sniff(PNG), Ok(FileType::Png));
        assert_eq!(sniff(JPEG), Ok(FileType::Jpeg));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Ok(FileType::Webp));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Ok(FileType::Gif));
        assert_eq!(sniff(b"%PDF-1.7\n"), Ok(FileType::Pdf));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), Err(TypeError::Unknown));
        assert_eq!(sniff(b"PK\x03\x04"), Err(TypeError::Unknown));
        assert_eq!(sniff(b""), Err(TypeError::Empty));
    }

    #[test]
    fn media_types_name_their_type() {
        for kind in FileType::ALL {
            assert_eq!(FileType::from_mime(kind.mime()), Some(kind));
        }
        assert_eq!(FileType::from_mime("image/svg+xml"), None);
        assert_eq!(FileType::from_mime("text/html"), None);
    }

    #[test]
    fn markup_is_refused_however_it_starts() {
        for text in [
            &b"<svg xmlns='http://www.w3.org/2000/svg'/>"[..],
            b"\xEF\xBB\xBF  <?xml version='1.0'?><svg/>",
            b"\n<!DOCTYPE html><html>",
            b"<HTML><script>alert(1)</script>",
            b"<!-- hi --><svg>",
            b"junk before <svg onload=alert(1)>",
        ] {
            assert_eq!(
                sniff(text),
                Err(TypeError::Markup),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn claims_must_agree_with_the_bytes() {
        use FileType::*;
        assert_eq!(check_claims(Png, Some("image/png"), Some("a.PNG")), Ok(()));
        assert_eq!(
            check_claims(Jpeg, Some("image/jpg"), Some("photo.jpeg")),
            Ok(())
        );
        assert_eq!(
            check_claims(Png, Some("application/octet-stream"), Some("noext")),
            Ok(())
        );
        assert_eq!(check_claims(Png, None, None), Ok(()));
        assert!(matches!(
            check_claims(Png, Some("image/jpeg"), Some("a.png")),
            Err(TypeError::DeclaredMismatch { .. })
        ));
        assert!(matches!(
            check_claims(Pdf, Some("application/pdf; charset=x"), Some("invoice.exe")),
            Err(TypeError::ExtensionMismatch { .. })
        ));
        assert!(matches!(
            check_claims(Jpeg, None, Some("cat.svg")),
            Err(TypeError::ExtensionMismatch { .. })
        ));
    }
}
