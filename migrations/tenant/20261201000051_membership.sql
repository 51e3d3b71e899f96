-- Membership: who may join the tenant. The registration policy is tenant data, so it lives
-- on the tenant's own settings row (read in the same transaction as the registration it
-- governs). Every tenant, existing or new, starts `invite_only`. Invitations are single-use
-- links: only the SHA-256 of the current link's token is kept, and minting a new link
-- (a resend) replaces it.

alter table settings
    add column registration_policy text not null default 'invite_only',
    -- Lower-case ASCII (IDNA A-label) domains admitted by the `domain` policy.
    add column registration_domains text[] not null default '{}',
    -- Role of self-registered users; null means the system role `viewer`. Deleting the
    -- role falls back to `viewer`.
    add column registration_role_id uuid references roles (id) on delete set null,
    add constraint settings_registration_policy_valid
        check (registration_policy in ('invite_only', 'open', 'domain')),
    add constraint settings_registration_domains_bounded
        check (cardinality(registration_domains) <= 50);

create table invitations (
    id uuid primary key,
    -- As the inviter typed it (trimmed); `email_key` is identity's lookup key of an email.
    email text not null,
    email_key text not null,
    -- Roles the new user gets; ids of roles deleted meanwhile are skipped at acceptance.
    role_ids uuid[] not null,
    invited_by uuid references users (id) on delete set null,
    -- SHA-256 of the token of the last link emailed; null until the email job has run.
    token_hash bytea,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    expires_at timestamptz not null,
    sent_at timestamptz,
    accepted_at timestamptz,
    accepted_user_id uuid references users (id) on delete set null,
    revoked_at timestamptz,
    constraint invitations_email_length check (char_length(email) between 3 and 254),
    constraint invitations_roles_bounded check (cardinality(role_ids) between 1 and 20),
    constraint invitations_token_hash_length check (octet_length(token_hash) = 32),
    constraint invitations_closed_once check (accepted_at is null or revoked_at is null)
);

create unique index invitations_token_hash_key on invitations (token_hash)
    where token_hash is not null;
-- At most one open invitation per address: inviting again refreshes it.
create unique index invitations_open_email_key on invitations (email_key)
    where accepted_at is null and revoked_at is null;
-- The listing of open invitations, oldest first.
create index invitations_open_created_idx on invitations (created_at, id)
    where accepted_at is null and revoked_at is null;
