//! The gRPC provider's TLS served from files over a real socket: a renewed server certificate
//! and a new client CA are picked up without a restart (written the way a Kubernetes Secret
//! volume updates, by swapping its `..data` symlink), and files that cannot be used keep the
//! previous certificate serving until good ones arrive.
#[allow(dead_code)]
#[path = "support/pki.rs"]
mod pki;
mod support_grpc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubectl_homelab::operator::provider::proto::NodeGroupsRequest;
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use kubectl_homelab::operator::provider::{InMemorySource, Inventory, TlsOptions};
use pki::{Ca, CertPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support_grpc::{Running, big, start};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How often the server checks its files in these tests (the default is seconds).
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Bound on waiting for a reload; generous for a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

/// A directory laid out like a Kubernetes Secret volume: `tls.crt`, `tls.key`, `ca.crt` are
/// symlinks into `..data`, itself a symlink to a versioned directory; an update writes a new
/// versioned directory and renames a new `..data` symlink over the old one (the kubelet's
/// atomic writer), so the files named by the flags never change inode.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(files: &[(&str, &str)]) -> SecretVolume {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut v = SecretVolume { dir, version: 0 };
        v.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), v.path(name))
                .unwrap_or_else(|e| panic!("symlink {name}: {e}"));
        }
        v
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let versioned = self.dir.path().join(&version);
        std::fs::create_dir(&versioned).unwrap_or_else(|e| panic!("mkdir: {e}"));
        for (name, content) in files {
            std::fs::write(versioned.join(name), content)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        let tmp = self.path("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap_or_else(|e| panic!("symlink: {e}"));
        std::fs::rename(&tmp, self.path("..data")).unwrap_or_else(|e| panic!("rename: {e}"));
    }
}

fn tls_options(v: &SecretVolume, client_ca: bool) -> TlsOptions {
    let mut o = TlsOptions::new(
        v.path("tls.crt"),
        v.path("tls.key"),
        client_ca.then(|| v.path("ca.crt")),
    );
    o.reload_interval = RELOAD_INTERVAL;
    o
}

async fn serve(tls: TlsOptions) -> Running {
    let (gs, ms, ns) = big(1, 2, 1);
    start(
        Arc::new(InMemorySource::new(Inventory::build(gs, ms, ns))),
        Some(tls),
    )
    .await
}

fn der_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("PEM: {e}"))
}

