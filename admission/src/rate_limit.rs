//! General rate limits, judged in one Redis round trip per request: per client IP on
//! unauthenticated routes, per user on authenticated ones, and per tenant at the plan's
//! `requests_per_minute`. (The login, recovery and sign-up throttles of
//! [`crate::throttle`] come on top; they count failures, not requests.) Where each limit
//! is judged (the edge middleware, or authentication) is `api`'s business; this module
//! builds the buckets ([`RateLimiter::ip_limits`], [`RateLimiter::user_limits`],
//! [`RateLimiter::plan_limit`]) and judges them ([`RateLimiter::check`],
//! [`RateLimiter::judge`]) into a [`Verdict`].
//!
//! Every limit is a GCRA bucket (the "generic cell rate algorithm": one timestamp per key,
//! the theoretical arrival time, so a bucket costs one small string and never a list). A
//! limit of `n` per period lets `n` requests through at once and then one every
//! `period / n`. One Lua script ([`SCRIPT`], run with EVALSHA and loaded on NOSCRIPT by
//! [`redis::Script`]) judges all the buckets of a request at once, against Redis's clock
//! so that every instance agrees, charges them only when every one allows the request, and
//! returns the figures for the `RateLimit-*` headers. It also reads, in the same call, any
//! keys the caller needs: the authenticated path passes the revocation and permission keys
//! it used to `MGET`, so an authenticated request still costs one round trip in all.
//!
//! Failure policy: these limits fail open. With Redis unreachable (and for a second after
//! each failure, so an outage does not add a timeout to every request), a process-wide
//! [`governor`] limiter caps this process's rate instead ([`RateLimiter::fallback`]), so
//! an outage is not a free-for-all. The auth throttles keep failing closed.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, Quota as GovernorQuota};
use settings::RateLimitSettings;
use tenancy::TenantId;
use uuid::Uuid;

use crate::{
    client_key,
    redis::{RedisError, RedisPool, mget, with_redis},
};

/// GCRA over `KEYS[1..n]`, then `MGET` of the remaining keys.
///
/// `ARGV[1]` is `n`; limit `i` has its count in `ARGV[2i]` and its period (microseconds)
/// in `ARGV[2i + 1]`. Returns `{{allowed, i, remaining, reset, retry}, {values…}}`:
/// whether every limit allows the request (then all were charged, else none), the limit
/// to report (the one with the least room left; when refused, the one that refused for
/// longest), its remaining requests, microseconds until it is full again, and when
/// refused microseconds until the request would fit.
pub const SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local allowed = 1
local report, remaining, reset, retry = 0, -1, 0, 0
local tats = {}
for i = 1, n do
  local count = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local interval = math.floor(period / count)
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then tat = math.max(tonumber(stored) or now, now) end
  local new_tat = tat + interval
  local allow_at = new_tat - period
  if allow_at > now then
    local wait = allow_at - now
    if allowed == 1 or wait > retry then
      report, remaining, reset, retry = i, 0, tat - now, wait
    end
    allowed = 0
  elseif allowed == 1 then
    local left = math.floor((now - allow_at) / interval)
    if remaining < 0 or left < remaining or (left == remaining and new_tat - now > reset) then
      report, remaining, reset = i, left, new_tat - now
    end
  end
  tats[i] = new_tat
end
if allowed == 1 then
  for i = 1, n do
    local ttl = math.floor((tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
local values = {}
if #KEYS > n then
  local lookup = {}
  for i = n + 1, #KEYS do lookup[#lookup + 1] = KEYS[i] end
  values = redis.call('MGET', unpack(lookup))
end
return {{allowed, report, remaining, reset, retry}, values}
";

/// What a limit is counted per, for messages and the problem's `limit` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Requests per second from one client address.
    IpPerSecond,
    /// Requests per minute from one client address.
    IpPerMinute,
    /// Requests per second by one user.
    UserPerSecond,
    /// Requests per minute by one user.
    UserPerMinute,
    /// The tenant plan's `requests_per_minute`, all its users together.
    Plan,
}

impl Scope {
    /// The problem's `limit` member.
    pub fn name(self) -> &'static str {
        match self {
            Self::IpPerSecond => "ip_per_second",
            Self::IpPerMinute => "ip_per_minute",
            Self::UserPerSecond => "user_per_second",
            Self::UserPerMinute => "user_per_minute",
            Self::Plan => "requests_per_minute",
        }
    }

    /// The problem's `detail` when this limit, of `count` per period, refuses.
    pub fn detail(self, count: u32) -> String {
        match self {
            Self::IpPerSecond => {
                format!("Too many requests from this address: {count} per second are allowed.")
            }
            Self::IpPerMinute => {
                format!("Too many requests from this address: {count} per minute are allowed.")
            }
            Self::UserPerSecond => {
                format!("Too many requests by this user: {count} per second are allowed.")
            }
            Self::UserPerMinute => {
                format!("Too many requests by this user: {count} per minute are allowed.")
            }
            Self::Plan => format!("The tenant's plan allows {count} requests per minute."),
        }
    }
}

