-- The public schema is the control plane. Nobody but its owner may create objects in it,
-- so a tenant role can never plant a table where control-plane queries would find it.
revoke create on schema public from public;
