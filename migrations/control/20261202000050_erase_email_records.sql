-- Erasing a deleted user's addresses from the control plane: their delivery records in
-- `public.email_messages` and the `email.send` jobs addressed to them in `public.jobs`.
-- A tenant role may not touch either table, so the tenant's deletion (in its own
-- transaction, as its own role) calls this function, which runs as the owner and takes
-- the tenant from the role the transaction switched to, as `shared.enqueue_job` does: a
-- tenant can only ever erase its own records, and nothing else may call it.
--
-- * Jobs not running are deleted (a queued one is then never sent, and its record says
--   `suppressed`); a running one keeps going with its recipient replaced by the marker
--   `(erased)`, which the mailer never sends to, should it be retried.
-- * Records keep their id, template, status and times; the recipient becomes `(erased)`,
--   and an SMTP answer that quotes the address is dropped.
-- Returns how many records were erased.
create function shared.erase_email_records(p_user uuid, p_addresses text[]) returns integer
language plpgsql
security definer
set search_path = pg_catalog
as $$
declare
    acting text := current_setting('role');
    tenant uuid;
    keys text[];
    erased integer;
begin
    if acting like 't\_%' then
        select t.id into tenant from public.tenants t where t.role_name = acting;
    end if;
    if tenant is null then
        raise exception 'only a tenant may erase its email records' using errcode = '42501';
    end if;
    select coalesce(array_agg(distinct lower(btrim(a))), '{}') into keys
    from unnest(p_addresses) a
    where a is not null and btrim(a) <> '';

    update public.email_messages m
    set status = 'suppressed', last_response = 'not sent: the recipient''s user was deleted',
        updated_at = now()
    from public.jobs j
    where j.id = m.id and j.tenant_id = tenant and j.kind = 'email.send'
      and j.status in ('queued', 'failed')
      and m.tenant_id = tenant and m.status = 'queued'
      and (lower(j.payload ->> 'to') = any(keys) or j.payload ->> 'user_id' = p_user::text);

    delete from public.jobs j
    where j.tenant_id = tenant and j.kind = 'email.send' and j.status <> 'running'
      and (lower(j.payload ->> 'to') = any(keys) or j.payload ->> 'user_id' = p_user::text);

    update public.jobs j
    set payload = j.payload || jsonb_build_object('to', '(erased)', 'vars', '{}'::jsonb),
        updated_at = now()
    where j.tenant_id = tenant and j.kind = 'email.send' and j.status = 'running'
      and (lower(j.payload ->> 'to') = any(keys) or j.payload ->> 'user_id' = p_user::text);

    update public.email_messages m
    set recipient = '(erased)',
        last_response = case
            when exists (select 1 from unnest(keys) k where strpos(lower(m.last_response), k) > 0)
            then null else m.last_response end,
        updated_at = now()
    where m.tenant_id = tenant and lower(m.recipient) = any(keys);
    get diagnostics erased = row_count;
    return erased;
end
$$;

revoke all on function shared.erase_email_records(uuid, text[]) from public;
grant execute on function shared.erase_email_records(uuid, text[]) to canopy_tenant;
