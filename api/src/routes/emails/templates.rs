//! The tenant's email templates (`/v1/email-templates`, `tenant:manage`): which messages it
//! overrides, and its own subject and bodies of each, checked by rendering them with the
//! message's sample variables when saved (`email::overrides`), so that a template that
//! does not render is refused now (422 `template_error`), not when the message is sent.

use email::{
    Template,
    overrides::{self, BODY_MAX, SUBJECT_MAX, TemplateOverride},
};
use poem::{Request, web::Data};
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use serde::Deserialize;
use serde_json::json;

use super::TemplateName;
use crate::{
    AppState,
    auth::{Authorized, authn::client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{ApiTag, audit},
};

/// Email templates.
pub struct TemplatesApi;

/// A variable a template may use.
#[derive(Debug, Object)]
pub struct TemplateVariable {
    /// Its name (`{{ user_name }}`).
    pub name: String,
    /// The value a template is checked with when saved.
    pub sample: String,
}

/// A message and whether the tenant overrides it.
#[derive(Debug, Object)]
pub struct EmailTemplateSummary {
    /// Which message.
    pub name: TemplateName,
    /// Whether a recipient may decline it (`non_essential`) or not (`essential`).
    pub category: String,
    /// Whether the tenant has its own version.
    pub overridden: bool,
    /// The variables its subject and bodies may use.
    pub variables: Vec<TemplateVariable>,
}

/// A message's subject and bodies: the tenant's own when `overridden`, else the built-in
/// ones.
#[derive(Debug, Object)]
pub struct EmailTemplateView {
    /// Which message, and its variables.
    #[oai(flatten)]
    pub summary: EmailTemplateSummary,
    /// Subject (minijinja source).
    pub subject: String,
    /// Plain-text body (minijinja source).
    pub text: String,
    /// HTML body (minijinja source, values auto-escaped); absent when the tenant's version
    /// has none (its text, escaped, is sent as the HTML part).
    pub html: Option<String>,
}

/// The tenant's version of a message: minijinja sources using only the message's
/// variables (`GET /v1/email-templates/{name}` lists them). No loader, no custom functions;
/// rendering is bounded.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplateBody {
    /// Subject: 1 to 200 characters.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub subject: String,
    /// Plain-text body: 1 byte to 64 KiB.
    pub text: String,
    /// HTML body, at most 64 KiB; values are HTML-escaped. Absent: the text, escaped.
    #[serde(default)]
    pub html: Option<String>,
}

impl Validate for EmailTemplateBody {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let subject = self.subject.chars().count();
        if subject == 0 || subject > SUBJECT_MAX {
            errors.push(FieldError::new(
                "subject",
                FieldCode::Length,
                "must be 1 to 200 characters",
            ));
        }
        if self.text.is_empty() || self.text.len() > BODY_MAX {
            errors.push(FieldError::new(
                "text",
                FieldCode::Length,
                "must be 1 byte to 64 KiB",
            ));
        }
        if self.html.as_ref().is_some_and(|h| h.len() > BODY_MAX) {
            errors.push(FieldError::new(
                "html",
                FieldCode::TooLarge,
                "must be at most 64 KiB",
            ));
        }
        all_valid(errors)
    }
}

/// The template was deleted.
#[derive(ApiResponse)]
pub enum DeletedTemplate {
    /// The built-in template is used again (also when there was no override).
    #[oai(status = 204)]
    Deleted,
}

/// The template a path names; 404 for a name that is not one of the messages.
fn template_named(name: &str) -> Result<Template, ApiError> {
    name.parse()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "No email template has that name."))
}

fn summary(template: Template, overridden: bool) -> EmailTemplateSummary {
    EmailTemplateSummary {
        name: template.into(),
        category: template.category().as_str().to_owned(),
        overridden,
        variables: template
            .override_variables()
            .iter()
            .map(|(name, sample)| TemplateVariable {
                name: (*name).to_owned(),
                sample: (*sample).to_owned(),
            })
            .collect(),
    }
}

fn view(template: Template, custom: Option<TemplateOverride>) -> EmailTemplateView {
    match custom {
        Some(custom) => EmailTemplateView {
            summary: summary(template, true),
            subject: custom.subject,
            text: custom.text,
            html: custom.html,
        },
        None => {
            let source = |part| email::built_in_source(template, part).unwrap_or_default();
            EmailTemplateView {
                summary: summary(template, false),
                subject: source("subject.txt").trim().to_owned(),
                text: source("txt").to_owned(),
                html: Some(source("html").to_owned()),
            }
        }
    }
}

