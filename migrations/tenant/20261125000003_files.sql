-- Files: the tenant's uploaded objects. The bytes live in the bucket under
-- `t/<tenant id>/files/<file id>/…`; a row exists only once its object does. Identical
-- live uploads (same SHA-256) share one row. `status` moves from `processing` to `ready`
-- (or `failed`) when the thumbnail job has run; non-images are `ready` at once.

create table files (
    id uuid primary key,
    name text not null,
    content_type text not null,
    size bigint not null,
    sha256 bytea not null,
    width integer,
    height integer,
    status text not null default 'processing',
    failure text,
    -- Sizes whose thumbnails exist, ascending.
    thumbnails integer[] not null default '{}',
    uploaded_by uuid references users (id) on delete set null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    deleted_at timestamptz,
    constraint files_name_length check (char_length(name) between 1 and 255),
    constraint files_content_type_known check (
        content_type in ('image/jpeg', 'image/png', 'image/webp', 'image/gif', 'application/pdf')
    ),
    constraint files_size_positive check (size > 0),
    constraint files_sha256_length check (octet_length(sha256) = 32),
    constraint files_dimensions_positive check (
        (width is null and height is null) or (width > 0 and height > 0)
    ),
    constraint files_status_valid check (status in ('processing', 'ready', 'failed'))
);

-- Dedupe: one live file per content.
create unique index files_sha256_key on files (sha256) where deleted_at is null;
-- Listing, newest first (ids are UUIDv7, so id order is upload order).
create index files_live_id on files (id desc) where deleted_at is null;

-- Bytes and files stored, kept in the same transactions that add and remove files, so the
-- quota check is one conditional update.
create table storage_usage (
    id boolean primary key default true,
    bytes bigint not null default 0,
    files bigint not null default 0,
    constraint storage_usage_single_row check (id),
    constraint storage_usage_non_negative check (bytes >= 0 and files >= 0)
);

insert into storage_usage (id) values (true);