/// One bucket a request is judged against.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Its Redis key (ids and a parsed address only).
    pub key: String,
    /// What it counts.
    pub scope: Scope,
    /// Requests per period (and the burst allowed at once).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

/// The figures of the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The limit reported (the one with the least room left).
    pub limit: u32,
    /// Requests left before it refuses.
    pub remaining: u64,
    /// Until it is full again.
    pub reset: Duration,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; the figures when Redis judged.
    Allowed(Option<Quota>),
    /// Over a limit.
    Refused {
        /// Which.
        scope: Scope,
        /// Its figures (remaining 0).
        quota: Quota,
        /// Until the request would fit.
        retry_after: Duration,
    },
    /// Redis could not judge, and the process-wide cap is reached.
    LocalCap,
}

impl Verdict {
    /// The figures for the headers, when known.
    pub fn quota(&self) -> Option<Quota> {
        match self {
            Self::Allowed(quota) => *quota,
            Self::Refused { quota, .. } => Some(*quota),
            Self::LocalCap => None,
        }
    }
}

/// Where the limiter reports what it did (the app's metrics).
pub trait Observer: Send + Sync {
    /// One request refused by `limit` (a [`Scope::name`], or `"process"` for the
    /// process-wide cap).
    fn observe_rate_limited(&self, limit: &'static str);

    /// One request judged by the process-wide cap instead of Redis.
    fn observe_rate_limit_fallback(&self);
}

/// Judges limits in Redis, with the process-wide fallback.
pub struct RateLimiter {
    settings: RateLimitSettings,
    redis: RedisPool,
    metrics: Arc<dyn Observer>,
    script: redis::Script,
    fallback: Option<DefaultDirectRateLimiter>,
    started: Instant,
    /// Milliseconds since `started` until which Redis is not asked (after a failure).
    skip_redis_until: AtomicU64,
}

/// How long Redis is left alone after a failed check.
const BACK_OFF: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// A limiter with `settings`, counting in `redis`, its refusals in `metrics`.
    pub fn new(settings: RateLimitSettings, redis: RedisPool, metrics: Arc<dyn Observer>) -> Self {
        let fallback = NonZeroU32::new(settings.fallback_per_second)
            .map(|rate| governor::RateLimiter::direct(GovernorQuota::per_second(rate)));
        Self {
            settings,
            redis,
            metrics,
            script: redis::Script::new(SCRIPT),
            fallback,
            started: Instant::now(),
            skip_redis_until: AtomicU64::new(0),
        }
    }

