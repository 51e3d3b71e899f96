-- Products: the tenant's catalog. Money is integer minor units plus an ISO 4217 code;
-- status and type are text with CHECK constraints (never per-schema enum types). `version`
-- drives optimistic concurrency (ETag / If-Match); `deleted_at` is the soft delete.

create table products (
    id uuid primary key,
    sku text not null,
    name text not null,
    description text not null default '',
    price bigint not null,
    compare_at_price bigint,
    currency text not null,
    status text not null default 'draft',
    type text not null default 'physical',
    stock_quantity bigint not null default 0,
    low_stock_threshold bigint not null default 0,
    attributes jsonb not null default '{}'::jsonb,
    tags text[] not null default '{}',
    image_ids uuid[] not null default '{}',
    version bigint not null default 1,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    deleted_at timestamptz,
    -- Full-text search over SKU, name (weight A) and description (weight B). The `simple`
    -- configuration keeps SKUs and names as typed; `english` stems the prose.
    search tsvector generated always as (
        setweight(to_tsvector('simple'::regconfig, sku), 'A')
        || setweight(to_tsvector('english'::regconfig, name), 'A')
        || setweight(to_tsvector('english'::regconfig, description), 'B')
    ) stored,
    constraint products_sku_format check (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    constraint products_name_length check (char_length(name) between 1 and 200),
    constraint products_description_length check (char_length(description) <= 5000),
    constraint products_price_non_negative check (price >= 0),
    constraint products_compare_at_not_below_price check (compare_at_price is null or compare_at_price >= price),
    constraint products_currency_format check (currency ~ '^[A-Z]{3}$'),
    constraint products_status_valid check (status in ('draft', 'active', 'archived')),
    constraint products_type_valid check (type in ('physical', 'digital', 'service')),
    constraint products_stock_non_negative check (stock_quantity >= 0),
    constraint products_threshold_non_negative check (low_stock_threshold >= 0),
    constraint products_attributes_object check (jsonb_typeof(attributes) = 'object'),
    constraint products_tags_bounded check (cardinality(tags) <= 20),
    constraint products_images_bounded check (cardinality(image_ids) <= 10),
    constraint products_version_positive check (version >= 1)
);

-- SKUs are unique among live products, case-insensitively; a deleted product's SKU may be
-- reused (restoring it then needs the SKU to be free again).
create unique index products_sku_key on products (lower(sku)) where deleted_at is null;

-- Keyset pagination: one index per sort, each ending in the id tie-breaker.
create index products_created_idx on products (created_at, id);
create index products_updated_idx on products (updated_at, id);
create index products_name_idx on products (name, id);
create index products_price_idx on products (price, id);
create index products_search_idx on products using gin (search);
create index products_tags_idx on products using gin (tags);
