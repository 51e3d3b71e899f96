-- A security issue is a hold on the account, kept apart from its status: set when the user
-- is flagged, cleared only by a completed password reset. An administrator may still ban
-- such a user, and later unban or reactivate them; while the hold lasts, becoming active
-- again means `security_issue` (logging in answers `password_reset_required`), so no path
-- through other statuses skips the reset.
alter table users add column security_issue_at timestamptz;

-- Flagged now, or flagged and since banned or deactivated without a reset (the way around
-- the reset this column closes): held since their latest flag.
update users u set security_issue_at = coalesce(flag.at, u.updated_at)
from (select u2.id, max(e.occurred_at) as at
      from users u2
      left join audit_events e on e.subject_id = u2.id and e.event = 'user.security_issue'
      group by u2.id) flag
where flag.id = u.id
  and (u.status = 'security_issue'
       or (u.status in ('banned', 'deactivated') and flag.at is not null
           and not exists (select 1 from audit_events r
                           where r.subject_id = u.id and r.event = 'password.reset'
                             and r.occurred_at > flag.at)));

alter table users add constraint users_security_issue_held
        check (status <> 'security_issue' or security_issue_at is not null);