    /// Whether the per-IP and per-user limits apply.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The per-IP buckets of `ip` (IPv6 clients share one per /64, which is what one
    /// subscriber is usually given: see [`client_key`]).
    pub fn ip_limits(&self, ip: Option<IpAddr>) -> Vec<Limit> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let who = ip.map_or_else(|| "unknown".to_owned(), client_key);
        let key = |suffix: &str| format!("canopy:rl:ip:{who}:{suffix}");
        per_second_and_minute(
            (key("s"), Scope::IpPerSecond, self.settings.ip_per_second),
            (key("m"), Scope::IpPerMinute, self.settings.ip_per_minute),
        )
    }

    /// The per-user buckets of `user` in `tenant`.
    pub fn user_limits(&self, tenant: TenantId, user: Uuid) -> Vec<Limit> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let key = |suffix: &str| format!("canopy:t:{tenant}:rl:u:{user}:{suffix}");
        per_second_and_minute(
            (
                key("s"),
                Scope::UserPerSecond,
                self.settings.user_per_second,
            ),
            (
                key("m"),
                Scope::UserPerMinute,
                self.settings.user_per_minute,
            ),
        )
    }

    /// The plan's bucket of `tenant`: `per_minute` requests a minute (applies whether or
    /// not the general limits are enabled: it is part of the plan).
    pub fn plan_limit(tenant: TenantId, per_minute: u64) -> Limit {
        Limit {
            key: format!("canopy:t:{tenant}:rl:plan"),
            scope: Scope::Plan,
            count: u32::try_from(per_minute).unwrap_or(u32::MAX).max(1),
            period: Duration::from_secs(60),
        }
    }

    /// Judges `limits` and reads `lookups`, in one round trip. `Err` when Redis could not
    /// be asked; judge with [`Self::fallback`] then.
    pub async fn check(
        &self,
        limits: &[Limit],
        lookups: &[String],
    ) -> Result<(Verdict, Vec<Option<String>>), RedisError> {
        if limits.is_empty() {
            let values = if lookups.is_empty() {
                Vec::new()
            } else {
                mget(&self.redis, lookups).await?
            };
            return Ok((Verdict::Allowed(None), values));
        }
        let now = self.millis();
        if now < self.skip_redis_until.load(Ordering::Relaxed) {
            return Err(RedisError::BackingOff);
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(limits.len());
        for limit in limits {
            invocation.key(&limit.key);
        }
        for key in lookups {
            invocation.key(key);
        }
        for limit in limits {
            invocation
                .arg(limit.count.max(1))
                .arg(u64::try_from(limit.period.as_micros()).unwrap_or(u64::MAX));
        }
        let reply = with_redis(&self.redis, |mut conn| async move {
            invocation
                .invoke_async::<(Vec<i64>, Vec<Option<String>>)>(&mut *conn)
                .await
        })
        .await;
        let (figures, values) = match reply {
            Ok(reply) => reply,
            Err(error) => {
                self.skip_redis_until
                    .store(now + BACK_OFF.as_millis() as u64, Ordering::Relaxed);
                return Err(error);
            }
        };
        let [allowed, report, remaining, reset, retry] = figures[..] else {
            return Err(RedisError::UnexpectedReply(format!(
                "the rate-limit script answered {figures:?}"
            )));
        };
        let limit = usize::try_from(report - 1)
            .ok()
            .and_then(|i| limits.get(i))
            .ok_or_else(|| {
                RedisError::UnexpectedReply(format!(
                    "the rate-limit script reported limit {report}"
                ))
            })?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        let quota = Quota {
            limit: limit.count,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
        };
        let verdict = if allowed == 1 {
            Verdict::Allowed(Some(quota))
        } else {
            self.metrics.observe_rate_limited(limit.scope.name());
            Verdict::Refused {
                scope: limit.scope,
                quota,
                retry_after: micros(retry),
            }
        };
        Ok((verdict, values))
    }

    /// The verdict when Redis could not judge: the process-wide cap (none when the general
    /// limits are off: the plan's rate alone then goes unchecked, as before).
    pub fn fallback(&self) -> Verdict {
        if !self.settings.enabled {
            return Verdict::Allowed(None);
        }
        self.metrics.observe_rate_limit_fallback();
        match &self.fallback {
            Some(cap) if cap.check().is_err() => {
                self.metrics.observe_rate_limited("process");
                Verdict::LocalCap
            }
            _ => Verdict::Allowed(None),
        }
    }

    /// Judges `limits` alone, falling back to the process-wide cap.
    pub async fn judge(&self, limits: &[Limit]) -> Verdict {
        match self.check(limits, &[]).await {
            Ok((verdict, _)) => verdict,
            Err(error) => {
                tracing::debug!(%error, "rate limits unavailable; applying the process cap");
                self.fallback()
            }
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn per_second_and_minute(second: (String, Scope, u32), minute: (String, Scope, u32)) -> Vec<Limit> {
    [
        (second, Duration::from_secs(1)),
        (minute, Duration::from_secs(60)),
    ]
    .into_iter()
    .filter(|((_, _, count), _)| *count > 0)
    .map(|((key, scope, count), period)| Limit {
        key,
        scope,
        count,
        period,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_count_disables_its_bucket_and_the_plan_allows_at_least_one() {
        let limits = per_second_and_minute(
            ("s".to_owned(), Scope::IpPerSecond, 0),
            ("m".to_owned(), Scope::IpPerMinute, 30),
        );
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].scope, Scope::IpPerMinute);
        assert_eq!(limits[0].period, Duration::from_secs(60));
        let plan = RateLimiter::plan_limit(TenantId(Uuid::nil()), 0);
        assert_eq!(plan.count, 1);
        assert_eq!(plan.scope.name(), "requests_per_minute");
    }
}
