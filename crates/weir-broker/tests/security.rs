//! A controller and a broker with TLS, authentication and ACLs on: every RPC of every
//! service in the proto files (walked from the descriptor set, so a new RPC is covered the
//! day it is added) answers UNAUTHENTICATED without credentials and PERMISSION_DENIED to an
//! authenticated principal without an ACL; ACLs added through the API grant exactly what
//! they say; expired, wrongly signed and unknown tokens are refused; a plain-text client to
//! a TLS port fails promptly; a rotated certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use prost::Message;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use weir_broker::{Broker, BrokerConfig};
use weir_controller::{Controller, ControllerConfig};
use weir_proto::auth::{Credentials, ListenerSecurity, Security, SecurityConfig};
use weir_proto::call::Channel;
use weir_proto::tls::ServerTls;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_testkit::free_addr;
use weir_types::BrokerId;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca { cert, key }
}

/// A certificate for `names` (DNS names; 127.0.0.1 is added) with common name `cn`; returns
/// (cert path, key path).
fn issue(dir: &Path, ca: &Ca, file: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    let (c, k) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

struct Jwt {
    pair: ring::signature::EcdsaKeyPair,
}

impl Jwt {
    fn new() -> Jwt {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        Jwt {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .expect("pair"),
        }
    }

    fn jwks(&self) -> String {
        use ring::signature::KeyPair;
        let point = self.pair.public_key().as_ref();
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}]})
        .to_string()
    }

    fn token(&self, sub: &str, exp_from_now: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"sub": sub, "iss": "https://idp.test", "exp": now + exp_from_now})
                .to_string(),
        );
        let signed = format!("{header}.{claims}");
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .expect("sign");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

const ALICE_TOKEN: &str = "alice-0123456789abcdef";
const NOBODY_TOKEN: &str = "nobody-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-0123456789abcdef";

struct Cluster {
    _dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
    controller: std::net::SocketAddr,
    broker: std::net::SocketAddr,
    jwt: Jwt,
    cert_dir: PathBuf,
    ca: &'static Ca,
    gateway: std::net::SocketAddr,
    _nodes: (Controller, Broker, weir_gateway::Gateway),
}

async fn channel(addr: std::net::SocketAddr, ca_pem: &[u8], credentials: Credentials) -> Channel {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    Channel::new(
        endpoint.connect().await.expect("connect over TLS"),
        credentials,
    )
}

fn bearer(token: &str) -> Credentials {
    Credentials::bearer(token).expect("token")
}

/// The CA every test's cluster uses: the process's outgoing connections (each broker's, to
/// its controller) are set once, as broker 1 with a certificate from it.
fn shared_ca() -> &'static (Ca, PathBuf) {
    static SHARED: std::sync::OnceLock<(Ca, PathBuf)> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("weir-security-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ca = ca("weir test CA");
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.cert.pem()).expect("write");
        let (bcert, bkey) = issue(&dir, &ca, "broker-1-client", "broker-1", &["broker-1.weir"]);
        weir_proto::call::set_client_security(&weir_proto::call::ClientSecurity {
            tls: Some(weir_proto::tls::ClientTlsFiles {
                ca: ca_path.clone(),
                cert: Some(bcert),
                key: Some(bkey),
            }),
            token: None,
        })
        .expect("client security");
        (ca, ca_path)
    })
}