#[OpenApi(tag = "ApiTag::Email")]
impl TemplatesApi {
    /// The messages the tenant sends and whether it overrides each.
    #[oai(
        path = "/v1/email-templates",
        method = "get",
        operation_id = "list_email_templates"
    )]
    async fn list_email_templates(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::TenantManage>,
    ) -> ApiResult<Json<Vec<EmailTemplateSummary>>> {
        let mut tx = auth.begin(&state).await?;
        let overridden = overrides::overridden(&mut tx)
            .await
            .map_err(ApiError::from)?;
        tx.commit().await?;
        Ok(Json(
            Template::ALL
                .into_iter()
                .map(|t| summary(t, overridden.contains(&t)))
                .collect(),
        ))
    }

    /// A message's subject and bodies (the tenant's own, or the built-in ones).
    #[oai(
        path = "/v1/email-templates/:name",
        method = "get",
        operation_id = "get_email_template"
    )]
    async fn get_email_template(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::TenantManage>,
        /// The message (`verification`, `password_reset`, `security_notice`,
        /// `invitation`, `welcome`).
        #[oai(validator(max_length = 64))]
        name: Path<String>,
    ) -> ApiResult<Json<EmailTemplateView>> {
        let template = template_named(&name.0)?;
        let mut tx = auth.begin(&state).await?;
        let custom = overrides::find(&mut tx, template)
            .await
            .map_err(ApiError::from)?;
        tx.commit().await?;
        Ok(Json(view(template, custom)))
    }

    /// Set the tenant's own subject and bodies of a message.
    ///
    /// Checked by rendering each part with the message's sample variables: a syntax error,
    /// a variable the message does not have, or a template past the rendering budget is
    /// 422 `validation_failed` with field code `template_error` and the engine's message
    /// and line. The next message of this kind uses it.
    #[oai(
        path = "/v1/email-templates/:name",
        method = "put",
        operation_id = "put_email_template"
    )]
    async fn put_email_template(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::TenantManage>,
        /// The message.
        #[oai(validator(max_length = 64))]
        name: Path<String>,
        body: JsonBody<EmailTemplateBody>,
    ) -> ApiResult<Json<EmailTemplateView>> {
        let template = template_named(&name.0)?;
        let body = body.0;
        let custom = TemplateOverride {
            subject: body.subject,
            text: body.text,
            html: body.html,
        };
        // Bounded, but still CPU work: off the async runtime.
        let (custom, checked) = tokio::task::spawn_blocking(move || {
            let checked = overrides::check(template, &custom);
            (custom, checked)
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("checking the template: {e}")))?;
        checked.map_err(|problem| {
            ApiError::validation(vec![FieldError::new(
                problem.part,
                FieldCode::TemplateError,
                problem.message,
            )])
        })?;
        let mut tx = auth.begin(&state).await?;
        overrides::save(&mut tx, template, &custom)
            .await
            .map_err(ApiError::from)?;
        audit::record(
            &mut tx,
            "email_template.updated",
            Some(auth.principal.user_id),
            None,
            Some(auth.principal.session_id),
            &client_info(request),
            json!({ "template": template.as_str() }),
        )
        .await?;
        tx.commit().await?;
        Ok(Json(view(template, Some(custom))))
    }

    /// Drop the tenant's version of a message: the built-in one is used again.
    #[oai(
        path = "/v1/email-templates/:name",
        method = "delete",
        operation_id = "delete_email_template"
    )]
    async fn delete_email_template(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::TenantManage>,
        /// The message.
        #[oai(validator(max_length = 64))]
        name: Path<String>,
    ) -> ApiResult<DeletedTemplate> {
        let template = template_named(&name.0)?;
        let mut tx = auth.begin(&state).await?;
        if overrides::remove(&mut tx, template)
            .await
            .map_err(ApiError::from)?
        {
            audit::record(
                &mut tx,
                "email_template.deleted",
                Some(auth.principal.user_id),
                None,
                Some(auth.principal.session_id),
                &client_info(request),
                json!({ "template": template.as_str() }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(DeletedTemplate::Deleted)
    }
}
