//! openraft wiring: the type configuration, and the gRPC transport between controllers.
//!
//! openraft's own request and response types travel as JSON inside `RaftPayload.data`; the
//! remote side returns the JSON of `Result<Response, RaftError>`, so openraft sees remote Raft
//! errors as such and transport failures as `Unreachable`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_proto::call::Channel;
use weir_proto::internal::v1::RaftPayload;
use weir_proto::internal::v1::controller_raft_client::ControllerRaftClient;
use weir_proto::internal::v1::controller_raft_server::ControllerRaft;

use crate::metadata::{Command, Outcome};

pub type NodeId = u64;

/// A controller as the Raft membership records it: the address clients reach it at and,
/// when it serves its internal API apart (`--internal-listen`), the address of that.
/// Stored as JSON; a record without `internal` (written before there was one) still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerNode {
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<String>,
}

impl ControllerNode {
    pub fn new(addr: impl Into<String>) -> ControllerNode {
        ControllerNode {
            addr: addr.into(),
            internal: None,
        }
    }

    /// Where other controllers and brokers reach its internal API.
    pub fn internal_addr(&self) -> &str {
        self.internal.as_deref().unwrap_or(&self.addr)
    }
}

impl std::fmt::Display for ControllerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.internal {
            Some(internal) => write!(f, "{}/{internal}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

openraft::declare_raft_types!(
    /// Types of the controller's Raft group.
    pub TypeConfig:
        D = Command,
        R = Option<Outcome>,
        NodeId = NodeId,
        Node = ControllerNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Time allowed to open a connection to another controller.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates one [`Peer`] per remote controller.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &ControllerNode) -> Peer {
        let channel = weir_proto::call::endpoint(node.internal_addr())
            .map(|(e, credentials)| {
                Channel::new(
                    e.connect_timeout(CONNECT_TIMEOUT).connect_lazy(),
                    credentials,
                )
            })
            .map_err(|e| e.to_string());
        Peer {
            target,
            client: channel.map(ControllerRaftClient::new),
        }
    }
}

/// The connection to one remote controller (connected lazily, reconnected by the channel).
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    client: Result<ControllerRaftClient<Channel>, String>,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        request: &Req,
        option: &RPCOption,
        rpc: Rpc,
    ) -> Result<Resp, RPCError<NodeId, ControllerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.clone()),
                )));
            }
        };
        let data =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut req = tonic::Request::new(RaftPayload { data: data.into() });
        req.set_timeout(option.hard_ttl());
        let response = match rpc {
            Rpc::Vote => client.vote(req).await,
            Rpc::AppendEntries => client.append_entries(req).await,
            Rpc::InstallSnapshot => client.install_snapshot(req).await,
        }
        .map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&response.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Vote,
    AppendEntries,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ControllerNode, RaftError<NodeId>>>
    {
        self.call(&rpc, &option, Rpc::AppendEntries).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ControllerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, &option, Rpc::InstallSnapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ControllerNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, Rpc::Vote).await
    }
}

/// Serves the Raft RPCs of the local node to the other controllers.
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&payload.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("invalid data: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|data| tonic::Response::new(RaftPayload { data: data.into() }))
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

#[tonic::async_trait]
impl ControllerRaft for RaftService {
    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        weir_proto::auth::Security::require_controller(&request)?;
        let req = decode(request.get_ref())?;
        encode(&self.raft.vote(req).await)
    }

    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        weir_proto::auth::Security::require_controller(&request)?;
        let req = decode(request.get_ref())?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        weir_proto::auth::Security::require_controller(&request)?;
        let req = decode(request.get_ref())?;
        encode(&self.raft.install_snapshot(req).await)
    }
}
