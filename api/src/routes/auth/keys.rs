//! The public keys verifying access tokens (JWKS).

use poem::web::Data;
use poem_openapi::{OpenApi, payload::Json};

use crate::{
    AppState,
    error::ApiResult,
    routes::{ApiTag, auth::*},
};

/// Key endpoints.
pub struct KeysApi;

#[OpenApi(tag = "ApiTag::Auth")]
impl KeysApi {
    /// Public keys verifying access tokens (JWKS).
    ///
    /// Every key not yet retired; tokens name theirs in the `kid` header.
    #[oai(
        path = "/.well-known/jwks.json",
        method = "get",
        operation_id = "get_jwks"
    )]
    async fn jwks(&self, state: Data<&AppState>) -> ApiResult<Json<Jwks>> {
        Ok(Json(Jwks {
            keys: state
                .tokens
                .jwks()
                .into_iter()
                .map(|k| Jwk {
                    kty: k.kty.to_owned(),
                    crv: k.crv.to_owned(),
                    x: k.x,
                    kid: k.kid,
                    use_: k.use_.to_owned(),
                    alg: k.alg.to_owned(),
                })
                .collect(),
        }))
    }
}