async fn start() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let (ca, ca_path) = shared_ca();
    let ca_path = ca_path.clone();
    let (ccert, ckey) = issue(
        &certs,
        ca,
        "controller-1",
        "controller-1",
        &["controller-1.weir", "localhost"],
    );
    let (bcert, bkey) = issue(
        &certs,
        ca,
        "broker-1",
        "broker-1",
        &["broker-1.weir", "localhost"],
    );
    let tokens = certs.join("tokens");
    std::fs::write(
        &tokens,
        format!("alice {ALICE_TOKEN}\nnobody {NOBODY_TOKEN}\nadmin {ADMIN_TOKEN}\n"),
    )
    .expect("write");
    let jwt = Jwt::new();
    let jwks = certs.join("jwks.json");
    std::fs::write(&jwks, jwt.jwks()).expect("write");
    let security = Security::new(SecurityConfig {
        token_file: Some(tokens),
        jwks_file: Some(jwks),
        jwt_issuer: Some("https://idp.test".into()),
        jwt_audience: None,
        client_certs: true,
        authorization: true,
        super_users: vec!["admin".into()],
    })
    .expect("security");
    let listener = |cert: &PathBuf, key: &PathBuf| ListenerSecurity {
        tls: Some(Arc::new(
            ServerTls::new(cert.clone(), key.clone(), Some(ca_path.clone())).expect("tls"),
        )),
        security: Arc::clone(&security),
    };
    let caddr = free_addr();
    let mut cconfig = ControllerConfig::new(1, caddr, dir.path().join("c"));
    cconfig.security = listener(&ccert, &ckey);
    let controller = Controller::start(cconfig).await.expect("controller");
    let mut bconfig = BrokerConfig::new(
        BrokerId(1),
        free_addr(),
        dir.path().join("b"),
        vec![caddr.to_string()],
    );
    bconfig.security = listener(&bcert, &bkey);
    let broker = Broker::start(bconfig).await.expect("broker");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !broker.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker never ready over mTLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baddr = broker.local_addr;
    // a Pub/Sub gateway behind the same security; it reaches the cluster as broker 1 (this
    // process's client certificate), a member
    let (gcert, gkey) = issue(&certs, ca, "gateway", "gateway", &["localhost"]);
    let mut gconfig = weir_gateway::GatewayConfig::new(free_addr(), vec![caddr.to_string()]);
    gconfig.security = listener(&gcert, &gkey);
    gconfig.push_signing_key = Some(certs.join("push.key"));
    let gateway = weir_gateway::Gateway::start(gconfig)
        .await
        .expect("gateway");
    Cluster {
        gateway: gateway.local_addr,
        ca_pem: ca.cert.pem().into_bytes(),
        controller: caddr,
        broker: baddr,
        jwt,
        cert_dir: certs,
        ca,
        _dir: dir,
        _nodes: (controller, broker, gateway),
    }
}

/// Every RPC in the descriptor set: (path, server streaming, internal).
fn every_rpc() -> Vec<(String, bool, bool)> {
    let fds = prost_types::FileDescriptorSet::decode(weir_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut rpcs = Vec::new();
    for file in &fds.file {
        let package = file.package();
        if !package.starts_with("weir.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                rpcs.push((
                    format!("/{package}.{}/{}", service.name(), method.name()),
                    method.server_streaming(),
                    package.contains("internal"),
                ));
            }
        }
    }
    rpcs
}

