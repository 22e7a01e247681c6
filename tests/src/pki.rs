//! A test PKI for the mTLS API, made with rcgen in a temporary directory:
//! one CA for the server and the clients, a server certificate for
//! localhost / 127.0.0.1, client certificates for each kind of principal, an
//! expired one, a revoked one (in the CA's CRL), one the principals policy
//! does not map, and one from another CA. `settings()` points a server at
//! them on 127.0.0.1 port 0; `client_config()` makes a configuration of the
//! provisioning API's reference client (`kms_client`) for one of them.

use crate::client::Identity;
use kms::config::ServerSettings;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use time::{Duration, OffsetDateTime};

/// The principals' names in the test policy.
pub const OFFICER: &str = "sofia";
pub const OPERATOR: &str = "ops";
pub const PROVISIONER: &str = "ota-issuer-a";
pub const PROVISIONER_TENANT: &str = "issuer-a";
pub const PROVISIONER_CN: &str = "ota.issuer-a.test";
pub const OPERATOR_CN: &str = "ops.kms.test";
/// A second provisioner, of another tenant (KM-4 tests).
pub const PROVISIONER_B: &str = "ota-issuer-b";
pub const PROVISIONER_B_TENANT: &str = "issuer-b";
pub const PROVISIONER_B_CN: &str = "ota.issuer-b.test";

/// A client certificate and its key.
pub struct ClientCert {
    pub der: CertificateDer<'static>,
    pub pem: String,
    key_pkcs8: Vec<u8>,
    key_pem: String,
    /// SHA-256 of the certificate, upper-case hex (as the server reports it).
    pub sha256: String,
}

impl ClientCert {
    pub fn identity(&self) -> Identity {
        Identity {
            chain: vec![self.der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone())),
        }
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The actor of records about this certificate when it is not (or not
    /// validly) mapped.
    pub fn actor(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

pub struct TestPki {
    pub dir: tempfile::TempDir,
    /// The CA of the server and of the clients.
    pub ca: CertificateDer<'static>,
    /// The same, PEM.
    pub ca_pem: String,
    /// Mapped by fingerprint as security-officer `sofia`.
    pub officer: ClientCert,
    /// Mapped by CN as provisioner `ota-issuer-a` of tenant `issuer-a`.
    pub provisioner: ClientCert,
    /// Mapped by CN as provisioner `ota-issuer-b` of tenant `issuer-b`.
    pub provisioner_b: ClientCert,
    /// Mapped by CN as operator `ops`.
    pub operator: ClientCert,
    /// Issued by the CA but in no principal entry.
    pub unmapped: ClientCert,
    /// Expired yesterday; mapped (as an officer) so only the handshake stops it.
    pub expired: ClientCert,
    /// In the CA's CRL; mapped (as an officer) so only the CRL stops it.
    pub revoked: ClientCert,
    /// From another CA, with the provisioner's CN.
    pub foreign: ClientCert,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "KMS tests");
    d.push(DnType::CommonName, cn);
    d
}

fn ca(cn: &str) -> (CertificateDer<'static>, String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(2);
    p.not_after = now + Duration::days(30);
    let cert = p.self_signed(&key).expect("CA cert");
    (cert.der().clone(), cert.pem(), Issuer::new(p, key))
}

struct Leaf<'a> {
    cn: &'a str,
    serial: u64,
    server: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Leaf<'_> {
    fn client(cn: &str, serial: u64) -> Leaf<'_> {
        let now = OffsetDateTime::now_utc();
        Leaf {
            cn,
            serial,
            server: false,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(10),
        }
    }

