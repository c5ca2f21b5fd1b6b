//! Security (issue 13): authentication by mutual TLS, through the real binary.

use std::time::Duration;

use sluice_client::{Client, ClientConfig, ClientError, ClientIdentity};
use sluice_tests::{BrokerProcess, TEST_CONFIG};

fn client_config(
    broker: &BrokerProcess,
    identity: Option<(&std::path::Path, &str)>,
) -> ClientConfig {
    let mut config = broker.client_config();
    config.connect_timeout = Duration::from_secs(10);
    config.identity = identity.map(|(dir, name)| ClientIdentity {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    });
    config
}

/// Connects and asks who the broker takes the client for.
async fn who(config: ClientConfig) -> Result<(String, String), ClientError> {
    let client = Client::connect(config).await?;
    client.who_am_i().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_trusted_certificate_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    // Without authentication every client is ANONYMOUS (and the broker says so loudly).
    let open = BrokerProcess::start(&dir.path().join("open"), TEST_CONFIG);
    assert_eq!(
        who(client_config(&open, None)).await.unwrap(),
        ("ANONYMOUS".to_string(), "none".to_string())
    );
    assert!(
        open.log().contains("CLIENT AUTHENTICATION IS OFF"),
        "{}",
        open.log()
    );
    // A certificate from another CA: the open broker's dev CA.
    open.run_ok(&[
        "auth",
        "issue-cert",
        "mallory",
        "--data-dir",
        open.data_dir.to_str().unwrap(),
        "--out-dir",
        certs.to_str().unwrap(),
    ]);

    let broker = BrokerProcess::start(
        &dir.path().join("strict"),
        &format!("{TEST_CONFIG}client_auth = \"mtls\"\n"),
    );
    let out = broker.run_ok(&[
        "auth",
        "issue-cert",
        "alice",
        "--data-dir",
        broker.data_dir.to_str().unwrap(),
        "--out-dir",
        certs.to_str().unwrap(),
    ]);
    assert!(out.contains("alice"), "{out}");

    // No certificate: refused at the handshake, with an error saying what is missing.
    let e = who(client_config(&broker, None)).await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, ClientError::Tls(_)) && text.contains("requires a client certificate"),
        "{e:?}"
    );
    // A certificate the broker's client CA did not sign: refused.
    let e = who(client_config(&broker, Some((&certs, "mallory"))))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Tls(_)) && e.to_string().contains("did not accept"),
        "{e:?}"
    );
    // A valid one: served, as its principal.
    assert_eq!(
        who(client_config(&broker, Some((&certs, "alice"))))
            .await
            .unwrap(),
        ("alice".to_string(), "mtls".to_string())
    );
    // The CLI presents one with --tls-cert/--tls-key; without, it fails with the same advice.
    let who_cli = broker.run_ok(&[
        "--tls-cert",
        certs.join("alice.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("alice.key").to_str().unwrap(),
        "auth",
        "whoami",
    ]);
    assert_eq!(who_cli.trim(), "alice (authenticated by mtls)");
    broker.run_fails(&["topic", "list"], "requires a client certificate");
    // The broker served on through the refusals.
    let client = Client::connect(client_config(&broker, Some((&certs, "alice"))))
        .await
        .unwrap();
    client
        .admin()
        .create_topic("orders", 1, Default::default())
        .await
        .unwrap();
}

#[test]
fn acl_bindings_are_added_listed_removed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let words = |line: &'static str| line.split_whitespace().collect::<Vec<_>>();
    // The example: A writes orders and reads reports; B reads orders in group billing.
    for line in [
        "acl add --principal A --resource topic --name orders --operation write",
        "acl add --principal A --resource topic --name reports --operation read",
        "acl add --principal B --resource topic --name orders --operation read",
        "acl add --principal B --resource group --name billing --operation read",
        "acl add --principal * --resource topic --name logs- --prefix --operation all --deny",
    ] {
        let out = broker.run_ok(&words(line));
        assert!(out.starts_with("added: "), "{out}");
    }
    // Refused before anything is stored: a cluster binding names the cluster as `*`.
    broker.run_fails(
        &words("acl add --principal A --resource cluster --name c1 --operation alter"),
        "cluster binding",
    );
    broker.run_fails(
        &words("acl add --principal A --resource table --operation read"),
        "not a resource type",
    );
    let list = broker.run_ok(&["acl", "list"]);
    for line in [
        "A\tallow\ttopic orders\twrite",
        "A\tallow\ttopic reports\tread",
        "B\tallow\ttopic orders\tread",
        "B\tallow\tgroup billing\tread",
        "*\tdeny\ttopic logs-*\tall",
    ] {
        assert!(list.contains(line), "{line:?} missing from:\n{list}");
    }
    assert_eq!(list.lines().count(), 6, "{list}");

    // Removed exactly as added; kept in the metadata log across a restart.
    broker.run_ok(&words(
        "acl remove --principal B --resource group --name billing --operation read",
    ));
    assert!(broker.terminate(), "clean stop");
    broker.restart();
    let list = broker.run_ok(&["acl", "list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    assert!(!list.contains("billing"), "{list}");
    assert!(list.contains("A\tallow\ttopic orders\twrite"), "{list}");
}

fn is_not_authorized<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Broker(ref e)) if e.code == sluice_proto::ErrorCode::NotAuthorized
    )
}

