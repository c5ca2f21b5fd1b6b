//! Security (issue 13), through the real binary: authentication by mutual TLS, passwords
//! and tokens; authorisation by ACLs, in requests, listings and pipelines; quotas; secrets
//! kept out of logs, listings and the metadata store.

use std::time::Duration;

use sluice_client::{Client, ClientConfig, ClientError, ClientIdentity, Credentials};
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
    // The issue's example: A writes orders and reads reports; B reads orders in group billing.
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
    let broker = locked_broker(dir.path(), &["admin", "A", "B"]);
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
    // Group listings show what the principal may describe: billing to B and the super-user,
    // nothing to A.
    let groups = |c: &Client| {
        let c = c.clone();
        async move {
            match c
                .request(sluice_proto::Request::ListGroups, bytes::Bytes::new())
                .await
                .unwrap()
                .0
            {
                sluice_proto::ResponseBody::Groups(g) => {
                    g.into_iter().map(|g| g.group).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(groups(&b).await, ["billing"]);
    assert_eq!(groups(&admin).await, ["billing"]);
    assert!(groups(&a).await.is_empty());
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

/// Issues dev client certificates for `names` from `broker`'s CA into `dir`.
fn issue_certs(broker: &BrokerProcess, dir: &std::path::Path, names: &[&str]) {
    for name in names {
        broker.run_ok(&[
            "auth",
            "issue-cert",
            name,
            "--data-dir",
            broker.data_dir.to_str().unwrap(),
            "--out-dir",
            dir.to_str().unwrap(),
        ]);
    }
}

/// A broker requiring mTLS, with authorisation on and `admin` a super-user, serving metrics;
/// certificates for `names` are issued into DIR/certs.
fn locked_broker(dir: &std::path::Path, names: &[&str]) -> BrokerProcess {
    let broker = BrokerProcess::start(
        &dir.join("b"),
        &format!(
            "{TEST_CONFIG}{}client_auth = \"mtls\"\nauthorization = true\nsuper_users = [\"admin\"]\n",
            sluice_tests::scrape::METRICS
        ),
    );
    issue_certs(&broker, &dir.join("certs"), names);
    broker
}

/// Runs the CLI as `name` (its certificate in `certs`); its stdout.
fn as_user(broker: &BrokerProcess, certs: &std::path::Path, name: &str, args: &[&str]) -> String {
    let (cert, key) = (
        certs.join(format!("{name}.pem")),
        certs.join(format!("{name}.key")),
    );
    let mut all = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    all.extend(args);
    broker.run_ok(&all)
}

fn with_credentials(broker: &BrokerProcess, credentials: Credentials) -> ClientConfig {
    let mut config = client_config(broker, None);
    config.credentials = Some(credentials);
    config
}

fn is_not_authenticated<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Broker(e)) if e.code == sluice_proto::ErrorCode::NotAuthenticated
    )
}

/// Acceptance 2 of issue 13: passwords (SCRAM-SHA-256) and tokens. A wrong password is
/// refused; a revoked token, or a deleted user, stops working at the next request on the
/// connection it opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_authenticate_and_revocation_bites_at_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let broker = BrokerProcess::start(
        &dir.path().join("b"),
        &format!(
            "{TEST_CONFIG}client_auth = \"credentials\"\nauthorization = true\nsuper_users = [\"admin\"]\n"
        ),
    );
    issue_certs(&broker, &certs, &["admin"]);
    // Under `credentials` a certificate from the client CA still authenticates (brokers
    // present theirs): the operator's way in before any user exists.
    let admin = Client::connect(client_config(&broker, Some((&certs, "admin"))))
        .await
        .unwrap();
    assert_eq!(admin.who_am_i().await.unwrap().0, "admin");

    // Nothing but Hello and Authenticate before authenticating.
    let anonymous = Client::connect(client_config(&broker, None)).await.unwrap();
    let connected = std::time::Instant::now();
    let refused = anonymous.admin().list_topics().await;
    assert!(is_not_authenticated(&refused), "{refused:?}");
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("requires authentication"),
        "says what to do"
    );

    // A user created through the CLI, its password from standard input.
    let out = broker.run_ok_in(
        &[
            "--tls-cert",
            certs.join("admin.pem").to_str().unwrap(),
            "--tls-key",
            certs.join("admin.key").to_str().unwrap(),
            "user",
            "create",
            "alice",
        ],
        b"correct horse battery staple\n",
    );
    assert!(out.contains("alice"), "{out}");
    let users = admin.admin().list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "alice");
    assert_eq!(
        users[0].iterations,
        sluice_client::scram::DEFAULT_ITERATIONS
    );

    let password = |p: &str| Credentials::Password {
        user: "alice".into(),
        password: p.into(),
    };
    let alice = Client::connect(with_credentials(
        &broker,
        password("correct horse battery staple"),
    ))
    .await
    .unwrap();
    assert_eq!(
        alice.who_am_i().await.unwrap(),
        ("alice".into(), "scram-sha-256".into())
    );
    // A wrong password, and an unknown user, are refused alike (no telling which).
    for (user, pw) in [("alice", "wrong"), ("nobody", "x")] {
        let e = Client::connect(with_credentials(
            &broker,
            Credentials::Password {
                user: user.into(),
                password: pw.into(),
            },
        ))
        .await
        .map(drop);
        assert!(is_not_authenticated(&e), "{e:?}");
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("wrong user name or password"),
            "{user}"
        );
    }

    // Tokens: one the admin makes for bob, one alice makes for herself (no ACL needed).
    let bob_token = admin
        .admin()
        .create_token(Some("bob"), "ci", None)
        .await
        .unwrap();
    assert_eq!(bob_token.description.principal, "bob");
    let own = alice
        .admin()
        .create_token(None, "mine", None)
        .await
        .unwrap();
    assert_eq!(own.description.principal, "alice");
    // Alice may not make one for somebody else, nor see bob's.
    let refused = alice.admin().create_token(Some("bob"), "", None).await;
    assert!(is_not_authorized(refused));
    let seen: Vec<String> = alice
        .admin()
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(seen, vec![own.description.id.clone()]);
    assert_eq!(admin.admin().list_tokens().await.unwrap().len(), 2);

    let bob = Client::connect(with_credentials(
        &broker,
        Credentials::Token(bob_token.token.clone()),
    ))
    .await
    .unwrap();
    assert_eq!(
        bob.who_am_i().await.unwrap(),
        ("bob".into(), "token".into())
    );
    let who = broker.run_ok(&["--token", &bob_token.token, "auth", "whoami"]);
    assert_eq!(who.trim(), "bob (authenticated by token)");
    let mut cli = broker.cli();
    cli.env("SLUICE_TOKEN", &bob_token.token)
        .args(["auth", "whoami"]);
    let out = sluice_tests::run_bounded(&mut cli, b"", Duration::from_secs(60));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bob (authenticated by token)"
    );
    // From a profile file, too.
    let profile = dir.path().join("bob.toml");
    std::fs::write(&profile, format!("token = \"{}\"\n", bob_token.token)).unwrap();
    let who = broker.run_ok(&["--profile", profile.to_str().unwrap(), "auth", "whoami"]);
    assert_eq!(who.trim(), "bob (authenticated by token)");
    // A token with its secret changed is refused.
    let mut forged = bob_token.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let e = Client::connect(with_credentials(&broker, Credentials::Token(forged)))
        .await
        .map(drop);
    assert!(is_not_authenticated(&e), "{e:?}");

    // A token cannot mint tokens (a leaked short-lived one would make a lasting one).
    assert!(is_not_authorized(
        bob.admin().create_token(None, "child", None).await
    ));
    // Revoked: bob's open connection fails at its very next request.
    admin
        .admin()
        .revoke_token(&bob_token.description.id)
        .await
        .unwrap();
    let after = bob.who_am_i().await;
    assert!(is_not_authenticated(&after), "{after:?}");
    assert!(after.unwrap_err().to_string().contains("revoked"));
    let e = Client::connect(with_credentials(
        &broker,
        Credentials::Token(bob_token.token.clone()),
    ))
    .await
    .map(drop);
    assert!(
        is_not_authenticated(&e),
        "a revoked token opens no new connection"
    );

    // A password change ends the connections made with the old one at their next request.
    alice.who_am_i().await.unwrap();
    admin
        .admin()
        .upsert_user("alice", "a new password")
        .await
        .unwrap();
    let after = alice.who_am_i().await;
    assert!(is_not_authenticated(&after), "{after:?}");
    let alice = Client::connect(with_credentials(&broker, password("a new password")))
        .await
        .unwrap();
    let alice_token = Client::connect(with_credentials(
        &broker,
        Credentials::Token(own.token.clone()),
    ))
    .await
    .unwrap();
    assert_eq!(alice_token.who_am_i().await.unwrap().0, "alice");
    // A deleted user: the same, at the next request, and the tokens made for it go too.
    admin.admin().delete_user("alice").await.unwrap();
    let after = alice.who_am_i().await;
    assert!(is_not_authenticated(&after), "{after:?}");
    let after = alice_token.who_am_i().await;
    assert!(is_not_authenticated(&after), "{after:?}");
    assert!(admin.admin().list_tokens().await.unwrap().is_empty());
    // A connection that never authenticated is closed 10 s after it connected.
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(connected.elapsed())).await;
    assert!(
        broker
            .log()
            .contains("closing a connection that did not authenticate in time"),
        "{}",
        broker.log()
    );
    // (The client opens a new connection, which is refused the same way.)
    assert!(is_not_authenticated(&anonymous.admin().list_topics().await));
    // The broker served on through all of it.
    admin
        .admin()
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
}

