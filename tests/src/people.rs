//! The people of dual control in tests (issue 5): each [`Person`] has a
//! name, a role, a PIN, and a P-256 key with a self-signed client
//! certificate (rcgen) whose fingerprint they are enrolled with, so their
//! approvals are signed exactly as the CLI and the ceremony runner sign
//! them. [`found`] enrols a group during the founding and closes it;
//! [`ensure_founded`] does it once for the standard group (so1, alice,
//! bob) that the fixture's dual-control helpers use.

use kms::crypto::approval::{approval_message, cert_sha256, sign_approval, ApprovalSignature};
use kms::model::{CustodianName, CustodianRole, Pin};
use kms::service::{Actor, ApprovalRequest, CustodianSession, Enrolment, KeyService, ServiceError};
use std::sync::OnceLock;
use time::OffsetDateTime;

pub struct Person {
    pub name: String,
    pub role: CustodianRole,
    /// Their PIN after the initial one was changed.
    pub pin: String,
    /// The PIN given at enrolment.
    pub initial_pin: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
}

impl Person {
    /// A new person with a fresh P-256 key and self-signed certificate.
    pub fn new(name: &str, role: CustodianRole) -> Person {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        let cert = p.self_signed(&key).expect("certificate");
        Person {
            name: name.to_owned(),
            role,
            pin: format!("Working words of {name} 2"),
            initial_pin: format!("Initial words of {name} 1"),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    /// A person whose client certificate comes from elsewhere (a test
    /// CA's, so that they can also call the admin API over mTLS).
    pub fn with_cert(
        name: &str,
        role: CustodianRole,
        key_pem: &str,
        cert_der: &[u8],
        cert_pem: &str,
    ) -> Person {
        Person {
            key_pem: key_pem.to_owned(),
            cert_der: cert_der.to_vec(),
            cert_pem: cert_pem.to_owned(),
            ..Person::new(name, role)
        }
    }

    pub fn cert_sha256(&self) -> String {
        cert_sha256(&self.cert_der)
    }

    pub fn actor(&self) -> Actor {
        Actor::parse(&self.name).expect("actor")
    }

    /// What enrolling them takes (their certificate bound, the initial PIN).
    pub fn enrolment(&self) -> Enrolment {
        Enrolment {
            name: CustodianName::parse(&self.name).expect("name"),
            role: self.role,
            cert_sha256: Some(self.cert_sha256()),
            login_window: None,
            idle_timeout_seconds: None,
            initial_pin: Pin::new(self.initial_pin.as_str()),
        }
    }

    /// Log in with their PIN.
    pub async fn session(&self, svc: &KeyService) -> CustodianSession {
        svc.authenticate(
            &self.name,
            &Pin::new(self.pin.as_str()),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap_or_else(|e| panic!("{} logs in: {e}", self.name))
    }

    /// Their signature over an approval of request `id` with `digest`.
    pub fn sign(&self, id: &str, digest: &str) -> ApprovalSignature {
        ApprovalSignature {
            cert_der: self.cert_der.clone(),
            signature: sign_approval(&self.key_pem, &approval_message(id, digest, &self.name))
                .expect("sign"),
        }
    }

    /// Approve request `id` as shown to them (its digest fetched), signed.
    pub async fn approve(
        &self,
        svc: &KeyService,
        id: &str,
    ) -> Result<ApprovalRequest, ServiceError> {
        let digest = svc.approval(id).await?.digest;
        self.approve_digest(svc, id, &digest).await
    }

    /// Approve request `id`, confirming `digest` (which may be wrong).
    pub async fn approve_digest(
        &self,
        svc: &KeyService,
        id: &str,
        digest: &str,
    ) -> Result<ApprovalRequest, ServiceError> {
        let session = self.session(svc).await;
        svc.approve(&session, id, digest, &self.sign(id, digest))
            .await
    }

    /// Enrol them during the founding (the first must be a security
    /// officer, enrolled alone), and change the initial PIN.
    pub async fn enrol_founding(&self, svc: &KeyService, officer: Option<&CustodianSession>) {
        match officer {
            None => svc
                .enroll(&Actor::parse("installer").expect("actor"), self.enrolment())
                .await
                .unwrap_or_else(|e| panic!("bootstrap {}: {e}", self.name)),
            Some(o) => svc
                .enroll_founding(o, self.enrolment())
                .await
                .unwrap_or_else(|e| panic!("enrol {}: {e}", self.name)),
        };
        svc.change_pin(
            &self.name,
            &Pin::new(self.initial_pin.as_str()),
            &Pin::new(self.pin.as_str()),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap_or_else(|e| panic!("{} changes the initial PIN: {e}", self.name));
    }
}

/// Enrol `group` during the founding (the first is a security officer,
/// enrolled alone; the others by them), each changing the initial PIN;
/// then close the founding.
pub async fn found(svc: &KeyService, group: &[(&str, CustodianRole)]) -> Vec<Person> {
    let people: Vec<Person> = group.iter().map(|(n, r)| Person::new(n, *r)).collect();
    found_these(svc, &people).await;
    people
}

/// [`found`] for people already made.
pub async fn found_these(svc: &KeyService, people: &[Person]) {
    let Some((first, rest)) = people.split_first() else {
        return;
    };
    first.enrol_founding(svc, None).await;
    let officer = first.session(svc).await;
    for p in rest {
        p.enrol_founding(svc, Some(&officer)).await;
    }
    svc.close_founding(&officer)
        .await
        .expect("close the founding");
}

/// The standard group: so1 (security officer), alice and bob (custodians).
/// The same keys for the whole test process; each test's fresh database
/// enrols them anew.
pub fn standard() -> &'static [Person] {
    static PEOPLE: OnceLock<Vec<Person>> = OnceLock::new();
    PEOPLE.get_or_init(|| {
        vec![
            Person::new("so1", CustodianRole::SecurityOfficer),
            Person::new("alice", CustodianRole::Custodian),
            Person::new("bob", CustodianRole::Custodian),
        ]
    })
}

/// One of the standard group, by name.
pub fn person(name: &str) -> &'static Person {
    standard()
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no standard person {name}"))
}

/// Found the standard group unless someone is enrolled already.
pub async fn ensure_founded(svc: &KeyService) -> &'static [Person] {
    let nobody = svc
        .store()
        .custodians()
        .await
        .expect("custodians")
        .is_empty();
    if nobody {
        found_these(svc, standard()).await;
    }
    standard()
}

/// A session of one of the standard group (founded first if needed).
pub async fn session_of(svc: &KeyService, name: &str) -> CustodianSession {
    ensure_founded(svc).await;
    person(name).session(svc).await
}
