//! Security settings on the command line: how this process reaches the cluster (TLS,
//! credentials; every command), how a server's listeners authenticate and authorize
//! (`weir node`, `weir controller`, `weir broker`), and `weir acl`.

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Args, Subcommand};
use weir_proto::auth::{ListenerSecurity, Security, SecurityConfig};
use weir_proto::tls::{ClientTlsFiles, ServerTls};
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_types::acl::{self, Acl, AclFilter, Operation, PatternType, Permission, ResourceType};

/// TLS and credentials; flags of every command.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// The CA (PEM) that signs the cluster's certificates. Clients check servers against it;
    /// servers check client certificates against it. Turns TLS on.
    #[arg(long, global = true, env = "WEIR_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate chain (PEM): a server's certificate, and the client
    /// certificate it (or a CLI) presents. Reloaded when it changes.
    #[arg(long, global = true, env = "WEIR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of `--tls-cert` (PEM, PKCS#8 or SEC1 or PKCS#1).
    #[arg(long, global = true, env = "WEIR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A bearer token to send with every request (a static token or a JWT).
    #[arg(long, global = true, env = "WEIR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

static TLS: OnceLock<TlsArgs> = OnceLock::new();

/// Applies the client side of the flags to every connection this process makes.
pub fn init(args: &TlsArgs) -> anyhow::Result<()> {
    if args.tls_cert.is_some() && args.tls_ca.is_none() {
        anyhow::bail!("--tls-cert needs --tls-ca (the CA that signs the cluster's certificates)");
    }
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => args.token.clone(),
    };
    weir_proto::call::set_client_security(&weir_proto::call::ClientSecurity {
        tls: args.tls_ca.as_ref().map(|ca| ClientTlsFiles {
            ca: ca.clone(),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        }),
        token,
    })
    .map_err(|e| anyhow::anyhow!("--tls-ca/--tls-cert/--tls-key: {e}"))?;
    let _ = TLS.set(args.clone());
    Ok(())
}

/// How a server's listeners let callers in.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerSecurityArgs {
    /// Accept static bearer tokens: lines of `<principal> <token>` (reloaded on change).
    #[arg(long, env = "WEIR_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Accept JWTs signed by a key of this JWKS file (ES256, RS256; reloaded on change).
    #[arg(long, env = "WEIR_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// A JWT's `iss` must be this.
    #[arg(long, env = "WEIR_AUTH_JWT_ISSUER", requires = "auth_jwks_file")]
    pub auth_jwt_issuer: Option<String>,
    /// A JWT's `aud` must include this.
    #[arg(long, env = "WEIR_AUTH_JWT_AUDIENCE", requires = "auth_jwks_file")]
    pub auth_jwt_audience: Option<String>,
    /// Check ACLs (`weir acl`) on every RPC; callers must authenticate.
    #[arg(long, env = "WEIR_AUTHORIZATION")]
    pub authorization: bool,
    /// Principals allowed everything, comma separated (brokers and controllers of the
    /// cluster are, by their certificates).
    #[arg(long, env = "WEIR_SUPER_USERS", value_delimiter = ',')]
    pub super_users: Vec<String>,
}

/// The listeners' TLS (from `--tls-cert`, `--tls-key`, `--tls-ca`) and security.
pub fn listener_security(args: &ServerSecurityArgs) -> anyhow::Result<ListenerSecurity> {
    let tls_args = TLS.get().cloned().unwrap_or(TlsArgs {
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        token: None,
        token_file: None,
    });
    let tls = match (&tls_args.tls_cert, &tls_args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(
            ServerTls::new(cert.clone(), key.clone(), tls_args.tls_ca.clone())
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key/--tls-ca: {e}"))?,
        )),
        _ => None,
    };
    let security = Security::new(SecurityConfig {
        token_file: args.auth_token_file.clone(),
        jwks_file: args.auth_jwks_file.clone(),
        jwt_issuer: args.auth_jwt_issuer.clone(),
        jwt_audience: args.auth_jwt_audience.clone(),
        client_certs: tls.is_some() && tls_args.tls_ca.is_some(),
        authorization: args.authorization,
        super_users: args.super_users.clone(),
    })
    .map_err(|e| anyhow::anyhow!("--auth-*/--authorization: {e}"))?;
    Ok(ListenerSecurity { tls, security })
}

/// TLS for the HTTP endpoints (`/metrics`, probes, the gateway's HTTP API): the same
/// certificate as the gRPC listeners, HTTP/1.1, no client certificates.
pub fn http_tls() -> anyhow::Result<Option<std::sync::Arc<ServerTls>>> {
    let Some(args) = TLS.get() else {
        return Ok(None);
    };
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(std::sync::Arc::new(
            ServerTls::http1(cert.clone(), key.clone())
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?,
        ))),
        _ => Ok(None),
    }
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow or deny a principal an operation on resources.
    Add(AclArgs),
    /// Remove every ACL matching the given fields.
    Remove(AclFilterArgs),
    /// List ACLs (all, or those matching the given fields).
    List(AclFilterArgs),
}

#[derive(Debug, Args)]
pub struct AclArgs {
    #[command(flatten)]
    target: crate::admin_cmd::Bootstrap,
    /// Allow these principals (`*`: every authenticated principal).
    #[arg(long, value_delimiter = ',', required_unless_present = "deny")]
    allow: Vec<String>,
    /// Deny these principals (wins over any allow).
    #[arg(long, value_delimiter = ',', conflicts_with = "allow")]
    deny: Vec<String>,
    /// read, write, create, delete, alter, describe or all (comma separated).
    #[arg(long, value_delimiter = ',', required = true)]
    operation: Vec<Operation>,
    #[command(flatten)]
    resource: ResourceArgs,
}