/// Acceptance 3's listings: a principal sees in every listing only what it may describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_only_what_the_principal_may_describe() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let broker = locked_broker(dir.path(), &["admin", "A", "B"]);
    let connect = |name: &'static str| {
        let config = client_config(&broker, Some((&certs, name)));
        async move { Client::connect(config).await.unwrap() }
    };
    let admin = connect("admin").await;
    for t in ["orders", "reports", "secret"] {
        admin
            .admin()
            .create_topic(t, 1, Default::default())
            .await
            .unwrap();
    }
    as_user(
        &broker,
        &certs,
        "admin",
        &[
            "acl",
            "add",
            "--principal",
            "B",
            "--resource",
            "topic",
            "--name",
            "orders",
            "--operation",
            "read",
        ],
    );
    let a = connect("A").await;
    let b = connect("B").await;
    // User topics by name (a super-user also sees the internal `__consumer_offsets`).
    let names = |topics: Vec<sluice_proto::TopicDescription>| {
        let mut n: Vec<String> = topics
            .into_iter()
            .map(|t| t.name)
            .filter(|n| !n.starts_with("__"))
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(admin.admin().list_topics().await.unwrap()),
        ["orders", "reports", "secret"]
    );
    assert_eq!(names(b.admin().list_topics().await.unwrap()), ["orders"]);
    assert!(a.admin().list_topics().await.unwrap().is_empty());
    // The metadata of every topic, too; naming a topic one may not describe is refused
    // (not answered as unknown).
    let all = b
        .request(
            sluice_proto::Request::Metadata { topics: None },
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    match all.0 {
        sluice_proto::ResponseBody::Metadata(m) => {
            let n: Vec<&str> = m.topics.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(n, ["orders"]);
        }
        other => panic!("{other:?}"),
    }
    let named = b
        .request(
            sluice_proto::Request::Metadata {
                topics: Some(vec!["secret".into()]),
            },
            bytes::Bytes::new(),
        )
        .await;
    assert!(is_not_authorized(named));
    // Through the CLI: B's `topic list` shows orders only.
    let out = as_user(&broker, &certs, "B", &["topic", "list"]);
    assert!(
        out.contains("orders") && !out.contains("secret") && !out.contains("reports"),
        "{out}"
    );
    // Plugins, pipelines and groups the admin made are not listed to A or B.
    let wasm = bytes::Bytes::from(sluice_wasm_plugins::read("identity-map"));
    admin
        .request(
            sluice_proto::Request::DeployPlugin { name: "idm".into() },
            wasm,
        )
        .await
        .unwrap();
    for c in [&a, &b] {
        match c
            .request(sluice_proto::Request::ListPlugins, bytes::Bytes::new())
            .await
            .unwrap()
            .0
        {
            sluice_proto::ResponseBody::Plugins(p) => assert!(p.is_empty(), "{p:?}"),
            other => panic!("{other:?}"),
        }
    }
    match admin
        .request(sluice_proto::Request::ListPlugins, bytes::Bytes::new())
        .await
        .unwrap()
        .0
    {
        sluice_proto::ResponseBody::Plugins(p) => assert_eq!(p.len(), 1),
        other => panic!("{other:?}"),
    }
}

