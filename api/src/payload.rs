//! `JsonBody<T>`: the JSON request payload every endpoint uses instead of poem-openapi's
//! `Json<T>`, so that bad input gets precise problems:
//!
//! * not JSON at all → 400 `malformed_json` with line and column;
//! * JSON of the wrong shape (missing, unknown or mistyped fields) → 422
//!   `validation_failed` naming the field path;
//! * well-shaped but invalid values → 422 `validation_failed` listing every failing field
//!   (from [`Validate`]).
//!
//! The schema in the OpenAPI document still comes from the type's poem-openapi derive.
//!
//! `JsonReply<T>` is the response side for the busiest routes: poem-openapi's `Json<T>`
//! renders by building a `serde_json::Value` tree of the whole body (every string copied,
//! every object a map) and then writing that out, which was a sixth of a product listing's
//! CPU. `JsonReply<T>` writes `T`'s serde `Serialize` straight into the body, with the
//! schema of its poem-openapi derive. The two must agree: debug builds (every test) render
//! both ways and panic on any difference.

use poem::{IntoResponse, Request, RequestBody, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse,
    payload::{ParsePayload, Payload},
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{ApiError, ErrorCode, FieldCode, FieldError};

/// Semantic validation of a deserialized request body.
pub trait Validate {
    /// Every invalid field, or `Ok` when the value may be used.
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        Ok(())
    }
}

/// The outcome of a [`Validate::validate`] that collected `errors`: `Ok` when there are none.
pub fn all_valid(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether `content_type` is JSON: `application/json; charset=utf-8` and the like are fine.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON request body, parsed and validated. See the module docs.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: Type + Send> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned + Validate + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = body.take()?.into_bytes().await?;
        let value = parse_json::<T>(&bytes)?;
        value.validate().map_err(ApiError::validation)?;
        Ok(Self(value))
    }
}

poem_openapi::impl_apirequest_for_payload!(JsonBody<T>, T: Type + DeserializeOwned + Validate + Send);

/// A JSON response body written from `T`'s serde `Serialize`. See the module docs.
#[derive(Debug, Clone)]
pub struct JsonReply<T>(pub T);

impl<T: Type + Send> Payload for JsonReply<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + ToJSON + Send> IntoResponse for JsonReply<T> {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self.0) {
            Ok(body) => body,
            Err(error) => {
                // Only a `Serialize` that fails by itself, or a map with non-string keys.
                tracing::error!(%error, "a response could not be rendered");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        #[cfg(debug_assertions)]
        assert_renderings_agree(&self.0, &body);
        Response::builder()
            .content_type(<Self as Payload>::CONTENT_TYPE)
            .body(body)
    }
}

impl<T: Serialize + ToJSON + Send> ApiResponse for JsonReply<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: <Self as Payload>::CONTENT_TYPE,
                    schema: <Self as Payload>::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// serde renderings of the values that poem-openapi writes its own way, for the fields of
/// [`JsonReply`] types (`#[serde(serialize_with = "…")]`).
pub mod as_poem {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    /// A time as poem-openapi writes it: RFC 3339 with `+00:00` (chrono's serde writes `Z`).
    pub fn time<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&at.to_rfc3339())
    }

    /// An optional [`time`]: `null` when absent.
    pub fn optional_time<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => time(at, serializer),
            None => serializer.serialize_none(),
        }
    }
}

/// Panics unless `body` is what poem-openapi's own rendering of `value` would be, byte
/// for byte: a field renamed or formatted differently by the serde derive than by the
/// poem-openapi one would otherwise change the API without a trace in the document.
#[cfg(debug_assertions)]
fn assert_renderings_agree<T: ToJSON>(value: &T, body: &[u8]) {
    let expected = serde_json::to_vec(&value.to_json()).expect("a Value always renders");
    assert!(
        expected == body,
        "the serde rendering differs from poem-openapi's:\n serde: {}\n  poem: {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&expected),
    );
}

/// Deserializes `bytes`, classifying failures as syntax (400) or shape (422) errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::MalformedJson,
            "The request body is empty; a JSON document is required.",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ApiError::new(
                ErrorCode::MalformedJson,
                format!(
                    "The body is not valid JSON: {} (line {}, column {}).",
                    strip_position(&inner.to_string()),
                    inner.line(),
                    inner.column()
                ),
            ),
            serde_json::error::Category::Data => {
                ApiError::validation(vec![shape_error(&path, &inner)])
            }
        }
    })?;
    de.end().map_err(|inner| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!(
                "Unexpected data after the JSON document (line {}, column {}).",
                inner.line(),
                inner.column()
            ),
        )
    })?;
    Ok(value)
}

