//! Metadata Raft nodes in one process joined by [`QuicTransport`]: each node has its own quinn
//! endpoint on 127.0.0.1, mutual TLS under one test CA, and a redb file in a temporary
//! directory. Every wait polls with a deadline (30 s), never a fixed sleep.

mod common;
use common::wait_for;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::Vote;
use openraft::raft::VoteRequest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_metadata::MetadataCommand;
use sluice_proto::TopicConfig;
use sluice_raft::{
    MetadataRaft, MetadataRaftConfig, NodeId, PeerNode, PeerServerConfig, QuicTransport,
    QuicTransportConfig, RaftReply, RaftRequest, RaftTransport, ReplicaPayload, Role,
    TransportError, peer_server_name, peer_transport_config, serve_peers,
};
use tempfile::TempDir;
const PEER_ALPN: &[u8] = b"sluice-peer/1";

/// A cluster CA for tests: issues node certificates and builds the peer TLS configs the way
/// the broker's `tls` module does (TLS 1.3, ALPN `sluice-peer/1`, only this CA trusted, a
/// client certificate required).
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            cert,
        }
    }

    /// A certificate naming node `id`, for serving and dialling.
    fn identity(&self, id: NodeId) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(vec![peer_server_name(id)]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], key.into())
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        Arc::new(roots)
    }

    fn server_config(&self, id: NodeId) -> quinn::ServerConfig {
        let (chain, key) = self.identity(id);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
                .build()
                .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(peer_transport_config(64)));
        config
    }

    fn client_config(&self, id: NodeId) -> quinn::ClientConfig {
        let (chain, key) = self.identity(id);
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(peer_transport_config(64)));
        config
    }

    /// An endpoint serving as node `id` at `addr`, and a transport dialling from it.
    fn endpoint(&self, id: NodeId, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        quinn::Endpoint::server(self.server_config(id), addr)
    }

    fn transport(&self, id: NodeId, endpoint: &quinn::Endpoint) -> QuicTransport {
        QuicTransport::new(
            endpoint.clone(),
            self.client_config(id),
            QuicTransportConfig::default(),
        )
    }
}

struct RunningNode {
    raft: MetadataRaft,
    endpoint: quinn::Endpoint,
    server: tokio::task::JoinHandle<()>,
}

struct Cluster {
    ca: TestCa,
    dirs: BTreeMap<NodeId, TempDir>,
    /// Each node's peer address, fixed at its first start.
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, RunningNode>,
}

impl Cluster {
    /// Three voters over QUIC, initialized, with a leader every node agrees on.
    async fn three_voters() -> (Cluster, NodeId) {
        let mut cluster = Cluster {
            ca: TestCa::new("test cluster CA"),
            dirs: BTreeMap::new(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=3 {
            cluster.start(id).await;
        }
        let voters: BTreeMap<_, _> = (1..=3).map(|id| (id, cluster.peer(id))).collect();
        cluster.node(1).initialize(voters).await.unwrap();
        let leader = cluster.agreed_leader(None).await;
        (cluster, leader)
    }

    fn peer(&self, id: NodeId) -> PeerNode {
        PeerNode::new(self.addrs[&id].to_string())
    }

    /// Starts node `id` from its directory, on its address (a fresh port the first time).
    async fn start(&mut self, id: NodeId) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| TempDir::new().unwrap())
            .path()
            .to_path_buf();
        let endpoint = match self.addrs.get(&id) {
            // The old socket goes once the stopped node's last endpoint handle is dropped.
            Some(addr) => {
                wait_for("the old port to be free", || async {
                    self.ca.endpoint(id, *addr).ok()
                })
                .await
            }
            None => self
                .ca
                .endpoint(id, "127.0.0.1:0".parse().unwrap())
                .unwrap(),
        };
        self.addrs.insert(id, endpoint.local_addr().unwrap());
        let transport = self.ca.transport(id, &endpoint);
        let raft = MetadataRaft::start(id, &dir, transport, &MetadataRaftConfig::default())
            .await
            .unwrap();
        let server = tokio::spawn(serve_peers(
            endpoint.clone(),
            raft.clone(),
            PeerServerConfig::default(),
        ));
        self.nodes.insert(
            id,
            RunningNode {
                raft,
                endpoint,
                server,
            },
        );
    }

