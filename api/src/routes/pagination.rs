//! Keyset pagination shared by the listings: the page of `limit + 1` rows, and the cursors
//! of listings ordered by creation (`<created_at µs>_<id>`).

/// Keyset pagination: listings fetch `limit + 1` rows, the extra one only telling that a
/// next page exists. Returns the page and the cursor of its last row when there is more.
pub(crate) fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    (rows, next)
}

/// The cursor of a listing ordered by creation: `<created_at µs>_<id>`.
pub(crate) fn created_cursor(created_at: chrono::DateTime<chrono::Utc>, id: uuid::Uuid) -> String {
    format!("{}_{}", created_at.timestamp_micros(), id.simple())
}

/// The keyset (created_at, id) of a cursor [`created_cursor`] made; a 400 for anything else.
pub(crate) fn decode_created_cursor(
    cursor: &str,
) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), crate::error::ApiError> {
    cursor
        .split_once('_')
        .and_then(|(micros, id)| {
            let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
            Some((at, uuid::Uuid::parse_str(id).ok()?))
        })
        .ok_or_else(|| {
            crate::error::ApiError::new(
                crate::error::ErrorCode::InvalidParameter,
                "Parameter `cursor` is not a cursor this API issued.",
            )
        })
}
