-- Email delivery tracking: one row per message, in the control plane beside the queue
-- (`public.jobs`) that sends it, so operators page every tenant's messages newest first
-- in one index scan; a tenant reads only its own rows, the API filtering by the
-- authenticated tenant's id. A message's id is the id of the job that sends it (one job
-- sends at most one message). Rows go with their tenant when it is purged.
create table public.email_messages (
    id uuid primary key,
    tenant_id uuid references public.tenants (id) on delete cascade,
    template text not null,
    recipient text not null,
    status text not null default 'queued',
    attempts integer not null default 0,
    -- The SMTP server's last answer (or the last error), bounded by the mailer.
    last_response text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    sent_at timestamptz,
    constraint email_messages_status_valid
        check (status in ('queued', 'sent', 'failed', 'suppressed')),
    constraint email_messages_template_length check (char_length(template) between 1 and 64),
    constraint email_messages_recipient_length check (char_length(recipient) <= 320),
    constraint email_messages_response_length check (char_length(last_response) <= 1000),
    constraint email_messages_attempts_valid check (attempts >= 0)
);

-- The listings: a tenant's newest first, and everyone's newest first (also the prune's).
create index email_messages_tenant_idx on public.email_messages (tenant_id, created_at desc, id desc);
create index email_messages_created_idx on public.email_messages (created_at desc, id desc);

-- A message enqueued as an `email.send` job is `queued` from the moment its job exists
-- (in the enqueueing transaction: a rolled-back message never shows), whoever enqueued
-- it. Messages whose job mints a link (verification, reset, invitation) get their row at
-- their first attempt, when the job knows whether there is anyone to write to.
-- When a job dies (every attempt failed, or its lease lapsed on the last one), its
-- message is `failed`, whatever killed it.
create function shared.track_email_job() returns trigger
language plpgsql
security definer
set search_path = pg_catalog
as $$
begin
    if tg_op = 'INSERT' then
        if new.payload ? 'to' and new.payload ? 'template' then
            insert into public.email_messages (id, tenant_id, template, recipient, created_at, updated_at)
            values (new.id, new.tenant_id, left(new.payload ->> 'template', 64),
                    left(new.payload ->> 'to', 320), new.created_at, new.created_at)
            on conflict (id) do nothing;
        end if;
    elsif new.status = 'dead' then
        update public.email_messages set status = 'failed', updated_at = now()
        where id = new.id and status = 'queued';
    end if;
    return null;
end
$$;

revoke all on function shared.track_email_job() from public;

create trigger jobs_email_queued after insert on public.jobs
    for each row when (new.kind = 'email.send')
    execute function shared.track_email_job();

create trigger jobs_email_dead after update of status on public.jobs
    for each row when (new.status = 'dead' and old.status is distinct from 'dead')
    execute function shared.track_email_job();
