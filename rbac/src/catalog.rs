//! The permission catalog, defined once here, and the system roles every tenant has.

use std::{fmt, str::FromStr};

macro_rules! permissions {
    ($($variant:ident => ($name:literal, $doc:literal)),* $(,)?) => {
        /// A `resource:action` permission. The catalog is closed: every permission the API
        /// checks is one of these, and roles can only be granted these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission {
            $(
                #[doc = $doc]
                $variant,
            )*
        }

        impl Permission {
            /// The whole catalog, in display order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];

            /// The stable `resource:action` name.
            pub const fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }

            /// What holding it allows.
            pub const fn description(self) -> &'static str {
                match self { $(Permission::$variant => $doc,)* }
            }
        }
    };
}

permissions! {
    UsersRead => ("users:read", "List and view the tenant's users."),
    UsersManage => ("users:manage", "Rename, deactivate, ban and reactivate users."),
    RolesRead => ("roles:read", "List and view roles and the permission catalog."),
    RolesManage => ("roles:manage", "Create, change and delete custom roles, and set users' roles."),
    ProductsRead => ("products:read", "List, search and view products."),
    ProductsWrite => ("products:write", "Create and change products, adjust stock, restore deleted products."),
    ProductsDelete => ("products:delete", "Delete products."),
    FilesRead => ("files:read", "List files, download them and their thumbnails."),
    FilesWrite => ("files:write", "Upload and delete files."),
    BillingRead => ("billing:read", "View the tenant's subscription."),
    BillingManage => ("billing:manage", "Change the subscription: checkout and billing portal."),
    AuditRead => ("audit:read", "Read the security audit log."),
    TenantManage => ("tenant:manage", "Change the tenant's settings: who may register, and with which role."),
    ApiKeysManage => ("api_keys:manage", "Create, list and revoke the tenant's API keys (service accounts)."),
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a permission of the catalog")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

impl Permission {
    const fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// A set of permissions (a bit set over the catalog).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermissionSet(u64);

impl PermissionSet {
    /// No permission.
    pub const EMPTY: Self = Self(0);

    /// Every permission of the catalog.
    pub const fn all() -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < Permission::ALL.len() {
            bits |= Permission::ALL[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// The set of these permissions.
    pub const fn of(permissions: &[Permission]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < permissions.len() {
            bits |= permissions[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Whether `permission` is in the set.
    pub const fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// Adds a permission.
    pub fn insert(&mut self, permission: Permission) {
        self.0 |= permission.bit();
    }

    /// Both sets together.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// What both sets have.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// What `self` has and `other` lacks.
    #[must_use]
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// `self` minus the given permissions.
    #[must_use]
    pub const fn without(self, permissions: &[Permission]) -> Self {
        self.difference(Self::of(permissions))
    }

    /// Whether every permission of `self` is in `other`.
    pub const fn is_subset(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether the two sets have no permission in common.
    pub const fn is_disjoint(self, other: Self) -> bool {
        self.0 & other.0 == 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions, in catalog order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }

    /// The names, in catalog order.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_owned()).collect()
    }

    /// Parses names, skipping (and reporting) those the catalog does not have.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> (Self, Vec<String>) {
        let mut set = Self::EMPTY;
        let mut unknown = Vec::new();
        for name in names {
            match name.parse() {
                Ok(p) => set.insert(p),
                Err(UnknownPermission(name)) => unknown.push(name),
            }
        }
        (set, unknown)
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        for p in iter {
            set.insert(p);
        }
        set
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::as_str))
            .finish()
    }
}

/// What a role given away without anyone's decision (to self-registered users) must not
/// grant: managing people, roles, the tenant or its billing. Owner and admin grant these;
/// so may a custom role, which then cannot be the registration role either.
pub const NOT_FOR_SELF_REGISTRATION: PermissionSet = PermissionSet::of(&[
    Permission::UsersManage,
    Permission::RolesManage,
    Permission::TenantManage,
    Permission::BillingManage,
]);

/// What an API key can never hold: managing API keys (a key cannot mint keys). Checked when
/// a key is created, and again on every request made with one.
pub const NOT_FOR_API_KEYS: PermissionSet = PermissionSet::of(&[Permission::ApiKeysManage]);

/// The roles every tenant has. Their permission sets are defined here, not stored, so that
/// a permission added to the catalog reaches every tenant at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemRole {
    /// Everything.
    Owner,
    /// Everything except billing changes.
    Admin,
    /// Works with products and files, reads the directory.
    Member,
    /// Reads products and files.
    Viewer,
}

// The text is the key stored in `roles.system_key` (also the role's name); `ALL` lists the
// four most powerful first.
tenancy::text_enum!(SystemRole, "system role" {
    Owner => "owner", Admin => "admin", Member => "member", Viewer => "viewer"
});

impl SystemRole {
    /// What the role allows.
    pub const fn permissions(self) -> PermissionSet {
        use Permission::*;
        match self {
            Self::Owner => PermissionSet::all(),
            Self::Admin => PermissionSet::all().without(&[BillingManage]),
            Self::Member => PermissionSet::of(&[
                UsersRead,
                RolesRead,
                ProductsRead,
                ProductsWrite,
                FilesRead,
                FilesWrite,
            ]),
            Self::Viewer => PermissionSet::of(&[ProductsRead, FilesRead]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_resource_action_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for p in Permission::ALL {
            let (resource, action) = p.as_str().split_once(':').unwrap();
            assert!(!resource.is_empty() && !action.is_empty(), "{p}");
            assert!(
                p.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == ':' || c == '_'),
                "{p}"
            );
            assert!(seen.insert(p.as_str()), "duplicate {p}");
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), *p);
        }
        assert!(Permission::ALL.len() <= 64, "PermissionSet is a u64");
    }

    #[test]
    fn system_roles_are_nested() {
        use SystemRole::*;
        assert_eq!(Owner.permissions(), PermissionSet::all());
        assert!(Admin.permissions().is_subset(Owner.permissions()));
        assert!(!Admin.permissions().contains(Permission::BillingManage));
        assert!(Member.permissions().is_subset(Admin.permissions()));
        assert!(Viewer.permissions().is_subset(Member.permissions()));
        assert!(!Viewer.permissions().contains(Permission::ProductsWrite));
        assert!(Admin.permissions().contains(Permission::TenantManage));
        assert!(!Member.permissions().contains(Permission::TenantManage));
        assert!(Admin.permissions().contains(Permission::ApiKeysManage));
        assert!(!Member.permissions().contains(Permission::ApiKeysManage));
    }

    #[test]
    fn only_roles_below_admin_may_be_handed_out_by_registration() {
        use SystemRole::*;
        assert!(!Owner.permissions().is_disjoint(NOT_FOR_SELF_REGISTRATION));
        assert!(!Admin.permissions().is_disjoint(NOT_FOR_SELF_REGISTRATION));
        assert!(Member.permissions().is_disjoint(NOT_FOR_SELF_REGISTRATION));
        assert!(Viewer.permissions().is_disjoint(NOT_FOR_SELF_REGISTRATION));
    }

    #[test]
    fn set_algebra() {
        use Permission::*;
        let a = PermissionSet::of(&[UsersRead, ProductsRead]);
        let b = PermissionSet::of(&[ProductsRead]);
        assert!(b.is_subset(a));
        assert!(!a.is_subset(b));
        assert_eq!(a.difference(b), PermissionSet::of(&[UsersRead]));
        assert_eq!(a.names(), ["users:read", "products:read"]);
        let (parsed, unknown) = PermissionSet::from_names(["products:read", "nope:nope"]);
        assert_eq!(parsed, b);
        assert_eq!(unknown, ["nope:nope"]);
    }
}