    fn sign(self, issuer: &Issuer<'_, KeyPair>) -> ClientCert {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = dn(self.cn);
        p.serial_number = Some(SerialNumber::from(self.serial));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        if self.server {
            p.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().expect("dns")),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        let cert = p.signed_by(&key, issuer).expect("sign");
        let der = cert.der().clone();
        ClientCert {
            sha256: hex::encode_upper(Sha256::digest(&der)),
            der,
            pem: cert.pem(),
            key_pkcs8: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_der, ca_pem, issuer) = ca("KMS test CA");
        let (_, _, other) = ca("Some other CA");
        let now = OffsetDateTime::now_utc();
        let server = Leaf {
            server: true,
            ..Leaf::client("localhost", 1)
        }
        .sign(&issuer);
        let officer = Leaf::client("sofia.kms.test", 2).sign(&issuer);
        let provisioner = Leaf::client(PROVISIONER_CN, 3).sign(&issuer);
        let operator = Leaf::client(OPERATOR_CN, 4).sign(&issuer);
        let unmapped = Leaf::client("nobody.kms.test", 5).sign(&issuer);
        let expired = Leaf {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
            ..Leaf::client("expired.kms.test", 6)
        }
        .sign(&issuer);
        let revoked = Leaf::client("revoked.kms.test", 7).sign(&issuer);
        let foreign = Leaf::client(PROVISIONER_CN, 8).sign(&other);
        let provisioner_b = Leaf::client(PROVISIONER_B_CN, 9).sign(&issuer);

        let crl = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(7u64),
                revocation_time: now - Duration::minutes(30),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("CRL");

        let d = dir.path();
        write(d, "ca.crt", &ca_pem, 0o644);
        write(d, "server.crt", &server.pem, 0o644);
        write(d, "server.key", &server.key_pem, 0o600);
        write(d, "ca.crl", &crl.pem().expect("CRL PEM"), 0o644);
        let principals = format!(
            "[[principal]]\nname = \"{OFFICER}\"\nrole = \"security-officer\"\ncert_sha256 = \"{}\"\n\n\
             [[principal]]\nname = \"{PROVISIONER}\"\nrole = \"provisioner\"\ntenant = \"{PROVISIONER_TENANT}\"\nsubject_cn = \"{PROVISIONER_CN}\"\n\n\
             [[principal]]\nname = \"{PROVISIONER_B}\"\nrole = \"provisioner\"\ntenant = \"{PROVISIONER_B_TENANT}\"\nsubject_cn = \"{PROVISIONER_B_CN}\"\n\n\
             [[principal]]\nname = \"{OPERATOR}\"\nrole = \"operator\"\nsubject_cn = \"{OPERATOR_CN}\"\n\n\
             [[principal]]\nname = \"expired-officer\"\nrole = \"security-officer\"\ncert_sha256 = \"{}\"\n\n\
             [[principal]]\nname = \"revoked-officer\"\nrole = \"security-officer\"\ncert_sha256 = \"{}\"\n",
            officer.sha256, expired.sha256, revoked.sha256
        );
        write(d, "principals.toml", &principals, 0o644);
        TestPki {
            ca: ca_der,
            ca_pem,
            officer,
            provisioner,
            provisioner_b,
            operator,
            unmapped,
            expired,
            revoked,
            foreign,
            dir,
        }
    }

    /// Server settings for this PKI, on 127.0.0.1 with ports chosen by the
    /// system, with the CRL.
    pub fn settings(&self) -> ServerSettings {
        let d = self.dir.path();
        ServerSettings {
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            provisioning_listen: "127.0.0.1:0".parse().expect("addr"),
            tls_cert: d.join("server.crt"),
            tls_key: d.join("server.key"),
            client_ca: d.join("ca.crt"),
            crl: Some(d.join("ca.crl")),
            principals: d.join("principals.toml"),
            provisioning_policy: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../policies/provisioning.cedar"),
            limits: kms::config::ProvisioningLimits::default(),
        }
    }

    /// [`TestPki::settings`] with these provisioning limits (tiny ones for
    /// the 429 and 503 tests).
    pub fn settings_with_limits(&self, limits: kms::config::ProvisioningLimits) -> ServerSettings {
        ServerSettings {
            limits,
            ..self.settings()
        }
    }

    /// The provisioning API's reference client configuration for a server
    /// at `server` (whose certificate names 127.0.0.1), trusting this CA,
    /// presenting `who` (or no certificate), and pinning `signing_key`
    /// (`None`: trust on first use).
    pub fn client_config(
        &self,
        server: std::net::SocketAddr,
        who: Option<&ClientCert>,
        signing_key: Option<p256::ecdsa::VerifyingKey>,
    ) -> kms_client::ClientConfig {
        kms_client::ClientConfig {
            server,
            server_name: "127.0.0.1".into(),
            ca_pem: self.ca_pem.as_bytes().to_vec(),
            cert_chain_pem: who.map(|c| c.pem.as_bytes().to_vec()),
            key_pem: who.map(|c| c.key_pem.as_bytes().to_vec()),
            signing_key,
        }
    }
}
