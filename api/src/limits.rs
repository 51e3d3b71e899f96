//! The HTTP side of the plan limits, which `billing::limits` enforces: the checks with the
//! app's plan catalog, and a refusal rendered as the 402 `plan_limit_reached` naming the
//! limit (`limit`, `allowed`, `used` extensions). Storage and upload size are checked in
//! `routes::files`.

use billing::limits::LimitError;
pub use billing::limits::{Limited, lock, used};
use identity::Activated;
use sqlx::PgConnection;
use tenancy::Tenant;

use crate::{
    AppState,
    error::{ApiError, ApiResult, ErrorCode},
};

impl From<LimitError> for ApiError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::LimitReached {
                limit,
                allowed,
                used,
            } => ApiError::new(
                ErrorCode::PlanLimitReached,
                format!(
                    "The tenant's plan allows {allowed} {}; {used} are in use.",
                    limit.name()
                ),
            )
            .with_extension("limit", limit.name().into())
            .with_extension("allowed", allowed.into())
            .with_extension("used", used.into()),
            LimitError::Database(err) => err.into(),
        }
    }
}

/// [`billing::limits::ensure_room`] with the app's plans.
pub async fn ensure_room(
    state: &AppState,
    conn: &mut PgConnection,
    tenant: &Tenant,
    limit: Limited,
    adding: u64,
) -> ApiResult<()> {
    Ok(billing::limits::ensure_room(&state.settings.plans, conn, tenant, limit, adding).await?)
}

/// [`billing::limits::ensure_seats`] with the app's plans.
pub async fn ensure_seats(
    state: &AppState,
    conn: &mut PgConnection,
    tenant: &Tenant,
    activated: Activated,
) -> ApiResult<()> {
    Ok(billing::limits::ensure_seats(&state.settings.plans, conn, tenant, activated).await?)
}
