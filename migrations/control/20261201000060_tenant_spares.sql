-- Spare tenant schemas: built ahead of time (role, schema, grants, every tenant migration)
-- so that provisioning a tenant claims one instead of running the DDL while the caller
-- waits. A spare has no row in public.tenants, so nothing resolves to it, lists it,
-- migrates it as a tenant or purges it; claiming one moves its id into public.tenants and
-- its ledger rows into public.tenant_migrations in the provisioning transaction.
create table public.tenant_spares (
    -- Also the tenant id it will have: the schema and role are `t_<id in hex>`.
    id uuid primary key,
    created_at timestamptz not null default now()
);

-- Which tenant migrations each spare schema has (the spares' `tenant_migrations`).
create table public.spare_migrations (
    spare_id uuid not null references public.tenant_spares (id) on delete cascade,
    version bigint not null,
    description text not null,
    checksum bytea not null,
    applied_at timestamptz not null default now(),
    primary key (spare_id, version)
);
