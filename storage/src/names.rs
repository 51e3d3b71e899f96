//! The names files are shown and downloaded under. A client's file name is only ever a
//! label: it never becomes part of an object key, and it is cleaned before it is stored or
//! put into a header. Its extension always agrees with the type read from the bytes
//! (`report.html` holding a PNG is shown and downloaded as `report.png`), so that no saved
//! file opens as something else than it is.

use crate::sniff::FileType;

/// Longest display name kept, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Longest run after the last dot that counts as an extension, in characters.
const MAX_EXTENSION_CHARS: usize = 10;

/// A display name from what a client sent: the last path component (a browser may send
/// `C:\Users\me\cat.png`), without control or bidirectional-override characters, white
/// space collapsed, at most [`MAX_NAME_CHARS`] characters (the extension kept when it has
/// to be shortened); `file` when nothing is left. With the type of the bytes, the
/// extension is made to agree with it: one of the type's extensions stays (`photo.jpeg`),
/// another is replaced (`report.html` → `report.png`) and a missing one is added
/// (`report` → `report.png`). Cleaning a display name again changes nothing.
pub fn display_name(raw: &str, kind: Option<FileType>) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    let trimmed = collapsed.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let name = if trimmed.is_empty() { "file" } else { trimmed };
    let (stem, extension) = match split_extension(name) {
        Some((stem, ext)) => (stem, Some(ext)),
        None => (name, None),
    };
    let extension = match kind {
        Some(kind)
            if !extension.is_some_and(|ext| {
                kind.extensions()
                    .iter()
                    .any(|known| ext.eq_ignore_ascii_case(known))
            }) =>
        {
            Some(kind.extensions()[0])
        }
        _ => extension,
    };
    let stem = stem.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let stem = if stem.is_empty() { "file" } else { stem };
    let room = MAX_NAME_CHARS - extension.map_or(0, |e| e.chars().count() + 1);
    let stem: String = stem.chars().take(room).collect();
    let stem = stem.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    match extension {
        Some(ext) => format!("{stem}.{ext}"),
        None => stem.to_owned(),
    }
}

/// `name`'s stem and extension, when it ends in one: a dot, then 1 to
/// [`MAX_EXTENSION_CHARS`] ASCII letters and digits, at least one a letter (`v1.5` has
/// none, `notes.final draft` neither).
fn split_extension(name: &str) -> Option<(&str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let is_extension = !stem.is_empty()
        && (1..=MAX_EXTENSION_CHARS).contains(&ext.len())
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        && ext.bytes().any(|b| b.is_ascii_alphabetic());
    is_extension.then_some((stem, ext))
}

/// Characters that reorder text (`cat\u{202E}gnp.exe` shows as `catexe.png`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `Content-Disposition: attachment` for `name` (RFC 6266): an ASCII `filename` for old
/// clients and the exact name as UTF-8 in `filename*` (RFC 8187).
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for byte in name.bytes() {
        // RFC 8187 attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." /
        // "^" / "_" / "`" / "|" / "~"; everything else is percent-encoded.
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_cleaned() {
        assert_eq!(display_name("cat.png", None), "cat.png");
        assert_eq!(display_name("C:\\Users\\me\\cat.png", None), "cat.png");
        assert_eq!(display_name("../../etc/passwd", None), "passwd");
        assert_eq!(display_name("a\u{0}b\r\n\tc.txt", None), "abc.txt");
        assert_eq!(
            display_name("  my   holiday\u{202E}gnp.exe ", None),
            "my holidaygnp.exe"
        );
        assert_eq!(display_name("...", None), "file");
        assert_eq!(display_name("", None), "file");
        let long = format!("{}.jpeg", "x".repeat(500));
        let shortened = display_name(&long, None);
        assert_eq!(shortened.chars().count(), MAX_NAME_CHARS);
        assert!(shortened.ends_with("x.jpeg"));
        let wide = "é".repeat(300);
        assert_eq!(display_name(&wide, None).chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn extensions_agree_with_the_bytes() {
        use FileType::*;
        for (raw, kind, shown) in [
            ("report.html", Png, "report.png"),
            ("report.svg", Png, "report.png"),
            ("setup.EXE", Pdf, "setup.pdf"),
            ("report", Png, "report.png"),
            ("photo.jpeg", Jpeg, "photo.jpeg"),
            ("photo.JPG", Jpeg, "photo.JPG"),
            ("cat.png", Png, "cat.png"),
            ("cat.png", Webp, "cat.webp"),
            ("v1.5", Pdf, "v1.5.pdf"),
            ("notes.final draft", Gif, "notes.final draft.gif"),
            ("archive.tar.gz", Png, "archive.tar.png"),
            ("..", Png, "file.png"),
            ("a\\b/report.html ", Png, "report.png"),
        ] {
            assert_eq!(display_name(raw, Some(kind)), shown, "{raw}");
            // Cleaning again changes nothing.
            assert_eq!(display_name(shown, Some(kind)), shown, "{raw}");
        }
        let long = format!("{}.html", "x".repeat(500));
        let shown = display_name(&long, Some(Png));
        assert_eq!(shown.chars().count(), MAX_NAME_CHARS);
        assert!(shown.ends_with("x.png"), "{shown}");
        let dots = format!("{}.html", ".".repeat(300));
        assert_eq!(display_name(&dots, Some(Png)), "html.png");
    }

    #[test]
    fn dispositions_quote_nothing_dangerous() {
        assert_eq!(
            content_disposition("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            content_disposition("naïve \"plan\"; x=1.pdf"),
            "attachment; filename=\"na_ve _plan_; x=1.pdf\"; filename*=UTF-8''na%C3%AFve%20%22plan%22%3B%20x%3D1.pdf"
        );
        let header = content_disposition("a\r\nSet-Cookie: x");
        assert!(!header.contains('\r') && !header.contains('\n'));
    }
}
