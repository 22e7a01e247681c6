//! The provisioning endpoints: parse and check the JSON, ask the policy,
//! then the service (which derives in the HSM and records the act under the
//! caller's request id). Handlers hold no rule about keys.

use super::envelope::{admit, Admitted};
use super::ProvState;
use crate::authz::{KeyRole, ProvisioningAction};
use crate::derivation::{Kdd, Pan};
use crate::hsm::WrapAlg;
use crate::model::{KeyName, Tenant};
use crate::server::conn::Peer;
use crate::server::problem::Code;
use crate::service::{
    issuer_key_names, key_set_names, EmvCardKeysRequest, Scp02Diversification, Scp02Request,
    Scp03Diversification, Scp03Request, SdRef, WrappedKey,
};
use crate::store::KeyRecord;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kms_client::wire;
use serde::de::DeserializeOwned;

/// Fixed-length binary from hex (either case).
fn bytes<const N: usize>(field: &str, s: &str) -> Result<[u8; N], String> {
    let v = hex::decode(s).map_err(|_| format!("{field} must be hex"))?;
    v.try_into()
        .map_err(|_| format!("{field} must be {N} bytes ({} hex digits)", 2 * N))
}

fn name(field: &str, s: &str) -> Result<KeyName, String> {
    KeyName::parse(s).map_err(|e| format!("{field}: {e}"))
}

fn kdd(s: Option<&str>) -> Result<Option<Kdd>, String> {
    s.map(|k| Kdd::parse_hex(k).map_err(|e| format!("kdd: {e}")))
        .transpose()
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        // The detail goes to the caller and into the audit record, so it
        // never quotes a value: serde_json's messages about a value of the
        // wrong type or variant do ("invalid type: integer `5413...`,
        // expected a string": a PAN sent as a number). Messages about a
        // field name only the field; for the rest, say what and where.
        let msg = e.to_string();
        let about_a_field = ["unknown field", "missing field", "duplicate field"]
            .iter()
            .any(|p| msg.starts_with(p));
        if about_a_field {
            return format!("the body is not this endpoint's JSON: {msg}");
        }
        let what = match e.classify() {
            serde_json::error::Category::Syntax => "it is not valid JSON",
            serde_json::error::Category::Eof => "it ends early",
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                "a value has the wrong type or is not one of the allowed values"
            }
        };
        format!(
            "the body is not this endpoint's JSON: {what} (line {}, column {})",
            e.line(),
            e.column()
        )
    })
}

fn out(w: WrappedKey) -> wire::WrappedKey {
    wire::WrappedKey {
        kind: w.kind,
        wrapped: w.wrapped,
        kcv: w.kcv,
    }
}

fn wrapping(kek: &KeyName, alg: WrapAlg) -> wire::Wrapping {
    wire::Wrapping {
        transport_kek: kek.to_string(),
        algorithm: alg.as_str().to_owned(),
    }
}

/// The keys a request names, each in its role for the policy (the naming
/// convention is the service's: `key_set_names`, `issuer_key_names`).
fn in_role(
    names: Result<Vec<(KeyName, crate::model::KeyUsage)>, crate::service::ServiceError>,
    role: KeyRole,
) -> Result<Vec<(KeyName, KeyRole)>, String> {
    names
        .map(|v| v.into_iter().map(|(n, _)| (n, role)).collect())
        .map_err(|e| e.to_string())
}

/// Admission, body and tenant: what every endpoint with a body starts with.
async fn start<T: DeserializeOwned>(
    st: &ProvState,
    peer: &Peer,
    headers: &HeaderMap,
    action: &'static str,
    body: &[u8],
) -> Result<(Admitted, T), Response> {
    let adm = admit(st, peer, headers, action).await?;
    match parse::<T>(body) {
        Ok(v) => Ok((adm, v)),
        Err(e) => Err(adm.refuse(Code::InvalidRequest, e).await),
    }
}

/// A derivation request as checked: the service's request, its tenant, and
/// the keys it names with the role each plays (for the policy).
struct Checked<R> {
    req: R,
    tenant: Tenant,
    keys: Vec<(KeyName, KeyRole)>,
}

/// The one path of every derivation endpoint: admission, the body, its
/// values (`check`), the policy for each key, then the service (`run`).
/// Every refusal on the way is recorded by the envelope.
#[allow(clippy::too_many_arguments)]
async fn derivation<W, R, F, Fut>(
    st: &ProvState,
    peer: &Peer,
    headers: &HeaderMap,
    body: &[u8],
    action: &'static str,
    policy_action: ProvisioningAction,
    check: impl FnOnce(&Admitted, W) -> Result<Checked<R>, String>,
    run: F,
) -> Response
where
    W: DeserializeOwned,
    F: FnOnce(Admitted, R) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (adm, w) = match start::<W>(st, peer, headers, action, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let c = match check(&adm, w) {
        Ok(c) => c,
        Err(e) => return adm.refuse(Code::InvalidRequest, e).await,
    };
    match adm.authorize(policy_action, &c.tenant, &c.keys).await {
        Ok(adm) => run(adm, c.req).await,
        Err(r) => r,
    }
}

