//! Issue 5, KM-2: key export as components. A key for a partner with no
//! shared KEK is born as one XOR component per custodian under quorum
//! (request, signed approval, execution by the requester); each custodian
//! receives only their own component (the answers file writes it to their
//! own 0600 file), and the components are nowhere else: not in the
//! database, the transcript, the trail or the console output.

mod ceremony_support;

use ceremony_support::Room;
use kms::crypto::{combine, Component, KcvMethod};
use kms::model::{Algorithm, CustodianRole, KeyUsage};
use kms::service::ceremony::StepOutcome;
use kms::service::{Operation, ServiceError};
use kms_e2e::fixture::{actor, name, tenant};
use kms_e2e::scan::{encodings, find_secrets_in_sqlite};
use std::os::unix::fs::PermissionsExt;

const GROUP: &[(&str, CustodianRole)] = &[
    ("so1", CustodianRole::SecurityOfficer),
    ("alice", CustodianRole::Custodian),
    ("bob", CustodianRole::Custodian),
    ("carol", CustodianRole::Custodian),
];

fn op(custodians: &[&str]) -> Operation {
    Operation::ExportComponents {
        tenant: "acme".into(),
        key: "zmk-partner".into(),
        algorithm: "aes-128".into(),
        usage: "kek".into(),
        exportable: false,
        custodians: custodians.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn person(room: &Room, who: &str) -> &'static kms_e2e::people::Person {
    room.people
        .iter()
        .find(|p| p.name == who)
        .unwrap_or_else(|| panic!("no {who}"))
}

/// Every encoding of each value, plus the spaced groups of four that the
/// console shows a component in, found in `text`.
fn find_in_text(text: &str, forbidden: &[Vec<u8>]) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    for (i, secret) in forbidden.iter().enumerate() {
        let spaced = hex::encode(secret)
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).to_string())
            .collect::<Vec<_>>()
            .join(" ");
        if lower.contains(&spaced) {
            found.push(format!("forbidden value #{i} as spaced hex"));
        }
        for (enc, needle) in encodings(secret) {
            let needle = String::from_utf8_lossy(&needle).to_lowercase();
            if lower.contains(&needle) {
                found.push(format!("forbidden value #{i} as {enc}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn km2_tsm_ac2_key_export_components_ceremony_hands_each_custodian_only_their_component() {
    let mut room = Room::founded(GROUP).await;
    let answers = room.answers(
        &[
            ("officer", &["so1"]),
            ("holders", &["alice", "bob"]),
            ("approver", &["carol"]),
        ],
        &[],
        &[],
    );
    for who in ["alice", "bob"] {
        room.add_answers(
            &answers,
            who,
            &format!("component_out = \"{who}.component.out\""),
        );
    }
    let (signed, shown) = room
        .run(
            "key-export-components",
            &[("tenant", "acme"), ("key", "zmk-partner")],
            &answers,
        )
        .await;
    let t = &signed.transcript;
    assert_eq!(t.outcome, StepOutcome::Done, "{:?}", t.abort_reason);

    // Each holder's file: theirs alone (0600), one component each.
    let mut parts = Vec::new();
    let mut raw = Vec::new();
    for who in ["alice", "bob"] {
        let path = room.files.join(format!("{who}.component.out"));
        let mode = std::fs::metadata(&path)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{who}'s component file");
        let text = std::fs::read_to_string(&path).expect("component");
        let c = Component::parse_hex(text.trim(), Algorithm::Aes128).expect("a component");
        raw.push(hex::decode(text.split_whitespace().collect::<String>()).expect("hex"));
        parts.push(c);
    }
    assert_ne!(raw[0], raw[1]);
    // Each component's check value is the one its holder confirmed.
    let received: Vec<_> = t
        .steps
        .iter()
        .filter(|s| s.kind == "component-received")
        .collect();
    assert_eq!(received.len(), 2);
    for (i, (s, who)) in received.iter().zip(["alice", "bob"]).enumerate() {
        assert_eq!(s.actor.as_deref(), Some(who));
        assert_eq!(
            s.details.get("component_kcv"),
            Some(&parts[i].kcv(KcvMethod::AesCmac).expect("kcv").to_string())
        );
    }

    // KM-2: the components combine to the key in the token: the token's
    // check value, and the whole key's check value the room confirmed.
    let key = combine(&parts, Algorithm::Aes128).expect("combine");
    let svc = room.svc().await;
    let rec = svc
        .get(&tenant("acme"), &name("zmk-partner"))
        .await
        .expect("the key exists");
    assert_eq!(rec.usage, KeyUsage::Kek);
    let v = rec.current().expect("a version");
    let token_kcv = v.kcv.clone().expect("token kcv");
    assert_eq!(
        key.kcv(KcvMethod::AesEcb).expect("kcv").to_string(),
        token_kcv
    );
    let whole = key.kcv(KcvMethod::AesCmac).expect("kcv").to_string();
    let confirmed = t
        .steps
        .iter()
        .find(|s| s.kind == "confirm-kcv")
        .and_then(|s| s.details.get("kcv"))
        .expect("confirm-kcv");
    assert_eq!(confirmed, &whole);
    assert!(shown.join("\n").contains(&whole));

    // Invariant 1 and 2: the key in the token is sensitive and, not being
    // exportable but backed up, extractable only under a trusted KEK.
    for a in svc.hsm().attributes(v.object_id).expect("attributes") {
        assert!(a.sensitive, "{a:?}");
        assert!(!a.extractable || a.wrap_with_trusted, "{a:?}");
    }

    // Dual control: requested by so1, approved by carol, executed once.
    let req_id = t
        .steps
        .iter()
        .find(|s| s.kind == "request")
        .and_then(|s| s.details.get("request"))
        .expect("request id");
    let req = svc.approval(req_id).await.expect("request");
    assert_eq!(req.status, "executed");
    assert_eq!(req.requested_by, "so1");
    assert_eq!(req.approvers, ["carol"]);
    assert!(svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify")
        .ok());

    // No component, and not the key, in the database, the transcript, the
    // trail's records or what the console showed.
    let mut forbidden = raw.clone();
    let mut key_bytes = vec![0u8; 16];
    for r in &raw {
        for (k, b) in key_bytes.iter_mut().zip(r) {
            *k ^= b;
        }
    }
    forbidden.push(key_bytes);
    drop(svc);
    let slices: Vec<&[u8]> = forbidden.iter().map(Vec::as_slice).collect();
    let in_db = find_secrets_in_sqlite(&room.kms.db_path, &slices);
    assert!(in_db.is_empty(), "database: {in_db:?}");
    let transcript = serde_json::to_string_pretty(&signed).expect("json");
    let in_transcript = find_in_text(&transcript, &forbidden);
    assert!(in_transcript.is_empty(), "transcript: {in_transcript:?}");
    let output = shown.join("\n");
    let in_output = find_in_text(&output, &forbidden);
    assert!(in_output.is_empty(), "console output: {in_output:?}");
}

#[tokio::test]
async fn km2_invariant3_export_components_is_refused_without_an_approval_and_outside_the_ceremony_path(
) {
    let room = Room::founded(GROUP).await;
    let svc = room.kms.svc();
    let so1 = person(&room, "so1").session(svc).await;
    let req = svc
        .request(&so1, op(&["alice", "bob"]))
        .await
        .expect("request");
    // One person alone: no approval, nothing generated.
    let e = svc.execute_components(&so1, &req.id).await.err();
    assert!(
        matches!(&e, Some(ServiceError::Refused(m)) if m.contains("approvals")),
        "{e:?}"
    );
    assert!(svc
        .get(&tenant("acme"), &name("zmk-partner"))
        .await
        .is_err());
    // The requester cannot approve their own request.
    assert!(person(&room, "so1").approve(svc, &req.id).await.is_err());
    person(&room, "carol")
        .approve(svc, &req.id)
        .await
        .expect("carol approves");
    // The components reach only the ceremony path: plain execution (what
    // `kms request execute` and the admin API call) is refused and leaves
    // the request open.
    let e = svc.execute(&so1, &req.id).await.err();
    assert!(
        matches!(&e, Some(ServiceError::Invalid(m)) if m.contains("key-export-components")),
        "{e:?}"
    );
    assert_eq!(svc.approval(&req.id).await.expect("req").status, "open");
    // Nor does anyone but the requester execute it.
    let alice = person(&room, "alice").session(svc).await;
    assert!(svc.execute_components(&alice, &req.id).await.is_err());
    let out = svc
        .execute_components(&so1, &req.id)
        .await
        .expect("executed by the requester");
    assert_eq!(out.components.len(), 2);
    let issued = out.issued();
    let json = serde_json::to_string(&issued).expect("json");
    for c in &out.components {
        assert!(!json
            .to_lowercase()
            .contains(&c.component.reveal_hex().replace(' ', "").to_lowercase()));
        assert!(json.contains(&c.kcv.to_string()));
    }
    // Once only.
    assert!(svc.execute_components(&so1, &req.id).await.is_err());
    // The trail has the execution, with the holders and the key's check
    // value, not a component.
    let recs = svc
        .store()
        .audit_search(&kms::store::AuditFilter {
            action: Some("request.execute".into()),
            request_id: Some(req.id.clone()),
            ..Default::default()
        })
        .await
        .expect("search");
    let done = recs
        .iter()
        .find(|r| r.event.outcome == Some(kms::audit::Outcome::Success))
        .expect("a success record");
    assert_eq!(
        done.event
            .details
            .get("component_holders")
            .map(String::as_str),
        Some("alice,bob")
    );
    let text = serde_json::to_string(&recs.iter().map(|r| &r.event).collect::<Vec<_>>())
        .expect("json")
        .to_lowercase();
    for c in &out.components {
        assert!(!text.contains(&c.component.reveal_hex().replace(' ', "").to_lowercase()));
    }
}

#[tokio::test]
async fn km2_export_components_refuses_holders_who_are_not_distinct_custodians_in_good_standing() {
    let room = Room::founded(GROUP).await;
    let svc = room.kms.svc();
    let so1 = person(&room, "so1").session(svc).await;
    for (holders, why) in [
        (&["alice", "alice"][..], "twice"),
        (&["alice"][..], "2 or 3"),
        (&["alice", "bob", "carol", "so1"][..], "2 or 3"),
        (&["alice", "mallory"][..], "not enrolled"),
        (&["alice", "so1"][..], "custodian"),
    ] {
        let e = svc.request(&so1, op(holders)).await.err();
        let msg = e.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(why), "{holders:?}: {msg}");
    }
    // A key that exists already is not generated again.
    room.kms
        .import(
            "acme",
            "zmk-partner",
            Algorithm::Aes128,
            KeyUsage::Kek,
            false,
            &[7u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        )
        .await;
    let e = svc.request(&so1, op(&["alice", "bob"])).await.err();
    assert!(
        matches!(&e, Some(ServiceError::Invalid(m)) if m.contains("already")),
        "{e:?}"
    );
    // Nothing was asked of anyone: no request is open.
    let open = svc
        .store()
        .approval_requests_in(&["open"])
        .await
        .expect("requests");
    assert!(open.is_empty(), "{open:?}");
}
