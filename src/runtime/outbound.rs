//! Outbound connections (Workerman's `AsyncTcpConnection`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{spawn_local, AbortHandle};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{Dynamic, Protocol};
use crate::runtime::connection::{
    ConnSettings, Connection, ConnectionError, Handlers, PeerAddr, Sink,
};
use crate::runtime::driver::{drive, DriveOptions};
use crate::runtime::timer::IntoInterval;
use crate::runtime::url::{Endpoint, SocketUrl, Transport};
use crate::runtime::worker::defaults;

/// Messages `send` may queue while the connection is still being established.
const MAX_QUEUED_BEFORE_CONNECT: usize = 1024;

/// TLS towards the server: its name for certificate checks, and the client configuration.
struct ClientTls {
    name: rustls::pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

struct ClientShared<P: Protocol> {
    url: SocketUrl,
    tls: RefCell<Option<ClientTls>>,
    proto: P,
    handlers: RefCell<Handlers<P>>,
    frozen: RefCell<Option<Rc<Handlers<P>>>>,
    current: RefCell<Option<Connection<P>>>,
    queued: RefCell<Vec<P::Output>>,
    connecting: Cell<bool>,
    pending_reconnect: RefCell<Option<AbortHandle>>,
    settings: Cell<(usize, usize)>,
}

/// A connection this process opens to another server, with the same callbacks as a worker's
/// connections, and `reconnect`.
///
/// ```no_run
/// # fn demo() -> oxwork::Result<()> {
/// use oxwork::AsyncConnection;
/// let conn = AsyncConnection::new("text://127.0.0.1:5678")?;
/// conn.on_message(|_c, data| println!("got {data}"));
/// let again = conn.clone();
/// conn.on_close(move |_c| again.reconnect(1));
/// conn.connect();
/// conn.send("hello");
/// # Ok(()) }
/// ```
///
/// Callbacks that hold a clone of the `AsyncConnection` (as the reconnect pattern above does)
/// keep it alive for the life of the process, as in Workerman.
pub struct AsyncConnection<P: Protocol = Dynamic> {
    shared: Rc<ClientShared<P>>,
}

impl<P: Protocol> Clone for AsyncConnection<P> {
    fn clone(&self) -> Self {
        AsyncConnection {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Protocol> fmt::Debug for AsyncConnection<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncConnection")
            .field("url", &self.shared.url.to_string())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl AsyncConnection<Dynamic> {
    /// A connection to `url` (`text://`, `frame://`, `tcp://`, or `PROTOCOL+unix:///path`),
    /// not yet connected: set callbacks, then call [`connect`](Self::connect).
    pub fn new(url: &str) -> Result<AsyncConnection<Dynamic>> {
        let parsed = SocketUrl::parse(url)?;
        let proto = Dynamic::by_name(&parsed.protocol)?;
        AsyncConnection::with_protocol_url(parsed, proto)
    }
}

fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Config, format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl<P: Protocol + Clone> AsyncConnection<P> {
    /// A connection speaking a protocol of your own over `url`'s transport.
    pub fn with_protocol(url: &str, proto: P) -> Result<AsyncConnection<P>> {
        AsyncConnection::with_protocol_url(SocketUrl::parse(url)?, proto)
    }

    /// Trusts only the certificates in this PEM file for a TLS connection (`wss://`, or after
    /// [`tls`](Self::tls)): a private CA, a test certificate.
    pub fn tls_root_pem(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        use rustls::pki_types::pem::PemObject;
        let path = path.as_ref();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", path.display())))?
        {
            let cert = cert
                .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", path.display())))?;
        }
        let mut tls = self.shared.tls.borrow_mut();
        match tls.as_mut() {
            Some(t) => t.config = client_config(roots)?,
            None => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "tls_root_pem is for TLS connections (wss://, or after tls())",
                ))
            }
        }
        Ok(())
    }

    /// The protocol value every connection attempt starts from (its shared settings).
    pub(crate) fn protocol_template(&self) -> &P {
        &self.shared.proto
    }

