//! t15: trust boundaries. The attacks found against an open cluster, replayed against a TLS +
//! token cluster of real processes (every one refused, nothing changed), the role matrix, the
//! TLS checks, and the attacks that need no credentials against a cluster without TLS.

use std::path::Path;
use std::time::Duration;

use cluster_tests::{
    expect_status, init_tracing, Checker, Client, Cluster, ClusterOptions, Statement,
};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, StoredMembership};
use raftlite::raft::codec;
use raftlite::raft::types::{SnapshotMeta, TypeConfig, Vote};
use raftlite_proto::v1;
use raftlite_proto::v1::peer_client::PeerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tracing::info;

/// How an attacker (or a misconfigured peer) reaches a peer port.
enum Dial<'a> {
    Plain,
    /// TLS trusting `ca`, with the client certificate `(cert, key)` if any.
    Tls {
        ca: &'a Path,
        identity: Option<(&'a Path, &'a Path)>,
    },
}

fn peer_client(addr: std::net::SocketAddr, dial: Dial<'_>) -> PeerClient<Channel> {
    let channel = match dial {
        Dial::Plain => Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
        Dial::Tls { ca, identity } => {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")))
                .domain_name("localhost");
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(cert).expect("cert"),
                    std::fs::read(key).expect("key"),
                ));
            }
            Endpoint::from_shared(format!("https://{addr}"))
                .expect("valid uri")
                .connect_timeout(Duration::from_secs(2))
                .tls_config(tls)
                .expect("tls config")
                .connect_lazy()
        }
    };
    PeerClient::new(channel)
        .max_encoding_message_size(512 << 20)
        .max_decoding_message_size(512 << 20)
}

fn raft_message(cluster_id: &str, from: u64, payload: Vec<u8>) -> v1::RaftMessage {
    v1::RaftMessage {
        cluster_id: cluster_id.into(),
        from,
        payload,
    }
}

/// A heartbeat from `leader` with a higher term than the cluster's: what deposes a leader.
fn append_entries(term: u64, leader: u64) -> Vec<u8> {
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    codec::encode(&rpc).expect("encode")
}

fn vote_request(term: u64, candidate: u64) -> Vec<u8> {
    codec::encode(&VoteRequest::<u64>::new(Vote::new(term, candidate), None)).expect("encode")
}

/// The first chunk of a snapshot with this vote and snapshot id.
fn snapshot_chunk(
    cluster_id: &str,
    from: u64,
    vote: Vote,
    snapshot_id: &str,
    data: Vec<u8>,
) -> v1::SnapshotChunk {
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(
            CommittedLeaderId::new(vote.leader_id().term, from),
            1_000_000,
        )),
        last_membership: StoredMembership::default(),
        snapshot_id: snapshot_id.into(),
    };
    v1::SnapshotChunk {
        cluster_id: cluster_id.into(),
        from,
        header: codec::encode(&(vote, meta)).expect("encode"),
        data,
    }
}

fn forward_execute(bytes: usize) -> v1::ExecuteRequest {
    v1::ExecuteRequest {
        request_id: "attack".into(),
        statements: vec![v1::Statement::new(
            "INSERT INTO attack VALUES (?1)",
            vec![v1::Value::text("x".repeat(bytes))],
        )],
        transaction_id: String::new(),
    }
}

/// The services a node's server reflection lists, sorted.
/// A client whose TLS setting the node does not share is told so at once (within a second,
/// under the default 10 s retry deadline), not after retrying, and not as an HTTP/2 framing
/// error.
async fn assert_tls_mismatch<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<T, cluster_tests::client::Error>>,
    says: &str,
) {
    let started = std::time::Instant::now();
    let outcome = call.await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{says}: not retried, took {took:?}"
    );
    match outcome {
        Err(cluster_tests::client::Error::InvalidEndpoint(message)) => {
            assert!(message.contains(says), "{message}")
        }
        other => panic!("expected an invalid endpoint ({says}), got {other:?}"),
    }
}

