-- The user lifecycle: two more statuses, a pending email change, and invitations that
-- carry a name and hold a seat (users created by an administrator).
--
-- * `security_issue`: every session ended; the user is back (`active`) only through a
--   password reset.
-- * `deleted`: a tombstone. Its personal data is erased (email and email_key replaced by
--   a placeholder unique per user, so the address can be registered again), while audit
--   events keep pointing at its id.
alter table users drop constraint users_status_valid,
    add constraint users_status_valid check (
        status in ('pending', 'active', 'deactivated', 'banned', 'security_issue', 'deleted')
    ),
    -- The address an email change would switch to, until its confirmation link is used
    -- (the `email_change` token). Not unique: the change re-checks at confirmation.
    add column pending_email text,
    add constraint users_pending_email_length check (char_length(pending_email) between 3 and 254);

alter table user_tokens drop constraint user_tokens_purpose_valid,
    add constraint user_tokens_purpose_valid check (
        purpose in ('verify_email', 'reset_password', 'email_change')
    );

alter table invitations
    -- The display name an administrator gave (`POST /v1/users`); acceptance may keep it.
    add column name text,
    -- Made by `POST /v1/users`: while open and unexpired it holds a seat of the plan.
    add column reserves_seat boolean not null default false,
    add constraint invitations_name_length check (char_length(name) between 1 and 200);

-- Seats counted with reserving invitations (billing::limits).
create index invitations_reserving_idx on invitations (expires_at)
    where reserves_seat and accepted_at is null and revoked_at is null;