/// The resource an ACL names: one of them.
#[derive(Debug, Args)]
pub struct ResourceArgs {
    /// A topic: a name, `*` for all, or `prefix*` for names starting with prefix.
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group (name, `*` or `prefix*`).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A subscription (name, `*` or `prefix*`).
    #[arg(long, group = "resource")]
    subscription: Option<String>,
    /// The cluster itself (controllers, brokers, metadata, listing).
    #[arg(long, group = "resource")]
    cluster: bool,
}

#[derive(Debug, Args)]
pub struct AclFilterArgs {
    #[command(flatten)]
    target: crate::admin_cmd::Bootstrap,
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    operation: Option<Operation>,
    #[arg(long)]
    permission: Option<Permission>,
    #[command(flatten)]
    resource: ResourceArgs,
}

/// `name`, `*` or `prefix*` as an ACL pattern.
fn pattern(raw: &str) -> (PatternType, String) {
    match raw.strip_suffix('*') {
        Some(prefix) if !prefix.is_empty() => (PatternType::Prefixed, prefix.to_string()),
        _ => (PatternType::Literal, raw.to_string()),
    }
}

impl ResourceArgs {
    /// (kind, pattern type, name), when a resource was named.
    fn pattern(&self) -> Option<(ResourceType, PatternType, String)> {
        let named = |kind, raw: &String| {
            let (p, name) = pattern(raw);
            (kind, p, name)
        };
        if let Some(t) = &self.topic {
            return Some(named(ResourceType::Topic, t));
        }
        if let Some(g) = &self.group {
            return Some(named(ResourceType::Group, g));
        }
        if let Some(s) = &self.subscription {
            return Some(named(ResourceType::Subscription, s));
        }
        self.cluster.then(|| {
            (
                ResourceType::Cluster,
                PatternType::Literal,
                acl::CLUSTER.to_string(),
            )
        })
    }
}

fn filter(f: &AclFilterArgs) -> AclFilter {
    let resource = f.resource.pattern();
    AclFilter {
        principal: f.principal.clone(),
        resource_type: resource.as_ref().map(|r| r.0),
        pattern_type: resource.as_ref().map(|r| r.1),
        resource: resource.map(|r| r.2),
        operation: f.operation,
        permission: f.permission,
    }
}

fn print_acls(acls: &[pb::Acl]) {
    for a in acls {
        match Acl::try_from(a.clone()) {
            Ok(acl) => println!("{acl}"),
            Err(e) => println!("(unreadable ACL: {e})"),
        }
    }
}

pub async fn run(command: AclCommand) -> anyhow::Result<i32> {
    match command {
        AclCommand::Add(a) => {
            let Some((resource_type, pattern_type, name)) = a.resource.pattern() else {
                anyhow::bail!("name a resource: --topic, --group, --subscription or --cluster");
            };
            let (permission, principals) = if a.deny.is_empty() {
                (Permission::Allow, a.allow)
            } else {
                (Permission::Deny, a.deny)
            };
            let mut acls = Vec::new();
            for principal in &principals {
                for operation in &a.operation {
                    let acl = Acl {
                        principal: principal.clone(),
                        resource_type,
                        pattern_type,
                        resource: name.clone(),
                        operation: *operation,
                        permission,
                    };
                    acl.validate()
                        .map_err(|(field, reason)| anyhow::anyhow!("--{field}: {reason}"))?;
                    acls.push(pb::Acl::from(&acl));
                }
            }
            let request = pb::CreateAclsRequest { acls: acls.clone() };
            let created = crate::admin_cmd::with_controller(
                &weir_proto::call::parse_bootstrap(&a.target.bootstrap)?,
                move |ch| {
                    let request = request.clone();
                    async move { AdminClient::new(ch).create_acls(request).await }
                },
            )
            .await?
            .into_inner()
            .created;
            print_acls(&acls);
            println!("{created} of {} new", acls.len());
        }
        AclCommand::Remove(f) => {
            let filter = filter(&f);
            anyhow::ensure!(
                filter != AclFilter::default(),
                "name what to remove: --principal, --operation, --permission or a resource"
            );
            let request = pb::DeleteAclsRequest {
                filter: Some(pb::AclFilter::from(&filter)),
            };
            let deleted = crate::admin_cmd::with_controller(
                &weir_proto::call::parse_bootstrap(&f.target.bootstrap)?,
                move |ch| {
                    let request = request.clone();
                    async move { AdminClient::new(ch).delete_acls(request).await }
                },
            )
            .await?
            .into_inner()
            .deleted;
            print_acls(&deleted);
            println!("{} removed", deleted.len());
        }
        AclCommand::List(f) => {
            let request = pb::ListAclsRequest {
                filter: Some(pb::AclFilter::from(&filter(&f))),
            };
            let acls = crate::admin_cmd::with_controller(
                &weir_proto::call::parse_bootstrap(&f.target.bootstrap)?,
                move |ch| {
                    let request = request.clone();
                    async move { AdminClient::new(ch).list_acls(request).await }
                },
            )
            .await?
            .into_inner()
            .acls;
            print_acls(&acls);
        }
    }
    Ok(0)
}
