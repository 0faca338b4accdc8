//! The server over real TLS connections: HTTP versions, rejections, health
//! endpoints, graceful shutdown and mutual TLS.

mod support;

use std::sync::Arc;
use std::time::Duration;

use genesis_gate::tls;
use http::{StatusCode, Version};
use support::client::{client_config, get_once, Connection, Protocol};
use support::reviewer::{response_uid, review_request, EchoReviewer, HoldingReviewer};
use support::server::TestServer;
use support::{eventually, metric_value, WAIT_LIMIT};
use tokio::io::AsyncWriteExt;

const JSON: &str = "application/json";
const HANDSHAKE_FAILURES: &str = "genesis_gate_tls_handshake_failures_total";

#[tokio::test]
async fn http1_keep_alive_reuses_one_connection() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let mut connection = server.connect(Protocol::Http1).await;
    assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
    for n in 0..5 {
        let uid = format!("uid-{n}");
        let response = connection
            .post("/validate", JSON, review_request(&uid))
            .await
            .expect("request on the kept-alive connection");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_11);
        assert_eq!(response.headers[http::header::CONTENT_TYPE], JSON);
        assert_eq!(response_uid(&response.body).as_deref(), Some(uid.as_str()));
    }
}

#[tokio::test]
async fn http2_is_negotiated_and_serves_reviews() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let mut connection = server.connect(Protocol::Http2).await;
    assert_eq!(connection.alpn.as_deref(), Some(&b"h2"[..]));
    for (n, path) in ["/validate", "/mutate", "/validate"]
        .into_iter()
        .enumerate()
    {
        let uid = format!("h2-{n}");
        let response = connection
            .post(path, JSON, review_request(&uid))
            .await
            .expect("request over HTTP/2");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_2);
        assert_eq!(response_uid(&response.body).as_deref(), Some(uid.as_str()));
    }
}

#[tokio::test]
async fn tls_versions_1_2_and_1_3_served() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let versions = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (supported, expected) in versions {
        let base = server.client_config(Protocol::Http1);
        let mut config = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
            .with_protocol_versions(&[supported])
            .expect("protocol version")
            .with_root_certificates(tls::load_root_store(&server.ca_file()).expect("roots"))
            .with_no_client_auth();
        config.alpn_protocols = base.alpn_protocols.clone();
        let mut connection = Connection::open(server.addr, Arc::new(config), Protocol::Http1)
            .await
            .expect("handshake");
        assert_eq!(connection.tls_version, Some(expected));
        let response = connection.get("/healthz").await.expect("healthz");
        assert_eq!(response.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn client_trusting_another_ca_rejects_the_server() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let other = tempfile::tempdir().expect("temporary folder");
    tls::ensure_dev_certificates(other.path()).expect("other CA");
    let config = client_config(&other.path().join(tls::CA_CERT_FILE), Protocol::Http1, None);
    let result = Connection::open(server.addr, config, Protocol::Http1).await;
    assert!(
        result.is_err(),
        "handshake succeeded against an untrusted CA"
    );
}

#[tokio::test]
async fn oversized_body_is_rejected_with_413() {
    let server = TestServer::start_with(Arc::new(EchoReviewer::ready()), |options, _| {
        options.body_limit = 1024;
    })
    .await;
    let mut connection = server.connect(Protocol::Http1).await;
    let response = connection
        .post("/validate", JSON, vec![b' '; 2048])
        .await
        .expect("response to an oversized body");
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.text().contains("1024"), "{}", response.text());
}

#[tokio::test]
async fn text_plain_is_rejected_with_415() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let mut connection = server.connect(Protocol::Http2).await;
    let response = connection
        .post("/validate", "text/plain", review_request("u"))
        .await
        .expect("response");
    assert_eq!(response.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        response.text().contains("text/plain"),
        "{}",
        response.text()
    );
    assert!(response.text().contains(JSON), "{}", response.text());
}

