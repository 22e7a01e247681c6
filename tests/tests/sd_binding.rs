#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TSM-DATA-1: a Security Domain is written with one card's keys only. The
//! first EMV card-key request for an SD binds it to that card (PAN keyed
//! hash and PSN); the same card again is served, another card is refused
//! and changes nothing, until a re-issue released the SD under dual control
//! (invariant 3: the requester cannot approve it, and it runs once).

use kms::audit::Outcome;
use kms::derivation::Pan;
use kms::model::{Algorithm, KeyUsage};
use kms::service::{
    EmvCardKeys, EmvCardKeysRequest, Executed, Operation, SdBindingState, SdRef, ServiceError,
    SessionRefusal,
};
use kms::store::AuditFilter;
use kms_e2e::fixture::{actor, name, tenant, TestKms};
use kms_e2e::people::{person, session_of};
use kms_e2e::reference::{aes_key_unwrap_pad, emv_option_a, same_des_key};

const TENANT: &str = "issuer-a";
const TRANSPORT: [u8; 16] = [0x5A; 16];
const IMK_AC: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
];
const IMK_SMI: [u8; 16] = [
    0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01,
];
const IMK_SMC: [u8; 16] = [
    0x13, 0x57, 0x9B, 0xDF, 0x02, 0x46, 0x8A, 0xCE, 0x31, 0x75, 0xB9, 0xFD, 0x20, 0x64, 0xA8, 0xEC,
];
const SE: &str = "4090AB12CD34EF56";
const SD: &str = "A0000001515350";
const PAN_1: &str = "5413330089010012";
const PAN_2: &str = "5413330089010020";

async fn kms() -> TestKms {
    let mut kms = TestKms::new().await;
    kms.trusted_kek(TENANT, "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    for (suffix, usage, value) in [
        ("ac", KeyUsage::ImkAc, &IMK_AC),
        ("smi", KeyUsage::ImkSmi, &IMK_SMI),
        ("smc", KeyUsage::ImkSmc, &IMK_SMC),
    ] {
        kms.import(
            TENANT,
            &format!("imk-{suffix}"),
            Algorithm::Tdes2,
            usage,
            false,
            value,
        )
        .await;
    }
    kms
}

fn req(pan: &str, psn: u8) -> EmvCardKeysRequest {
    EmvCardKeysRequest {
        tenant: tenant(TENANT),
        issuer_keys: name("imk"),
        pan: Pan::parse(pan).unwrap(),
        psn,
        sd: SdRef::parse(SE, SD).unwrap(),
        transport_kek: name("transport"),
    }
}