    /// Speaks TLS to the server (any protocol: `text`, `frame`, your own), checking its
    /// certificate for `server_name` against the usual public roots (`tls_root_pem` replaces
    /// them). `wss://` URLs turn it on by themselves. Call before [`connect`](Self::connect).
    pub fn tls(&self, server_name: &str) -> Result<()> {
        self.tls_with_public_roots(server_name)
    }

    /// Speaks TLS to the server, checking its certificate for `host` against the usual
    /// public roots (`tls_root_pem` replaces them).
    pub(crate) fn tls_with_public_roots(&self, host: &str) -> Result<()> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| Error::new(ErrorKind::InvalidUrl, format!("bad host name {host:?}")))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        *self.shared.tls.borrow_mut() = Some(ClientTls {
            name,
            config: client_config(roots)?,
        });
        Ok(())
    }

    pub(crate) fn with_protocol_url(url: SocketUrl, proto: P) -> Result<AsyncConnection<P>> {
        if url.transport == Transport::Udp {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("{url}: outbound connections are stream connections (tcp or unix)"),
            ));
        }
        Ok(AsyncConnection {
            shared: Rc::new(ClientShared {
                url,
                tls: RefCell::new(None),
                proto,
                handlers: RefCell::new(Handlers::default()),
                frozen: RefCell::new(None),
                current: RefCell::new(None),
                queued: RefCell::new(Vec::new()),
                connecting: Cell::new(false),
                pending_reconnect: RefCell::new(None),
                settings: Cell::new((defaults::MAX_PACKAGE_SIZE, defaults::MAX_SEND_BUFFER_SIZE)),
            }),
        })
    }

    /// Starts connecting. Callbacks set after this call are ignored.
    ///
    /// # Panics
    /// Outside a running worker process (there is no loop to connect on).
    pub fn connect(&self) {
        if self.shared.connecting.get() || self.is_connected() {
            return;
        }
        self.shared.connecting.set(true);
        let handlers = self.frozen_handlers();
        let me = self.clone();
        spawn_local(async move { me.connect_and_drive(handlers).await });
    }

    /// Closes the current connection (if any) and connects again after `delay`.
    pub fn reconnect(&self, delay: impl IntoInterval) {
        let delay: Duration = delay.into_interval();
        if let Some(c) = self.shared.current.borrow().as_ref() {
            c.destroy();
        }
        if let Some(h) = self.shared.pending_reconnect.borrow_mut().take() {
            h.abort();
        }
        let me = self.clone();
        let task = spawn_local(async move {
            tokio::time::sleep(delay).await;
            me.shared.pending_reconnect.borrow_mut().take();
            me.connect();
        });
        *self.shared.pending_reconnect.borrow_mut() = Some(task.abort_handle());
    }

    async fn connect_and_drive(self, handlers: Rc<Handlers<P>>) {
        let shared = &self.shared;
        let (max_package_size, max_send_buffer_size) = shared.settings.get();
        let settings = ConnSettings {
            max_package_size,
            max_send_buffer_size,
        };
        let peer = match &shared.url.endpoint {
            Endpoint::Inet(a) => PeerAddr::Inet(*a),
            Endpoint::Path(p) => PeerAddr::Unix(p.display().to_string()),
        };
        let make = |local| {
            Connection::new(
                shared.proto.clone(),
                peer.clone(),
                local,
                handlers.clone(),
                &settings,
                Sink::Stream,
            )
        };
        let opts = DriveOptions::default();
        let result = match &shared.url.endpoint {
            Endpoint::Inet(addr) => match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let local = s.local_addr().ok();
                    let tls = shared
                        .tls
                        .borrow()
                        .as_ref()
                        .map(|t| (t.name.clone(), t.config.clone()));
                    match tls {
                        None => {
                            let conn = make(local);
                            self.attach(&conn);
                            drive(conn, s, opts).await;
                            Ok(())
                        }
                        Some((name, config)) => {
                            match tokio_rustls::TlsConnector::from(config)
                                .connect(name, s)
                                .await
                            {
                                Ok(stream) => {
                                    let conn = make(local);
                                    self.attach(&conn);
                                    drive(conn, stream, opts).await;
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        }
                    }
                }
                Err(e) => Err(e),
            },
            Endpoint::Path(path) => match tokio::net::UnixStream::connect(path).await {
                Ok(s) => {
                    let conn = make(None);
                    self.attach(&conn);
                    drive(conn, s, opts).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        shared.current.borrow_mut().take();
        if let Err(e) = result {
            shared.connecting.set(false);
            let failed = make(None);
            failed.destroy();
            tracing::warn!("connect to {} failed: {e}", shared.url);
            failed.report(&ConnectionError::ConnectFailed(e.to_string()));
            failed.call("on_close", handlers.on_close.as_ref());
        }
    }

    fn attach(&self, conn: &Connection<P>) {
        *self.shared.current.borrow_mut() = Some(conn.clone());
        self.shared.connecting.set(false);
        let queued = std::mem::take(&mut *self.shared.queued.borrow_mut());
        for msg in queued {
            conn.send(msg);
        }
    }

    fn frozen_handlers(&self) -> Rc<Handlers<P>> {
        let mut frozen = self.shared.frozen.borrow_mut();
        frozen
            .get_or_insert_with(|| Rc::new(std::mem::take(&mut *self.shared.handlers.borrow_mut())))
            .clone()
    }
}

impl<P: Protocol> AsyncConnection<P> {
    /// Sends on the current connection; while connecting, up to 1024 messages are queued and
    /// sent once connected. Returns false when the message was neither sent nor queued.
    pub fn send(&self, msg: impl Into<P::Output>) -> bool {
        if let Some(c) = self.shared.current.borrow().as_ref() {
            return c.send(msg);
        }
        if self.shared.connecting.get() {
            let mut q = self.shared.queued.borrow_mut();
            if q.len() < MAX_QUEUED_BEFORE_CONNECT {
                q.push(msg.into());
                return true;
            }
        }
        crate::runtime::stats::with(|c| crate::runtime::stats::bump(&c.failed_sends));
        false
    }

    /// Closes the current connection after what is queued is written, and cancels a pending
    /// reconnect.
    pub fn close(&self) {
        if let Some(h) = self.shared.pending_reconnect.borrow_mut().take() {
            h.abort();
        }
        if let Some(c) = self.shared.current.borrow().as_ref() {
            c.close();
        }
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.shared
            .current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.is_open())
    }

    /// The current connection, if connected.
    pub fn connection(&self) -> Option<Connection<P>> {
        self.shared.current.borrow().clone()
    }

    /// The largest package accepted from the peer (default 10 MiB); set before `connect`.
    pub fn set_max_package_size(&self, bytes: usize) {
        let (_, s) = self.shared.settings.get();
        self.shared.settings.set((bytes.max(1), s));
    }

    /// The send-buffer bound (default 1 MiB); set before `connect`.
    pub fn set_max_send_buffer_size(&self, bytes: usize) {
        let (p, _) = self.shared.settings.get();
        self.shared.settings.set((p, bytes.max(1)));
    }

    /// Runs once connected.
    pub fn on_connect(&self, f: impl Fn(&Connection<P>) + 'static) {
        self.shared.handlers.borrow_mut().on_connect = Some(Box::new(f));
    }

    /// Runs for each whole message from the peer.
    pub fn on_message(&self, f: impl Fn(&Connection<P>, P::Message) + 'static) {
        self.shared.handlers.borrow_mut().on_message = Some(Box::new(f));
    }

    /// Runs once per attempt when the connection closes, or after a failed connect.
    pub fn on_close(&self, f: impl Fn(&Connection<P>) + 'static) {
        self.shared.handlers.borrow_mut().on_close = Some(Box::new(f));
    }

    /// Runs on errors, including a failed connect ([`ConnectionError::ConnectFailed`]).
    pub fn on_error(&self, f: impl Fn(&Connection<P>, &ConnectionError) + 'static) {
        self.shared.handlers.borrow_mut().on_error = Some(Box::new(f));
    }

    /// Runs when the send buffer fills past its bound.
    pub fn on_buffer_full(&self, f: impl Fn(&Connection<P>) + 'static) {
        self.shared.handlers.borrow_mut().on_buffer_full = Some(Box::new(f));
    }

    /// Runs when a full send buffer has drained.
    pub fn on_buffer_drain(&self, f: impl Fn(&Connection<P>) + 'static) {
        self.shared.handlers.borrow_mut().on_buffer_drain = Some(Box::new(f));
    }
}