#[tokio::test]
async fn request_error_becomes_its_status_and_message() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let mut connection = server.connect(Protocol::Http1).await;
    let response = connection
        .post("/mutate", JSON, r#"{"kind":"AdmissionReview"}"#)
        .await
        .expect("response");
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(response.text(), "request.uid is missing");
    // The connection stays usable after a rejected body.
    let response = connection
        .post("/mutate", JSON, review_request("after-error"))
        .await
        .expect("request after the rejection");
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_503_with_reason_until_ready() {
    let reviewer = Arc::new(EchoReviewer::default());
    let server = TestServer::start(reviewer.clone()).await;
    let mut connection = server.connect(Protocol::Http1).await;
    let response = connection.get("/readyz").await.expect("readyz");
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.text(), "lookup caches have not synced");
    let health = connection.get("/healthz").await.expect("healthz");
    assert_eq!(health.status, StatusCode::OK);

    reviewer.set_ready(true);
    let response = connection.get("/readyz").await.expect("readyz");
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn failed_handshake_is_counted_and_accepting_continues() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let mut plain = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write plaintext");
    let metrics = server.metrics.clone();
    let counted = eventually(|| {
        let text = metrics.encode();
        async move { metric_value(&text, HANDSHAKE_FAILURES) >= 1.0 }
    })
    .await;
    assert!(
        counted,
        "plaintext request was not counted as a failed handshake"
    );

    let response = get_once(
        server.addr,
        server.client_config(Protocol::Http1),
        "/healthz",
    )
    .await
    .expect("TLS request after the failed handshake");
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_endpoint_exports_certificate_expiry() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let mut connection = server.connect(Protocol::Http1).await;
    let response = connection.get("/metrics").await.expect("metrics");
    assert_eq!(response.status, StatusCode::OK);
    let expiry = metric_value(
        &response.text(),
        "genesis_gate_certificate_expiry_timestamp_seconds",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is not in the future");
}

#[tokio::test]
async fn shutdown_completes_in_flight_request() {
    let reviewer = Arc::new(HoldingReviewer::new());
    let mut server = TestServer::start_with(reviewer.clone(), |options, _| {
        options.request_timeout = Duration::from_secs(60);
        options.drain_timeout = Duration::from_secs(60);
    })
    .await;
    let mut idle_http1 = server.connect(Protocol::Http1).await;
    let mut idle_http2 = server.connect(Protocol::Http2).await;
    for idle in [&mut idle_http1, &mut idle_http2] {
        let response = idle.get("/healthz").await.expect("healthz before shutdown");
        assert_eq!(response.status, StatusCode::OK);
    }
    let mut busy = server.connect(Protocol::Http1).await;
    let in_flight = tokio::spawn(async move {
        busy.post("/validate", JSON, review_request("in-flight"))
            .await
    });
    tokio::time::timeout(WAIT_LIMIT, reviewer.started())
        .await
        .expect("review started");

    server.begin_shutdown();
    assert!(
        idle_http1.closed_within(WAIT_LIMIT).await,
        "idle HTTP/1.1 connection stayed open after shutdown"
    );
    assert!(
        idle_http2.closed_within(WAIT_LIMIT).await,
        "idle HTTP/2 connection stayed open after shutdown"
    );
    // The listener closes before connections are signalled to stop, so once the
    // idle ones are closed, a new connection finds no listener.
    let refused = tokio::net::TcpStream::connect(server.addr).await;
    assert!(refused.is_err(), "new connection accepted after shutdown");
    assert!(
        !in_flight.is_finished(),
        "in-flight request ended before its review was released"
    );

    reviewer.release_one();
    let response = tokio::time::timeout(WAIT_LIMIT, in_flight)
        .await
        .expect("in-flight request finishes")
        .expect("request task")
        .expect("in-flight request succeeds");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response_uid(&response.body).as_deref(), Some("in-flight"));
    assert!(
        server.stopped_within(WAIT_LIMIT).await,
        "server did not stop"
    );
}

#[tokio::test]
async fn drain_timeout_closes_a_stuck_request() {
    let reviewer = Arc::new(HoldingReviewer::new());
    let mut server = TestServer::start_with(reviewer.clone(), |options, _| {
        options.request_timeout = Duration::from_secs(60);
        options.drain_timeout = Duration::from_millis(200);
    })
    .await;
    let mut busy = server.connect(Protocol::Http1).await;
    let in_flight =
        tokio::spawn(async move { busy.post("/validate", JSON, review_request("stuck")).await });
    tokio::time::timeout(WAIT_LIMIT, reviewer.started())
        .await
        .expect("review started");

    server.begin_shutdown();
    assert!(
        server.stopped_within(WAIT_LIMIT).await,
        "server did not stop"
    );
    let result = tokio::time::timeout(WAIT_LIMIT, in_flight)
        .await
        .expect("request task ends")
        .expect("request task");
    assert!(result.is_err(), "stuck request got a response: {result:?}");
}

#[tokio::test]
async fn client_ca_rejects_clients_without_its_certificate() {
    let server = TestServer::start_with(Arc::new(EchoReviewer::ready()), |options, dir| {
        options.client_ca = Some(dir.join(tls::CA_CERT_FILE));
    })
    .await;

    let anonymous = client_config(&server.ca_file(), Protocol::Http1, None);
    let result = get_once(server.addr, anonymous, "/healthz").await;
    assert!(result.is_err(), "client without a certificate was served");

    let other_ca = tls::generate_ca().expect("other CA");
    let stranger = tls::generate_client(&other_ca, "stranger").expect("client certificate");
    let config = client_config(&server.ca_file(), Protocol::Http1, Some(&stranger));
    let result = get_once(server.addr, config, "/healthz").await;
    assert!(
        result.is_err(),
        "client with a foreign certificate was served"
    );

    let metrics = server.metrics.clone();
    let counted = eventually(|| {
        let text = metrics.encode();
        async move { metric_value(&text, HANDSHAKE_FAILURES) >= 2.0 }
    })
    .await;
    assert!(counted, "rejected client handshakes were not counted");
}

#[tokio::test]
async fn client_ca_serves_clients_with_its_certificate() {
    let server = TestServer::start_with(Arc::new(EchoReviewer::ready()), |options, dir| {
        options.client_ca = Some(dir.join(tls::CA_CERT_FILE));
    })
    .await;
    let identity = tls::generate_client(&server.ca(), "kube-apiserver").expect("client cert");
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let config = client_config(&server.ca_file(), protocol, Some(&identity));
        let mut connection = Connection::open(server.addr, config, protocol)
            .await
            .expect("mutual TLS handshake");
        let response = connection
            .post("/validate", JSON, review_request("mtls"))
            .await
            .expect("request with a client certificate");
        assert_eq!(response.status, StatusCode::OK);
    }
}
