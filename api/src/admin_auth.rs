//! Platform API keys as a poem-openapi security scheme: every `/v1/admin/*` operation takes
//! a [`PlatformAdmin`], so it is authenticated before the handler runs and the OpenAPI
//! document shows the requirement.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use tenancy::ApiKey;

use crate::{
    AppState,
    error::{ApiError, ErrorCode},
};

/// A request authenticated by a platform API key (made with `canopy admin create-key`),
/// sent as `Authorization: Bearer cnp_…`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "cnp_…", checker = "check_platform_key")]
pub struct PlatformAdmin(pub ApiKey);

async fn check_platform_key(request: &Request, bearer: Bearer) -> poem::Result<ApiKey> {
    let state = request
        .data::<AppState>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not attached")))?;
    match state
        .db
        .verify_api_key(&bearer.token)
        .await
        .map_err(ApiError::from)?
    {
        Some(key) => {
            tracing::debug!(api_key = %key.id, "platform key accepted");
            Ok(key)
        }
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "The platform API key is missing, unknown or revoked.",
        )
        .into()),
    }
}
