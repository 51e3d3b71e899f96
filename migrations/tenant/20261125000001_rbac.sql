-- RBAC: the tenant's roles (four system roles plus custom ones with a single parent), the
-- permissions granted to custom roles, and who holds which role. The permission catalog
-- and the system roles' permission sets live in code (crate `rbac`), so that a permission
-- added to the catalog reaches every tenant without a data migration.

create table roles (
    id uuid primary key,
    name text not null,
    -- Case-folded name: role names are unique per tenant regardless of case.
    name_key text not null,
    description text not null default '',
    -- `owner`, `admin`, `member` or `viewer` for the system roles, null for custom ones.
    system_key text,
    parent_id uuid references roles (id) on delete restrict,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint roles_name_key_key unique (name_key),
    constraint roles_system_key_key unique (system_key),
    constraint roles_name_key_lowercase check (name_key = lower(name)),
    constraint roles_name_length check (char_length(name) between 1 and 64),
    constraint roles_description_length check (char_length(description) <= 500),
    constraint roles_system_key_valid check (system_key in ('owner', 'admin', 'member', 'viewer')),
    constraint roles_system_no_parent check (system_key is null or parent_id is null),
    constraint roles_not_own_parent check (parent_id <> id)
);

create index roles_parent_idx on roles (parent_id) where parent_id is not null;

create table role_permissions (
    role_id uuid not null references roles (id) on delete cascade,
    permission text not null,
    primary key (role_id, permission),
    constraint role_permissions_format check (permission ~ '^[a-z_]{1,32}:[a-z_]{1,32}$')
);

create table user_roles (
    user_id uuid not null references users (id) on delete cascade,
    role_id uuid not null references roles (id) on delete restrict,
    granted_at timestamptz not null default now(),
    granted_by uuid references users (id) on delete set null,
    primary key (user_id, role_id)
);

create index user_roles_role_idx on user_roles (role_id);

insert into roles (id, name, name_key, description, system_key) values
    (gen_random_uuid(), 'owner', 'owner', 'Full control of the tenant, billing included.', 'owner'),
    (gen_random_uuid(), 'admin', 'admin', 'Manages users, roles and all content; not billing.', 'admin'),
    (gen_random_uuid(), 'member', 'member', 'Works with products and files.', 'member'),
    (gen_random_uuid(), 'viewer', 'viewer', 'Reads products and files.', 'viewer');

-- Until now the owner was a flag on the user, and everyone else was shown as a member.
insert into user_roles (user_id, role_id)
select u.id, r.id
from users u
join roles r on r.system_key = case when u.is_owner then 'owner' else 'member' end;

alter table users drop column is_owner;