fn assert_card_keys(k: &EmvCardKeys, pan: &str, psn: u8) {
    let psn = format!("{psn:02}");
    for (w, imk) in [(&k.ac, &IMK_AC), (&k.smi, &IMK_SMI), (&k.smc, &IMK_SMC)] {
        let got = aes_key_unwrap_pad(&TRANSPORT, &hex::decode(&w.wrapped).unwrap()).unwrap();
        assert!(
            same_des_key(&got, &emv_option_a(imk, pan, &psn)),
            "{} matches EMV Option A",
            w.kind
        );
    }
    assert_eq!(
        [k.ac.kind.as_str(), k.smi.kind.as_str(), k.smc.kind.as_str()],
        ["icc-mk-ac", "icc-mk-smi", "icc-mk-smc"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_data_1_an_sd_receives_one_cards_keys_until_a_dual_controlled_reissue() {
    let kms = kms().await;
    let svc = kms.svc();
    let ota = actor("ota-issuer-a");

    let first = svc.emv_card_keys(&ota, req(PAN_1, 1)).await.unwrap();
    assert_eq!(first.binding, SdBindingState::New);
    assert_card_keys(&first, PAN_1, 1);
    // The same card again (a retried personalization) is served.
    let again = svc.emv_card_keys(&ota, req(PAN_1, 1)).await.unwrap();
    assert_eq!(again.binding, SdBindingState::Existing);
    assert_card_keys(&again, PAN_1, 1);

    // Another card, or the same PAN with another PSN, is refused.
    let objects = svc.hsm().object_count().unwrap();
    for (pan, psn) in [(PAN_2, 1), (PAN_1, 2)] {
        let e = svc.emv_card_keys(&ota, req(pan, psn)).await.unwrap_err();
        match &e {
            ServiceError::Session(SessionRefusal::SdBound { bound_to, .. }) => {
                assert_eq!(bound_to, "541333******0012 PSN 01", "masked, never clear");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.exit_code(), 3);
    }
    assert_eq!(svc.hsm().object_count().unwrap(), objects, "KM-7");
    let bound = svc.sd_bindings(&ota, &tenant(TENANT)).await.unwrap();
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].pan_masked, "541333******0012");
    assert_eq!(
        (bound[0].se_id.as_str(), bound[0].sd_aid.as_str()),
        (SE, SD)
    );

    // Invariant 3: a re-issue is requested by one person and approved by
    // another; the requester cannot approve it.
    let op = Operation::ReleaseSd {
        tenant: TENANT.into(),
        se_id: SE.into(),
        sd_aid: SD.into(),
        reason: "card lost; new card 0020".into(),
    };
    let r = svc
        .request(&session_of(svc, "alice").await, op)
        .await
        .unwrap();
    let e = person("alice")
        .approve_digest(svc, &r.id, &r.digest)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e:?}");
    let e = svc
        .execute(&session_of(svc, "alice").await, &r.id)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e:?}");
    // Still bound while unapproved.
    assert!(svc.emv_card_keys(&ota, req(PAN_2, 1)).await.is_err());

    person("bob")
        .approve_digest(svc, &r.id, &r.digest)
        .await
        .unwrap();
    match svc
        .execute(&session_of(svc, "alice").await, &r.id)
        .await
        .unwrap()
    {
        Executed::Released(b) => assert_eq!(b.pan_masked, "541333******0012"),
        other => panic!("{other:?}"),
    }
    // It ran once.
    assert!(svc
        .execute(&session_of(svc, "alice").await, &r.id)
        .await
        .is_err());

    let next = svc.emv_card_keys(&ota, req(PAN_2, 1)).await.unwrap();
    assert_eq!(next.binding, SdBindingState::New);
    assert_card_keys(&next, PAN_2, 1);
    // And the new card owns the SD now.
    assert!(svc.emv_card_keys(&ota, req(PAN_1, 1)).await.is_err());

    // The trail: every derivation (PAN masked, SE and SD named), the
    // refusals, and the re-issue's request, approval and execution.
    let recs = svc
        .store()
        .audit_search(&AuditFilter {
            action: Some("derive.emv-card-keys".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let outcomes: Vec<Outcome> = recs
        .iter()
        .filter_map(|r| r.event.outcome)
        .filter(|o| *o != Outcome::Attempt)
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Success,
            Outcome::Success,
            Outcome::Refused,
            Outcome::Refused,
            Outcome::Refused,
            Outcome::Success,
            Outcome::Refused
        ]
    );
    for r in &recs {
        let json = serde_json::to_string(&r.event).unwrap();
        assert!(!json.contains(PAN_1) && !json.contains(PAN_2), "{json}");
        assert_eq!(r.event.details.get("sd_aid").map(String::as_str), Some(SD));
    }
    let executed = svc
        .store()
        .audit_search(&AuditFilter {
            action: Some("request.execute".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(executed
        .iter()
        .any(|r| r.event.outcome == Some(Outcome::Success)
            && r.event.details.get("operation").map(String::as_str) == Some("reissue")
            && r.event.details.get("approvers").map(String::as_str) == Some("bob")));
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_data_1_a_failed_derivation_leaves_the_sd_unbound() {
    let kms = kms().await;
    let svc = kms.svc();
    let ota = actor("ota-issuer-a");
    // No such transport KEK: refused before the SD is bound.
    let mut r = req(PAN_1, 1);
    r.transport_kek = name("no-such-kek");
    assert!(svc.emv_card_keys(&ota, r).await.is_err());
    assert!(svc
        .sd_bindings(&ota, &tenant(TENANT))
        .await
        .unwrap()
        .is_empty());
    // Malformed SD identities never get that far.
    assert!(SdRef::parse("XYZ", SD).is_err());
    assert!(SdRef::parse(SE, "A0").is_err());
    // A release of an SD that is not bound is refused at request time.
    let e = svc
        .request(
            &session_of(svc, "alice").await,
            Operation::ReleaseSd {
                tenant: TENANT.into(),
                se_id: SE.into(),
                sd_aid: SD.into(),
                reason: "x".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
    // Then the first card binds it.
    let k = svc.emv_card_keys(&ota, req(PAN_1, 1)).await.unwrap();
    assert_eq!(k.binding, SdBindingState::New);
}
