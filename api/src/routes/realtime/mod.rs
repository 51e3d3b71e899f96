//! Realtime (`/v1/realtime…`): the WebSocket, the same stream as Server-Sent Events, and
//! the single-use tickets browsers connect with.
//!
//! Everything that is not a frame on the wire lives in the `realtime` crate (the hub of
//! live connections, the fan-out over Redis, tickets, the protocol); this module
//! authenticates the request (a ticket, or `Authorization: Bearer` with a JWT or an API
//! key), registers the connection within its limits (problem+json before the upgrade when
//! refused) and hands the socket to `socket` or the stream to `events`.

mod events;
mod socket;

use std::sync::Arc;

use admission::{AdmissionError, revocation::Credential};
use poem::{Request, web::Data};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, Object, OpenApi, param::Query,
    payload::Json, registry::Registry,
};
use rbac::PermissionSet;
use realtime::{
    Connection, EventKind, Refusal,
    hub::Registration,
    tickets::{self, Holder, Presented},
};
use tenancy::{Tenant, TenantId};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        Principal,
        authn::{API_KEY_AUTH, Keys, USER_AUTH, authenticate_reading},
    },
    error::{ApiError, ApiResult, ErrorCode},
    routes::ApiTag,
    tenant::CurrentTenant,
};

/// Realtime endpoints.
pub struct RealtimeApi;

/// A new ticket.
#[derive(Debug, Object)]
pub struct TicketView {
    /// The ticket: pass it once as `?ticket=` to `GET /v1/realtime` or
    /// `GET /v1/realtime/events`.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// The answer of `POST /v1/realtime/tickets`.
#[derive(poem_openapi::ApiResponse)]
pub enum TicketCreated {
    /// A single-use ticket.
    #[oai(status = 201)]
    Created(Json<TicketView>),
}

/// A request by a signed-in person or an API key of the tenant it addresses, whatever
/// they may do (the stream filters events by permission at delivery).
pub struct Caller(pub Principal);

fn no_keys(_: TenantId, _: Uuid) -> Vec<String> {
    Vec::new()
}

impl<'a> ApiExtractor<'a> for Caller {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        crate::auth::UserAuth::register(registry);
        crate::auth::ApiKeyAuth::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![USER_AUTH, API_KEY_AUTH]
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let (principal, _) = authenticate_reading(request, Keys::Accepted, no_keys).await?;
        Ok(Self(principal))
    }
}

/// Who a connection belongs to, once authenticated.
struct Connecting {
    tenant: Arc<Tenant>,
    user: Uuid,
    credential: Credential,
    key_permissions: Option<PermissionSet>,
}

/// The event names of `?events=` (comma-separated; absent: every kind).
fn initial_events(raw: Option<&str>) -> Result<Vec<EventKind>, ApiError> {
    let Some(raw) = raw else {
        return Ok(EventKind::ALL.to_vec());
    };
    raw.split(',')
        .filter(|n| !n.trim().is_empty())
        .take(realtime::protocol::MAX_EVENTS_PER_MESSAGE + 1)
        .map(|name| {
            EventKind::parse(name.trim()).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    "`events` names an event that does not exist.",
                )
            })
        })
        .collect()
}

fn invalid_ticket() -> ApiError {
    ApiError::new(
        ErrorCode::TicketInvalid,
        "The realtime ticket is unknown, already used or expired; ask for a new one.",
    )
}

/// Authenticates a connection: `?ticket=` (consumed) or `Authorization: Bearer`.
async fn authenticate(
    request: &Request,
    state: &AppState,
    tenant: Arc<Tenant>,
    ticket: Option<&str>,
) -> Result<Connecting, ApiError> {
    let Some(ticket) = ticket else {
        let (principal, _) = authenticate_reading(request, Keys::Accepted, no_keys).await?;
        let credential = match principal.api_key {
            Some(_) => Credential::ApiKey(principal.session_id),
            None => Credential::Session(principal.session_id),
        };
        return Ok(Connecting {
            tenant: principal.tenant,
            user: principal.user_id,
            credential,
            key_permissions: principal.api_key.map(|k| k.permissions),
        });
    };
    let presented = Presented::parse(ticket).ok_or_else(invalid_ticket)?;
    if presented.tenant != tenant.id {
        // Refused without consuming it: the ticket stays its holder's.
        return Err(ApiError::new(
            ErrorCode::WrongTenant,
            "This ticket was issued by another tenant.",
        ));
    }
    let holder = tickets::consume(&state.redis, &presented)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "realtime tickets unreachable");
            ApiError::retry_after(
                ErrorCode::DependencyUnavailable,
                "Realtime tickets cannot be checked right now.",
                1,
            )
        })?
        .ok_or_else(invalid_ticket)?;
    let credential = holder.credential().ok_or_else(invalid_ticket)?;
    // The credential may have been revoked since the ticket was issued.
    state
        .revocations
        .check(tenant.id, holder.user, credential)
        .await
        .map_err(|e| match e {
            AdmissionError::Revoked => invalid_ticket(),
            other => other.into(),
        })?;
    let key_permissions = matches!(credential, Credential::ApiKey(_))
        .then(|| PermissionSet::from_names(holder.key_permissions.iter().map(String::as_str)).0);
    tracing::Span::current().record("user_id", tracing::field::display(holder.user));
    Ok(Connecting {
        tenant,
        user: holder.user,
        credential,
        key_permissions,
    })
}

