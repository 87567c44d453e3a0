//! Weir's gRPC contract, generated from `proto/`, and the edge where protobuf types become
//! `weir-types` values.
//!
//! - [`v1`]: the public API (`weir.v1`): produce, fetch, offsets, admin, metadata, groups.
//! - [`internal::v1`]: what only cluster members speak (`weir.internal.v1`): replication
//!   between brokers, the broker registry, Raft between controllers. Served on separate
//!   listeners where the binary is told to, so it can be firewalled.
//! - [`google::pubsub::v1`]: Google's Pub/Sub API, for the gateway.
//! - `convert`: `TryFrom` conversions that check every field, failing with a
//!   [`FieldError`] that names the field.
//! - [`status`]: the only place a `tonic::Status` is built from Weir's errors.
//! - [`call`]: connecting to a cluster (TLS and credentials included) and following
//!   NOT_CONTROLLER redirects.
//! - [`tls`]: server and client TLS (certificates reloaded on change), peer identities.
//! - [`auth`]: authentication of every request and the ACL check every RPC makes.

pub mod auth;
pub mod call;
pub mod convert;
pub mod status;
pub mod tls;

/// The encoded `FileDescriptorSet` of every proto file above (for tools and for tests that
/// walk every RPC).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weir_descriptor.bin"));

/// Generated code for package `weir.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("weir.v1");
}

/// Generated code for package `weir.internal.v1` (its references to `weir.v1` resolve to
/// [`v1`]).
pub mod internal {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("weir.internal.v1");
    }
}

/// Google's Pub/Sub API (`google.pubsub.v1`, vendored under `proto/google`), served by the
/// gateway so Google's own client libraries work against Weir.
pub mod google {
    pub mod pubsub {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            tonic::include_proto!("google.pubsub.v1");
        }
    }
}

pub use convert::FieldError;
pub use tonic::{Request, Response, Status};
