-- A security issue is a hold on the account, kept apart from its status: set when the user
-- is flagged, cleared only by a completed password reset. An administrator may still ban
-- such a user, and later unban or reactivate them; while the hold lasts, becoming active
-- again means `security_issue` (logging in answers `password_reset_required`), so no path
-- through other statuses skips the reset.
alter table users add column security_issue_at timestamptz;

update users set security_issue_at = updated_at where status = 'security_issue';

alter table users add constraint users_security_issue_held
        check (status <> 'security_issue' or security_issue_at is not null);