pub(super) async fn scp02(
    State(st): State<ProvState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let check = |adm: &Admitted, w: wire::Scp02SessionRequest| {
        let req = Scp02Request {
            tenant: adm.tenant(w.tenant.as_deref())?,
            key_set: name("key_set", &w.key_set)?,
            diversification: match w.diversification {
                wire::Scp02Diversification::None => Scp02Diversification::None,
                wire::Scp02Diversification::EmvCps11 => Scp02Diversification::EmvCps11,
                wire::Scp02Diversification::Visa2 => Scp02Diversification::Visa2,
            },
            kdd: kdd(w.kdd.as_deref())?,
            sequence_counter: bytes("sequence_counter", &w.sequence_counter)?,
            host_challenge: bytes("host_challenge", &w.host_challenge)?,
            card_challenge: bytes("card_challenge", &w.card_challenge)?,
            card_cryptogram: bytes("card_cryptogram", &w.card_cryptogram)?,
            transport_kek: name("transport_kek", &w.transport_kek)?,
        };
        let mut keys = in_role(
            key_set_names(
                &req.key_set,
                req.diversification != Scp02Diversification::None,
            ),
            KeyRole::StaticKeys,
        )?;
        keys.push((req.transport_kek.clone(), KeyRole::TransportKek));
        Ok(Checked {
            tenant: req.tenant.clone(),
            keys,
            req,
        })
    };
    let run = |adm: Admitted, req: Scp02Request| async move {
        let kek = req.transport_kek.clone();
        match adm.svc.scp02_session(&adm.actor, req).await {
            Ok(s) => Json(wire::Scp02SessionResponse {
                s_enc: out(s.s_enc),
                c_mac: out(s.c_mac),
                r_mac: out(s.r_mac),
                dek: out(s.dek),
                host_cryptogram: s.host_cryptogram,
                card_challenge_reused: s.card_challenge_reused,
                wrapping: wrapping(&kek, s.wrap),
            })
            .into_response(),
            Err(e) => adm.service_error(e),
        }
    };
    derivation(
        &st,
        &peer,
        &headers,
        &body,
        "session.scp02",
        ProvisioningAction::Scp02Session,
        check,
        run,
    )
    .await
}

pub(super) async fn scp03(
    State(st): State<ProvState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let check = |adm: &Admitted, w: wire::Scp03SessionRequest| {
        let req = Scp03Request {
            tenant: adm.tenant(w.tenant.as_deref())?,
            key_set: name("key_set", &w.key_set)?,
            diversification: match w.diversification {
                wire::Scp03Diversification::None => Scp03Diversification::None,
                wire::Scp03Diversification::Kdf3 => Scp03Diversification::Kdf3,
            },
            kdd: kdd(w.kdd.as_deref())?,
            host_challenge: bytes("host_challenge", &w.host_challenge)?,
            card_challenge: bytes("card_challenge", &w.card_challenge)?,
            card_cryptogram: bytes("card_cryptogram", &w.card_cryptogram)?,
            transport_kek: name("transport_kek", &w.transport_kek)?,
        };
        let mut keys = in_role(
            key_set_names(
                &req.key_set,
                req.diversification != Scp03Diversification::None,
            ),
            KeyRole::StaticKeys,
        )?;
        keys.push((req.transport_kek.clone(), KeyRole::TransportKek));
        Ok(Checked {
            tenant: req.tenant.clone(),
            keys,
            req,
        })
    };
    let run = |adm: Admitted, req: Scp03Request| async move {
        let kek = req.transport_kek.clone();
        match adm.svc.scp03_session(&adm.actor, req).await {
            Ok(s) => Json(wire::Scp03SessionResponse {
                s_enc: out(s.s_enc),
                s_mac: out(s.s_mac),
                s_rmac: out(s.s_rmac),
                static_dek: out(s.static_dek),
                host_cryptogram: s.host_cryptogram,
                card_challenge_reused: s.card_challenge_reused,
                wrapping: wrapping(&kek, s.wrap),
            })
            .into_response(),
            Err(e) => adm.service_error(e),
        }
    };
    derivation(
        &st,
        &peer,
        &headers,
        &body,
        "session.scp03",
        ProvisioningAction::Scp03Session,
        check,
        run,
    )
    .await
}

