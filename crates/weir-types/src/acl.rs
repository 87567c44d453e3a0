//! Access control lists: who may do what to which resource.
//!
//! An [`Acl`] allows or denies one principal (or every principal, `*`) one operation on
//! resources of one kind whose names equal a literal or start with a prefix. A request is
//! allowed when the principal is a super-user, or when some ACL allows it and none denies it;
//! everything else is refused (deny by default). As in Kafka, a grant of read, write, delete
//! or alter on a resource also grants describe on it.

use serde::{Deserialize, Serialize};

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    /// Every operation (only in an ACL, never asked for).
    All,
}

/// The kind of thing a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Topic,
    Group,
    Subscription,
    /// The cluster itself: its brokers, controllers, metadata and the lists of everything.
    Cluster,
}

/// How an ACL's resource name is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternType {
    /// The name equals the pattern (`*` matches every name).
    Literal,
    /// The name starts with the pattern.
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Allow,
    Deny,
}

/// One rule. Fields are ordered so that a set of them sorts by principal first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    /// A principal name, or `*` for every authenticated principal.
    pub principal: String,
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    /// The resource name or prefix; the cluster resource's name is `cluster`.
    pub resource: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// The cluster resource's one name.
pub const CLUSTER: &str = "cluster";

/// The longest principal or resource pattern an ACL may hold.
pub const ACL_NAME_BYTES_MAX: usize = 512;

impl Acl {
    /// Checks the fields a user typed; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, value) in [("principal", &self.principal), ("resource", &self.resource)] {
            if value.is_empty() {
                return Err((field, "must not be empty".into()));
            }
            if value.len() > ACL_NAME_BYTES_MAX {
                return Err((field, format!("longer than {ACL_NAME_BYTES_MAX} bytes")));
            }
            if value.chars().any(char::is_control) {
                return Err((field, "contains a control character".into()));
            }
        }
        if self.resource_type == ResourceType::Cluster
            && (self.resource != CLUSTER || self.pattern_type != PatternType::Literal)
        {
            return Err((
                "resource",
                format!("the cluster resource is named {CLUSTER:?}"),
            ));
        }
        Ok(())
    }

    fn matches_resource(&self, kind: ResourceType, name: &str) -> bool {
        self.resource_type == kind
            && match self.pattern_type {
                PatternType::Literal => self.resource == "*" || self.resource == name,
                PatternType::Prefixed => name.starts_with(&self.resource),
            }
    }

    fn matches_principal(&self, principal: &str) -> bool {
        self.principal == "*" || self.principal == principal
    }

    /// Whether this rule speaks about `operation` (describe is implied by the others when
    /// allowing).
    fn covers(&self, operation: Operation) -> bool {
        self.operation == Operation::All
            || self.operation == operation
            || (operation == Operation::Describe
                && self.permission == Permission::Allow
                && matches!(
                    self.operation,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused: no ACL allows it, or this one denies it.
    Denied(Option<Acl>),
}

/// Decides whether `principal` may do `operation` on the resource `kind`/`name`.
pub fn authorize<'a>(
    acls: impl IntoIterator<Item = &'a Acl>,
    principal: &str,
    operation: Operation,
    kind: ResourceType,
    name: &str,
) -> Decision {
    let mut allowed = false;
    for acl in acls {
        if !acl.matches_principal(principal)
            || !acl.matches_resource(kind, name)
            || !acl.covers(operation)
        {
            continue;
        }
        match acl.permission {
            Permission::Deny => return Decision::Denied(Some(acl.clone())),
            Permission::Allow => allowed = true,
        }
    }
    if allowed {
        Decision::Allowed
    } else {
        Decision::Denied(None)
    }
}

/// A filter over ACLs, for listing and removing: every `None` field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub principal: Option<String>,
    pub resource_type: Option<ResourceType>,
    pub pattern_type: Option<PatternType>,
    pub resource: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    pub fn matches(&self, acl: &Acl) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.resource_type.is_none_or(|t| t == acl.resource_type)
            && self.pattern_type.is_none_or(|t| t == acl.pattern_type)
            && self.resource.as_ref().is_none_or(|r| *r == acl.resource)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

macro_rules! names {
    ($ty:ident { $($variant:ident = $name:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),* }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let lower = s.to_ascii_lowercase();
                $ty::ALL.iter().copied().find(|v| v.name() == lower).ok_or_else(|| {
                    let names: Vec<&str> = $ty::ALL.iter().map(|v| v.name()).collect();
                    format!("{s:?} is not one of {}", names.join(", "))
                })
            }
        }
    };
}

