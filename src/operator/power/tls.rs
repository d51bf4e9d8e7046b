//! TLS for the Redfish and HTTP drivers: rustls on the `ring` provider, the system's roots plus
//! an optional CA bundle from the spec, or no verification at all when the owner opted in with
//! `insecureSkipVerify` (a BMC's self-signed certificate).
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::PowerError;
use crate::operator::api::TlsSettings;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots, loaded once (a file read per reconcile would be wasted work).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The client configuration for `tls`; `field` is the driver's path in the Node (for errors).
pub fn client_config(tls: TlsSettings<'_>, field: &str) -> Result<ClientConfig, PowerError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PowerError::Config(format!("TLS setup for {field}: {e}")))?;
    if tls.insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    // A broken system certificate is skipped, as browsers do.
    roots.add_parsable_certificates(native_roots().iter().cloned());
    if let Some(pem) = tls.ca_bundle {
        let certs = parse_ca_bundle(pem, field)?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                PowerError::Config(format!(
                    "{field}.caBundle: a certificate is not a usable CA ({e})"
                ))
            })?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn parse_ca_bundle(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, PowerError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(PowerError::Config(format!(
            "{field}.caBundle holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ))),
        Err(e) => Err(PowerError::Config(format!(
            "{field}.caBundle is not valid PEM: {e}"
        ))),
    }
}

/// `insecureSkipVerify`: any certificate is accepted, but the handshake signatures are still
/// checked (so the connection is at least encrypted to whoever holds the key).
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_without_certificates_is_a_config_error_naming_the_field() {
        let tls = TlsSettings {
            ca_bundle: Some("not pem"),
            insecure_skip_verify: false,
        };
        let Err(PowerError::Config(msg)) = client_config(tls, "spec.power.powerOn.redfish") else {
            panic!("expected a config error");
        };
        assert!(msg.contains("spec.power.powerOn.redfish.caBundle"), "{msg}");
    }
}