pub(super) async fn emv_card_keys(
    State(st): State<ProvState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let check = |adm: &Admitted, w: wire::EmvCardKeysRequest| {
        if w.psn > 99 {
            return Err("psn must be 0 to 99".to_owned());
        }
        let req = EmvCardKeysRequest {
            tenant: adm.tenant(w.tenant.as_deref())?,
            issuer_keys: name("issuer_keys", &w.issuer_keys)?,
            pan: Pan::parse(&w.pan).map_err(|e| e.to_string())?,
            psn: w.psn,
            sd: SdRef::parse(&w.se_id, &w.sd_aid).map_err(|e| e.to_string())?,
            transport_kek: name("transport_kek", &w.transport_kek)?,
        };
        let mut keys = in_role(issuer_key_names(&req.issuer_keys), KeyRole::IssuerMasterKey)?;
        keys.push((req.transport_kek.clone(), KeyRole::TransportKek));
        Ok(Checked {
            tenant: req.tenant.clone(),
            keys,
            req,
        })
    };
    let run = |adm: Admitted, req: EmvCardKeysRequest| async move {
        let kek = req.transport_kek.clone();
        let (pan_masked, psn) = (req.pan.masked(), req.psn);
        match adm.svc.emv_card_keys(&adm.actor, req).await {
            Ok(k) => Json(wire::EmvCardKeysResponse {
                pan_masked,
                psn,
                icc_mk_ac: out(k.ac),
                icc_mk_smi: out(k.smi),
                icc_mk_smc: out(k.smc),
                binding: k.binding.as_str().to_owned(),
                wrapping: wrapping(&kek, k.wrap),
            })
            .into_response(),
            Err(e) => adm.service_error(e),
        }
    };
    derivation(
        &st,
        &peer,
        &headers,
        &body,
        "derive.emv-card-keys",
        ProvisioningAction::EmvCardKeys,
        check,
        run,
    )
    .await
}

fn metadata(r: &KeyRecord) -> Option<wire::KeyMetadata> {
    let v = r.current().or_else(|| r.versions.last())?;
    let fmt = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    };
    Some(wire::KeyMetadata {
        tenant: r.tenant.to_string(),
        name: r.name.to_string(),
        usage: r.usage.as_str().to_owned(),
        algorithm: r.algorithm.as_str().to_owned(),
        version: v.version,
        state: if r.current().is_some() {
            v.state.as_str().to_owned()
        } else {
            "destroyed".to_owned()
        },
        kcv: v.kcv.clone(),
        exportable: r.exportable,
        trusted: v.trusted,
        activated_at: fmt(v.activate_at),
        expires_at: fmt(v.expire_at),
    })
}

pub(super) async fn keys(
    State(st): State<ProvState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let adm = match admit(&st, &peer, &headers, "key.list").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(tenant) = adm.own_tenant().cloned() else {
        return adm.refuse(Code::Forbidden, "no tenant".into()).await;
    };
    let own = tenant.as_str().to_owned();
    let principal = crate::authz::PrincipalAttrs {
        name: &adm.principal.name,
        role: adm.principal.role.as_str(),
        tenant: Some(&own),
    };
    match adm.svc.list(&adm.actor, Some(&tenant)).await {
        Ok(recs) => {
            let keys = recs
                .iter()
                .filter_map(|r| {
                    let m = metadata(r)?;
                    let attrs = crate::authz::KeyAttrs {
                        tenant: &m.tenant,
                        name: &m.name,
                        usage: &m.usage,
                        algorithm: &m.algorithm,
                        state: &m.state,
                        version: m.version,
                        exportable: m.exportable,
                        trusted: m.trusted,
                    };
                    st.authz
                        .authorize(
                            &principal,
                            ProvisioningAction::ReadKeyMetadata,
                            &attrs,
                            KeyRole::Metadata,
                        )
                        .allowed
                        .then_some(m)
                })
                .collect();
            Json(wire::KeyList { keys }).into_response()
        }
        Err(e) => adm.service_error(e),
    }
}

pub(super) async fn key(
    State(st): State<ProvState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(key_name): Path<String>,
) -> Response {
    let adm = match admit(&st, &peer, &headers, "key.show").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(tenant) = adm.own_tenant().cloned() else {
        return adm.refuse(Code::Forbidden, "no tenant".into()).await;
    };
    let key_name = match name("name", &key_name) {
        Ok(n) => n,
        Err(e) => return adm.refuse(Code::InvalidRequest, e).await,
    };
    let adm = match adm
        .authorize(
            ProvisioningAction::ReadKeyMetadata,
            &tenant,
            &[(key_name.clone(), KeyRole::Metadata)],
        )
        .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    match adm.svc.show(&adm.actor, &tenant, &key_name).await {
        Ok(v) => match metadata(&v.key) {
            Some(m) => Json(m).into_response(),
            None => adm.service_error(crate::service::ServiceError::NotFound(format!(
                "{tenant}/{key_name}"
            ))),
        },
        Err(e) => adm.service_error(e),
    }
}

pub(super) async fn signing_key(State(st): State<ProvState>) -> Response {
    match crate::audit::public_key_pem(st.signer.public_key()) {
        Ok(pem) => Json(wire::SigningKey {
            algorithm: "ecdsa-p256-sha256".into(),
            key_id: st.signer.key_id().to_owned(),
            public_key_pem: pem,
        })
        .into_response(),
        Err(e) => {
            tracing::error!("response-signing key: {e}");
            super::envelope::problem(
                Code::Internal,
                "the signing key cannot be read".into(),
                None,
            )
        }
    }
}

pub(super) async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::document(),
    )
        .into_response()
}
