//! The permission catalog (`/v1/permissions`) and the tenant's roles (`/v1/roles`).
//!
//! Changes to roles are serialised per tenant ([`rbac::store::lock_roles`]) and checked
//! against the caller's permissions as they stand under that lock: nobody can make a role
//! grant more than they hold themselves. Every committed change voids the tenant's cached
//! permissions.

use chrono::{DateTime, Utc};
use poem::{Request, web::Data};
use poem_openapi::{Object, OpenApi, param::Path, payload::Json, types::MaybeUndefined};
use rbac::{
    Permission, PermissionSet, Role, RoleError,
    store::{self, NewRole, RoleChanges},
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{
        ApiTag, audit,
        checks::check_some_change,
        guards::{GRANTS_MORE, ensure_holds, lock_for_change},
    },
};

/// Roles endpoints.
pub struct RolesApi;

/// A permission of the catalog.
#[derive(Debug, Object)]
pub struct PermissionView {
    /// `resource:action` name.
    pub name: String,
    /// What it allows.
    pub description: String,
}

/// The permission catalog.
#[derive(Debug, Object)]
pub struct PermissionList {
    /// Every permission, grouped by resource.
    pub items: Vec<PermissionView>,
}

/// A role of the tenant.
#[derive(Debug, Object)]
pub struct RoleView {
    /// Role id.
    pub id: Uuid,
    /// Name, unique in the tenant (case-insensitively).
    pub name: String,
    /// What the role is for.
    pub description: String,
    /// System roles (`owner`, `admin`, `member`, `viewer`) exist in every tenant and cannot
    /// be changed or deleted.
    pub system: bool,
    /// The role whose permissions this one inherits.
    pub parent_id: Option<Uuid>,
    /// Permissions granted to the role itself.
    pub permissions: Vec<String>,
    /// Its own permissions plus every ancestor's: what holding the role allows.
    pub effective_permissions: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl RoleView {
    fn new(role: &Role, roles: &[Role]) -> Self {
        Self {
            id: role.id,
            name: role.name.clone(),
            description: role.description.clone(),
            system: role.system.is_some(),
            parent_id: role.parent_id,
            permissions: role.permissions.names(),
            effective_permissions: store::effective_permissions(roles, role.id).names(),
            created_at: role.created_at,
            updated_at: role.updated_at,
        }
    }
}

/// The tenant's roles.
#[derive(Debug, Object)]
pub struct RoleList {
    /// System roles first, then custom roles by name.
    pub items: Vec<RoleView>,
}

/// A custom role to create.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    /// Name, 1 to 64 characters once surrounding whitespace is trimmed, without control
    /// characters; unique in the tenant.
    pub name: String,
    /// What the role is for: up to 500 characters, without control characters other than
    /// newlines.
    #[oai(validator(max_length = 500))]
    #[serde(default)]
    pub description: Option<String>,
    /// A role whose permissions this one inherits (at most five roles in a chain).
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// Permissions of its own, from `GET /v1/permissions`. You must hold each one.
    #[oai(validator(max_items = 14))]
    pub permissions: Vec<String>,
}

/// Changes to a custom role; absent fields stay as they are.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateRole {
    /// New name: 1 to 64 characters once surrounding whitespace is trimmed, without control
    /// characters.
    #[serde(default)]
    pub name: Option<String>,
    /// New description: up to 500 characters, without control characters other than newlines.
    #[oai(validator(max_length = 500))]
    #[serde(default)]
    pub description: Option<String>,
    /// New parent; `null` removes the parent.
    #[serde(default)]
    pub parent_id: MaybeUndefined<Uuid>,
    /// New permissions of its own, replacing the old ones. You must hold each one added.
    #[oai(validator(max_items = 14))]
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
}

// The schema's `maxItems` of `permissions` (attributes take literals only).
const _: () = assert!(
    Permission::ALL.len() == 14,
    "update maxItems of `permissions`"
);

fn check_role_name(errors: &mut Vec<FieldError>, name: &str) {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            FieldCode::Length,
            "must be 1 to 64 characters, without control characters",
        ));
    }
}

fn check_description(errors: &mut Vec<FieldError>, description: Option<&str>) {
    if description
        .is_some_and(|d| d.chars().count() > 500 || d.chars().any(|c| c.is_control() && c != '\n'))
    {
        errors.push(FieldError::new(
            "description",
            FieldCode::Length,
            "must be at most 500 characters, without control characters",
        ));
    }
}

fn check_permissions(errors: &mut Vec<FieldError>, names: &[String]) {
    if names.len() > Permission::ALL.len() {
        errors.push(FieldError::new(
            "permissions",
            FieldCode::TooLong,
            format!("at most {} permissions", Permission::ALL.len()),
        ));
        return;
    }
    for (i, name) in names.iter().enumerate() {
        if name.parse::<Permission>().is_err() {
            errors.push(FieldError::new(
                format!("permissions[{i}]"),
                FieldCode::UnknownPermission,
                format!("`{name}` is not a permission; see GET /v1/permissions"),
            ));
        }
    }
}