/// Turns serde's data error into a field error with the full path of the field.
fn shape_error(path: &str, err: &serde_json::Error) -> FieldError {
    let message = strip_position(&err.to_string()).to_owned();
    let join = |name: &str| {
        if path.is_empty() || path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_owned);
    if let Some(name) = message.strip_prefix("missing field ").and_then(quoted) {
        return FieldError::new(join(&name), FieldCode::Required, "This field is required.");
    }
    if message.starts_with("unknown field ") {
        // The path already ends with the unknown field's name.
        return FieldError::new(path, FieldCode::UnknownField, message);
    }
    let field = if path == "." {
        String::new()
    } else {
        path.to_owned()
    };
    let code = if message.starts_with("invalid type") {
        FieldCode::InvalidType
    } else {
        FieldCode::InvalidValue
    };
    FieldError::new(field, code, message)
}

/// serde_json appends " at line L column C"; the position is reported separately.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields exist to be deserialized")]
    struct Sample {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "fields exist to be deserialized")]
    struct Inner {
        count: u32,
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        for body in [
            &b"{\"name\": "[..],
            b"not json",
            b"  ",
            b"{\"name\": \"x\", \"inner\": {\"count\": 1}} {}",
        ] {
            let err = parse_json::<Sample>(body).unwrap_err();
            assert_eq!(
                err.code(),
                ErrorCode::MalformedJson,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let cases: [(&[u8], &str, &str); 4] = [
            (b"{\"inner\": {\"count\": 1}}", "name", "required"),
            (
                b"{\"name\": \"x\", \"inner\": {}}",
                "inner.count",
                "required",
            ),
            (
                b"{\"name\": 5, \"inner\": {\"count\": 1}}",
                "name",
                "invalid_type",
            ),
            (
                b"{\"name\": \"x\", \"inner\": {\"count\": 1}, \"extra\": 1}",
                "extra",
                "unknown_field",
            ),
        ];
        for (body, field, code) in cases {
            let err = parse_json::<Sample>(body).unwrap_err();
            assert_eq!(err.code(), ErrorCode::ValidationFailed);
            assert_eq!(err.field_errors()[0].field, field);
            assert_eq!(err.field_errors()[0].code, code);
        }
    }

    #[derive(Debug, poem_openapi::Object, Serialize)]
    struct Stamped {
        #[serde(serialize_with = "as_poem::time")]
        at: chrono::DateTime<chrono::Utc>,
        #[serde(serialize_with = "as_poem::optional_time")]
        until: Option<chrono::DateTime<chrono::Utc>>,
        note: Option<String>,
    }

    #[derive(Debug, poem_openapi::Object, Serialize)]
    struct Unadjusted {
        at: chrono::DateTime<chrono::Utc>,
    }

    fn rendered<T: Serialize + ToJSON + Send>(value: T) -> String {
        let response = JsonReply(value).into_response();
        assert_eq!(
            response.content_type(),
            Some("application/json; charset=utf-8")
        );
        let body = futures_util::FutureExt::now_or_never(response.into_body().into_vec())
            .expect("an in-memory body")
            .expect("readable");
        String::from_utf8(body).expect("UTF-8")
    }

    #[test]
    fn replies_render_as_poem_openapi_would() {
        let at = chrono::DateTime::from_timestamp(1_764_614_400, 123_456_000).unwrap();
        let body = rendered(Stamped {
            at,
            until: None,
            note: None,
        });
        assert_eq!(
            body,
            r#"{"at":"2025-12-01T18:40:00.123456+00:00","until":null,"note":null}"#
        );
        let body = rendered(Stamped {
            at,
            until: Some(at),
            note: Some("é\"".into()),
        });
        assert_eq!(
            body,
            r#"{"at":"2025-12-01T18:40:00.123456+00:00","until":"2025-12-01T18:40:00.123456+00:00","note":"é\""}"#
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the serde rendering differs")]
    fn a_rendering_that_differs_is_caught() {
        let at = chrono::DateTime::from_timestamp(1_764_614_400, 0).unwrap();
        rendered(Unadjusted { at });
    }
}

/// A JSON request body kept as the exact bytes sent (for signatures computed over them,
/// such as a webhook's). Documented as a JSON object.
#[derive(Debug, Clone)]
pub struct RawJson(pub bytes::Bytes);

impl Payload for RawJson {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        JsonBody::<serde_json::Value>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        serde_json::Value::schema_ref()
    }
}

impl ParsePayload for RawJson {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        Ok(Self(body.take()?.into_bytes().await?))
    }
}

poem_openapi::impl_apirequest_for_payload!(RawJson,);

/// A request field that must be an email address: the text as sent, documented as a string
/// of format `email`. Whether it is one is checked by the body's [`Validate`] (surrounding
/// whitespace ignored, at most 254 bytes), so that a bad address is a field error like any
/// other; derefs to the text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct EmailText(pub String);

impl std::ops::Deref for EmailText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for EmailText {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "string_email".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "email")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for EmailText {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            serde_json::Value::String(text) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for EmailText {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.0.clone()))
    }
}