    /// Shuts node `id` down: its endpoint is closed, so peers lose it at once.
    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        node.endpoint.close(0u32.into(), b"node stopping");
        node.server.await.unwrap();
        node.raft.shutdown().await.unwrap();
        node.endpoint.wait_idle().await;
    }

    fn node(&self, id: NodeId) -> &MetadataRaft {
        &self.nodes[&id].raft
    }

    async fn agreed_leader(&self, not: Option<NodeId>) -> NodeId {
        wait_for("a leader all nodes agree on", || async {
            let mut leaders = BTreeSet::new();
            for node in self.nodes.values() {
                leaders.insert(node.raft.status().await.unwrap().leader?);
            }
            let leader = *leaders.first()?;
            let ok = leaders.len() == 1
                && Some(leader) != not
                && self.nodes.contains_key(&leader)
                && self.node(leader).status().await.unwrap().role == Role::Leader;
            ok.then_some(leader)
        })
        .await
    }

    /// Waits until every running node has applied the same entries and holds the same state;
    /// returns it serialized.
    async fn converged(&self) -> Vec<u8> {
        wait_for("every node to reach the same state", || async {
            let mut applied = BTreeSet::new();
            let mut states = BTreeSet::new();
            for node in self.nodes.values() {
                applied.insert(node.raft.status().await.unwrap().last_applied);
                states.insert(node.raft.read(|s| postcard::to_allocvec(s).unwrap()));
            }
            (applied.len() == 1 && states.len() == 1).then(|| states.pop_first().unwrap())
        })
        .await
    }

    async fn shutdown(mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

fn topic(name: &str) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.to_string(),
        config: TopicConfig::default(),
        assignments: vec![vec![1, 2, 3]],
    }
}