impl Validate for CreateRole {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_role_name(&mut errors, &self.name);
        check_description(&mut errors, self.description.as_deref());
        check_permissions(&mut errors, &self.permissions);
        all_valid(errors)
    }
}

impl Validate for UpdateRole {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_some_change(
            &mut errors,
            &[
                ("name", self.name.is_some()),
                ("description", self.description.is_some()),
                ("parent_id", !self.parent_id.is_undefined()),
                ("permissions", self.permissions.is_some()),
            ],
        );
        if let Some(name) = &self.name {
            check_role_name(&mut errors, name);
        }
        check_description(&mut errors, self.description.as_deref());
        if let Some(permissions) = &self.permissions {
            check_permissions(&mut errors, permissions);
        }
        all_valid(errors)
    }
}

fn parse_permissions(names: &[String]) -> PermissionSet {
    PermissionSet::from_names(names.iter().map(String::as_str)).0
}

impl From<RoleError> for ApiError {
    fn from(err: RoleError) -> Self {
        match err {
            RoleError::NotFound => role_not_found(),
            RoleError::ParentNotFound => ApiError::validation(vec![FieldError::new(
                "parent_id",
                FieldCode::NotFound,
                "no role of this tenant has this id",
            )]),
            RoleError::Cycle => ApiError::validation(vec![FieldError::new(
                "parent_id",
                FieldCode::Cycle,
                "the role would inherit from itself",
            )]),
            RoleError::TooDeep => ApiError::validation(vec![FieldError::new(
                "parent_id",
                FieldCode::TooDeep,
                format!(
                    "a chain of parents may hold at most {} roles",
                    store::MAX_DEPTH
                ),
            )]),
            RoleError::NameTaken => ApiError::new(
                ErrorCode::RoleNameTaken,
                "Another role of this tenant has this name.",
            ),
            RoleError::SystemRole => ApiError::new(
                ErrorCode::SystemRoleImmutable,
                "System roles cannot be renamed, changed or deleted.",
            ),
            RoleError::TooMany => ApiError::new(
                ErrorCode::RoleLimitReached,
                format!("A tenant may have at most {} roles.", store::MAX_ROLES),
            ),
            RoleError::InUse(users) => ApiError::new(
                ErrorCode::RoleInUse,
                format!("{users} users hold this role; give them other roles first."),
            ),
            RoleError::HasChildren(roles) => ApiError::new(
                ErrorCode::RoleInUse,
                format!("{roles} roles inherit from this role; change their parent first."),
            ),
            RoleError::Database(e) => ApiError::internal(e),
        }
    }
}

fn role_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "No role of this tenant has this id.")
}

