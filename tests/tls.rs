//! TLS: https and wss with a certificate made in the test, and clear errors at start.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::*;

struct Certs {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: Vec<u8>,
}

fn certs() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let dir = tempfile::tempdir().expect("tmp");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write");
    Certs {
        der: ck.cert.der().to_vec(),
        _dir: dir,
        cert,
        key,
    }
}

#[test]
fn https_serves_with_a_certificate_made_in_the_test() {
    let c = certs();
    let port = free_port();
    let _s = Server::start(
        "http_hello",
        &[
            ("HTTP_LISTEN", format!("https://127.0.0.1:{port}")),
            ("HTTP_TLS_CERT", c.cert.display().to_string()),
            ("HTTP_TLS_KEY", c.key.display().to_string()),
        ],
        2,
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &c.cert.display().to_string(),
        ])
        .arg(format!("https://localhost:{port}/"))
        .args([
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            "-w",
            " %{http_version}",
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "Hello World 1.1",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP on the TLS port is refused, and the server carries on.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = plain.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    assert!(!String::from_utf8_lossy(&sink).contains("Hello World"));
}

/// A TLS client connection to `127.0.0.1:port` that trusts the certificate `der` as
/// `localhost`.
async fn tls_client(
    der: Vec<u8>,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("tls handshake")
}

#[test]
fn wss_carries_websocket_messages() {
    let c = certs();
    let port = free_port();
    let _s = Server::start(
        "ws_chat",
        &[
            ("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}")),
            ("WS_CHAT_TLS_CERT", c.cert.display().to_string()),
            ("WS_CHAT_TLS_KEY", c.key.display().to_string()),
        ],
        5,
    );
    let der = c.der.clone();
    local_runtime().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls_client(der, port).await;
        tls.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.expect("handshake");
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).await.expect("reply");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 6];
        frame.extend_from_slice(&mask);
        frame.extend(b"secret".iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        tls.write_all(&frame).await.expect("frame");
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("in time").expect("read");
        let text = String::from_utf8_lossy(&buf[2..n]).into_owned();
        assert!(text.ends_with(": secret"), "{text}");
    });
}

#[test]
fn with_hand_off_on_a_wss_connection_cannot_move_and_hears_1012_on_reload() {
    let c = certs();
    let (s, _text_port, ws_port) = handoff_lab(&[
        ("HANDOFF_TLS_CERT", c.cert.display().to_string()),
        ("HANDOFF_TLS_KEY", c.key.display().to_string()),
    ]);
    let der = c.der.clone();
    let reload = s.command(&["reload"]);
    local_runtime().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls_client(der, ws_port).await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.expect("handshake");
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).await.expect("reply");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        let mut reload = tokio::process::Command::from(reload);
        let out = reload.output().await.expect("reload");
        assert!(out.status.success());
        // Pushes may come first; the connection must end with a close frame 1012, never
        // be moved (its TLS state cannot) nor cut without a close frame.
        let mut got = Vec::new();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                .await
                .expect("in time")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let mut at = 0;
        let mut close = None;
        while at + 2 <= got.len() {
            let (op, len) = (got[at] & 0x0f, (got[at + 1] & 0x7f) as usize);
            if op == 0x8 && len >= 2 {
                close = Some(u16::from_be_bytes([got[at + 2], got[at + 3]]));
            }
            at += 2 + len;
        }
        assert_eq!(close, Some(1012), "{got:?}");
    });
}

#[test]
fn a_missing_key_file_is_one_clear_error_at_start() {
    let c = certs();
    let run = private_tempdir();
    let out = Command::new(example_bin("http_hello"))
        .arg("start")
        .env("OXWORK_RUN_DIR", run.path())
        .env("HTTP_LISTEN", format!("https://127.0.0.1:{}", free_port()))
        .env("HTTP_TLS_CERT", &c.cert)
        .env("HTTP_TLS_KEY", "/nonexistent/key.pem")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot load the TLS key /nonexistent/key.pem"),
        "{err}"
    );
}

#[test]
fn https_without_a_certificate_is_refused_at_start() {
    let run = private_tempdir();
    let out = Command::new(example_bin("http_hello"))
        .arg("start")
        .env("OXWORK_RUN_DIR", run.path())
        .env("HTTP_LISTEN", format!("https://127.0.0.1:{}", free_port()))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a certificate"));
}

#[test]
fn an_outbound_wss_connection_checks_the_certificate_and_relays() {
    let c = certs();
    let chat_port = free_port();
    let _chat = Server::start(
        "ws_chat",
        &[
            (
                "WS_CHAT_LISTEN",
                format!("websocket://127.0.0.1:{chat_port}"),
            ),
            ("WS_CHAT_TLS_CERT", c.cert.display().to_string()),
            ("WS_CHAT_TLS_KEY", c.key.display().to_string()),
        ],
        5,
    );
    let port = free_port();
    let bridge = Server::start(
        "ws_bridge",
        &[
            ("WS_BRIDGE_LISTEN", format!("text://127.0.0.1:{port}")),
            (
                "WS_BRIDGE_UPSTREAM",
                format!("wss://localhost:{chat_port}/ws"),
            ),
            ("WS_BRIDGE_ROOT", c.cert.display().to_string()),
        ],
        1,
    );
    let mut client = LineClient::connect(port).expect("connect");
    assert!(
        eventually(SETTLE, || client
            .ask("encrypted hello")
            .map(|r| r.ends_with(": encrypted hello"))
            .unwrap_or(false)),
        "bridge stderr:\n{}",
        bridge.stderr()
    );
}

#[test]
fn an_outbound_text_connection_speaks_tls_and_checks_the_certificate() {
    let c = certs();
    let echo_port = free_port();
    let _echo = Server::start(
        "echo",
        &[
            ("ECHO_LISTEN", format!("text://127.0.0.1:{echo_port}")),
            ("ECHO_COUNT", "1".to_string()),
            ("ECHO_TLS_CERT", c.cert.display().to_string()),
            ("ECHO_TLS_KEY", c.key.display().to_string()),
        ],
        1,
    );
    let relay = |root: &std::path::Path| {
        let port = free_port();
        let s = Server::start(
            "relay",
            &[
                ("RELAY_LISTEN", format!("text://127.0.0.1:{port}")),
                ("RELAY_UPSTREAM", format!("text://127.0.0.1:{echo_port}")),
                ("RELAY_TLS_NAME", "localhost".to_string()),
                ("RELAY_TLS_ROOT", root.display().to_string()),
            ],
            2,
        );
        (s, port)
    };
    let (r, port) = relay(&c.cert);
    let mut client = LineClient::connect(port).expect("connect");
    assert!(
        eventually(SETTLE, || client
            .ask("over tls")
            .is_ok_and(|answer| answer == "over tls")),
        "relay stderr:\n{}",
        r.stderr()
    );
    // Another certificate as the only root: the upstream is not believed, nothing is relayed.
    let other = certs();
    let (r2, port2) = relay(&other.cert);
    let mut client = LineClient::connect(port2).expect("connect");
    std::thread::sleep(Duration::from_millis(500));
    let answer = client.ask("over tls").unwrap_or_default();
    assert_ne!(answer, "over tls", "relay stderr:\n{}", r2.stderr());
}