/// Acceptance 4 of issue 13: a pipeline acts with its creator's rights; when the creator
/// loses read on the input, the pipeline stops with a clear error and copies nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_stops_when_its_creator_loses_read_on_its_input() {
    use sluice_client::{ProducerConfig, ProducerRecord};
    use sluice_proto::acl::{AclBinding, Operation, PatternKind, Permission, ResourceType};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let broker = locked_broker(dir.path(), &["admin", "carol"]);
    let admin = Client::connect(client_config(&broker, Some((&certs, "admin"))))
        .await
        .unwrap();
    for t in ["in", "out"] {
        admin
            .admin()
            .create_topic(t, 1, Default::default())
            .await
            .unwrap();
    }
    let wasm = bytes::Bytes::from(sluice_wasm_plugins::read("identity-map"));
    admin
        .request(
            sluice_proto::Request::DeployPlugin { name: "idm".into() },
            wasm,
        )
        .await
        .unwrap();
    let allow = |r, n: &str, o| AclBinding {
        principal: "carol".into(),
        resource: r,
        pattern: n.into(),
        kind: PatternKind::Literal,
        operation: o,
        permission: Permission::Allow,
    };
    let read_in = allow(ResourceType::Topic, "in", Operation::Read);
    admin
        .admin()
        .create_acls(vec![
            allow(ResourceType::Pipeline, "copy", Operation::All),
            read_in.clone(),
            allow(ResourceType::Topic, "out", Operation::Write),
            allow(ResourceType::Plugin, "idm", Operation::Read),
        ])
        .await
        .unwrap();
    let carol = Client::connect(client_config(&broker, Some((&certs, "carol"))))
        .await
        .unwrap();
    carol
        .request(
            sluice_proto::Request::CreatePipeline(sluice_proto::CreatePipelineRequest {
                name: "copy".into(),
                plugins: vec!["idm".into()],
                from: "in".into(),
                to: "out".into(),
                config: vec![],
                start: sluice_proto::PipelineStart::Earliest,
                max_call_ms: None,
                max_memory_bytes: None,
            }),
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    let producer = admin.producer(ProducerConfig::default());
    let produce = |n: usize| {
        let producer = producer.clone();
        async move {
            for i in 0..n {
                producer
                    .send_and_wait(ProducerRecord::new("in", format!("r{i}")))
                    .await
                    .unwrap();
            }
        }
    };
    let out_end = || async {
        admin
            .admin()
            .list_offsets("out", vec![(0, sluice_proto::OffsetSpec::Latest)])
            .await
            .unwrap()[0]
            .result
            .clone()
            .unwrap()
    };
    let describe = || async {
        match admin
            .request(
                sluice_proto::Request::DescribePipeline {
                    name: "copy".into(),
                },
                bytes::Bytes::new(),
            )
            .await
            .unwrap()
            .0
        {
            sluice_proto::ResponseBody::Pipeline(p) => p,
            other => panic!("{other:?}"),
        }
    };
    produce(5).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out_end().await < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            describe().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Carol loses read on the input: the pipeline stops, saying why.
    admin.admin().delete_acls(vec![read_in]).await.unwrap();
    produce(5).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let p = loop {
        let p = describe().await;
        if p.status == "failed" {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "{p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = p.error.unwrap_or_default();
    assert!(
        error.contains("no longer authorized") && error.contains("carol may not read topic \"in\""),
        "{error}"
    );
    assert_eq!(
        out_end().await,
        5,
        "nothing copied after the right was lost"
    );
}

/// Produces 1,000-byte records to `topic` for `run`, at most 256 unacknowledged; the record
/// bytes acknowledged between `skip` and `run` after the start, per second of that window.
async fn acknowledged_rate(
    client: &Client,
    topic: &'static str,
    skip: Duration,
    run: Duration,
) -> f64 {
    use futures::StreamExt;
    use sluice_client::{ProducerConfig, ProducerRecord};
    let producer = client.producer(ProducerConfig {
        max_batch_bytes: 16 * 1024,
        ..ProducerConfig::default()
    });
    let value = vec![b'x'; 1000];
    let start = std::time::Instant::now();
    let (from, to) = (start + skip, start + run);
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut counted = 0u64;
    let mut count = |done: std::time::Instant| {
        if done >= from && done < to {
            counted += 1000;
        }
    };
    while std::time::Instant::now() < to {
        if pending.len() >= 256 {
            pending.next().await.unwrap();
            count(std::time::Instant::now());
            continue;
        }
        let delivery = producer
            .send(ProducerRecord::new(topic, value.clone()))
            .await
            .unwrap();
        pending.push(async move { delivery.await.unwrap() });
    }
    drop(pending);
    counted as f64 / (run - skip).as_secs_f64()
}

/// Acceptance 5 of issue 13: a producer over its byte quota is slowed to it (its rate over
/// 10 s within 10% of the quota) while another principal's producer is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_over_its_quota_is_slowed_to_it_and_no_one_else_is() {
    const QUOTA: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let broker = BrokerProcess::start(
        &dir.path().join("b"),
        &format!("{TEST_CONFIG}client_auth = \"mtls\"\n"),
    );
    issue_certs(&broker, &certs, &["slow", "fast"]);
    let slow = Client::connect(client_config(&broker, Some((&certs, "slow"))))
        .await
        .unwrap();
    let fast = Client::connect(client_config(&broker, Some((&certs, "fast"))))
        .await
        .unwrap();
    slow.admin()
        .create_topic("q", 1, Default::default())
        .await
        .unwrap();
    // Set through the CLI, listed back.
    let quota = QUOTA.to_string();
    let out = as_user(
        &broker,
        &certs,
        "slow",
        &["quota", "set", "slow", "--produce-bytes-per-sec", &quota],
    );
    assert!(out.contains(&format!("slow\t{QUOTA}\t-\t-")), "{out}");

    let (slow_rate, fast_rate) = tokio::join!(
        acknowledged_rate(&slow, "q", Duration::from_secs(2), Duration::from_secs(12)),
        acknowledged_rate(&fast, "q", Duration::from_secs(2), Duration::from_secs(12)),
    );
    let ratio = slow_rate / QUOTA as f64;
    eprintln!("throttled {slow_rate:.0} B/s ({ratio:.3} of the quota), other {fast_rate:.0} B/s");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "over 10 s the throttled producer ran at {slow_rate:.0} B/s, {ratio:.3} of its quota"
    );
    // Told how long it was held back; the other principal never was, and ran past the quota.
    let held = slow.throttled();
    assert!(held.answers > 0 && !held.total.is_zero(), "{held:?}");
    assert_eq!(fast.throttled().answers, 0);
    assert!(
        fast_rate > 2.0 * QUOTA as f64,
        "the unthrottled principal ran at {fast_rate:.0} B/s"
    );
}

