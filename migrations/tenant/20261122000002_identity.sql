-- Identity: users, their sessions (one per login/device), rotating refresh tokens,
-- single-use email tokens and the security audit log. Status and purpose columns are text
-- with CHECK constraints, never per-schema enum types (sqlx caches type OIDs by name).

create table users (
    id uuid primary key,
    -- As the user typed it (trimmed); `email_key` (lowercased) is what makes it unique.
    email text not null,
    email_key text not null,
    name text not null,
    -- PHC string (argon2id).
    password_hash text not null,
    status text not null default 'pending',
    email_verified_at timestamptz,
    -- Until roles exist, the tenant's owner is marked here.
    is_owner boolean not null default false,
    failed_logins integer not null default 0,
    failed_login_window_start timestamptz,
    locked_until timestamptz,
    -- Tokens and sessions from before this instant are void (ban, deactivation, reset).
    security_changed_at timestamptz not null default now(),
    last_login_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint users_email_key_key unique (email_key),
    constraint users_email_key_lowercase check (email_key = lower(email)),
    constraint users_email_length check (char_length(email) between 3 and 254),
    constraint users_name_length check (char_length(name) between 1 and 200),
    constraint users_status_valid check (status in ('pending', 'active', 'deactivated', 'banned')),
    constraint users_failed_logins_non_negative check (failed_logins >= 0)
);

create index users_created_idx on users (created_at, id);

create table sessions (
    id uuid primary key,
    user_id uuid not null references users (id) on delete cascade,
    user_agent text,
    ip inet,
    created_at timestamptz not null default now(),
    last_used_at timestamptz not null default now(),
    revoked_at timestamptz,
    revoked_reason text,
    constraint sessions_user_agent_length check (char_length(user_agent) <= 512),
    constraint sessions_revoked_consistent check ((revoked_at is null) = (revoked_reason is null))
);

create index sessions_user_live_idx on sessions (user_id) where revoked_at is null;
create index sessions_revoked_idx on sessions (revoked_at) where revoked_at is not null;

-- Every refresh token a session has had. A token is live until rotated; its successor is
-- kept sealed (only the holder of the predecessor can unseal it) for the grace window in
-- which a client that raced itself gets the same successor again.
create table refresh_tokens (
    token_hash bytea primary key,
    session_id uuid not null references sessions (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    rotated_at timestamptz,
    successor_hash bytea,
    successor_sealed bytea,
    constraint refresh_tokens_rotation_consistent check (
        (rotated_at is null) = (successor_hash is null)
        and (successor_hash is null) = (successor_sealed is null)
    )
);

create index refresh_tokens_session_idx on refresh_tokens (session_id);
-- At most one live token per session: never two live successors.
create unique index refresh_tokens_one_live_idx on refresh_tokens (session_id) where rotated_at is null;

create table user_tokens (
    token_hash bytea primary key,
    user_id uuid not null references users (id) on delete cascade,
    purpose text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    constraint user_tokens_purpose_valid check (purpose in ('verify_email', 'reset_password'))
);

create index user_tokens_user_idx on user_tokens (user_id, purpose);

create table audit_events (
    id bigint generated always as identity primary key,
    occurred_at timestamptz not null default now(),
    event text not null,
    -- Who acted (null: anonymous, e.g. a failed login for an unknown email).
    actor_id uuid,
    -- Whom it concerns.
    subject_id uuid,
    session_id uuid,
    ip inet,
    user_agent text,
    details jsonb not null default '{}'::jsonb,
    constraint audit_events_event_format check (event ~ '^[a-z_.]{1,64}$')
);

create index audit_events_occurred_idx on audit_events (occurred_at desc, id desc);
create index audit_events_subject_idx on audit_events (subject_id, occurred_at desc);
