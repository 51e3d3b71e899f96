-- Tenants, platform API keys and the per-tenant migration ledger.

-- Extensions and types shared by every tenant schema live here, never in a tenant schema
-- (sqlx caches type OIDs by bare name per connection) and never in public.
create schema if not exists shared;

-- Tenant roles may not even look into the control plane: a query that names a public
-- table while acting as a tenant fails with "permission denied for schema public".
revoke all on schema public from public;

create table public.tenants (
    id uuid primary key,
    slug text not null,
    name text not null,
    -- Derived from id (`t_<id in hex>`), never from request text; unique by construction.
    schema_name text not null,
    role_name text not null,
    status text not null default 'active',
    plan text not null default 'free',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    deleted_at timestamptz,
    purge_after timestamptz,
    constraint tenants_slug_key unique (slug),
    constraint tenants_schema_name_key unique (schema_name),
    constraint tenants_role_name_key unique (role_name),
    constraint tenants_slug_format check (slug ~ '^[a-z0-9]([a-z0-9-]{1,61})[a-z0-9]$'),
    constraint tenants_name_length check (char_length(name) between 1 and 200),
    constraint tenants_schema_name_format check (schema_name = 't_' || replace(id::text, '-', '')),
    constraint tenants_role_name_format check (role_name = schema_name),
    constraint tenants_status_valid check (status in ('active', 'suspended', 'deleted')),
    constraint tenants_deleted_consistent check ((status = 'deleted') = (deleted_at is not null))
);

create index tenants_purge_idx on public.tenants (purge_after) where status = 'deleted';

-- Platform API keys: only a SHA-256 of the key is stored; the key is shown once.
create table public.platform_api_keys (
    id uuid primary key,
    name text not null,
    -- First characters of the key, to tell keys apart in listings.
    prefix text not null,
    key_hash bytea not null,
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    constraint platform_api_keys_key_hash_key unique (key_hash)
);

-- Which tenant migrations each tenant schema has; tenants move in lockstep.
create table public.tenant_migrations (
    tenant_id uuid not null references public.tenants (id) on delete cascade,
    version bigint not null,
    description text not null,
    checksum bytea not null,
    applied_at timestamptz not null default now(),
    primary key (tenant_id, version)
);