/// Acceptance 3 of issue 13: A may write `orders` and read `reports`; B may read `orders` with
/// group `billing` only; every other combination is refused with `NotAuthorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_allow_exactly_what_they_grant() {
    use sluice_client::{ConsumerConfig, GroupOptions, ProducerConfig, ProducerRecord, SeekTo};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let broker = BrokerProcess::start(
        &dir.path().join("b"),
        &format!(
            "{TEST_CONFIG}client_auth = \"mtls\"\nauthorization = true\nsuper_users = [\"admin\"]\n"
        ),
    );
    for name in ["admin", "A", "B"] {
        broker.run_ok(&[
            "auth",
            "issue-cert",
            name,
            "--data-dir",
            broker.data_dir.to_str().unwrap(),
            "--out-dir",
            certs.to_str().unwrap(),
        ]);
    }
    let connect = |name: &'static str| {
        let config = client_config(&broker, Some((&certs, name)));
        async move { Client::connect(config).await.unwrap() }
    };
    let admin = connect("admin").await;
    for t in ["orders", "reports"] {
        admin
            .admin()
            .create_topic(t, 1, Default::default())
            .await
            .unwrap();
    }
    use sluice_proto::acl::{AclBinding, Operation, PatternKind, Permission, ResourceType};
    let allow = |p: &str, r, n: &str, o| AclBinding {
        principal: p.into(),
        resource: r,
        pattern: n.into(),
        kind: PatternKind::Literal,
        operation: o,
        permission: Permission::Allow,
    };
    admin
        .admin()
        .create_acls(vec![
            allow("A", ResourceType::Topic, "orders", Operation::Write),
            allow("A", ResourceType::Topic, "reports", Operation::Read),
            allow("B", ResourceType::Topic, "orders", Operation::Read),
            allow("B", ResourceType::Group, "billing", Operation::Read),
        ])
        .await
        .unwrap();
    let a = connect("A").await;
    let b = connect("B").await;

    // Produce: A to orders only.
    let produce = |c: &Client, topic: &'static str| {
        let producer = c.producer(ProducerConfig::default());
        async move {
            producer
                .send_and_wait(ProducerRecord::new(topic, "v"))
                .await
        }
    };
    produce(&a, "orders").await.unwrap();
    assert!(is_not_authorized(produce(&a, "reports").await));
    assert!(is_not_authorized(produce(&b, "orders").await));
    assert!(is_not_authorized(produce(&b, "reports").await));

    // Fetch (without a group): A reads reports, B reads orders; nothing else.
    let fetch = |c: &Client, topic: &'static str| {
        let mut consumer = c.consumer(ConsumerConfig {
            max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        });
        async move {
            consumer.assign(topic, &[0]).await?;
            consumer.seek(topic, 0, SeekTo::Earliest).await?;
            consumer.poll().await
        }
    };
    fetch(&a, "reports").await.unwrap();
    assert_eq!(fetch(&b, "orders").await.unwrap().len(), 1);
    assert!(is_not_authorized(fetch(&a, "orders").await));
    assert!(is_not_authorized(fetch(&b, "reports").await));

    // Groups: B joins billing on orders and commits; any other group or member is refused.
    let join = |c: &Client, group: &'static str| {
        let mut consumer = c.consumer(ConsumerConfig::default());
        async move {
            consumer
                .subscribe(group, &["orders"], GroupOptions::default())
                .await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while consumer.assignment().is_empty() {
                consumer.poll().await?;
                assert!(std::time::Instant::now() < deadline, "no assignment");
            }
            consumer.commit().await?;
            consumer.close().await
        }
    };
    join(&b, "billing").await.unwrap();
    assert!(is_not_authorized(join(&b, "other").await));
    assert!(is_not_authorized(join(&a, "billing").await));

    // Administration: neither may create or delete topics, deploy plugins, create pipelines,
    // or change ACLs; the super-user may.
    for c in [&a, &b] {
        assert!(is_not_authorized(
            c.admin().create_topic("x", 1, Default::default()).await
        ));
        assert!(is_not_authorized(c.admin().delete_topic("orders").await));
        assert!(is_not_authorized(c.admin().list_acls().await));
        assert!(is_not_authorized(
            c.admin()
                .create_acls(vec![allow("A", ResourceType::Topic, "x", Operation::All)])
                .await
        ));
    }
    let wasm = bytes::Bytes::from(sluice_wasm_plugins::read("identity-map"));
    let deploy = |c: &Client| {
        let (c, wasm) = (c.clone(), wasm.clone());
        async move {
            c.request(
                sluice_proto::Request::DeployPlugin { name: "idm".into() },
                wasm,
            )
            .await
        }
    };
    assert!(is_not_authorized(deploy(&a).await));
    deploy(&admin).await.unwrap();
    let pipeline = |c: &Client| {
        let c = c.clone();
        async move {
            let request =
                sluice_proto::Request::CreatePipeline(sluice_proto::CreatePipelineRequest {
                    name: "p".into(),
                    plugins: vec!["idm".into()],
                    from: "orders".into(),
                    to: "reports".into(),
                    config: vec![],
                    start: sluice_proto::PipelineStart::Earliest,
                    max_call_ms: None,
                    max_memory_bytes: None,
                });
            c.request(request, bytes::Bytes::new()).await
        }
    };
    assert!(is_not_authorized(pipeline(&a).await));
    assert!(is_not_authorized(pipeline(&b).await));
    assert!(
        broker.log().contains("not authorized"),
        "refusals are logged"
    );
}
