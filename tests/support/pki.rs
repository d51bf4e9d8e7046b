//! Credentials of a test control plane, generated in-process with rcgen (ECDSA P-256: ring
//! cannot generate RSA keys, and kube-apiserver accepts ECDSA for serving, client and
//! service-account signing keys alike).

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs the apiserver's serving certificate and the client certificates of
/// test users (`--client-ca-file`).
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
    params: CertificateParams,
}

impl Ca {
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the test CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("kubectl-homelab-test-ca", &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .context("self-signing the test CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            params,
        })
    }

    /// A serving certificate for 127.0.0.1 and localhost.
    pub fn serving(&self) -> anyhow::Result<CertPair> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("serving certificate names")?;
        params.distinguished_name = dn("kube-apiserver", &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: the apiserver maps CN to the user name and O to its groups.
    pub fn client(&self, user: &str, groups: &[&str]) -> anyhow::Result<CertPair> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<CertPair> {
        let key = KeyPair::generate().context("generating a key")?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing a certificate with the test CA")?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh key pair for signing service-account tokens: (private key PEM, public key PEM).
pub fn service_account_key() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating the service-account signing key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn
}
