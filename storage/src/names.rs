//! The names files are shown and downloaded under. A client's file name is only ever a
//! label: it never becomes part of an object key, and it is cleaned before it is stored or
//! put into a header.

/// Longest display name kept, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A display name from what a client sent: the last path component (a browser may send
/// `C:\Users\me\cat.png`), without control or bidirectional-override characters, white
/// space collapsed, at most [`MAX_NAME_CHARS`] characters (the extension kept when it has
/// to be shortened). `file` when nothing is left.
pub fn display_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    let trimmed = collapsed.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if trimmed.is_empty() {
        return "file".to_owned();
    }
    if trimmed.chars().count() <= MAX_NAME_CHARS {
        return trimmed.to_owned();
    }
    let (stem, extension) = match trimmed.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.chars().count() <= 10 => (stem, Some(ext)),
        _ => (trimmed, None),
    };
    let room = MAX_NAME_CHARS - extension.map_or(0, |e| e.chars().count() + 1);
    let stem: String = stem.chars().take(room).collect();
    match extension {
        Some(ext) => format!("{stem}.{ext}"),
        None => stem,
    }
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
        assert_eq!(display_name("cat.png"), "cat.png");
        assert_eq!(display_name("C:\\Users\\me\\cat.png"), "cat.png");
        assert_eq!(display_name("../../etc/passwd"), "passwd");
        assert_eq!(display_name("a\u{0}b\r\n\tc.txt"), "abc.txt");
        assert_eq!(
            display_name("  my   holiday\u{202E}gnp.exe "),
            "my holidaygnp.exe"
        );
        assert_eq!(display_name("..."), "file");
        assert_eq!(display_name(""), "file");
        let long = format!("{}.jpeg", "x".repeat(500));
        let shortened = display_name(&long);
        assert_eq!(shortened.chars().count(), MAX_NAME_CHARS);
        assert!(shortened.ends_with("x.jpeg"));
        let wide = "é".repeat(300);
        assert_eq!(display_name(&wide).chars().count(), MAX_NAME_CHARS);
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