async fn load(leader: &MetadataRaft, prefix: &str, n: usize) {
    for node_id in 1..=3 {
        let cmd = MetadataCommand::RegisterBroker {
            node_id,
            addr: format!("node-{node_id}.test:9092"),
        };
        leader.propose(cmd).await.unwrap();
    }
    for i in 0..n {
        leader
            .propose(topic(&format!("{prefix}{i}")))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_quic_agree_survive_losing_the_leader_and_catch_up() {
    let (mut cluster, leader) = Cluster::three_voters().await;
    load(cluster.node(leader), "t", 50).await;
    let state = cluster.converged().await;
    for node in cluster.nodes.values() {
        assert_eq!(node.raft.read(|s| s.topics().count()), 50);
        let status = node.raft.status().await.unwrap();
        assert_eq!(status.voters, BTreeSet::from([1, 2, 3]));
        assert_eq!(status.leader, Some(leader));
    }

    // The leader's process goes: the other two elect one of themselves and carry on.
    cluster.stop(leader).await;
    let new_leader = cluster.agreed_leader(Some(leader)).await;
    assert_ne!(new_leader, leader);
    for i in 0..10 {
        let cmd = topic(&format!("after{i}"));
        cluster.node(new_leader).propose(cmd).await.unwrap();
    }
    let after = cluster.converged().await;
    assert_ne!(after, state);

    // It comes back from its files on its old address and catches up.
    cluster.start(leader).await;
    let caught_up = cluster.converged().await;
    assert_eq!(caught_up, after);
    assert!(cluster.node(leader).read(|s| s.topic("after9").is_some()));
    assert_eq!(cluster.node(leader).read(|s| s.topics().count()), 60);
    assert_ne!(
        cluster.node(leader).status().await.unwrap().role,
        Role::Leader
    );

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_another_ca_cannot_take_part() {
    let (cluster, leader) = Cluster::three_voters().await;
    load(cluster.node(leader), "t", 5).await;
    let before = cluster.node(leader).status().await.unwrap();
    let any = "127.0.0.1:0".parse().unwrap();

    // A positive control: a node certified by the cluster CA is answered (its stale vote is
    // not granted, but it gets a reply).
    let friend_endpoint = cluster.ca.endpoint(4, any).unwrap();
    let friend = cluster.ca.transport(4, &friend_endpoint);
    let stale_vote = RaftRequest::Vote(VoteRequest::new(Vote::new(0, 4), None));
    match friend.call(leader, &cluster.peer(leader), stale_vote).await {
        Ok(RaftReply::Vote(Ok(reply))) => assert!(!reply.vote_granted),
        other => panic!("a cluster member got no vote reply: {other:?}"),
    }

    // An impostor for voter 3 under its own CA asks for votes in a far higher term: were it
    // heard, the leader would step down.
    let rogue_ca = TestCa::new("rogue CA");
    let impostor = if leader == 3 { 2 } else { 3 };
    let rogue_endpoint = rogue_ca.endpoint(impostor, any).unwrap();
    let rogue = rogue_ca.transport(impostor, &rogue_endpoint);
    let coup = RaftRequest::Vote(VoteRequest::new(
        Vote::new(before.term + 100, impostor),
        None,
    ));
    let started = Instant::now();
    let refused = rogue.call(leader, &cluster.peer(leader), coup).await;
    assert!(refused.is_err(), "{refused:?}");
    // Refused, not left hanging (the bound is loose so a busy machine passes).
    assert!(started.elapsed() < Duration::from_secs(30), "{refused:?}");

    // Nor do members talk to it: its certificate does not verify for them.
    let rogue_addr = PeerNode::new(rogue_endpoint.local_addr().unwrap().to_string());
    let stale_vote = RaftRequest::Vote(VoteRequest::new(Vote::new(0, 4), None));
    let unheard = friend.call(impostor, &rogue_addr, stale_vote).await;
    assert!(
        matches!(unheard, Err(TransportError::Unreachable(_))),
        "{unheard:?}"
    );

    // The cluster never noticed.
    cluster.node(leader).propose(topic("still")).await.unwrap();
    cluster.converged().await;
    let after = cluster.node(leader).status().await.unwrap();
    assert_eq!(after.term, before.term);
    assert_eq!(after.leader, Some(leader));
    assert_eq!(after.role, Role::Leader);

    friend_endpoint.close(0u32.into(), b"");
    rogue_endpoint.close(0u32.into(), b"");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_is_unreachable_within_the_connect_timeout() {
    let ca = TestCa::new("test cluster CA");
    // A port nobody answers on: bound, then released.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = PeerNode::new(silent.local_addr().unwrap().to_string());
    drop(silent);
    let endpoint = ca.endpoint(1, "127.0.0.1:0".parse().unwrap()).unwrap();
    let transport = ca.transport(1, &endpoint);
    let vote = || RaftRequest::Vote(VoteRequest::new(Vote::new(1, 1), None));

    let started = Instant::now();
    let first = transport.call(2, &addr, vote()).await;
    assert!(
        matches!(first, Err(TransportError::Unreachable(_))),
        "{first:?}"
    );
    // Bounded by the connect timeout (loosely, so a busy machine passes).
    assert!(started.elapsed() < Duration::from_secs(30), "{first:?}");
    // Within the redial backoff the next call fails at once, without dialling again.
    let started = Instant::now();
    let second = transport.call(2, &addr, vote()).await;
    assert!(
        matches!(second, Err(TransportError::Unreachable(_))),
        "{second:?}"
    );
    // A dial to a silent address cannot end before the 1 s connect timeout, so a quicker
    // answer means no dial was made.
    assert!(started.elapsed() < Duration::from_secs(1), "{second:?}");
    endpoint.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_reset_their_stream_but_not_the_connection() {
    let (cluster, leader) = Cluster::three_voters().await;
    let client_endpoint = cluster
        .ca
        .endpoint(4, "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let conn = client_endpoint
        .connect_with(
            cluster.ca.client_config(4),
            cluster.addrs[&leader],
            &peer_server_name(leader),
        )
        .unwrap()
        .await
        .unwrap();

    // A length past the server's 64 MiB limit: refused on the prefix alone.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(65u32 << 20).to_be_bytes()).await.unwrap();
    let read = recv.read_to_end(1024).await;
    assert!(
        matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == sluice_raft::MALFORMED_FRAME_CODE.into()),
        "{read:?}"
    );

    // A frame whose message is not a request.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 6, 0, 0, 0, 2, 0xff, 0xff])
        .await
        .unwrap();
    send.finish().unwrap();
    let read = recv.read_to_end(1024).await;
    assert!(
        matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == sluice_raft::MALFORMED_FRAME_CODE.into()),
        "{read:?}"
    );

    // The connection still carries requests.
    let mut transport_like = conn.open_bi().await.unwrap();
    let request = RaftRequest::Vote(VoteRequest::new(Vote::new(0, 4), None));
    sluice_proto::frame::write_frame(&mut transport_like.0, &request, &[])
        .await
        .unwrap();
    transport_like.0.finish().unwrap();
    let body = sluice_proto::frame::read_frame(&mut transport_like.1, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let (reply, _) = sluice_proto::frame::decode_body::<RaftReply>(body).unwrap();
    assert!(
        matches!(reply, RaftReply::Vote(Ok(ref r)) if !r.vote_granted),
        "{reply:?}"
    );
    assert!(conn.close_reason().is_none());

    client_endpoint.close(0u32.into(), b"");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_messages_ride_the_peer_connections() {
    let (cluster, leader) = Cluster::three_voters().await;
    let other = (1..=3).find(|id| *id != leader).unwrap();
    // No handler yet: the peer says it does not serve replication.
    let e = cluster
        .node(leader)
        .call_replica(other, b"abc".to_vec())
        .await
        .expect_err("no handler installed");
    assert!(
        e.to_string().contains("does not serve replication yet"),
        "{e}"
    );
    let handler: sluice_raft::ReplicaHandler = Arc::new(|message: Vec<u8>| {
        Box::pin(async move {
            if message.is_empty() {
                return Err("empty message".to_string());
            }
            // The message reversed, and beside it (the frame's raw part) the message repeated:
            // both must arrive as they were sent.
            let raw = bytes::Bytes::from(message.repeat(1000));
            Ok(ReplicaPayload::new(
                message.into_iter().rev().collect(),
                raw,
            ))
        })
    });
    cluster.node(other).set_replica_handler(handler);
    let answer = cluster
        .node(leader)
        .call_replica(other, b"abc".to_vec())
        .await
        .unwrap();
    assert_eq!(answer.message, b"cba");
    assert_eq!(answer.raw, b"abc".repeat(1000));
    let e = cluster
        .node(leader)
        .call_replica(other, Vec::new())
        .await
        .expect_err("the handler refuses");
    assert!(e.to_string().contains("empty message"), "{e}");
    // A node outside the group is not reachable this way.
    assert!(
        cluster
            .node(leader)
            .call_replica(9, b"x".to_vec())
            .await
            .is_err()
    );
    cluster.shutdown().await;
}
