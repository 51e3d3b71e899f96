-- Two-factor authentication (TOTP, RFC 6238): each user's secret, encrypted with the
-- service's secrets key (AES-256-GCM, bound to the tenant and the user, so a row copied to
-- another user does not decrypt); their single-use recovery codes (SHA-256 only); the
-- short-lived MFA tokens between the password step and the second factor; and the tenant's
-- policy of which roles must use it.

create table user_totp (
    user_id uuid primary key references users (id) on delete cascade,
    -- Key id byte, nonce, ciphertext and tag (identity::mfa::SecretsCipher).
    secret_ciphertext bytea not null,
    created_at timestamptz not null default now(),
    -- Null while the enrollment waits for its first code.
    confirmed_at timestamptz,
    -- The last accepted 30-second step: a code is accepted only for a later one (replay).
    last_used_step bigint not null default 0,
    constraint user_totp_ciphertext_length check (octet_length(secret_ciphertext) between 29 and 256),
    constraint user_totp_step_non_negative check (last_used_step >= 0)
);

create table recovery_codes (
    code_hash bytea primary key,
    user_id uuid not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    used_at timestamptz,
    constraint recovery_codes_hash_length check (octet_length(code_hash) = 32)
);

create index recovery_codes_user_idx on recovery_codes (user_id);

-- An MFA token (its SHA-256) names a user who passed the password step: `verify` tokens
-- are accepted by `POST /v1/auth/mfa`, `enroll` tokens only by the enrollment endpoints.
create table mfa_challenges (
    token_hash bytea primary key,
    user_id uuid not null references users (id) on delete cascade,
    purpose text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    failures integer not null default 0,
    constraint mfa_challenges_purpose_valid check (purpose in ('verify', 'enroll')),
    constraint mfa_challenges_failures_non_negative check (failures >= 0)
);

create index mfa_challenges_user_idx on mfa_challenges (user_id);
create index mfa_challenges_expires_idx on mfa_challenges (expires_at);

-- The roles whose holders must use two-factor authentication.
alter table settings add column mfa_required_for uuid[] not null default '{}',
    add constraint settings_mfa_required_for_count check (cardinality(mfa_required_for) <= 64);
