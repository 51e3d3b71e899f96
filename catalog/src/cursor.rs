//! The opaque cursors of product listings.
//!
//! A cursor is the last row's position (its sort value and id) together with the `sort`
//! and `order` it was issued for, as base64url JSON. Carrying the sort and order means a
//! cursor replayed with another sort is refused rather than silently skipping rows.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    model::{Product, ProductSort, SortOrder},
    store::SortValue,
};

/// A cursor that this API did not issue for this `sort` and `order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor issued for this sort and order")]
pub struct InvalidCursor;

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    sort: ProductSort,
    order: SortOrder,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int: Option<i64>,
    id: Uuid,
}

/// The cursor of the page after `last`, in a listing by `sort` and `order`.
pub fn encode(sort: ProductSort, order: SortOrder, last: &Product) -> String {
    let (time, text, int) = match sort {
        ProductSort::CreatedAt => (Some(last.created_at), None, None),
        ProductSort::UpdatedAt => (Some(last.updated_at), None, None),
        ProductSort::Name => (None, Some(last.name.clone()), None),
        ProductSort::Price => (None, None, Some(last.price)),
    };
    let cursor = Cursor {
        sort,
        order,
        time,
        text,
        int,
        id: last.id,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
}

/// The position a cursor [`encode`] issued for `sort` and `order` names.
pub fn decode(
    raw: &str,
    sort: ProductSort,
    order: SortOrder,
) -> Result<(SortValue, Uuid), InvalidCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| InvalidCursor)?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| InvalidCursor)?;
    if cursor.sort != sort || cursor.order != order {
        return Err(InvalidCursor);
    }
    let value = match (sort, cursor.time, cursor.text, cursor.int) {
        (ProductSort::CreatedAt | ProductSort::UpdatedAt, Some(t), None, None) => {
            SortValue::Time(t)
        }
        // PostgreSQL cannot take a NUL in a text parameter.
        (ProductSort::Name, None, Some(s), None) if !s.contains('\0') => SortValue::Text(s),
        (ProductSort::Price, None, None, Some(n)) => SortValue::Int(n),
        _ => return Err(InvalidCursor),
    };
    Ok((value, cursor.id))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::model::{ProductStatus, ProductType};

    const SORTS: [ProductSort; 4] = [
        ProductSort::CreatedAt,
        ProductSort::UpdatedAt,
        ProductSort::Name,
        ProductSort::Price,
    ];

    fn product(name: String, price: i64, micros: i64) -> Product {
        let at = Utc
            .timestamp_micros(micros)
            .single()
            .unwrap_or_else(Utc::now);
        Product {
            id: Uuid::now_v7(),
            sku: "SKU-1".to_owned(),
            name,
            description: String::new(),
            price,
            compare_at_price: None,
            currency: "USD".to_owned(),
            status: ProductStatus::Active,
            kind: ProductType::Physical,
            stock_quantity: 0,
            low_stock_threshold: 0,
            attributes: serde_json::json!({}),
            tags: Vec::new(),
            image_ids: Vec::new(),
            version: 1,
            created_at: at,
            updated_at: at,
            deleted_at: None,
        }
    }

    fn expected(sort: ProductSort, p: &Product) -> SortValue {
        match sort {
            ProductSort::CreatedAt => SortValue::Time(p.created_at),
            ProductSort::UpdatedAt => SortValue::Time(p.updated_at),
            ProductSort::Name => SortValue::Text(p.name.clone()),
            ProductSort::Price => SortValue::Int(p.price),
        }
    }

    #[test]
    fn the_wire_format_is_stable() {
        let mut p = product("Lamp".to_owned(), 1250, 0);
        p.id = Uuid::nil();
        let raw = encode(ProductSort::Price, SortOrder::Desc, &p);
        let json = URL_SAFE_NO_PAD.decode(&raw).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"sort":"price","order":"desc","int":1250,"id":"00000000-0000-0000-0000-000000000000"}"#
        );
    }

    #[test]
    fn a_cursor_is_refused_for_another_sort_or_order_and_garbage() {
        let p = product("Lamp".to_owned(), 1, 1);
        let raw = encode(ProductSort::Name, SortOrder::Asc, &p);
        assert!(decode(&raw, ProductSort::Name, SortOrder::Desc).is_err());
        assert!(decode(&raw, ProductSort::Price, SortOrder::Asc).is_err());
        assert_eq!(
            decode("not base64!", ProductSort::Name, SortOrder::Asc),
            Err(InvalidCursor)
        );
        let nul = encode(
            ProductSort::Name,
            SortOrder::Asc,
            &product("a\0".to_owned(), 1, 1),
        );
        assert_eq!(
            decode(&nul, ProductSort::Name, SortOrder::Asc),
            Err(InvalidCursor)
        );
    }

    proptest! {
        #[test]
        fn cursors_round_trip(
            sort in 0..4usize,
            desc in any::<bool>(),
            name in "[^\u{0}]{0,40}",
            price in 0..=crate::MAX_AMOUNT,
            micros in 0..4_102_444_800_000_000i64,
        ) {
            let sort = SORTS[sort];
            let order = if desc { SortOrder::Desc } else { SortOrder::Asc };
            let p = product(name, price, micros);
            let raw = encode(sort, order, &p);
            prop_assert_eq!(decode(&raw, sort, order), Ok((expected(sort, &p), p.id)));
        }

        #[test]
        fn decoding_never_panics(raw in ".{0,200}") {
            let _ = decode(&raw, ProductSort::CreatedAt, SortOrder::Asc);
        }
    }
}
