-- Email keys are computed by the application only (identity::Email: trim, NFC, Unicode
-- lower-case of the whole address, final sigma as σ, NFC), never by SQL: `lower()` under the C collation
-- folds ASCII only, so the old check `email_key = lower(email)` kept `ANA@BÜCHER.TEST`
-- and `ana@bücher.test` apart. The unique constraint `users_email_key_key` stays: a plain
-- unique index on exactly the stored key.
alter table users drop constraint users_email_key_lowercase;

-- Existing keys were written by `lower()`, so they differ from the new ones only for
-- addresses with non-ASCII upper-case letters, decomposed characters or a sigma. Re-key
-- those as best SQL can: NFC, ICU's root-locale lower-case (the Unicode default mapping
-- that Rust's `to_lowercase` applies, bar characters newer than the server's ICU), σ for
-- ς, NFC. A row keeps its old key when another row has or would get the same new key:
-- two accounts for one mailbox, for an operator to resolve (the one holding the new key
-- is the one found at login). Without ICU nothing is re-keyed.
do $$
begin
    if exists (select 1 from pg_catalog.pg_collation where collname = 'und-x-icu') then
        execute $sql$
            with rekeyed as (
                select id,
                       normalize(translate(lower(normalize(email, nfc) collate "und-x-icu"), 'ς', 'σ'), nfc)
                           as new_key
                from users
            ),
            unclaimed as (
                select new_key from rekeyed group by new_key having count(*) = 1
            )
            update users u set email_key = r.new_key
            from rekeyed r join unclaimed using (new_key)
            where u.id = r.id
              and u.email_key <> r.new_key
              and not exists (select 1 from users o where o.email_key = r.new_key and o.id <> u.id)
        $sql$;
    end if;
end
$$;
