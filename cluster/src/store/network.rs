//! Raft RPC between store members over tonic (gRPC on HTTP/2).
//!
//! Requests and responses are openraft's own types, and the store's, in the store's
//! binary encoding ([`codec`](super::codec)) inside a protobuf envelope
//! (`proto/raft.proto`). The same service carries what followers ask of the leader:
//! forwarded writes, read indexes for linearizable reads, and membership changes.
//!
//! Every call honours the deadline openraft passes; messages may be as large as the
//! largest append (a batch of objects) or snapshot chunk.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::batch::{Batcher, Target};
use super::codec;
use super::leader::{self, MemberChange, PeerError};
use super::lease::Lessor;
use super::types::{LeaseId, NodeId, Txn, TxnResult, TypeConfig};

/// Generated gRPC code.
pub mod pb {
    tonic::include_proto!("kairn.raft.v1");
}

use pb::raft_service_client::RaftServiceClient;
use pb::raft_service_server::{RaftService, RaftServiceServer};
use pb::Payload;

/// The largest message either side accepts. An append carries up to openraft's
/// `max_payload_entries` entries, and one entry may be a whole batch of objects (the
/// API's batch endpoint takes 512 MiB), so the bound is set by the largest batch, not
/// by the usual few KiB.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;
/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 flow-control windows of a Raft stream and connection. At HTTP/2's default of
/// 64 KiB, an append of a few batches of objects stalled mid-message until the receiver
/// granted more window, a round trip per 64 KiB.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// The largest HTTP/2 frame a member accepts: an append arrives in a few frames instead
/// of one per 16 KiB (HTTP/2's default).
const MAX_FRAME: u32 = 1 << 20;

fn to_payload<T: Serialize>(value: &T) -> Result<Payload, codec::CodecError> {
    Ok(Payload {
        data: codec::encode(value)?,
    })
}

fn from_payload<T: DeserializeOwned>(payload: &Payload) -> Result<T, codec::CodecError> {
    codec::decode(&payload.data)
}

fn client(addr: &str, local_ip: Option<IpAddr>) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .local_address(local_ip)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    Ok(RaftServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Hands openraft a client per peer, sharing one HTTP/2 channel per address: openraft
/// asks for a new client for every leadership check (each linearizable read), and a
/// fresh TCP and HTTP/2 handshake each time cost more than the check itself.
#[derive(Clone, Default)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A factory handing out clients of `peers`.
    pub fn new(peers: Peers) -> Network {
        Network { peers }
    }
}

/// A connection to one peer (connected lazily, reconnected by tonic).
pub struct Connection {
    target: NodeId,
    client: Option<RaftServiceClient<Channel>>,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            client: self.peers.client(&node.addr).ok(),
            addr: node.addr.clone(),
        }
    }
}

