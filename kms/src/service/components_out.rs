//! Key export as components (issue 5, KM-2): a key that must reach a
//! partner with no KEK shared yet (the first zone master key of a
//! relationship) is born as 2 or 3 XOR components, one per custodian.
//!
//! Why "born as" and not "split from a key already in the token": PKCS#11
//! has one mechanism that could split a token key into components,
//! CKM_XOR_BASE_AND_DATA, and SoftHSM2 does not implement it
//! (`shared/design/hsm-notes.md`). Reading an existing key out in clear to
//! split it would break invariant 1. So the components are drawn from the
//! token's generator (KM-1), each shown once to its own custodian, and the
//! key they combine to is imported into the token and checked there, by
//! the same path as component import. The clear value exists only in
//! zeroizing buffers, for the duration of this call, as in component entry
//! (docs/threat-model.md).

use super::keys::{CreateKey, ImportComponents, ImportedKey};
use super::{Actor, AuthRefusal, KeyService, ServiceError};
use crate::crypto::{combine, Component, Kcv, KcvMethod};
use crate::model::{CustodianName, CustodianRole};
use crate::store::KeyRecord;
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// What may be shown, printed and recorded of a key generated as
/// components: the key's record, its check value, and which custodian
/// holds a component with which check value. Never a component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentsIssued {
    pub key: KeyRecord,
    /// The whole key's check value (the partner compares it).
    pub kcv: String,
    /// The method of every check value here (e.g. `aes-cmac`).
    pub kcv_method: String,
    pub components: Vec<ComponentHolder>,
}

/// One custodian's component, by its check value.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentHolder {
    pub custodian: String,
    pub kcv: String,
}

/// The named holders of an `ExportComponents` request: 2 or 3 valid,
/// distinct names (split knowledge: two components in one person's hands
/// would let them rebuild more than their share).
pub(crate) fn check_holders(names: &[String]) -> Result<Vec<CustodianName>, ServiceError> {
    if !(2..=3).contains(&names.len()) {
        return Err(ServiceError::Invalid(format!(
            "a key is generated as 2 or 3 components, one per custodian; {} named",
            names.len()
        )));
    }
    let mut out: Vec<CustodianName> = Vec::with_capacity(names.len());
    for n in names {
        let name = CustodianName::parse(n)?;
        if out.contains(&name) {
            return Err(ServiceError::Invalid(format!(
                "{name} is named twice: each component goes to a different custodian"
            )));
        }
        out.push(name);
    }
    Ok(out)
}

/// One custodian's part of a generated key: shown to them once.
#[derive(Debug)]
pub struct IssuedComponent {
    pub custodian: CustodianName,
    pub component: Component,
    /// The component's own check value, read aloud and written on the form.
    pub kcv: Kcv,
}

/// What generating a key as components produced.
#[derive(Debug)]
pub struct GeneratedComponents {
    pub key: ImportedKey,
    /// The whole key's check value, for the partner to compare.
    pub kcv: Kcv,
    pub components: Vec<IssuedComponent>,
}

impl GeneratedComponents {
    /// The public part: check values and holders.
    pub fn issued(&self) -> ComponentsIssued {
        ComponentsIssued {
            key: self.key.key.clone(),
            kcv: self.kcv.to_string(),
            kcv_method: self
                .kcv_method()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
            components: self
                .components
                .iter()
                .map(|c| ComponentHolder {
                    custodian: c.custodian.to_string(),
                    kcv: c.kcv.to_string(),
                })
                .collect(),
        }
    }

    fn kcv_method(&self) -> Option<KcvMethod> {
        KcvMethod::preferred(self.key.key.algorithm.family())
    }
}

impl KeyService {
    /// Refuse holders who are not enrolled custodians in good standing
    /// now (not removed, not locked, initial PIN changed): a component
    /// handed to anyone else would be a key part outside the custodians'
    /// duties and records.
    pub(crate) async fn check_component_holders(
        &self,
        names: &[String],
    ) -> Result<(), ServiceError> {
        for name in check_holders(names)? {
            let rec = self.store.custodian(name.as_str()).await?.ok_or_else(|| {
                ServiceError::Auth(AuthRefusal::NotEnrolled {
                    name: name.to_string(),
                })
            })?;
            super::custodians::check_standing(&rec, OffsetDateTime::now_utc())?;
            if rec.role != CustodianRole::Custodian {
                return Err(ServiceError::Auth(AuthRefusal::Role {
                    name: name.to_string(),
                    role: rec.role.to_string(),
                    needed: CustodianRole::Custodian.to_string(),
                }));
            }
        }
        Ok(())
    }

    /// Generate `key` as one XOR component per custodian (2 or 3, distinct
    /// people), import it, and hand the components back for display. Runs
    /// only from an approved export request (`Operation::ExportComponents`).
    pub(crate) async fn generate_components_now(
        &self,
        actor: &Actor,
        key: CreateKey,
        custodians: &[CustodianName],
    ) -> Result<GeneratedComponents, ServiceError> {
        if !(2..=3).contains(&custodians.len()) {
            return Err(ServiceError::Invalid(
                "a key is generated as 2 or 3 components".into(),
            ));
        }
        for (i, c) in custodians.iter().enumerate() {
            if custodians[..i].contains(c) {
                return Err(ServiceError::Invalid(format!(
                    "{c} is named twice: each component goes to a different custodian"
                )));
            }
        }
        let alg = key.algorithm;
        let family = alg.family();
        let method = KcvMethod::preferred(family).ok_or_else(|| {
            ServiceError::Invalid("only AES and TDES keys are generated as components".into())
        })?;
        let len = alg.secret_len().ok_or_else(|| {
            ServiceError::Invalid("only AES and TDES keys are generated as components".into())
        })?;
        // Two copies of each draw: one goes into the import (which consumes
        // its components), one to its custodian.
        let mut shown = Vec::with_capacity(custodians.len());
        let mut for_import = Vec::with_capacity(custodians.len());
        for _ in custodians {
            let (a, b) = loop {
                let raw = Zeroizing::new(self.on_hsm(move |h| h.random(len as u32)).await?);
                // A draw the component rules refuse (all zero, one repeated
                // byte) is astronomically unlikely; draw again rather than fail.
                if let (Ok(a), Ok(b)) = (
                    Component::from_bytes(&raw, alg),
                    Component::from_bytes(&raw, alg),
                ) {
                    break (a, b);
                }
            };
            let kcv = a
                .kcv(method)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            for_import.push((b, Some(kcv)));
            shown.push(a);
        }
        let kcv = combine(&shown, alg)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?
            .kcv(method)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut issued = Vec::with_capacity(custodians.len());
        for (component, custodian) in shown.into_iter().zip(custodians) {
            let kcv = component
                .kcv(method)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            issued.push(IssuedComponent {
                custodian: custodian.clone(),
                component,
                kcv,
            });
        }
        let key = self
            .import_components_now(
                actor,
                ImportComponents {
                    key,
                    components: for_import,
                    expected_kcv: kcv.clone(),
                },
            )
            .await?;
        Ok(GeneratedComponents {
            key,
            kcv,
            components: issued,
        })
    }
}