names!(Operation { Read = "read", Write = "write", Create = "create", Delete = "delete",
    Alter = "alter", Describe = "describe", All = "all" });
names!(ResourceType { Topic = "topic", Group = "group", Subscription = "subscription",
    Cluster = "cluster" });
names!(PatternType { Literal = "literal", Prefixed = "prefixed" });
names!(Permission { Allow = "allow", Deny = "deny" });

impl std::fmt::Display for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {} {}:{}",
            self.permission.name(),
            self.principal,
            self.operation.name(),
            self.resource_type.name(),
            self.pattern_type.name(),
            self.resource
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        principal: &str,
        op: Operation,
        kind: ResourceType,
        pattern: &str,
        p: Permission,
    ) -> Acl {
        let (pattern_type, resource) = match pattern.strip_suffix('*') {
            Some(prefix) if !prefix.is_empty() => (PatternType::Prefixed, prefix.to_string()),
            _ => (PatternType::Literal, pattern.to_string()),
        };
        Acl {
            principal: principal.into(),
            resource_type: kind,
            pattern_type,
            resource,
            operation: op,
            permission: p,
        }
    }

    use Operation::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn deny_by_default_allow_by_rule_and_deny_wins() {
        let acls = vec![
            acl("alice", Write, Topic, "orders", Allow),
            acl("alice", Read, Topic, "audit-*", Allow),
            acl("*", Describe, Cluster, CLUSTER, Allow),
            acl("alice", All, Topic, "audit-secret", Deny),
            acl("bob", All, Group, "*", Allow),
        ];
        let check =
            |who, op, kind, name| authorize(&acls, who, op, kind, name) == Decision::Allowed;
        assert!(check("alice", Write, Topic, "orders"));
        assert!(
            !check("alice", Read, Topic, "orders"),
            "write does not grant read"
        );
        assert!(
            check("alice", Describe, Topic, "orders"),
            "write implies describe"
        );
        assert!(!check("alice", Write, Topic, "orders2"), "literal is exact");
        assert!(check("alice", Read, Topic, "audit-2026"), "prefix");
        assert!(
            !check("alice", Read, Topic, "audit-secret"),
            "deny wins over a prefix allow"
        );
        assert!(
            !check("alice", Describe, Topic, "audit-secret"),
            "deny all covers describe"
        );
        assert!(
            check("carol", Describe, Cluster, CLUSTER),
            "wildcard principal"
        );
        assert!(!check("carol", Alter, Cluster, CLUSTER));
        assert!(
            check("bob", Delete, Group, "anything"),
            "literal * matches every name"
        );
        assert!(
            !check("bob", Delete, Topic, "anything"),
            "resource types are apart"
        );
        assert!(!check("dave", Read, Topic, "orders"), "no rule, no access");
    }

    #[test]
    fn validation_names_the_field() {
        let mut a = acl("alice", Read, Topic, "t", Allow);
        assert!(a.validate().is_ok());
        a.principal.clear();
        assert_eq!(a.validate().map_err(|e| e.0), Err("principal"));
        let c = acl("alice", Alter, Cluster, "other", Allow);
        assert_eq!(c.validate().map_err(|e| e.0), Err("resource"));
        assert_eq!("WRITE".parse::<Operation>(), Ok(Write));
        assert!(
            "frobnicate"
                .parse::<Operation>()
                .expect_err("refused")
                .contains("read, write")
        );
    }

    #[test]
    fn filters_match_on_the_fields_they_set() {
        let a = acl("alice", Read, Topic, "t", Allow);
        assert!(AclFilter::default().matches(&a));
        let f = AclFilter {
            principal: Some("alice".into()),
            operation: Some(Read),
            ..Default::default()
        };
        assert!(f.matches(&a));
        let f = AclFilter {
            permission: Some(Deny),
            ..Default::default()
        };
        assert!(!f.matches(&a));
    }
}
