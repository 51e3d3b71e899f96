-- Retention: indexes that let the prune jobs find rows past their retention without
-- scanning whole tables (each prune deletes in small batches, oldest first).

-- Refresh tokens past their lifetime.
create index refresh_tokens_expires_idx on refresh_tokens (expires_at);
-- Unrevoked sessions nobody has used for a long time (candidates for expiry).
create index sessions_idle_idx on sessions (last_used_at) where revoked_at is null;
-- Email tokens used, or past their lifetime.
create index user_tokens_used_idx on user_tokens (used_at) where used_at is not null;
create index user_tokens_expires_idx on user_tokens (expires_at);
-- Invitations past their lifetime.
create index invitations_expires_idx on invitations (expires_at);
