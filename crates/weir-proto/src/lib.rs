//! Weir's gRPC contract, generated from `proto/weir/v1/*.proto`, and the edge where protobuf
//! types become `weir-types` values.
//!
//! - [`v1`]: the generated messages (and, as they arrive, services).
//! - `convert`: `TryFrom` conversions that check every field, failing with a
//!   [`FieldError`] that names the field.
//! - [`status`]: the only place a `tonic::Status` is built from Weir's errors.
//! - [`call`]: connecting to a cluster and following NOT_CONTROLLER redirects.

pub mod call;
pub mod convert;
pub mod status;

/// Generated code for package `weir.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("weir.v1");
}

pub use convert::FieldError;
pub use tonic::{Request, Response, Status};