impl Connection {
    /// Sends one RPC within `ttl` and decodes `Result<Resp, E>` from the peer.
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        request: &Req,
        ttl: Duration,
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
        let mut request = tonic::Request::new(payload);
        request.set_timeout(ttl);
        let call = async {
            match method {
                "append_entries" => client.append_entries(request).await,
                "vote" => client.vote(request).await,
                _ => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Ok(reply) => reply,
            Err(_) => {
                let why = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{method} to member {} timed out after {ttl:?}", self.target),
                );
                return Err(RPCError::Unreachable(Unreachable::new(&why)));
            }
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
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
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append_entries", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("install_snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// Clients of other members for what a member asks of the leader, one channel per
/// address, reused across calls.
#[derive(Clone, Default)]
pub struct Peers {
    clients: Arc<Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
    /// The address outgoing connections come from: the member's own Raft IP, so a
    /// peer (or a firewall, or a test's fault-injecting proxy) can tell members apart.
    local_ip: Option<IpAddr>,
}

impl Peers {
    /// Clients that connect from `raft_addr`'s IP (any, if it is unspecified).
    pub fn new(raft_addr: SocketAddr) -> Peers {
        Peers {
            clients: Arc::default(),
            local_ip: Some(raft_addr.ip()).filter(|ip| !ip.is_unspecified()),
        }
    }

    fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, PeerError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| PeerError::Failed("peer clients lock poisoned".into()))?;
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c =
            client(addr, self.local_ip).map_err(|e| PeerError::Failed(format!("bad member address {addr}: {e}")))?;
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        method: &'static str,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, PeerError> {
        let mut client = self.client(addr)?;
        let unreachable = |why: String| PeerError::NoQuorum(format!("the leader at {addr} is unreachable: {why}"));
        let payload = to_payload(request).map_err(|e| PeerError::Failed(e.to_string()))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(ttl);
        let call = async {
            match method {
                "write" => client.write(request).await,
                "read_index" => client.read_index(request).await,
                "lease_keep_alive" => client.lease_keep_alive(request).await,
                _ => client.change_members(request).await,
            }
        };
        let reply = tokio::time::timeout(ttl, call)
            .await
            .map_err(|_| unreachable(format!("no answer within {ttl:?}")))?
            .map_err(|status| unreachable(status.message().to_string()))?;
        let result: Result<Resp, PeerError> =
            from_payload(reply.get_ref()).map_err(|e| PeerError::Failed(format!("undecodable reply: {e}")))?;
        result
    }

    /// Commits writes on the leader at `addr`, each on its own; returns their results.
    pub async fn write(&self, addr: &str, txns: &[Txn]) -> Result<Vec<TxnResult>, PeerError> {
        // A little longer than the leader's own deadline, so its answer wins.
        self.call(addr, "write", &txns, leader::WRITE_TIMEOUT + Duration::from_secs(1))
            .await
    }

    /// Asks the leader at `addr` for a read index.
    pub async fn read_index(&self, addr: &str) -> Result<u64, PeerError> {
        self.call(
            addr,
            "read_index",
            &(),
            leader::READ_INDEX_TIMEOUT + Duration::from_secs(1),
        )
        .await
    }

    /// Renews a lease at the leader at `addr`; `None` if it does not exist.
    pub async fn lease_keep_alive(&self, addr: &str, id: LeaseId) -> Result<Option<i64>, PeerError> {
        self.call(addr, "lease_keep_alive", &id, leader::READ_INDEX_TIMEOUT)
            .await
    }

    /// Asks the leader at `addr` to change the membership.
    pub async fn change_members(&self, addr: &str, change: &MemberChange) -> Result<(), PeerError> {
        self.call(
            addr,
            "change_members",
            change,
            leader::CHANGE_TIMEOUT + Duration::from_secs(1),
        )
        .await
    }
}

/// The server side: hands incoming RPCs to the local Raft node.
struct Service {
    raft: Raft<TypeConfig>,
    batcher: Batcher,
    lessor: Lessor,
}

fn bad_request(e: codec::CodecError) -> tonic::Status {
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
        let txns: Vec<Txn> = from_payload(req.get_ref()).map_err(bad_request)?;
        reply(&self.batcher.write_all(Target::Local, txns).await)
    }

    async fn read_index(&self, _req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        reply(&leader::read_index(&self.raft).await)
    }

    async fn lease_keep_alive(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let id: LeaseId = from_payload(req.get_ref()).map_err(bad_request)?;
        reply(&self.lessor.keep_alive(id))
    }

    async fn change_members(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let change: MemberChange = from_payload(req.get_ref()).map_err(bad_request)?;
        reply(&leader::change_members(&self.raft, change).await)
    }
}

/// Serves Raft RPC for `raft`, and the etcd-compatible `kv`, on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    raft: Raft<TypeConfig>,
    batcher: Batcher,
    lessor: Lessor,
    kv: super::etcd_kv::EtcdKv,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // `Server::tcp_nodelay` applies only to sockets tonic accepts itself: set here, or
    // every small reply may wait for the peer's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = RaftServiceServer::new(Service { raft, batcher, lessor })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(service)
        .add_service(kv.kv_server())
        .add_service(kv.watch_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