/// Registers the connection in the hub, within the limits (a problem before the upgrade
/// otherwise).
fn register(
    state: &AppState,
    who: Connecting,
    events: Vec<EventKind>,
) -> Result<Connection, ApiError> {
    let tenant_limit = state
        .settings
        .plans
        .limits(&who.tenant.plan)
        .realtime_connections;
    state
        .realtime
        .register(Registration {
            tenant: who.tenant.id,
            user: who.user,
            credential: who.credential,
            key_permissions: who.key_permissions,
            tenant_limit,
            events,
        })
        .map_err(|refusal| match refusal {
            Refusal::GoingAway => ApiError::retry_after(
                ErrorCode::GoingAway,
                "This instance is shutting down; connect again.",
                1,
            ),
            Refusal::PerUser { allowed } => ApiError::new(
                ErrorCode::TooManyConnections,
                format!("You have {allowed} realtime connections open already; close one first."),
            )
            .with_extension("allowed", allowed.into()),
            Refusal::PerTenant { allowed } => ApiError::new(
                ErrorCode::PlanLimitReached,
                format!("The tenant's plan allows {allowed} realtime connections."),
            )
            .with_extension("limit", "realtime_connections".into())
            .with_extension("allowed", allowed.into())
            .with_extension("used", allowed.into()),
        })
}

#[OpenApi(tag = "ApiTag::Realtime")]
impl RealtimeApi {
    /// Get a single-use ticket for a realtime connection.
    ///
    /// Browsers cannot set headers on a WebSocket, and bearer tokens must not travel in URLs
    /// that get logged: this ticket stands in for the caller's credential once, for 30
    /// seconds (`CANOPY_REALTIME_TICKET_TTL`), in the tenant it was issued in. Redis keeps
    /// only its SHA-256. 503 `dependency_unavailable` when Redis is unreachable (a ticket
    /// that could not be checked is never issued).
    #[oai(
        path = "/v1/realtime/tickets",
        method = "post",
        operation_id = "create_realtime_ticket"
    )]
    async fn create_realtime_ticket(
        &self,
        state: Data<&AppState>,
        caller: Caller,
    ) -> ApiResult<TicketCreated> {
        let principal = caller.0;
        let holder = Holder {
            user: principal.user_id,
            session: principal.api_key.is_none().then_some(principal.session_id),
            api_key: principal.api_key.as_ref().map(|k| k.id),
            key_permissions: principal
                .api_key
                .as_ref()
                .map(|k| {
                    k.permissions
                        .names()
                        .iter()
                        .map(|n| (*n).to_owned())
                        .collect()
                })
                .unwrap_or_default(),
        };
        let ttl = state.settings.realtime.ticket_ttl;
        let ticket = tickets::issue(&state.redis, principal.tenant.id, &holder, ttl)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "could not store a realtime ticket");
                ApiError::retry_after(
                    ErrorCode::DependencyUnavailable,
                    "Realtime tickets cannot be issued right now.",
                    1,
                )
            })?;
        Ok(TicketCreated::Created(Json(TicketView {
            ticket,
            expires_in: ttl.as_secs(),
        })))
    }

    /// Open the realtime WebSocket.
    ///
    /// Upgrades to a WebSocket (101) of the tenant's live events. Authenticate with
    /// `?ticket=` (from `POST /v1/realtime/tickets`) or `Authorization: Bearer` (an access
    /// token or an API key). Refusals before the upgrade are problem+json: 401, 403
    /// `wrong_tenant` for a ticket of another tenant, 429 `too_many_connections`, 402
    /// `plan_limit_reached` (`realtime_connections`), 503. The protocol (JSON text frames:
    /// `subscribe`, `unsubscribe`, `ping` from the client; `event`, `subscribed`, `pong`,
    /// `error` from the server) and the close codes are in the README's Realtime section.
    /// Events are delivered only while the principal holds their permission
    /// (`product.*`: `products:read`).
    #[oai(
        path = "/v1/realtime",
        method = "get",
        operation_id = "open_realtime_socket"
    )]
    async fn open_realtime_socket(
        &self,
        request: &Request,
        state: Data<&AppState>,
        tenant: CurrentTenant,
        websocket: poem::web::websocket::WebSocket,
        /// A single-use ticket (instead of `Authorization`).
        ticket: Query<Option<String>>,
        /// Event names to subscribe to from the start, comma-separated (default: all).
        events: Query<Option<String>>,
    ) -> ApiResult<poem::web::websocket::BoxWebSocketUpgraded> {
        let events = initial_events(events.0.as_deref())?;
        let who = authenticate(request, &state, tenant.0, ticket.0.as_deref()).await?;
        let connection = register(&state, who, events)?;
        Ok(socket::upgrade(websocket, connection, &state))
    }

    /// Stream the tenant's live events (Server-Sent Events).
    ///
    /// The same events as the WebSocket, read-only: each an SSE `event:` named after the
    /// event (`product.created`…) whose `data:` is the event frame's JSON. Authenticate and
    /// choose events as for `GET /v1/realtime`; the same limits and refusals apply. The
    /// stream ends when the credential is revoked, the tenant suspended, or the instance
    /// shuts down (reconnect).
    #[oai(
        path = "/v1/realtime/events",
        method = "get",
        operation_id = "stream_realtime_events"
    )]
    async fn stream_realtime_events(
        &self,
        request: &Request,
        state: Data<&AppState>,
        tenant: CurrentTenant,
        /// A single-use ticket (instead of `Authorization`).
        ticket: Query<Option<String>>,
        /// Event names to receive, comma-separated (default: all).
        events: Query<Option<String>>,
    ) -> ApiResult<events::EventStream> {
        let events = initial_events(events.0.as_deref())?;
        let who = authenticate(request, &state, tenant.0, ticket.0.as_deref()).await?;
        let connection = register(&state, who, events)?;
        Ok(events::stream(connection, &state))
    }
}
