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

use poem::{Request, RequestBody};
use poem_openapi::{
    payload::{ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::de::DeserializeOwned;

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

/// A JSON request body, parsed and validated. See the module docs.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: Type + Send> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        // `application/json; charset=utf-8` and the like are fine.
        content_type
            .split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
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