/// Calls `path` with an empty request; the status it answered (OK as `Code::Ok`).
async fn call_empty(channel: Channel, path: &str, streaming: bool) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
    let result = if streaming {
        grpc.server_streaming(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

/// The listener that serves `path`: the controller's, or the broker's.
async fn answer(
    c: &Cluster,
    credentials: &Credentials,
    path: &str,
    streaming: bool,
) -> tonic::Status {
    let at_controller = call_empty(
        channel(c.controller, &c.ca_pem, credentials.clone()).await,
        path,
        streaming,
    )
    .await;
    if at_controller.code() != Code::Unimplemented {
        return at_controller;
    }
    call_empty(
        channel(c.broker, &c.ca_pem, credentials.clone()).await,
        path,
        streaming,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_credentials_and_an_acl() {
    let c = start().await;
    let rpcs = every_rpc();
    assert!(rpcs.len() > 40, "walked {} RPCs", rpcs.len());
    let mut failures = Vec::new();
    for (path, streaming, internal) in &rpcs {
        let anonymous = answer(&c, &Credentials::default(), path, *streaming).await;
        if anonymous.code() != Code::Unauthenticated {
            failures.push(format!(
                "{path} without credentials: {:?} {}",
                anonymous.code(),
                anonymous.message()
            ));
        }
        let nobody = answer(&c, &bearer(NOBODY_TOKEN), path, *streaming).await;
        let refused = if *internal {
            // internal RPCs want a cluster member's certificate, whatever the token
            matches!(
                nobody.code(),
                Code::PermissionDenied | Code::Unauthenticated
            )
        } else {
            nobody.code() == Code::PermissionDenied
        };
        if !refused {
            failures.push(format!(
                "{path} as a principal without ACLs: {:?} {}",
                nobody.code(),
                nobody.message()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} RPCs not guarded:\n{}",
        failures.len(),
        rpcs.len(),
        failures.join("\n")
    );
    println!(
        "{} RPCs: all refuse anonymous callers and callers without ACLs",
        rpcs.len()
    );
}

/// Protobuf bytes of a `message` request whose resource fields name `projects/p`'s topic
/// `t`, subscription `s` and snapshot `n` (what the gateway parses before it authorizes).
fn pubsub_request(fds: &prost_types::FileDescriptorSet, message: &str) -> Vec<u8> {
    let Some(descriptor) = fds
        .file
        .iter()
        .filter(|f| f.package() == "google.pubsub.v1")
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == message)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for field in &descriptor.field {
        use prost_types::field_descriptor_proto::Type;
        let value = match (field.name(), message) {
            ("topic", _) => "projects/p/topics/top",
            ("subscription", _) => "projects/p/subscriptions/sub",
            ("snapshot", _) => "projects/p/snapshots/snap",
            ("project", _) => "projects/p",
            ("name", "Topic") => "projects/p/topics/top",
            ("name", "Subscription") => "projects/p/subscriptions/sub",
            ("name", "Snapshot" | "CreateSnapshotRequest") => "projects/p/snapshots/snap",
            ("stream_ack_deadline_seconds" | "max_messages", _) => {
                prost::encoding::int32::encode(field.number() as u32, &10, &mut out);
                continue;
            }
            _ => continue,
        };
        match field.r#type() {
            Type::String => {
                prost::encoding::string::encode(field.number() as u32, &value.to_string(), &mut out)
            }
            // an update's resource: the message itself, its name set
            Type::Message => {
                let nested =
                    pubsub_request(fds, field.type_name().rsplit('.').next().unwrap_or(""));
                prost::encoding::bytes::encode(field.number() as u32, &nested, &mut out);
            }
            _ => {}
        }
    }
    out
}

/// The status a gateway RPC answers to `credentials` (OK as `Code::Ok`).
async fn call_gateway(
    c: &Cluster,
    credentials: &Credentials,
    path: &str,
    body: Vec<u8>,
    client_streaming: bool,
) -> tonic::Status {
    let mut grpc =
        tonic::client::Grpc::new(channel(c.gateway, &c.ca_pem, credentials.clone()).await);
    grpc.ready().await.expect("ready");
    let codec = RawCodec;
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
    let result = if client_streaming {
        let stream = tokio_stream::iter(vec![Bytes::from(body)]);
        match grpc
            .streaming(tonic::Request::new(stream), path, codec)
            .await
        {
            Ok(response) => match response.into_inner().message().await {
                Ok(_) => Ok(()),
                Err(s) => Err(s),
            },
            Err(s) => Err(s),
        }
    } else {
        grpc.unary(tonic::Request::new(Bytes::from(body)), path, codec)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

/// Raw protobuf bytes in and out.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, Self::Error> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pubsub_rpc_of_the_gateway_needs_credentials_and_an_acl() {
    use weir_proto::google::pubsub::v1 as gpb;
    let c = start().await;
    // the resources every request names exist, so each RPC gets as far as its check
    let admin = channel(c.gateway, &c.ca_pem, bearer(ADMIN_TOKEN)).await;
    let mut publisher = gpb::publisher_client::PublisherClient::new(admin.clone());
    let mut subscriber = gpb::subscriber_client::SubscriberClient::new(admin);
    publisher
        .create_topic(gpb::Topic {
            name: "projects/p/topics/top".into(),
            ..Default::default()
        })
        .await
        .expect("topic");
    subscriber
        .create_subscription(gpb::Subscription {
            name: "projects/p/subscriptions/sub".into(),
            topic: "projects/p/topics/top".into(),
            ..Default::default()
        })
        .await
        .expect("subscription");
    subscriber
        .create_snapshot(gpb::CreateSnapshotRequest {
            name: "projects/p/snapshots/snap".into(),
            subscription: "projects/p/subscriptions/sub".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot");

    let fds = prost_types::FileDescriptorSet::decode(weir_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut failures = Vec::new();
    let mut walked = 0;
    for file in fds
        .file
        .iter()
        .filter(|f| f.package() == "google.pubsub.v1")
    {
        // the services the gateway serves (not the schema registry)
        for service in file
            .service
            .iter()
            .filter(|s| matches!(s.name(), "Publisher" | "Subscriber"))
        {
            for method in &service.method {
                walked += 1;
                let path = format!("/google.pubsub.v1.{}/{}", service.name(), method.name());
                let input = method.input_type().rsplit('.').next().unwrap_or("");
                let body = pubsub_request(&fds, input);
                let streaming = method.client_streaming();
                let anonymous =
                    call_gateway(&c, &Credentials::default(), &path, body.clone(), streaming).await;
                if anonymous.code() != Code::Unauthenticated {
                    failures.push(format!(
                        "{path} without credentials: {:?} {}",
                        anonymous.code(),
                        anonymous.message()
                    ));
                }
                let nobody = call_gateway(&c, &bearer(NOBODY_TOKEN), &path, body, streaming).await;
                if nobody.code() != Code::PermissionDenied {
                    failures.push(format!(
                        "{path} as a principal without ACLs: {:?} {}",
                        nobody.code(),
                        nobody.message()
                    ));
                }
            }
        }
    }
    assert!(walked >= 25, "walked {walked} Pub/Sub RPCs");
    assert!(
        failures.is_empty(),
        "{} of {walked} gateway RPCs not guarded:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{walked} Pub/Sub RPCs: all refuse anonymous callers and callers without ACLs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_grant_what_they_say_and_tokens_are_checked() {
    let c = start().await;
    let mut admin = AdminClient::new(channel(c.controller, &c.ca_pem, bearer(ADMIN_TOKEN)).await);
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "orders".into(),
            partitions: 1,
            replication_factor: 1,
            config: None,
        })
        .await
        .expect("a super-user creates a topic");
    let acl = |principal: &str, operation: &str, resource: &str| pb::Acl {
        principal: principal.into(),
        resource_type: "topic".into(),
        pattern_type: "literal".into(),
        resource: resource.into(),
        operation: operation.into(),
        permission: "allow".into(),
    };
    let created = admin
        .create_acls(pb::CreateAclsRequest {
            acls: vec![acl("alice", "write", "orders")],
        })
        .await
        .expect("create ACL")
        .into_inner()
        .created;
    assert_eq!(created, 1);
    let bad = admin
        .create_acls(pb::CreateAclsRequest {
            acls: vec![acl("alice", "frobnicate", "orders")],
        })
        .await
        .expect_err("a bad operation");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("acls[0].operation"),
        "{}",
        bad.message()
    );

    let produce = pb::ProduceRequest {
        topic: "orders".into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        records: vec![pb::Record {
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        }],
        ..Default::default()
    };
    // the broker learns ACLs from the metadata stream: wait for the grant to arrive
    let mut alice = BrokerClient::new(channel(c.broker, &c.ca_pem, bearer(ALICE_TOKEN)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match alice.produce(produce.clone()).await {
            Ok(_) => break,
            Err(s)
                if s.code() == Code::PermissionDenied && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("alice's produce: {s:?}"),
        }
    }
    let fetch = alice
        .fetch(pb::FetchRequest {
            topic: "orders".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .expect_err("write does not grant read");
    assert_eq!(fetch.code(), Code::PermissionDenied);
    assert!(
        fetch
            .message()
            .contains("alice may not read topic \"orders\""),
        "{}",
        fetch.message()
    );
    let mut other = BrokerClient::new(channel(c.broker, &c.ca_pem, bearer(NOBODY_TOKEN)).await);
    assert_eq!(
        other
            .produce(produce.clone())
            .await
            .expect_err("no ACL")
            .code(),
        Code::PermissionDenied
    );

    // JWTs: a good one for alice works like her token; expired, forged and unknown do not
    let mut jwt_alice =
        BrokerClient::new(channel(c.broker, &c.ca_pem, bearer(&c.jwt.token("alice", 300))).await);
    jwt_alice
        .produce(produce.clone())
        .await
        .expect("alice by JWT");
    for (what, token) in [
        ("expired", c.jwt.token("alice", -600)),
        ("signed by another key", Jwt::new().token("alice", 300)),
        ("unknown", "not-a-token-0123456789".to_string()),
    ] {
        let mut client = BrokerClient::new(channel(c.broker, &c.ca_pem, bearer(&token)).await);
        let err = client.produce(produce.clone()).await.expect_err(what);
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{what}: {}",
            err.message()
        );
        println!("{what} token: {}", err.message());
    }

    // a client certificate is a credential too: its common name is the principal
    let (cert, key) = issue(&c.cert_dir, c.ca, "alice", "alice", &["alice.example"]);
    let endpoint = Endpoint::from_shared(format!("https://{}", c.broker))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&c.ca_pem))
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(cert).expect("cert"),
                    std::fs::read(key).expect("key"),
                )),
        )
        .expect("tls");
    let mut by_cert = BrokerClient::new(Channel::new(
        endpoint.connect().await.expect("mTLS"),
        Credentials::default(),
    ));
    by_cert
        .produce(produce.clone())
        .await
        .expect("alice by certificate");

    // removing the ACL takes the grant away
    let deleted = admin
        .delete_acls(pb::DeleteAclsRequest {
            filter: Some(pb::AclFilter {
                principal: "alice".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("delete")
        .into_inner()
        .deleted;
    assert_eq!(deleted.len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alice.produce(produce.clone()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed ACL still grants"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_fails_promptly_and_rotated_certificates_are_served() {
    let c = start().await;
    // plain text to a TLS port: an error, not a hang
    let started = std::time::Instant::now();
    let plain = Endpoint::from_shared(format!("http://{}", c.controller))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let outcome = match plain.connect().await {
        Err(e) => format!("connect: {e}"),
        Ok(ch) => {
            let err = AdminClient::new(ch)
                .describe_cluster(pb::DescribeClusterRequest {})
                .await
                .expect_err("plain text to a TLS port");
            assert_ne!(err.code(), Code::DeadlineExceeded, "{err:?}");
            format!("{:?}: {}", err.code(), err.message())
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    println!(
        "plain text to the TLS port: {outcome} after {:?}",
        started.elapsed()
    );

    // rotate the controller's certificate to one from a new CA: new connections get it
    let new_ca = ca("rotated CA");
    let (cert, key) = issue(
        &c.cert_dir,
        &new_ca,
        "rotated",
        "controller-1",
        &["controller-1.weir"],
    );
    std::fs::copy(&key, c.cert_dir.join("controller-1.key")).expect("key");
    std::fs::copy(&cert, c.cert_dir.join("controller-1.crt")).expect("cert");
    let new_pem = new_ca.cert.pem().into_bytes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let endpoint = Endpoint::from_shared(format!("https://{}", c.controller))
            .expect("endpoint")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&new_pem)))
            .expect("tls")
            .connect_timeout(Duration::from_secs(2));
        if let Ok(ch) = endpoint.connect().await {
            let mut admin = AdminClient::new(Channel::new(ch, bearer(ADMIN_TOKEN)));
            admin
                .describe_cluster(pb::DescribeClusterRequest {})
                .await
                .expect("served with the rotated certificate");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
