-- Erasing a deleted user's addresses from the control plane: their delivery records in
-- `public.email_messages` and the `email.send` jobs addressed to them in `public.jobs`.
-- A tenant role may not touch either table, so the tenant's deletion (in its own
-- transaction, as its own role) calls this function, which runs as the owner and takes
-- the tenant from the role the transaction switched to, as `shared.enqueue_job` does: a
-- tenant can only ever erase its own records, and nothing else may call it.
--
-- * The addresses are those given and those of `email.send` jobs naming the user.
-- * Jobs whose payload holds one of them (`to` of mail, `email` of a link asked for by
--   address) are deleted unless running (queued mail is then never sent, and its record
--   says `suppressed`); a running one keeps going with the address replaced by the marker
--   `(erased)`, which the mailer never sends to (nor records over), should it be retried.
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
    -- The user's jobs are locked first: no worker claims one while this runs.
    perform 1 from public.jobs j
    where j.tenant_id = tenant
      and (j.payload ->> 'user_id' = p_user::text
           or lower(coalesce(j.payload ->> 'to', j.payload ->> 'email')) = any(
               select lower(btrim(a)) from unnest(p_addresses) a))
    for update;
    -- Every address given, and those of mail queued or sent to the user (a notice to an
    -- address they changed from names them by id).
    select coalesce(array_agg(distinct k), '{}') into keys
    from (
        select lower(btrim(a)) as k from unnest(p_addresses) a
        union
        select lower(btrim(j.payload ->> 'to')) from public.jobs j
        where j.tenant_id = tenant and j.kind = 'email.send'
          and j.payload ->> 'user_id' = p_user::text
    ) found
    where k is not null and k <> '';

    update public.email_messages m
    set status = 'suppressed', last_response = 'not sent: the recipient''s user was deleted',
        updated_at = now()
    from public.jobs j
    where j.id = m.id and j.tenant_id = tenant and j.kind = 'email.send'
      and j.status in ('queued', 'failed')
      and m.tenant_id = tenant and m.status = 'queued'
      and lower(j.payload ->> 'to') = any(keys);

    -- Jobs whose payload holds an address of theirs (mail to them, a link asked for by
    -- address) go unless running; a running one keeps only the marker and no error text.
    delete from public.jobs j
    where j.tenant_id = tenant and j.status <> 'running'
      and lower(coalesce(j.payload ->> 'to', j.payload ->> 'email')) = any(keys);

    update public.jobs j
    set payload = case when j.payload ? 'to'
                       then j.payload || jsonb_build_object('to', '(erased)', 'vars', '{}'::jsonb)
                       else j.payload || jsonb_build_object('email', '(erased)') end,
        last_error = null, updated_at = now()
    where j.tenant_id = tenant and j.status = 'running'
      and lower(coalesce(j.payload ->> 'to', j.payload ->> 'email')) = any(keys);

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
