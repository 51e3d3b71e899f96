//! Field checks shared by the request bodies of several resources (sign-up, registration,
//! profiles, invitations): each pushes a [`FieldError`] for a value it refuses.

use identity::PolicyViolation;

use crate::error::{FieldCode, FieldError};

/// An email address (trimmed) a mail can be sent to.
pub(crate) fn check_email(errors: &mut Vec<FieldError>, field: &str, email: &str) {
    if !email::is_valid_address(email.trim()) {
        errors.push(FieldError::new(
            field,
            FieldCode::Invalid,
            "must be an email address such as ada@example.com",
        ));
    }
}

/// The field code of the rule a refused password breaks.
fn policy_code(violation: PolicyViolation) -> FieldCode {
    match violation {
        PolicyViolation::TooShort => FieldCode::TooShort,
        PolicyViolation::TooLong => FieldCode::TooLong,
        PolicyViolation::Common => FieldCode::Common,
    }
}

/// A new password, judged by the password policy.
pub(crate) fn check_new_password(errors: &mut Vec<FieldError>, field: &str, password: &str) {
    if let Err(violation) = identity::check_policy(password) {
        errors.push(FieldError::new(
            field,
            policy_code(violation),
            format!("{field} {violation}"),
        ));
    }
}

/// A password as typed at login: present and of bounded size.
pub(crate) fn check_present_password(errors: &mut Vec<FieldError>, field: &str, password: &str) {
    if password.is_empty() || password.len() > 1024 {
        errors.push(FieldError::new(
            field,
            FieldCode::Invalid,
            "must be 1 to 1024 bytes",
        ));
    }
}

/// A person's name: 1 to 200 characters (trimmed), no control characters.
pub(crate) fn check_name(errors: &mut Vec<FieldError>, field: &str, name: &str) {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            FieldCode::Length,
            "must be 1 to 200 characters, without control characters",
        ));
    }
}

/// A change must set something: `given` pairs each field it may set with whether it does.
/// Refused with one body-level `empty` error naming them all.
pub(crate) fn check_some_change(errors: &mut Vec<FieldError>, given: &[(&str, bool)]) {
    if given.iter().any(|(_, set)| *set) {
        return;
    }
    let fields: Vec<String> = given.iter().map(|(f, _)| format!("`{f}`")).collect();
    errors.push(FieldError::new(
        "",
        FieldCode::Empty,
        format!("give at least one of {}", fields.join(", ")),
    ));
}