async fn reflected_services(addr: std::net::SocketAddr) -> Vec<String> {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let reply = replies
        .next()
        .await
        .expect("one reply")
        .expect("a list of services");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// A status the server answered with, or a transport failure (`None`).
/// The first answer of a `Peer.AppendStream` that sends `msg`: the stream checks each
/// message as the unary AppendEntries does, and its first refusal ends it.
async fn stream_answer(
    client: &PeerClient<Channel>,
    msg: v1::RaftMessage,
) -> Result<v1::RaftMessage, tonic::Status> {
    let mut answers = client
        .clone()
        .append_stream(tokio_stream::iter(vec![msg]))
        .await?
        .into_inner();
    answers
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
}

fn code_of<T>(result: Result<T, tonic::Status>) -> Option<Code> {
    match result {
        Ok(_) => Some(Code::Ok),
        Err(s) => Some(s.code()),
    }
}

/// The call never reached the service: the connection or TLS handshake was refused.
fn assert_refused_at_transport<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Ok(v) => panic!("{what}: the peer service answered {v:?}"),
        Err(s) => assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{what}: expected a refused connection, got {s:?}"
        ),
    }
}

/// Every node still runs the process it started with (no crash, no re-sync restart).
fn assert_no_node_restarted(cluster: &Cluster) {
    for id in cluster.ids() {
        let node = cluster.node(id);
        node.ensure_alive().expect("node alive");
        let log = node.log_since_start();
        assert_eq!(
            log.matches("raftlite node started").count(),
            1,
            "node {id} started once:\n{log}"
        );
        assert!(
            !log.contains("re-sync:"),
            "node {id} did not re-sync:\n{log}"
        );
    }
}

/// A started 3-node cluster with a leader and 20 rows in `table`, the status before any
/// attack, and one follower.
struct Started {
    cluster: Cluster,
    leader: u64,
    follower: u64,
    client: Client,
    checker: Checker,
    before: v1::StatusResponse,
}

async fn start_with_rows(options: ClusterOptions, table: &str) -> Started {
    let cluster = Cluster::start(3, options).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader");
    let client = cluster.client();
    let checker = Checker::new(table);
    checker.create_table(&client).await.expect("create table");
    checker
        .write_many(&client, "before", 20)
        .await
        .expect("writes");
    let before = cluster.status_of(leader).await.expect("status");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    Started {
        cluster,
        leader,
        follower,
        client,
        checker,
        before,
    }
}

