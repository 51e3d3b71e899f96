//! Field checks shared by the request bodies of several resources (sign-up, registration,
//! profiles, invitations): each pushes a [`FieldError`] for a value it refuses.

use crate::error::FieldError;

/// An email address (trimmed) a mail can be sent to.
pub(crate) fn check_email(errors: &mut Vec<FieldError>, field: &str, email: &str) {
    if !email::is_valid_address(email.trim()) {
        errors.push(FieldError::new(
            field,
            "invalid",
            "must be an email address such as ada@example.com",
        ));
    }
}

/// A new password, judged by the password policy.
pub(crate) fn check_new_password(errors: &mut Vec<FieldError>, field: &str, password: &str) {
    if let Err(violation) = identity::check_policy(password) {
        errors.push(FieldError::new(
            field,
            violation.code(),
            format!("{field} {violation}"),
        ));
    }
}

/// A password as typed at login: present and of bounded size.
pub(crate) fn check_present_password(errors: &mut Vec<FieldError>, field: &str, password: &str) {
    if password.is_empty() || password.len() > 1024 {
        errors.push(FieldError::new(field, "invalid", "must be 1 to 1024 bytes"));
    }
}

/// A person's name: 1 to 200 characters (trimmed), no control characters.
pub(crate) fn check_name(errors: &mut Vec<FieldError>, field: &str, name: &str) {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "length",
            "must be 1 to 200 characters, without control characters",
        ));
    }
}
