-- Ed25519 keys signing access tokens. The newest key that is not retired signs; every key
-- that is not retired verifies (and is published at /.well-known/jwks.json), so a rotation
-- never invalidates tokens already issued. Only the login role can read this table.
create table public.signing_keys (
    kid text primary key,
    algorithm text not null default 'EdDSA',
    -- PKCS#8 document of the private key.
    private_key bytea not null,
    -- The raw 32-byte public key.
    public_key bytea not null,
    created_at timestamptz not null default clock_timestamp(),
    retired_at timestamptz,
    constraint signing_keys_algorithm check (algorithm = 'EdDSA'),
    constraint signing_keys_kid_format check (kid ~ '^[A-Za-z0-9_-]{8,64}$'),
    constraint signing_keys_public_key_length check (octet_length(public_key) = 32)
);
