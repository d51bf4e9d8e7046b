//! TLS for the gRPC provider: the server certificate, its key and the client CA are read from
//! files and re-read when the files change, so a renewed certificate (cert-manager renews every
//! 90 days by default) is served without a restart and without dropping the server.
//!
//! Each accepted connection is handshaken with the configuration current at that moment; a
//! reload swaps the configuration for the next connections (connections already open keep the
//! certificate they negotiated). A reload that fails (a half-written file, a key that does not
//! match the certificate) keeps the previous configuration and logs a warning naming the file;
//! the next good set of files is picked up.
//!
//! Also here: the start-up warnings about who can reach the port ([`exposure_warnings`]).
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the files are compared with what is served.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// A client that has not finished its TLS handshake by then is dropped, so slow or silent
/// clients cannot hold connections open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ALPN `h2`: the Cluster Autoscaler's grpc-go refuses a TLS server that does not offer it.
const ALPN_H2: &[u8] = b"h2";

/// The server's TLS files; with `client_ca`, clients must present a certificate it signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl TlsOptions {
    pub fn new(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> TlsOptions {
        TlsOptions {
            cert,
            key,
            client_ca,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }

    /// Reads the files and builds the server configuration once: what start-up does to fail
    /// early on a wrong file.
    pub fn check(&self) -> Result<(), TlsFileError> {
        build_config(&read_files(self)?).map(|_| ())
    }

    fn path(&self, file: TlsFile) -> Option<&Path> {
        match file {
            TlsFile::Cert => Some(&self.cert),
            TlsFile::Key => Some(&self.key),
            TlsFile::ClientCa => self.client_ca.as_deref(),
        }
    }
}

/// One of the TLS files, named by the flag that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    ClientCa,
}

impl TlsFile {
    pub fn flag(self) -> &'static str {
        match self {
            TlsFile::Cert => "--tls-cert",
            TlsFile::Key => "--tls-key",
            TlsFile::ClientCa => "--client-ca",
        }
    }
}

/// A TLS file that cannot be used, with the flag and the path that name it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} {}: {message}", .file.flag(), .path.display())]
pub struct TlsFileError {
    pub file: TlsFile,
    pub path: PathBuf,
    pub message: String,
}

/// The bytes of the files, compared between polls.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Files {
    cert: (PathBuf, Vec<u8>),
    key: (PathBuf, Vec<u8>),
    client_ca: Option<(PathBuf, Vec<u8>)>,
}

fn read_files(options: &TlsOptions) -> Result<Files, TlsFileError> {
    let read = |file: TlsFile, path: &Path| {
        std::fs::read(path)
            .map(|bytes| (path.to_owned(), bytes))
            .map_err(|e| TlsFileError {
                file,
                path: path.to_owned(),
                message: format!("cannot read: {e}"),
            })
    };
    Ok(Files {
        cert: read(TlsFile::Cert, &options.cert)?,
        key: read(TlsFile::Key, &options.key)?,
        client_ca: match options.path(TlsFile::ClientCa) {
            Some(p) => Some(read(TlsFile::ClientCa, p)?),
            None => None,
        },
    })
}

fn certificates(
    file: TlsFile,
    (path, pem): &(PathBuf, Vec<u8>),
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let error = |message: String| TlsFileError {
        file,
        path: path.clone(),
        message,
    };
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            "no `BEGIN CERTIFICATE` block found; pass a PEM certificate file".to_owned(),
        ));
    }
    Ok(certs)
}