/// The DER of the leaf certificate the server presents to a client that trusts `trusted_ca`
/// (and presents `client`), after checking it negotiated ALPN `h2`; an error if the handshake
/// fails (e.g. the server's certificate is not signed by `trusted_ca`).
async fn served_certificate(
    addr: SocketAddr,
    trusted_ca: &str,
    client: Option<&CertPair>,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in der_certs(trusted_ca) {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => {
            let key = rustls_pemfile::private_key(&mut c.key_pem.as_bytes())
                .map_err(|e| e.to_string())?
                .ok_or("no key")?;
            builder
                .with_client_auth_cert(der_certs(&c.cert_pem), key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(b"h2") {
        return Err(format!("ALPN {:?}, not h2", conn.alpn_protocol()));
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no server certificate".to_owned())
}

/// A gRPC call over a new connection, trusting `trusted_ca` and presenting `client`.
async fn call(addr: SocketAddr, trusted_ca: &str, client: &CertPair) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted_ca))
        .identity(Identity::from_pem(&client.cert_pem, &client.key_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    CloudProviderClient::new(channel)
        .node_groups(NodeGroupsRequest {})
        .await
        .map(|_| ())
        .map_err(|e| format!("NodeGroups: {e}"))
}

fn der(pair: &CertPair) -> Vec<u8> {
    der_certs(&pair.cert_pem)
        .first()
        .map(|c| c.to_vec())
        .unwrap_or_else(|| panic!("no certificate"))
}

/// Polls `check` every 50 ms until it returns `Ok`, panicking with the last error after
/// [`SETTLE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {SETTLE:?} waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn generate() -> (Ca, CertPair, CertPair) {
    let ca = Ca::generate().unwrap_or_else(|e| panic!("{e:#}"));
    let server = ca.serving().unwrap_or_else(|e| panic!("{e:#}"));
    let client = ca
        .client("cluster-autoscaler", &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    (ca, server, client)
}

#[tokio::test]
async fn a_renewed_certificate_and_a_new_client_ca_are_served_without_restart() {
    let (ca1, server1, client1) = generate();
    let mut volume = SecretVolume::new(&[
        ("tls.crt", &server1.cert_pem),
        ("tls.key", &server1.key_pem),
        ("ca.crt", &ca1.cert_pem),
    ]);
    let running = serve(tls_options(&volume, true)).await;
    let addr = running.addr;

    assert_eq!(
        served_certificate(addr, &ca1.cert_pem, Some(&client1)).await,
        Ok(der(&server1))
    );
    call(addr, &ca1.cert_pem, &client1)
        .await
        .unwrap_or_else(|e| panic!("the first client is refused: {e}"));

    // Everything rotates: a new CA signs the new server certificate and the new client's.
    let (ca2, server2, client2) = generate();
    volume.update(&[
        ("tls.crt", &server2.cert_pem),
        ("tls.key", &server2.key_pem),
        ("ca.crt", &ca2.cert_pem),
    ]);
    let expected = der(&server2);
    eventually("the new server certificate", || async {
        match served_certificate(addr, &ca2.cert_pem, Some(&client2)).await {
            Ok(d) if d == expected => Ok(()),
            Ok(_) => Err("another certificate is served".to_owned()),
            Err(e) => Err(e),
        }
    })
    .await;
    call(addr, &ca2.cert_pem, &client2)
        .await
        .unwrap_or_else(|e| panic!("a client of the new CA is refused: {e}"));
    // A client certificate of the old CA is no longer accepted, even by a client that trusts
    // the new server certificate.
    let r = call(addr, &ca2.cert_pem, &client1).await;
    assert!(r.is_err(), "a client of the old CA was served");
    let _ = running.stop().await;
}

#[tokio::test]
async fn files_that_cannot_be_used_keep_the_previous_certificate_until_good_ones_arrive() {
    let (ca, server1, client) = generate();
    let server2 = ca.serving().unwrap_or_else(|e| panic!("{e:#}"));
    // Plain files rewritten in place (not a Secret volume): a writer can be caught half-way.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = |name: &str| dir.path().join(name);
    let write = |name: &str, content: &str| {
        std::fs::write(path(name), content).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    write("tls.crt", &server1.cert_pem);
    write("tls.key", &server1.key_pem);
    write("ca.crt", &ca.cert_pem);
    let mut tls = TlsOptions::new(path("tls.crt"), path("tls.key"), Some(path("ca.crt")));
    tls.reload_interval = RELOAD_INTERVAL;
    let running = serve(tls).await;
    let addr = running.addr;
    let old = der(&server1);
    assert_eq!(
        served_certificate(addr, &ca.cert_pem, Some(&client)).await,
        Ok(old.clone())
    );

    // A certificate cut off half-way, then a whole new certificate with the old key (the key
    // not written yet). After each, the server gets many polls to (wrongly) switch; it must go
    // on serving the old certificate and answering calls.
    let half = &server2.cert_pem[..server2.cert_pem.len() / 2];
    for cert in [half, server2.cert_pem.as_str()] {
        write("tls.crt", cert);
        tokio::time::sleep(RELOAD_INTERVAL * 10).await;
        assert_eq!(
            served_certificate(addr, &ca.cert_pem, Some(&client)).await,
            Ok(old.clone()),
            "after writing {} bytes of the new certificate",
            cert.len()
        );
        call(addr, &ca.cert_pem, &client)
            .await
            .unwrap_or_else(|e| panic!("refused while the files are unusable: {e}"));
    }

    // The key arrives: the pair is picked up.
    write("tls.key", &server2.key_pem);
    let expected = der(&server2);
    eventually("the new certificate once its key is written", || async {
        match served_certificate(addr, &ca.cert_pem, Some(&client)).await {
            Ok(d) if d == expected => Ok(()),
            Ok(_) => Err("the old certificate is still served".to_owned()),
            Err(e) => Err(e),
        }
    })
    .await;
    let _ = running.stop().await;
}
