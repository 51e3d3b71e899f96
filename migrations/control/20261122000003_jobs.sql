-- The durable job queue. A job with a tenant runs inside that tenant's schema; a tenant's
-- jobs go with it when it is purged.
create table public.jobs (
    id uuid primary key,
    kind text not null,
    payload jsonb not null default '{}',
    tenant_id uuid references public.tenants (id) on delete cascade,
    priority smallint not null default 0,
    status text not null default 'queued',
    attempts integer not null default 0,
    max_attempts integer not null default 5,
    run_at timestamptz not null default now(),
    lease_expires_at timestamptz,
    locked_by text,
    unique_key text,
    last_error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz,
    constraint jobs_status_valid check (status in ('queued', 'running', 'succeeded', 'failed', 'dead')),
    constraint jobs_attempts_valid check (attempts >= 0 and max_attempts >= 1),
    constraint jobs_kind_length check (char_length(kind) between 1 and 100)
);

-- What workers look for: due jobs, best priority first.
create index jobs_due_idx on public.jobs (priority desc, run_at) where status in ('queued', 'failed');
-- Running jobs whose worker may have died.
create index jobs_lease_idx on public.jobs (lease_expires_at) where status = 'running';
create index jobs_tenant_idx on public.jobs (tenant_id, created_at);
-- At most one pending job per (kind, unique key).
create unique index jobs_unique_key_idx on public.jobs (kind, unique_key)
    where unique_key is not null and status in ('queued', 'running', 'failed');

-- Enqueueing from inside a tenant transaction: the tenant role may not touch
-- public.jobs, so it calls this function, which runs as the owner and takes the tenant
-- from the role the transaction has switched to (`set local role`), which a tenant
-- cannot forge: a tenant can only ever enqueue jobs for itself.
create function shared.enqueue_job(
    p_kind text,
    p_payload jsonb,
    p_tenant_id uuid,
    p_priority smallint,
    p_run_at timestamptz,
    p_max_attempts integer,
    p_unique_key text
) returns uuid
language plpgsql
security definer
set search_path = pg_catalog
as $$
declare
    acting text := current_setting('role');
    tenant uuid;
    job uuid;
begin
    if acting like 't\_%' then
        select t.id into tenant from public.tenants t where t.role_name = acting;
        if tenant is null or (p_tenant_id is not null and p_tenant_id <> tenant) then
            raise exception 'a tenant may only enqueue its own jobs' using errcode = '42501';
        end if;
    else
        tenant := p_tenant_id;
    end if;
    insert into public.jobs (id, kind, payload, tenant_id, priority, run_at, max_attempts, unique_key)
    values (gen_random_uuid(), p_kind, p_payload, tenant, p_priority, coalesce(p_run_at, now()), p_max_attempts, p_unique_key)
    on conflict (kind, unique_key) where unique_key is not null and status in ('queued', 'running', 'failed')
    do nothing
    returning id into job;
    if job is null then
        select j.id into job from public.jobs j
        where j.kind = p_kind and j.unique_key = p_unique_key and j.status in ('queued', 'running', 'failed');
    end if;
    -- Wake idle workers at commit (dropped if the transaction rolls back).
    perform pg_notify('canopy_jobs', p_kind);
    return job;
end
$$;

revoke all on function shared.enqueue_job(text, jsonb, uuid, smallint, timestamptz, integer, text) from public;

-- What every tenant role may use outside its own schema is granted once, to this group
-- role, and tenant roles become members. (Granting each tenant role directly would rewrite
-- one shared ACL row per provisioning: concurrent provisionings then fail with "tuple
-- concurrently updated", and the ACL grows with the number of tenants.) Roles are
-- cluster-wide, so another database of the cluster may have created it already.
do $$
begin
    create role canopy_tenant nologin;
exception
    when duplicate_object or unique_violation then null;
end
$$;

grant usage on schema shared to canopy_tenant;
grant execute on function shared.enqueue_job(text, jsonb, uuid, smallint, timestamptz, integer, text) to canopy_tenant;

-- Tenants provisioned before this migration: inherit the group's privileges.
do $$
declare
    r record;
begin
    for r in select role_name from public.tenants loop
        execute format('alter role %I inherit', r.role_name);
        execute format('grant canopy_tenant to %I', r.role_name);
    end loop;
end
$$;
