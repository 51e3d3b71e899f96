-- Tenant API keys (service accounts): bearer credentials made by a user, acting with a
-- subset of that user's permissions. The client holds `cnt_<tenant and key id>_<secret>`;
-- only the SHA-256 of the secret is stored (256 random bits: a fast hash is right, there
-- is nothing to brute-force). A revoked key keeps its row, so that the audit log can still
-- name it.

create table api_keys (
    id uuid primary key,
    name text not null,
    -- `resource:action` names of the catalog; never `api_keys:manage`.
    permissions text[] not null,
    -- The user who made it: its permissions are also bounded by theirs, as they stand.
    created_by uuid not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    -- Written at most once a minute.
    last_used_at timestamptz,
    last_used_ip inet,
    secret_hash bytea not null,
    constraint api_keys_name_length check (char_length(name) between 1 and 100),
    constraint api_keys_secret_hash_length check (octet_length(secret_hash) = 32),
    constraint api_keys_permissions_count check (cardinality(permissions) between 1 and 64),
    constraint api_keys_expiry_after_creation check (expires_at is null or expires_at > created_at)
);

-- The live keys of the tenant (counted against the per-tenant bound, listed newest first).
create index api_keys_live_idx on api_keys (created_at desc, id) where revoked_at is null;
-- Keys revoked recently, for rebuilding the revocation list.
create index api_keys_revoked_idx on api_keys (revoked_at) where revoked_at is not null;

-- The key an event was done with, when it was (its creator is `actor_id`).
alter table audit_events add column actor_api_key_id uuid;