/// Acceptance 6 of issue 13: no password or token appears in the broker's log (at debug
/// level), in listings, or anywhere in its data directory (the metadata log and snapshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_are_never_stored_or_shown_in_clear() {
    const PASSWORD: &str = "Tr0ub4dor&3-never-in-clear";
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    // Logging at debug level: every request the broker handles leaves a line.
    let mut broker = BrokerProcess::start_logging(
        &dir.path().join("b"),
        &format!("{TEST_CONFIG}client_auth = \"credentials\"\n"),
        "debug,openraft=info",
    );
    issue_certs(&broker, &certs, &["admin"]);
    let admin = Client::connect(client_config(&broker, Some((&certs, "admin"))))
        .await
        .unwrap();
    let mut cli = broker.cli();
    cli.env("SLUICE_NEW_PASSWORD", PASSWORD).args([
        "--tls-cert",
        certs.join("admin.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("admin.key").to_str().unwrap(),
        "user",
        "create",
        "dave",
    ]);
    let out = sluice_tests::run_bounded(&mut cli, b"", Duration::from_secs(60));
    assert!(out.status.success(), "{out:?}");
    let dave = Client::connect(with_credentials(
        &broker,
        Credentials::Password {
            user: "dave".into(),
            password: PASSWORD.into(),
        },
    ))
    .await
    .unwrap();
    let token = dave.admin().create_token(None, "ci", None).await.unwrap();
    let secret = token.token.rsplit('_').next().unwrap().to_owned();
    let user = Client::connect(with_credentials(
        &broker,
        Credentials::Token(token.token.clone()),
    ))
    .await
    .unwrap();
    assert_eq!(user.who_am_i().await.unwrap().0, "dave");
    // A wrong password and a forged token are logged as failures, without the secret.
    let _ = Client::connect(with_credentials(
        &broker,
        Credentials::Password {
            user: "dave".into(),
            password: format!("{PASSWORD}-wrong"),
        },
    ))
    .await;
    let mut shown = String::new();
    for args in [
        vec!["user", "list"],
        vec!["token", "list"],
        vec!["quota", "list"],
    ] {
        let mut all = vec!["--token", token.token.as_str()];
        all.extend(args);
        shown.push_str(&broker.run_ok(&all));
    }
    shown.push_str(&format!("{:?}", admin.admin().list_tokens().await.unwrap()));
    shown.push_str(&format!("{:?}", admin.admin().list_users().await.unwrap()));
    shown.push_str(&format!(
        "{:?}",
        Credentials::Password {
            user: "dave".into(),
            password: PASSWORD.into()
        }
    ));
    assert!(
        shown.contains("dave") && shown.contains(&token.description.id),
        "{shown}"
    );
    // Across a restart the metadata log (and any snapshot of it) is read back from disk.
    assert!(broker.terminate());
    broker.restart();
    let again = Client::connect(with_credentials(
        &broker,
        Credentials::Token(token.token.clone()),
    ))
    .await
    .unwrap();
    assert_eq!(again.who_am_i().await.unwrap().0, "dave");
    assert!(broker.log().contains("authentication failed"));

    let needles = [
        PASSWORD.as_bytes(),
        token.token.as_bytes(),
        secret.as_bytes(),
    ];
    let leaks = |what: &str, bytes: &[u8]| {
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{what} holds a secret in clear"
            );
        }
    };
    leaks("the broker log", broker.log().as_bytes());
    leaks("listings", shown.as_bytes());
    let mut files = 0;
    let mut stack = vec![broker.data_dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                leaks(&path.display().to_string(), &std::fs::read(&path).unwrap());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "the data dir was searched ({files} files)");
}

