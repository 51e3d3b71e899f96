-- Billing: each tenant's payment-provider customer and subscription, and the inbox of
-- webhook events (stored once per event id, processed by jobs).

alter table public.tenants
    add column stripe_customer_id text,
    add column subscription_id text,
    add column subscription_status text,
    add column subscription_plan text,
    add column current_period_end timestamptz,
    -- `created` of the newest subscription event applied: older ones never overwrite it.
    add column subscription_event_at timestamptz,
    add column last_payment_status text,
    add column last_payment_at timestamptz,
    add constraint tenants_stripe_customer_key unique (stripe_customer_id),
    add constraint tenants_last_payment_status_valid
        check (last_payment_status is null or last_payment_status in ('paid', 'failed'));

create table public.webhook_events (
    -- The provider's event id (`evt_…`).
    id text primary key,
    type text not null,
    -- When the provider created the event (its `created`).
    created_at timestamptz not null,
    livemode boolean not null default false,
    payload jsonb not null,
    status text not null default 'pending',
    -- The tenant the event turned out to concern, once processed.
    tenant_id uuid,
    attempts integer not null default 0,
    last_error text,
    -- `webhook` (delivered to us) or `reconciliation` (found by listing the provider's events).
    source text not null default 'webhook',
    received_at timestamptz not null default now(),
    processed_at timestamptz,
    constraint webhook_events_id_format check (id ~ '^[A-Za-z0-9_]{1,255}$'),
    constraint webhook_events_type_length check (char_length(type) between 1 and 200),
    constraint webhook_events_status_valid check (status in ('pending', 'processed', 'ignored', 'failed')),
    constraint webhook_events_source_valid check (source in ('webhook', 'reconciliation'))
);

create index webhook_events_received_idx on public.webhook_events (received_at desc, id desc);
create index webhook_events_status_idx on public.webhook_events (status, received_at desc);
create index webhook_events_tenant_idx on public.webhook_events (tenant_id, received_at desc);
