//! `kms dev-pki`: a throw-away PKI so that `kms serve` runs on a developer's
//! machine: a CA, a server certificate for localhost / 127.0.0.1 / ::1, and
//! client certificates for a security officer and a provisioner, with a
//! principals policy that maps exactly those two certificates (by
//! fingerprint). Private keys are written 0600 in a 0700 directory.
//!
//! Development only: the CA key lies next to the certificates it signs, and
//! anyone who can read it can mint clients. Production uses the
//! organisation's CA and `[server]` paths to its files.

use super::ServerError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The files, in the order they are written; all present means "done".
pub const FILES: [&str; 9] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "officer.crt",
    "officer.key",
    "provisioner.crt",
    "provisioner.key",
    "principals.toml",
];

/// The principals of the development client certificates.
pub const OFFICER: &str = "dev-officer";
pub const PROVISIONER: &str = "dev-provisioner";
/// The tenant the development provisioner is bound to.
pub const PROVISIONER_TENANT: &str = "issuer-a";

/// What `ensure` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    pub dir: PathBuf,
    /// False when a complete PKI was already there (nothing was touched).
    pub created: bool,
}

fn err(e: impl std::fmt::Display) -> ServerError {
    ServerError::DevPki(e.to_string())
}

/// Create the development PKI in `dir` unless it is already complete. A
/// partial one is refused rather than patched: mixing keys from two runs
/// would give certificates that do not chain.
pub fn ensure(dir: &Path) -> Result<DevPki, ServerError> {
    let present: Vec<&str> = FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if present.len() == FILES.len() {
        return Ok(DevPki {
            dir: dir.to_owned(),
            created: false,
        });
    }
    if !present.is_empty() {
        return Err(err(format!(
            "{} holds only part of a development PKI ({}); remove it to make a new one",
            dir.display(),
            present.join(", ")
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    generate(dir)?;
    Ok(DevPki {
        dir: dir.to_owned(),
        created: true,
    })
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "KMS development");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Validity from a day ago (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

fn write(dir: &Path, file: &str, contents: &str, mode: u32) -> Result<(), ServerError> {
    let path = dir.join(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| err(format!("writing {}: {e}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| err(format!("writing {}: {e}", path.display())))
}

fn generate(dir: &Path) -> Result<(), ServerError> {
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.distinguished_name = name("KMS development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, 3 * 365);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name = name(cn);
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, 365);
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        Ok::<_, ServerError>((cert, key))
    };
    let dns = |s: &str| s.try_into().map(SanType::DnsName).map_err(err);
    let (server, server_key) = leaf(
        "localhost",
        vec![
            dns("localhost")?,
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (officer, officer_key) = leaf(OFFICER, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    let (prov, prov_key) = leaf(PROVISIONER, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;

    let fp = |der: &[u8]| hex::encode_upper(Sha256::digest(der));
    let principals = format!(
        "# Development principals, written by `kms dev-pki` for the client\n\
         # certificates in this directory (matched by SHA-256 fingerprint, so\n\
         # only these very certificates). See policies/principals.toml.\n\n\
         [[principal]]\nname = \"{OFFICER}\"\nrole = \"security-officer\"\ncert_sha256 = \"{}\"\n\n\
         [[principal]]\nname = \"{PROVISIONER}\"\nrole = \"provisioner\"\ntenant = \"{PROVISIONER_TENANT}\"\ncert_sha256 = \"{}\"\n",
        fp(officer.der()),
        fp(prov.der()),
    );

    // Certificates are public; keys are the owner's alone.
    let contents = [
        ca_cert.pem(),
        ca_key_pem,
        server.pem(),
        server_key.serialize_pem(),
        officer.pem(),
        officer_key.serialize_pem(),
        prov.pem(),
        prov_key.serialize_pem(),
        principals,
    ];
    for (file, text) in FILES.iter().zip(contents.iter()) {
        let mode = if file.ends_with(".key") { 0o600 } else { 0o644 };
        write(dir, file, text, mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn makes_a_complete_pki_once_and_refuses_a_partial_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let made = ensure(&dir).unwrap();
        assert!(made.created);
        for f in FILES {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            if f.ends_with(".key") {
                assert_eq!(mode, 0o600, "{f}");
            } else {
                assert_eq!(mode, 0o644, "{f}");
            }
        }
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));
        // The principals it wrote map the officer's certificate.
        let policy = super::super::PrincipalPolicy::load(&dir.join("principals.toml")).unwrap();
        let officer_pem = std::fs::read_to_string(dir.join("officer.crt")).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(officer_pem.as_bytes()).unwrap();
        let who = policy
            .lookup(&super::super::ClientIdentity::from_der(&der))
            .unwrap();
        assert_eq!(who.name, OFFICER);
        assert_eq!(who.role, super::super::Role::SecurityOfficer);

        let again = ensure(&dir).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);

        std::fs::remove_file(dir.join("officer.key")).unwrap();
        assert!(matches!(ensure(&dir), Err(ServerError::DevPki(_))));
    }
}