fn build_config(files: &Files) -> Result<Arc<ServerConfig>, TlsFileError> {
    let key_error = |message: String| TlsFileError {
        file: TlsFile::Key,
        path: files.key.0.clone(),
        message,
    };
    let certs = certificates(TlsFile::Cert, &files.cert)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut files.key.1.as_slice())
        .map_err(|e| key_error(format!("not valid PEM: {e}")))?
        .ok_or_else(|| key_error("no PEM private key found (PKCS#8, PKCS#1 or SEC1)".to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError {
            file: TlsFile::Cert,
            path: files.cert.0.clone(),
            message: format!("no TLS protocol version available: {e}"),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_error = |message: String| TlsFileError {
                file: TlsFile::ClientCa,
                path: ca.0.clone(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(TlsFile::ClientCa, ca)? {
                roots
                    .add(c)
                    .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
            }
            // Client certificates are required: no `allow_unauthenticated`.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_error(format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Also checks that the key belongs to the certificate.
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        key_error(format!(
            "cannot be used with --tls-cert {}: {e}",
            files.cert.0.display()
        ))
    })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// What one check of the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are what was last loaded (or last refused).
    Unchanged,
    /// New files, now served.
    Reloaded,
    /// New files that cannot be used; the previous configuration is still served.
    Failed(TlsFileError),
}

/// The server configuration built from the files, swapped when they change.
pub struct ReloadingTls {
    options: TlsOptions,
    current: RwLock<Arc<ServerConfig>>,
    /// The files last tried, loaded or refused: a refused set is not retried (nor warned about
    /// again) until it changes.
    seen: Mutex<Files>,
}

impl ReloadingTls {
    /// Loads the files; fails if they cannot be served.
    pub fn load(options: TlsOptions) -> Result<ReloadingTls, TlsFileError> {
        let files = read_files(&options)?;
        let config = build_config(&files)?;
        Ok(ReloadingTls {
            options,
            current: RwLock::new(config),
            seen: Mutex::new(files),
        })
    }

    pub fn options(&self) -> &TlsOptions {
        &self.options
    }

    /// The configuration new connections are handshaken with.
    pub fn config(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a complete configuration (it is only ever replaced whole).
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files; when they differ from the last ones tried, builds and swaps in a new
    /// configuration, or keeps the current one if they cannot be used.
    pub fn reload_if_changed(&self) -> Reload {
        let files = match read_files(&self.options) {
            Ok(f) => f,
            Err(e) => return Reload::Failed(e),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == files {
            return Reload::Unchanged;
        }
        let built = build_config(&files);
        *seen = files;
        match built {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// Checks the files every `reload_interval` for ever, logging each reload and each new
    /// failure.
    ///
    /// Polling rather than file-change notifications: a Kubernetes Secret volume updates by
    /// swapping its `..data` symlink to a new directory, so a watch on the file itself (its old
    /// inode) never fires; comparing the contents sees every update, whatever the mechanism.
    async fn watch(self: Arc<Self>) {
        let mut last_failure: Option<TlsFileError> = None;
        loop {
            tokio::time::sleep(self.options.reload_interval).await;
            let this = self.clone();
            let Ok(result) = tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            else {
                continue;
            };
            match result {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    last_failure = None;
                    tracing::info!(
                        cert = %self.options.cert.display(),
                        key = %self.options.key.display(),
                        client_ca = ?self.options.client_ca,
                        "gRPC TLS files changed; new connections use them"
                    );
                }
                Reload::Failed(e) => {
                    if last_failure.as_ref() != Some(&e) {
                        tracing::warn!(
                            error = %e,
                            "cannot reload the gRPC TLS files; still serving the previous certificate"
                        );
                    }
                    last_failure = Some(e);
                }
            }
        }
    }
}

/// Aborts a task when dropped, so the tasks behind [`TlsIncoming`] end with the server.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// TLS connections, handshaken in their own tasks (a slow client never delays the others) with
/// the configuration current when each arrived; the files are polled while it lives.
pub struct TlsIncoming {
    accepted: mpsc::Receiver<TlsStream<TcpStream>>,
    _accept: AbortOnDrop,
    _watch: AbortOnDrop,
}

impl TlsIncoming {
    pub fn new<I>(tcp: I, tls: Arc<ReloadingTls>) -> TlsIncoming
    where
        I: Stream<Item = Result<TcpStream, io::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let watch = tokio::spawn(tls.clone().watch());
        let accept = tokio::spawn(async move {
            let mut tcp = std::pin::pin!(tcp);
            while let Some(conn) = tcp.next().await {
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "gRPC accept failed");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let peer = stream.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            // The server has stopped if nobody receives.
                            let _ = tx.send(s).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(?peer, error = %e, "gRPC TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(?peer, "gRPC TLS handshake timed out"),
                    }
                });
            }
        });
        TlsIncoming {
            accepted: rx,
            _accept: AbortOnDrop(accept),
            _watch: AbortOnDrop(watch),
        }
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted.poll_recv(cx).map(|s| s.map(Ok))
    }
}

/// A start-up warning about who can call the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExposureWarning {
    /// Plaintext on an address other pods or hosts can reach.
    Plaintext { listen: SocketAddr },
    /// TLS without `--client-ca`: the server proves who it is, clients do not.
    ClientsNotAuthenticated { listen: SocketAddr },
}