/// After the attacks: writes still commit and converge, the cluster id and term are those of
/// `before` (no election), every acknowledged write is there once, replicas are
/// byte-identical and no node restarted. Returns the status after.
async fn assert_nothing_changed(
    cluster: &Cluster,
    checker: &Checker,
    client: &Client,
    leader: u64,
    before: &v1::StatusResponse,
) -> v1::StatusResponse {
    checker
        .write_many(client, "after", 10)
        .await
        .expect("writes after the attacks");
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    let after = cluster.status_of(leader).await.expect("status");
    assert_eq!(after.cluster_id, before.cluster_id);
    assert_eq!(after.term, before.term, "no election was forced");
    checker
        .verify(cluster)
        .await
        .expect("every acknowledged write, exactly once");
    cluster.assert_identical_pages().await;
    assert_no_node_restarted(cluster);
    after
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_token_cluster_refuses_every_attack() {
    init_tracing();
    info!("phase 1: a 3-node cluster with TLS on both ports and tokens; 20 rows written");
    let Started {
        cluster,
        leader,
        follower,
        client,
        checker,
        before,
    } = start_with_rows(
        ClusterOptions {
            secure: true,
            ..ClusterOptions::default()
        },
        "secure_kv",
    )
    .await;
    let creds = cluster.credentials().expect("secure cluster");
    let ca_path = creds.ca_path();

    info!("phase 2: TLS checks on the client and peer ports");
    let plaintext =
        Client::connect([format!("http://{}", cluster.node(leader).addr())]).expect("client");
    assert_tls_mismatch(
        plaintext.status(),
        "the node speaks TLS and this connection does not",
    )
    .await;
    let peer_addr = cluster.peer_addr(follower);
    let identity = |id: u64| Some((creds.cert(id), creds.key(id)));
    let no_cert = peer_client(
        peer_addr,
        Dial::Tls {
            ca: &ca_path,
            identity: None,
        },
    );
    assert_refused_at_transport(
        no_cert.clone().identity(v1::IdentityRequest {}).await,
        "peer port without a client certificate",
    );
    let (rogue_cert, rogue_key) = creds.rogue_cert();
    let rogue = peer_client(
        peer_addr,
        Dial::Tls {
            ca: &ca_path,
            identity: Some((&rogue_cert, &rogue_key)),
        },
    );
    assert_refused_at_transport(
        rogue.clone().identity(v1::IdentityRequest {}).await,
        "peer port with a certificate of another CA",
    );
    let plain_peer = peer_client(peer_addr, Dial::Plain);
    assert_refused_at_transport(
        plain_peer.clone().identity(v1::IdentityRequest {}).await,
        "plaintext peer",
    );
    // A real member's certificate speaking as another member: refused, whatever it says.
    let impostor_id = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .expect("a third node");
    let (cert, key) = identity(impostor_id).expect("cert");
    let impostor = peer_client(
        peer_addr,
        Dial::Tls {
            ca: &ca_path,
            identity: Some((&cert, &key)),
        },
    );
    let forged = impostor
        .clone()
        .append_entries(raft_message(
            &before.cluster_id,
            leader,
            append_entries(before.term + 5, leader),
        ))
        .await;
    assert_eq!(
        code_of(forged),
        Some(Code::PermissionDenied),
        "node {impostor_id}'s certificate cannot speak as node {leader}"
    );
    let forged_on_stream = stream_answer(
        &impostor,
        raft_message(
            &before.cluster_id,
            leader,
            append_entries(before.term + 5, leader),
        ),
    )
    .await;
    assert_eq!(
        code_of(forged_on_stream),
        Some(Code::PermissionDenied),
        "nor on an AppendStream"
    );
    let forged_vote = impostor
        .clone()
        .vote(raft_message(
            &before.cluster_id,
            leader,
            vote_request(before.term + 5, leader),
        ))
        .await;
    assert_eq!(code_of(forged_vote), Some(Code::PermissionDenied));
    let elect = impostor
        .clone()
        .elect(v1::ElectRequest {
            after_ms: 0,
            term: 0,
        })
        .await;
    assert_eq!(
        code_of(elect),
        Some(Code::PermissionDenied),
        "only the leader may ask for an election"
    );
    let foreign_admin = impostor
        .clone()
        .forward_admin(v1::AdminCall {
            call: Some(v1::admin_call::Call::RemoveNode(v1::RemoveNodeRequest {
                node_id: 42,
            })),
        })
        .await;
    assert_ne!(
        code_of(foreign_admin),
        Some(Code::PermissionDenied),
        "a member may forward admin calls (node 42 is simply unknown)"
    );

    info!("phase 2b: a member's own certificate cannot make the cluster wipe itself");
    // Node {impostor_id}, speaking as itself, tells every node (itself included) that it
    // leads another cluster. Each node asks its other peers, which say otherwise.
    for id in cluster.ids() {
        let target = peer_client(
            cluster.peer_addr(id),
            Dial::Tls {
                ca: &ca_path,
                identity: Some((&cert, &key)),
            },
        );
        let answer = target
            .clone()
            .append_entries(raft_message(
                "a-cluster-made-up-by-a-member",
                impostor_id,
                append_entries(before.term + 1, impostor_id),
            ))
            .await;
        assert_eq!(
            code_of(answer),
            Some(Code::FailedPrecondition),
            "node {id} refuses the made-up cluster's entries"
        );
    }
    // Longer than a node takes to ask its peers (2 s each) and, before, to wipe and restart.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in cluster.ids() {
        let status = cluster
            .status_of(id)
            .await
            .unwrap_or_else(|e| panic!("node {id} still serves: {e:#}"));
        assert_eq!(
            status.cluster_id, before.cluster_id,
            "node {id} kept its data and its cluster"
        );
    }
    let leader_log = cluster.node(leader).log_since_start();
    assert!(
        leader_log.contains("refusing to wipe this node's data"),
        "the leader says why it kept its data:\n{leader_log}"
    );

    info!("phase 2c: a certificate of the cluster's CA that names no node");
    let (stranger_cert, stranger_key) = creds
        .stranger_cert("127.0.0.2")
        .expect("issue a stranger's certificate");
    let stranger = peer_client(
        cluster.peer_addr(leader),
        Dial::Tls {
            ca: &ca_path,
            identity: Some((&stranger_cert, &stranger_key)),
        },
    );
    let self_add = stranger
        .clone()
        .forward_admin(v1::AdminCall {
            call: Some(v1::admin_call::Call::AddVoter(v1::AddNodeRequest {
                node_id: 7,
                addr: "127.0.0.2:1".into(),
                peer_addr: "127.0.0.2:2".into(),
            })),
        })
        .await;
    assert_eq!(
        code_of(self_add),
        Some(Code::PermissionDenied),
        "a certificate that names only the host of the address it asks for cannot add itself"
    );
    let forwarded = stranger.clone().forward_execute(forward_execute(64)).await;
    assert_eq!(
        code_of(forwarded),
        Some(Code::PermissionDenied),
        "nor forward a client's write"
    );

    info!("phase 2d: connections that never finish a handshake cannot keep a peer out");
    let mut stalled = Vec::new();
    for _ in 0..300 {
        stalled.push(
            tokio::net::TcpStream::connect(peer_addr)
                .await
                .expect("connect to the peer port"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A member connecting now (as after a restart) takes the oldest stalled one's place.
    let member = peer_client(
        peer_addr,
        Dial::Tls {
            ca: &ca_path,
            identity: Some((&cert, &key)),
        },
    );
    let identity_answer = tokio::time::timeout(
        Duration::from_secs(5),
        member.clone().identity(v1::IdentityRequest {}),
    )
    .await
    .expect("the member is answered within 5 s");
    assert!(
        identity_answer.is_ok(),
        "a member reaches the peer port while 300 connections stall in their handshake: {identity_answer:?}"
    );
    drop(stalled);

    info!("phase 3: the role matrix (no token / read / write / admin × every call)");
    let as_role = |role: Option<&str>| cluster.client_as(role);
    for role in [None, Some("read"), Some("write"), Some("admin")] {
        let c = as_role(role);
        let level = match role {
            None => 0,
            Some("read") => 1,
            Some("write") => 2,
            _ => 3,
        };
        let expect = |needed: u8| {
            if level == 0 {
                Some(Code::Unauthenticated)
            } else if level < needed {
                Some(Code::PermissionDenied)
            } else {
                None
            }
        };
        let check =
            |what: &str, needed: u8, result: Result<(), cluster_tests::client::Error>| match (
                expect(needed),
                result,
            ) {
                (Some(code), Err(cluster_tests::client::Error::Status { code: got, .. })) => {
                    assert_eq!(got, code, "{what} as {role:?}")
                }
                (Some(code), other) => {
                    panic!("{what} as {role:?}: expected {code:?}, got {other:?}")
                }
                (None, Err(cluster_tests::client::Error::Status { code, message, .. })) => {
                    assert!(
                        !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                        "{what} as {role:?} is allowed but got {code:?}: {message}"
                    )
                }
                (None, _) => {}
            };
        check(
            "Query",
            1,
            c.query("SELECT count(*) FROM secure_kv", Vec::<i64>::new())
                .await
                .map(|_| ()),
        );
        check("Status", 1, c.status().await.map(|_| ()));
        check(
            "Execute",
            2,
            c.exec("CREATE TABLE IF NOT EXISTS matrix (x)", Vec::<i64>::new())
                .await
                .map(|_| ()),
        );
        // Admin calls whose arguments make them fail after the role check: nothing changes.
        check(
            "AddLearner",
            3,
            c.add_learner(0, "127.0.0.1:1", None).await.map(|_| ()),
        );
        check(
            "AddVoter",
            3,
            c.add_voter(0, "127.0.0.1:1", None).await.map(|_| ()),
        );
        check("RemoveNode", 3, c.remove_node(42).await.map(|_| ()));
        check(
            "TransferLeadership",
            3,
            c.transfer_leadership(42).await.map(|_| ()),
        );
        check("TriggerSnapshot", 3, c.trigger_snapshot().await.map(|_| ()));
    }
    let denied = expect_status(
        as_role(Some("write")).remove_node(follower).await,
        Code::PermissionDenied,
        "RemoveNode with a write token",
    );
    assert!(denied.contains("admin"), "names the role needed: {denied}");

    info!("phase 3b: a request id belongs to the token that used it");
    let (admin, writer) = (as_role(Some("admin")), as_role(Some("write")));
    admin
        .exec("CREATE TABLE ids (v TEXT)", Vec::<i64>::new())
        .await
        .expect("create the table");
    let first = admin
        .execute_with_id(
            "migrate:1:predictable",
            [Statement::new(
                "INSERT INTO ids VALUES ('secret') RETURNING v",
            )],
        )
        .await
        .expect("the admin's write");
    assert!(!first.deduplicated);
    // Another token sending the same id runs its own write, and sees nothing of the first.
    let other = writer
        .execute_with_id(
            "migrate:1:predictable",
            [Statement::new(
                "INSERT INTO ids VALUES ('other') RETURNING v",
            )],
        )
        .await
        .expect("the writer's write");
    assert!(
        !other.deduplicated,
        "another token's id is not this token's retry"
    );
    assert_eq!(
        other.results[0].rows[0].get::<String>(0).expect("v"),
        "other"
    );
    // The first token's retry is still answered with its own results, without running again.
    let retry = admin
        .execute_with_id(
            "migrate:1:predictable",
            [Statement::new(
                "INSERT INTO ids VALUES ('secret') RETURNING v",
            )],
        )
        .await
        .expect("the admin's retry");
    assert!(retry.deduplicated);
    assert_eq!(
        retry.results[0].rows[0].get::<String>(0).expect("v"),
        "secret"
    );
    let count = admin
        .query_with(
            Statement::new("SELECT count(*) FROM ids"),
            cluster_tests::Consistency::Linearizable,
            0,
        )
        .await
        .expect("count");
    assert_eq!(count.rows[0].get::<i64>(0).expect("count"), 2);

    info!("phase 4: the attacks found on the open cluster, without a peer certificate");
    for what in ["plaintext", "TLS without a certificate"] {
        for id in cluster.ids() {
            let target = peer_client(
                cluster.peer_addr(id),
                if what == "plaintext" {
                    Dial::Plain
                } else {
                    Dial::Tls {
                        ca: &ca_path,
                        identity: None,
                    }
                },
            );
            assert_refused_at_transport(
                target
                    .clone()
                    .append_entries(raft_message(
                        "made-up",
                        leader,
                        append_entries(before.term + 1, leader),
                    ))
                    .await,
                "AppendEntries with a made-up cluster id",
            );
            let chunk = snapshot_chunk(
                "",
                leader,
                Vote::new_committed(before.term + 1, leader),
                "/tmp/raftlite-t15-pwned",
                b"SQLite format 3\0".to_vec(),
            );
            assert_refused_at_transport(
                target
                    .clone()
                    .install_snapshot(tokio_stream::iter(vec![chunk]))
                    .await,
                "InstallSnapshot with an empty cluster id and a path as snapshot id",
            );
            assert_refused_at_transport(
                target
                    .clone()
                    .vote(raft_message(
                        &before.cluster_id,
                        99,
                        vote_request(before.term + 1, 99),
                    ))
                    .await,
                "Vote from a non-member",
            );
            assert_refused_at_transport(
                target
                    .clone()
                    .elect(v1::ElectRequest {
                        after_ms: 0,
                        term: 0,
                    })
                    .await,
                "Elect",
            );
            assert_refused_at_transport(
                target.clone().forward_execute(forward_execute(64)).await,
                "ForwardExecute",
            );
        }
    }
    let no_token = as_role(None);
    expect_status(
        no_token.remove_node(follower).await,
        Code::Unauthenticated,
        "RemoveNode without a token",
    );
    expect_status(
        no_token.add_voter(7, "127.0.0.1:1", None).await,
        Code::Unauthenticated,
        "AddVoter without a token",
    );

    info!(
        "phase 5: nothing changed: data, membership, term, files; replicas identical; no restart"
    );
    let after = assert_nothing_changed(&cluster, &checker, &client, leader, &before).await;
    let ids = |s: &v1::StatusResponse| {
        let mut v: Vec<(u64, bool)> = s.nodes.iter().map(|n| (n.id, n.voter)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before), "membership unchanged");
    assert!(!Path::new("/tmp/raftlite-t15-pwned.db").exists());

    info!("phase 6: tokens rotate without a restart: a new token works, a removed one stops");
    let rotated = "rotated-read-token-0123456789";
    creds
        .write_auth_file(&[
            ("new-read", rotated, "read"),
            ("test-admin", creds.token("admin"), "admin"),
        ])
        .expect("rewrite the auth file");
    let query_with = |token: &str| {
        let options = cluster_tests::ClientOptions {
            token: Some(token.to_owned()),
            tls_ca: Some(creds.ca_pem()),
            retry_deadline: Duration::ZERO,
            ..cluster_tests::ClientOptions::default()
        };
        let endpoint = format!("https://{}", cluster.node(follower).addr());
        async move {
            let c = Client::with_options([endpoint], options)?;
            c.query("SELECT 1", Vec::<i64>::new()).await
        }
    };
    cluster_tests::wait_until(
        "the new token to be accepted",
        Duration::from_secs(15),
        || {
            let q = query_with(rotated);
            async move { Ok(q.await.ok().map(|_| ())) }
        },
    )
    .await
    .expect("new token accepted");
    let old_read = creds.token("read").to_owned();
    let refused = query_with(&old_read).await;
    assert!(
        matches!(
            &refused,
            Err(cluster_tests::client::Error::Status {
                code: Code::Unauthenticated,
                ..
            })
        ),
        "the removed token is refused after the reload: {refused:?}"
    );

    info!("phase 7: certificates rotate to a new CA without a restart; a restarted follower rejoins over the new ones");
    creds.rotate_ca(cluster.ids()).expect("rotate the CA");
    cluster_tests::wait_until(
        "every node to serve the new certificate",
        Duration::from_secs(20),
        || {
            let probes: Vec<_> = cluster
                .ids()
                .into_iter()
                .map(|id| {
                    let options = cluster_tests::ClientOptions {
                        retry_deadline: Duration::ZERO,
                        ..creds.client_options(Some("admin"))
                    };
                    let endpoint = format!("https://{}", cluster.node(id).addr());
                    async move { Client::with_options([endpoint], options)?.status().await }
                })
                .collect();
            async move {
                for p in probes {
                    if p.await.is_err() {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        },
    )
    .await
    .expect("the new CA is trusted by clients of every node");
    cluster
        .node(follower)
        .restart()
        .await
        .expect("restart a follower");
    let fresh = cluster.client();
    checker
        .write_many(&fresh, "rotated", 10)
        .await
        .expect("writes after the rotation");
    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .expect("the restarted follower catches up over the new certificates");
    checker
        .verify(&cluster)
        .await
        .expect("every write, exactly once");
    cluster.assert_identical_pages().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_without_tls_refuses_attacks_that_need_no_credentials() {
    init_tracing();
    info!("phase 1: a 3-node cluster on loopback without TLS; 1 MiB snapshot cap");
    let Started {
        cluster,
        leader,
        follower,
        client,
        checker,
        before,
    } = start_with_rows(
        ClusterOptions {
            extra_args: vec!["--max-snapshot-bytes".into(), (1u64 << 20).to_string()],
            ..ClusterOptions::default()
        },
        "open_kv",
    )
    .await;
    let target = peer_client(cluster.peer_addr(follower), Dial::Plain);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let some_ca = cluster_tests::Credentials::generate(elsewhere.path(), [1]).expect("a CA");
    let tls_client = Client::with_options(
        [cluster.node(follower).addr().to_string()],
        cluster_tests::ClientOptions {
            tls_ca: Some(some_ca.ca_pem()),
            ..cluster_tests::ClientOptions::default()
        },
    )
    .expect("client");
    assert_tls_mismatch(
        tls_client.status(),
        "this connection speaks TLS and the node does not",
    )
    .await;

    info!("phase 2: the peer service only on the peer port; reflection lists only the client services");
    let on_client_port = peer_client(cluster.node(follower).addr(), Dial::Plain)
        .identity(v1::IdentityRequest {})
        .await;
    assert_eq!(code_of(on_client_port), Some(Code::Unimplemented));
    let sql_on_peer_port = raftlite_proto::v1::sql_client::SqlClient::new(
        Endpoint::from_shared(format!("http://{}", cluster.peer_addr(follower)))
            .expect("uri")
            .connect_lazy(),
    )
    .execute(forward_execute(8))
    .await;
    assert_eq!(code_of(sql_on_peer_port), Some(Code::Unimplemented));
    assert_eq!(
        reflected_services(cluster.node(follower).addr()).await,
        [
            "grpc.health.v1.Health",
            "raftlite.v1.Admin",
            "raftlite.v1.Sql"
        ]
    );

    info!("phase 3: an empty or made-up cluster id is refused before anything is decoded");
    for id in ["", "made-up-cluster"] {
        let r = target
            .clone()
            .append_entries(raft_message(
                id,
                leader,
                append_entries(before.term + 1, leader),
            ))
            .await;
        assert_eq!(
            code_of(r),
            Some(Code::FailedPrecondition),
            "cluster id {id:?}"
        );
        let on_stream = stream_answer(
            &target,
            raft_message(id, leader, append_entries(before.term + 1, leader)),
        )
        .await;
        assert_eq!(
            code_of(on_stream),
            Some(Code::FailedPrecondition),
            "cluster id {id:?} on an AppendStream"
        );
    }
    // The right cluster id, but a vote for another node than the sender: refused on the stream
    // as in the unary call, before openraft sees it.
    let other_leader = stream_answer(
        &target,
        raft_message(
            &before.cluster_id,
            leader,
            append_entries(before.term + 1, follower),
        ),
    )
    .await;
    assert_eq!(code_of(other_leader), Some(Code::InvalidArgument));

    info!("phase 4: a vote from a node id outside the membership is refused");
    let r = target
        .clone()
        .vote(raft_message(
            &before.cluster_id,
            99,
            vote_request(before.term + 10, 99),
        ))
        .await;
    assert_eq!(code_of(r), Some(Code::PermissionDenied));

    info!("phase 5: a snapshot id that is a path never names a file");
    let pwned = cluster.dir().join("pwned");
    let chunk = snapshot_chunk(
        &before.cluster_id,
        leader,
        Vote::new_committed(0, leader),
        pwned.to_str().expect("utf-8 path"),
        b"SQLite format 3\0junk".to_vec(),
    );
    let r = target
        .clone()
        .install_snapshot(tokio_stream::iter(vec![chunk]))
        .await;
    assert_eq!(
        code_of(r),
        Some(Code::FailedPrecondition),
        "stale vote refused first"
    );
    assert!(!pwned.exists() && !pwned.with_extension("db").exists());

    info!("phase 6: a snapshot over max_snapshot_bytes is refused and leaves no file");
    let vote = Vote::new_committed(before.term, leader);
    let chunks: Vec<v1::SnapshotChunk> = (0..3)
        .map(|i| {
            let mut c = snapshot_chunk(&before.cluster_id, leader, vote, "s", vec![0u8; 1 << 20]);
            if i > 0 {
                c.header.clear();
                c.cluster_id.clear();
            }
            c
        })
        .collect();
    let r = target
        .clone()
        .install_snapshot(tokio_stream::iter(chunks))
        .await;
    assert_eq!(code_of(r), Some(Code::ResourceExhausted));
    let snapshots = cluster.node(follower).data_dir().join("snapshots");
    let leftovers: Vec<_> = std::fs::read_dir(&snapshots)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("receiving-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "partial snapshot files left: {leftovers:?}"
    );

    info!("phase 6b: a snapshot stream cut short is not installed");
    let cut_short = snapshot_chunk(
        &before.cluster_id,
        leader,
        vote,
        "s",
        b"SQLite format 3\0"
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0u8, 65_520))
            .collect(),
    );
    let r = target
        .clone()
        .install_snapshot(tokio_stream::iter(vec![cut_short]))
        .await;
    assert_eq!(
        code_of(r),
        Some(Code::Aborted),
        "a stream without its last (empty) chunk is refused"
    );

    info!("phase 7: oversized peer messages are refused");
    let huge = target
        .clone()
        .append_entries(raft_message(
            &before.cluster_id,
            leader,
            vec![0u8; 300 << 20],
        ))
        .await;
    assert!(
        matches!(
            code_of(huge),
            Some(Code::OutOfRange | Code::ResourceExhausted)
        ),
        "a 300 MB AppendEntries is refused"
    );
    let huge_on_stream = stream_answer(
        &target,
        raft_message(&before.cluster_id, leader, vec![0u8; 300 << 20]),
    )
    .await;
    assert!(
        matches!(
            code_of(huge_on_stream),
            Some(Code::OutOfRange | Code::ResourceExhausted)
        ),
        "a 300 MB message on an AppendStream is refused"
    );
    let big_forward = target
        .clone()
        .forward_execute(forward_execute(20 << 20))
        .await;
    assert_eq!(
        code_of(big_forward),
        Some(Code::ResourceExhausted),
        "ForwardExecute obeys max_request_bytes"
    );

    info!("phase 8: nothing changed; replicas identical; no node restarted");
    assert_nothing_changed(&cluster, &checker, &client, leader, &before).await;
}