/// A connector acts as its creator too: a sink whose creator loses read on its topic fails
/// with the reason, and writes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_connector_stops_when_its_creator_loses_read_on_its_topic() {
    use sluice_client::{ProducerConfig, ProducerRecord};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let io = dir.path().join("io");
    std::fs::create_dir_all(&io).unwrap();
    let output = io.join("out.log");
    let broker = locked_broker(dir.path(), &["admin", "erin"]);
    let as_user = |name: &str, args: &[&str]| as_user(&broker, &certs, name, args);
    as_user("admin", &["topic", "create", "lines", "--partitions", "1"]);
    as_user(
        "admin",
        &["plugin", "deploy", "write", "--builtin", "file-sink"],
    );
    for (resource, name, op) in [
        ("connector", "out", "all"),
        ("topic", "lines", "read"),
        ("topic", "lines", "write"),
        ("plugin", "write", "read"),
    ] {
        as_user(
            "admin",
            &[
                "acl",
                "add",
                "--principal",
                "erin",
                "--resource",
                resource,
                "--name",
                name,
                "--operation",
                op,
            ],
        );
    }
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "topics = [\"lines\"]\n[settings]\npath = \"{}\"\n[grants]\ndirs = [\"{}:rw\"]\n",
            output.display(),
            io.display()
        ),
    )
    .unwrap();
    let out = as_user(
        "erin",
        &[
            "connector",
            "create",
            "out",
            "--plugin",
            "write",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(out.contains("created sink connector out"), "{out}");
    let admin = Client::connect(client_config(&broker, Some((&certs, "admin"))))
        .await
        .unwrap();
    let producer = admin.producer(ProducerConfig::default());
    let lines = || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for i in 0..3 {
        producer
            .send_and_wait(ProducerRecord::new("lines", format!("a{i}")))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lines() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", broker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sink's calls (writes, flushes) are counted like every plugin call.
    let scraped =
        sluice_tests::scrape::scrape(sluice_tests::scrape::metrics_addr(&dir.path().join("b")))
            .await;
    let calls =
        sluice_tests::scrape::sum(&scraped, "sluice_plugin_calls_total", &[("outcome", "ok")]);
    assert!(calls >= 2.0, "{calls} connector calls counted");
    as_user(
        "admin",
        &[
            "acl",
            "remove",
            "--principal",
            "erin",
            "--resource",
            "topic",
            "--name",
            "lines",
            "--operation",
            "read",
        ],
    );
    for i in 0..3 {
        producer
            .send_and_wait(ProducerRecord::new("lines", format!("b{i}")))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let described = as_user("admin", &["connector", "describe", "out"]);
        if described.contains("no longer authorized") {
            assert!(
                described.contains("erin may not read topic \"lines\""),
                "{described}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{described}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lines(), 3, "nothing written after the right was lost");
}

/// Retries `f` for up to 20 s until it returns `Some`.
async fn within_20s<T, F: std::future::Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Users, tokens and ACLs live in the Raft-replicated metadata: made through one broker of a
/// cluster, they hold on every other, and a token revoked through one stops a connection on
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_acls_made_on_one_broker_hold_on_every_broker() {
    use sluice_client::{ProducerConfig, ProducerRecord, TlsConfig};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let nodes = sluice_tests::start_cluster(
        dir.path(),
        3,
        "client_auth = \"credentials\"\nauthorization = true\nsuper_users = [\"admin\"]\n",
    );
    nodes[0].run_ok(&[
        "auth",
        "issue-cert",
        "admin",
        "--ca-dir",
        dir.path().join("ca").to_str().unwrap(),
        "--out-dir",
        certs.to_str().unwrap(),
    ]);
    let at = |i: usize, identity: Option<&str>, credentials: Option<Credentials>| {
        let mut config = ClientConfig::new(
            nodes[i].addr.to_string(),
            TlsConfig::CaFile(nodes[i].ca_path()),
        );
        config.identity = identity.map(|name| ClientIdentity {
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
        });
        config.credentials = credentials;
        config
    };
    let admin = nodes[0].client_with(at(0, Some("admin"), None)).await;
    for t in ["orders", "secret"] {
        admin
            .admin()
            .create_topic(t, 1, Default::default())
            .await
            .unwrap();
    }
    admin
        .admin()
        .upsert_user("alice", "pw-alice")
        .await
        .unwrap();
    broker_acl(&admin, "alice", "orders").await;

    // Alice, created through node 1, authenticates at node 2 and writes where she may.
    let alice_pw = || Credentials::Password {
        user: "alice".into(),
        password: "pw-alice".into(),
    };
    let alice = within_20s(|| {
        let config = at(1, None, Some(alice_pw()));
        async move { Client::connect(config).await.ok() }
    })
    .await;
    let producer = alice.producer(ProducerConfig::default());
    producer
        .send_and_wait(ProducerRecord::new("orders", "o1"))
        .await
        .unwrap();
    assert!(is_not_authorized(
        producer
            .send_and_wait(ProducerRecord::new("secret", "s1"))
            .await
    ));

    // A token made through node 1 works at node 3; revoked through node 1, it stops the
    // connection at node 3 as soon as node 3 has applied the revocation.
    let token = admin
        .admin()
        .create_token(Some("bob"), "", None)
        .await
        .unwrap();
    let bob = within_20s(|| {
        let config = at(2, None, Some(Credentials::Token(token.token.clone())));
        async move { Client::connect(config).await.ok() }
    })
    .await;
    assert_eq!(bob.who_am_i().await.unwrap().0, "bob");
    admin
        .admin()
        .revoke_token(&token.description.id)
        .await
        .unwrap();
    within_20s(|| {
        let bob = bob.clone();
        async move { is_not_authenticated(&bob.who_am_i().await).then_some(()) }
    })
    .await;
}

/// Allows `principal` to write `topic` (and so describe it).
async fn broker_acl(admin: &Client, principal: &str, topic: &str) {
    use sluice_proto::acl::{AclBinding, Operation, PatternKind, Permission, ResourceType};
    admin
        .admin()
        .create_acls(vec![AclBinding {
            principal: principal.into(),
            resource: ResourceType::Topic,
            pattern: topic.into(),
            kind: PatternKind::Literal,
            operation: Operation::Write,
            permission: Permission::Allow,
        }])
        .await
        .unwrap();
}

/// Fetch-byte and request-rate quotas hold answers back too: reading 1 MB under a 400 kB/s
/// fetch quota takes at least about 2.5 s, and 40 requests under 20 requests/s about 2 s
/// (lower bounds only: a slower machine only takes longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_request_quotas_hold_answers_back() {
    use sluice_client::{ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
    use sluice_proto::auth::Quota;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = Client::connect(client_config(&broker, None)).await.unwrap();
    let admin = client.admin();
    admin
        .create_topic("f", 1, Default::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    for _ in 0..1000 {
        producer
            .send(ProducerRecord::new("f", vec![b'v'; 1000]))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let reader = Client::connect(client_config(&broker, None)).await.unwrap();
    admin
        .set_quota(
            "ANONYMOUS",
            Some(Quota {
                fetch_bytes_per_sec: Some(400_000),
                ..Quota::default()
            }),
        )
        .await
        .unwrap();
    let mut consumer = reader.consumer(ConsumerConfig {
        max_partition_bytes: 64 * 1024,
        ..ConsumerConfig::default()
    });
    consumer.assign("f", &[0]).await.unwrap();
    consumer.seek("f", 0, SeekTo::Earliest).await.unwrap();
    let started = std::time::Instant::now();
    let mut read = 0;
    while read < 1000 {
        read += consumer.poll().await.unwrap().len();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2_300),
        "1 MB read in {took:?} under 400 kB/s"
    );
    assert!(reader.throttled().answers > 0);

    admin
        .set_quota(
            "ANONYMOUS",
            Some(Quota {
                requests_per_sec: Some(20),
                ..Quota::default()
            }),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..40 {
        reader.admin().list_topics().await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_800),
        "40 requests in {took:?} under 20 requests/s"
    );
    // Listed, then removed: answers flow freely again.
    let listed = admin.list_quotas().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].quota.requests_per_sec, Some(20));
    admin.set_quota("ANONYMOUS", None).await.unwrap();
    assert!(admin.list_quotas().await.unwrap().is_empty());
}
