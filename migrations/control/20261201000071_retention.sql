-- Retention: indexes that let the prune jobs find finished rows past their retention
-- without scanning the queue or the inbox.

-- Succeeded jobs, by when they finished.
create index jobs_succeeded_idx on public.jobs (finished_at) where status = 'succeeded';
-- Processed and ignored webhook events, by when they were processed.
create index webhook_events_processed_idx on public.webhook_events (processed_at)
    where status in ('processed', 'ignored');