impl fmt::Display for ExposureWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExposureWarning::Plaintext { listen } => write!(
                f,
                "gRPC on {listen} is plaintext without client authentication: anyone who can \
                 reach this port can scale the cluster (power machines on and off). Enable mTLS \
                 with --tls-cert, --tls-key and --client-ca (Helm chart: tls.mode), or listen on \
                 127.0.0.1"
            ),
            ExposureWarning::ClientsNotAuthenticated { listen } => write!(
                f,
                "gRPC on {listen} uses TLS without --client-ca: clients are not authenticated, \
                 so anyone who can reach this port can scale the cluster. Add --client-ca (the \
                 CA that signs the Cluster Autoscaler's client certificate) to require mTLS"
            ),
        }
    }
}

/// The warnings for serving on `listen` with `tls`: plaintext on an address other than
/// loopback (the wildcard address included), and TLS that does not authenticate clients.
pub fn exposure_warnings(listen: SocketAddr, tls: Option<&TlsOptions>) -> Vec<ExposureWarning> {
    match tls {
        None if listen.ip().is_loopback() => Vec::new(),
        None => vec![ExposureWarning::Plaintext { listen }],
        Some(t) if t.client_ca.is_none() => {
            vec![ExposureWarning::ClientsNotAuthenticated { listen }]
        }
        Some(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn tls(client_ca: bool) -> TlsOptions {
        TlsOptions::new(
            "/s/tls.crt".into(),
            "/s/tls.key".into(),
            client_ca.then(|| "/s/ca.crt".into()),
        )
    }

    #[test]
    fn plaintext_warns_on_every_address_but_loopback() {
        for a in ["0.0.0.0:8086", "[::]:8086", "10.1.2.3:8086"] {
            let w = exposure_warnings(addr(a), None);
            assert_eq!(w, vec![ExposureWarning::Plaintext { listen: addr(a) }]);
            let text = w[0].to_string();
            assert!(text.contains("anyone who can reach"), "{text}");
            assert!(
                text.contains("--client-ca") && text.contains("tls.mode"),
                "{text}"
            );
        }
        for a in ["127.0.0.1:8086", "[::1]:8086"] {
            assert_eq!(exposure_warnings(addr(a), None), vec![]);
        }
    }

    #[test]
    fn tls_without_client_ca_warns_that_clients_are_not_authenticated() {
        for a in ["0.0.0.0:8086", "127.0.0.1:8086"] {
            let w = exposure_warnings(addr(a), Some(&tls(false)));
            assert_eq!(
                w,
                vec![ExposureWarning::ClientsNotAuthenticated { listen: addr(a) }]
            );
            assert!(w[0].to_string().contains("not authenticated"), "{}", w[0]);
        }
    }

    #[test]
    fn mtls_gives_no_warning() {
        for a in ["0.0.0.0:8086", "127.0.0.1:8086"] {
            assert_eq!(exposure_warnings(addr(a), Some(&tls(true))), vec![]);
        }
    }

    fn self_signed() -> (String, String) {
        match rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]) {
            Ok(c) => (c.cert.pem(), c.signing_key.serialize_pem()),
            Err(e) => panic!("{e}"),
        }
    }

    fn write(path: &Path, content: &str) {
        if let Err(e) = std::fs::write(path, content) {
            panic!("{}: {e}", path.display());
        }
    }

    /// A refused set of files is reported once, not retried until it changes; a good set that
    /// follows is loaded; a file that cannot be read is reported with its flag.
    #[test]
    fn reload_reports_each_new_set_of_files_once() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = self_signed();
        let (c2, k2) = self_signed();
        write(&cert, &c1);
        write(&key, &k1);
        let tls = match ReloadingTls::load(TlsOptions::new(cert.clone(), key.clone(), None)) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let first = tls.config();
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);

        write(&cert, &c2);
        match tls.reload_if_changed() {
            Reload::Failed(e) => {
                assert_eq!(e.file, TlsFile::Key, "{e}");
                assert!(e.to_string().contains("--tls-cert"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.config()));

        write(&key, &k2);
        assert_eq!(tls.reload_if_changed(), Reload::Reloaded);
        assert!(!Arc::ptr_eq(&first, &tls.config()));

        if let Err(e) = std::fs::remove_file(&key) {
            panic!("{e}");
        }
        match tls.reload_if_changed() {
            Reload::Failed(e) => assert!(e.to_string().starts_with("--tls-key "), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_errors_name_the_flag_and_path() {
        let e = TlsFileError {
            file: TlsFile::ClientCa,
            path: "/s/ca.crt".into(),
            message: "cannot read: gone".to_owned(),
        };
        assert_eq!(e.to_string(), "--client-ca /s/ca.crt: cannot read: gone");
    }
}
