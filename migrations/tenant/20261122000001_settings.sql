-- Tenant-owned settings: one row per tenant schema. The control plane keeps only what
-- routing needs (slug, status, plan); what the tenant edits lives here, in its schema.
create table settings (
    id boolean primary key default true,
    locale text not null default 'en',
    timezone text not null default 'UTC',
    updated_at timestamptz not null default now(),
    constraint settings_single_row check (id),
    constraint settings_locale_format check (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    constraint settings_timezone_length check (char_length(timezone) between 1 and 64)
);

insert into settings (id) values (true);
