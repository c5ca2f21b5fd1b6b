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
