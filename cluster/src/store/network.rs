//! Raft RPC between store members over tonic (gRPC on HTTP/2).
//!
//! Requests and responses are openraft's own types as JSON inside a protobuf envelope
//! (`proto/raft.proto`). The same service carries client writes that a follower
//! forwards to the leader, so any member can accept a write.

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::types::{NodeId, Txn, TxnResult, TypeConfig};

/// Generated gRPC code.
pub mod pb {
    tonic::include_proto!("kairn.raft.v1");
}

use pb::raft_service_client::RaftServiceClient;
use pb::raft_service_server::{RaftService, RaftServiceServer};
use pb::Payload;

fn to_payload<T: Serialize>(value: &T) -> Result<Payload, serde_json::Error> {
    Ok(Payload {
        json: serde_json::to_vec(value)?,
    })
}

fn from_payload<T: DeserializeOwned>(payload: &Payload) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&payload.json)
}

/// Creates a connection per peer.
#[derive(Clone, Default)]
pub struct Network;

/// A connection to one peer (connected lazily, reconnected by tonic).
pub struct Connection {
    target: NodeId,
    client: Option<RaftServiceClient<Channel>>,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let client = Endpoint::from_shared(format!("http://{}", node.addr))
            .ok()
            .map(|e| RaftServiceClient::new(e.connect_lazy()));
        Connection {
            target,
            client,
            addr: node.addr.clone(),
        }
    }
}

impl Connection {
    /// Sends one RPC and decodes `Result<Resp, E>` from the peer.
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        request: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let why = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad peer address {}", self.addr),
            );
            return Err(RPCError::Unreachable(Unreachable::new(&why)));
        };
        let payload = to_payload(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = match method {
            "append_entries" => client.append_entries(payload).await,
            "vote" => client.vote(payload).await,
            _ => client.install_snapshot(payload).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            from_payload(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append_entries", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("install_snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc).await
    }
}

/// Why a forwarded write failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The leader could not be reached.
    #[error("forwarding to the leader at {addr}: {message}")]
    Transport { addr: String, message: String },
    /// The leader refused the write.
    #[error("{0}")]
    Raft(RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>),
}

/// Sends a client write to the leader at `addr`.
pub async fn forward_write(addr: &str, txn: &Txn) -> Result<TxnResult, ForwardError> {
    let transport = |message: String| ForwardError::Transport {
        addr: addr.to_string(),
        message,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| transport(e.to_string()))?;
    let mut client = RaftServiceClient::new(endpoint.connect().await.map_err(|e| transport(e.to_string()))?);
    let payload = to_payload(txn).map_err(|e| transport(e.to_string()))?;
    let reply = client.write(payload).await.map_err(|e| transport(e.to_string()))?;
    let result: Result<TxnResult, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> =
        from_payload(reply.get_ref()).map_err(|e| transport(e.to_string()))?;
    result.map_err(ForwardError::Raft)
}

/// The server side: hands incoming RPCs to the local Raft node.
struct Service {
    raft: Raft<TypeConfig>,
}

fn bad_request(e: serde_json::Error) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable payload: {e}"))
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<Payload>, tonic::Status> {
    to_payload(value)
        .map(tonic::Response::new)
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl RaftService for Service {
    async fn append_entries(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = from_payload(req.get_ref()).map_err(bad_request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = from_payload(req.get_ref()).map_err(bad_request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = from_payload(req.get_ref()).map_err(bad_request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn write(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let txn: Txn = from_payload(req.get_ref()).map_err(bad_request)?;
        let result = self.raft.client_write(txn).await.map(|r| r.data);
        reply(&result)
    }
}

/// Serves Raft RPC for `raft` on `listener` until `shutdown` resolves.
pub async fn serve(
    raft: Raft<TypeConfig>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(RaftServiceServer::new(Service { raft }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
