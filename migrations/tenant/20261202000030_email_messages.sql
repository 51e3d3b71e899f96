-- Email preferences and template overrides of the tenant.

-- A user who declined a category of mail (`List-Unsubscribe`, RFC 8058). Essential mail
-- (verification, reset, invitation, security notices) has no row here and is never
-- suppressed.
create table email_unsubscribes (
    user_id uuid not null references users (id) on delete cascade,
    category text not null,
    created_at timestamptz not null default now(),
    primary key (user_id, category),
    constraint email_unsubscribes_category_valid check (category in ('non_essential'))
);

-- The tenant's own subject and bodies of a message (minijinja sources, checked by
-- rendering them when saved). No row: the built-in template.
create table email_templates (
    name text primary key,
    subject text not null,
    text_body text not null,
    html_body text,
    updated_at timestamptz not null default now(),
    constraint email_templates_name_length check (char_length(name) between 1 and 64),
    constraint email_templates_subject_length check (char_length(subject) <= 200),
    constraint email_templates_text_size check (octet_length(text_body) <= 65536),
    constraint email_templates_html_size check (octet_length(html_body) <= 65536)
);