#[OpenApi(tag = "ApiTag::Roles")]
impl RolesApi {
    /// The permission catalog: every permission a role can grant.
    #[oai(
        path = "/v1/permissions",
        method = "get",
        operation_id = "list_permissions"
    )]
    async fn list_permissions(
        &self,
        _auth: Authorized<perm::RolesRead>,
    ) -> ApiResult<Json<PermissionList>> {
        Ok(Json(PermissionList {
            items: Permission::ALL
                .iter()
                .map(|p| PermissionView {
                    name: p.as_str().to_owned(),
                    description: p.description().to_owned(),
                })
                .collect(),
        }))
    }

    /// The tenant's roles, with what each allows.
    #[oai(path = "/v1/roles", method = "get", operation_id = "list_roles")]
    async fn list_roles(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::RolesRead>,
    ) -> ApiResult<Json<RoleList>> {
        let mut tx = auth.begin(&state).await?;
        let roles = store::list_roles(&mut tx)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        Ok(Json(RoleList {
            items: roles.iter().map(|r| RoleView::new(r, &roles)).collect(),
        }))
    }

    /// One role.
    #[oai(path = "/v1/roles/:id", method = "get", operation_id = "get_role")]
    async fn get_role(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::RolesRead>,
        /// Role id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<RoleView>> {
        let mut tx = auth.begin(&state).await?;
        let roles = store::list_roles(&mut tx)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        let role = roles
            .iter()
            .find(|r| r.id == id.0)
            .ok_or_else(role_not_found)?;
        Ok(Json(RoleView::new(role, &roles)))
    }

    /// Create a custom role.
    ///
    /// The role allows its own permissions plus everything its parent allows. You must
    /// hold every permission it would allow.
    #[oai(path = "/v1/roles", method = "post", operation_id = "create_role")]
    async fn create_role(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::RolesManage>,
        body: JsonBody<CreateRole>,
    ) -> ApiResult<CreatedRole> {
        let me = auth.principal;
        let body = body.0;
        let client = client_info(request);
        let permissions = parse_permissions(&body.permissions);
        let mut tx = me.begin(&state).await?;
        let (roles, held) = lock_for_change(&mut tx, &me, Permission::RolesManage).await?;
        let id = Uuid::now_v7();
        let mut allows = permissions;
        if let Some(parent) = body.parent_id {
            store::check_parent(&roles, id, parent)?;
            allows = allows.union(store::effective_permissions(&roles, parent));
        }
        ensure_holds(held, allows, GRANTS_MORE)?;
        let role = store::create_role(
            &mut tx,
            NewRole {
                name: body.name.trim(),
                description: body.description.as_deref().unwrap_or("").trim(),
                parent_id: body.parent_id,
                permissions,
            },
        )
        .await?;
        audit::record(
            &mut tx,
            "role.created",
            Some(me.user_id),
            Some(role.id),
            Some(me.session_id),
            &client,
            json!({ "name": role.name, "parent_id": role.parent_id, "permissions": role.permissions.names() }),
        )
        .await?;
        let roles = store::list_roles(&mut tx)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        Ok(CreatedRole::Created(Json(RoleView::new(&role, &roles))))
    }

    /// Change a custom role.
    ///
    /// Takes effect on the next request of every user holding the role or a role that
    /// inherits from it. You must hold every permission the change would add.
    #[oai(path = "/v1/roles/:id", method = "patch", operation_id = "update_role")]
    async fn update_role(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::RolesManage>,
        /// Role id.
        id: Path<Uuid>,
        body: JsonBody<UpdateRole>,
    ) -> ApiResult<Json<RoleView>> {
        let me = auth.principal;
        let body = body.0;
        let client = client_info(request);
        let tenant = me.tenant.id;
        let mut tx = me.begin(&state).await?;
        let (mut roles, held) = lock_for_change(&mut tx, &me, Permission::RolesManage).await?;
        let index = roles
            .iter()
            .position(|r| r.id == id.0)
            .ok_or_else(role_not_found)?;
        if roles[index].system.is_some() {
            return Err(RoleError::SystemRole.into());
        }
        let before = store::effective_permissions(&roles, id.0);
        let parent = match body.parent_id {
            MaybeUndefined::Value(parent) => Some(Some(parent)),
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Undefined => None,
        };
        if let Some(Some(parent)) = parent {
            store::check_parent(&roles, id.0, parent)?;
        }
        // What the role would allow after the change, computed on the changed list.
        let permissions = body.permissions.as_deref().map(parse_permissions);
        if let Some(parent) = parent {
            roles[index].parent_id = parent;
        }
        if let Some(permissions) = permissions {
            roles[index].permissions = permissions;
        }
        let after = store::effective_permissions(&roles, id.0);
        // Changing a role changes what its holders may do: the caller must hold everything
        // it grants, before and after (like managing each holder).
        ensure_holds(held, before.union(after), GRANTS_MORE)?;
        let role = store::update_role(
            &mut tx,
            id.0,
            RoleChanges {
                name: body.name.as_deref().map(str::trim),
                description: body.description.as_deref().map(str::trim),
                parent_id: parent,
                permissions,
            },
        )
        .await?;
        audit::record(
            &mut tx,
            "role.updated",
            Some(me.user_id),
            Some(role.id),
            Some(me.session_id),
            &client,
            json!({
                "name": role.name,
                "parent_id": role.parent_id,
                "permissions": role.permissions.names(),
                "added": after.difference(before).names(),
                "removed": before.difference(after).names(),
            }),
        )
        .await?;
        tx.commit().await?;
        state.permissions.invalidate(tenant).await;
        Ok(Json(RoleView::new(&role, &roles)))
    }

    /// Delete a custom role nobody holds and no role inherits from.
    #[oai(
        path = "/v1/roles/:id",
        method = "delete",
        operation_id = "delete_role"
    )]
    async fn delete_role(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::RolesManage>,
        /// Role id.
        id: Path<Uuid>,
    ) -> ApiResult<DeletedRole> {
        let me = auth.principal;
        let client = client_info(request);
        let tenant = me.tenant.id;
        let mut tx = me.begin(&state).await?;
        let (roles, held) = lock_for_change(&mut tx, &me, Permission::RolesManage).await?;
        if roles.iter().any(|r| r.id == id.0) {
            ensure_holds(
                held,
                store::effective_permissions(&roles, id.0),
                GRANTS_MORE,
            )?;
        }
        let role = store::delete_role(&mut tx, id.0).await?;
        audit::record(
            &mut tx,
            "role.deleted",
            Some(me.user_id),
            Some(role.id),
            Some(me.session_id),
            &client,
            json!({ "name": role.name }),
        )
        .await?;
        tx.commit().await?;
        state.permissions.invalidate(tenant).await;
        Ok(DeletedRole::Deleted)
    }
}

/// A role was created.
#[derive(poem_openapi::ApiResponse)]
pub enum CreatedRole {
    /// The new role.
    #[oai(status = 201)]
    Created(Json<RoleView>),
}

/// A role was deleted.
#[derive(poem_openapi::ApiResponse)]
pub enum DeletedRole {
    /// Deleted.
    #[oai(status = 204)]
    Deleted,
}
