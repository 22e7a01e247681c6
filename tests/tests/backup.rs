//! Backup and recovery (issue 5, KM-1, KM-2): keys backed up wrapped under
//! a backup KEK whose value only M of N custodians' shares rebuild, the
//! token lost, a brand-new token initialized, the KEK recovered from
//! shares, the keys restored with the same check values and the same
//! answers, nothing of any key in clear in the file or the database.

use kms::crypto::shares::{self, Share};
use kms::hsm::{DeriveAlg, Hsm, KeySpec, MacAlg, Role};
use kms::model::{Algorithm, KeyUsage, ObjectId};
use kms::policy::KeyPolicy;
use kms::service::{renew_lost_system_keys, BackupFile, KeyService, ServiceError};
use kms::store::Store;
use kms_e2e::fixture::{actor, create_req, export_approved, name, tenant, TestKms};
use kms_e2e::reference::{aes_cmac, aes_key_unwrap_pad, emv_cps11_derivation_data, tdes_kcv};
use kms_e2e::reference::{emv_cps11_diversify, same_des_key, SdKey};
use kms_e2e::scan::{encodings, find_secrets_in_sqlite};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

const KMC: [u8; 16] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F,
];
const IMK_AC: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
];
const SD_ENC: [u8; 16] = [
    0x2B, 0x7E, 0x15, 0x16, 0x28, 0xAE, 0xD2, 0xA6, 0xAB, 0xF7, 0x15, 0x88, 0x09, 0xCF, 0x4F, 0x3C,
];
const MAC_KEY: [u8; 16] = [
    0x60, 0x3D, 0xEB, 0x10, 0x15, 0xCA, 0x71, 0xBE, 0x2B, 0x73, 0xAE, 0xF0, 0x85, 0x7D, 0x77, 0x81,
];
const KDD: [u8; 10] = [0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
const MAC_DATA: &[u8] = b"a message the restored MAC key must still authenticate";
const KEK: &str = "backup-kek";

/// The keys of an issuer: known values through components (so answers can
/// be checked in software) and generated ones of every other kind.
async fn populate(kms: &TestKms) {
    let i = "issuer-a";
    kms.import(i, "kmc", Algorithm::Tdes2, KeyUsage::SdKmc, false, &KMC)
        .await;
    kms.import(
        i,
        "imk-ac",
        Algorithm::Tdes2,
        KeyUsage::ImkAc,
        false,
        &IMK_AC,
    )
    .await;
    kms.import(
        i,
        "sd-enc",
        Algorithm::Aes128,
        KeyUsage::SdStaticEnc,
        true,
        &SD_ENC,
    )
    .await;
    kms.import(i, "mac", Algorithm::Aes128, KeyUsage::Mac, false, &MAC_KEY)
        .await;
    let svc = kms.svc();
    let a = actor("alice");
    for (n, alg, usage) in [
        ("kmc-aes", Algorithm::Aes256, KeyUsage::SdKmc),
        ("kmc-3des", Algorithm::Tdes3, KeyUsage::SdKmc),
        ("data", Algorithm::Aes192, KeyUsage::Data),
        ("hmac", Algorithm::HmacSha256, KeyUsage::Mac),
        ("kek", Algorithm::Aes256, KeyUsage::Kek),
    ] {
        svc.create(&a, create_req(i, n, alg, usage, false))
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    // Two live versions of one key.
    svc.rotate(&a, &tenant(i), &name("data"), Some("test"))
        .await
        .unwrap();
    // Not backed up: an audit-usage key and a signing key pair.
    svc.create(
        &a,
        create_req(i, "audit", Algorithm::HmacSha256, KeyUsage::Audit, false),
    )
    .await
    .unwrap();
    svc.create(
        &a,
        create_req(i, "signing", Algorithm::EcP256, KeyUsage::Signing, false),
    )
    .await
    .unwrap();
}

/// (tenant/name/version) -> KCV of every live version in the database.
async fn kcvs(svc: &KeyService) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for rec in svc.store().list_keys(None).await.unwrap() {
        for v in &rec.versions {
            if v.presence == kms::store::Presence::Present {
                out.insert(
                    format!("{}/{}/{}", rec.tenant, rec.name, v.version),
                    v.kcv.clone().unwrap_or_default(),
                );
            }
        }
    }
    out
}

/// The answers only the right keys give: AES-CMAC under the MAC key, and
/// EMV CPS 1.1 diversification from the KMC inside the token (the derived
/// key's check value), both against software.
async fn known_answers(svc: &KeyService) -> (Vec<u8>, Vec<u8>) {
    let mut refs = Vec::new();
    for n in ["mac", "kmc"] {
        let rec = svc.get(&tenant("issuer-a"), &name(n)).await.unwrap();
        refs.push(KeyService::key_ref(&rec, rec.current().unwrap()).unwrap());
    }
    let hsm = svc.hsm();
    let mac = hsm.mac(&refs[0], MacAlg::AesCmac, MAC_DATA).unwrap();
    assert_eq!(mac, aes_cmac(&MAC_KEY, MAC_DATA).to_vec());
    let derived = KeySpec {
        algorithm: Algorithm::Tdes2,
        usage: KeyUsage::SdStaticEnc,
        exportable: false,
        object_id: ObjectId::random(),
        label: "derived".into(),
        persistent: true,
    };
    let made = hsm
        .derive(
            &refs[1],
            &DeriveAlg::TdesEcb(emv_cps11_derivation_data(&KDD, SdKey::Enc).to_vec()),
            &derived,
        )
        .unwrap();
    hsm.destroy(derived.object_id).unwrap();
    let expected = emv_cps11_diversify(&KMC, &KDD).enc;
    let kcv = made.kcv.unwrap();
    assert_eq!(kcv, tdes_kcv(&expected).to_vec(), "EMV CPS 1.1 ENC key");
    (mac, kcv)
}

/// The token is lost: a brand-new one with the same label and PINs takes
/// its place (no object of the old one survives).
fn replace_token(kms: &TestKms) {
    let conf = kms.token.conf();
    let run = |args: &[&str]| {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(args)
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["--delete-token", "--token", kms_e2e::token::LABEL]);
    run(&[
        "--init-token",
        "--free",
        "--label",
        kms_e2e::token::LABEL,
        "--pin",
        &kms.token.user_pin,
        "--so-pin",
        &kms.token.so_pin,
    ]);
}

/// Create the backup KEK (security officer) and return the custodians'
/// shares as they would type them back, and the KEK's check value.
async fn backup_kek(kms: &mut TestKms, m: u8, n: u8) -> (Vec<String>, String) {
    let k = kms.backup_kek(KEK, m, n).await;
    assert_eq!(k.shares.len(), usize::from(n));
    let v = k.key.current().unwrap();
    assert!(v.trusted);
    assert_eq!(v.kcv.as_deref(), Some(k.kcv.as_str()));
    let texts = k.shares.iter().map(|s| s.to_text().to_string()).collect();
    (texts, k.kcv)
}

fn parse(texts: &[String]) -> Vec<Share> {
    texts.iter().map(|t| Share::parse(t).unwrap()).collect()
}

async fn open_store(kms: &TestKms) -> Store {
    Store::connect(&kms.db_url).await.unwrap()
}

async fn open_hsm(kms: &TestKms, role: Role) -> Arc<Hsm> {
    let cfg = kms.token.config(role);
    Arc::new(
        tokio::task::spawn_blocking(move || Hsm::open(&cfg))
            .await
            .unwrap()
            .unwrap(),
    )
}

/// After the token was lost: the security officer recovers the KEK from
/// `shares`; then the user login renews the KMS's own keys and opens.
async fn recover(
    kms: &TestKms,
    shares: &[String],
    expect_kcv: &str,
    file: Option<&BackupFile>,
) -> KeyService {
    let so = TestKms::service(&kms.token, &kms.db_url, Role::SecurityOfficer).await;
    so.recover_backup_kek(&actor("so1"), &name(KEK), parse(shares), Some(expect_kcv))
        .await
        .expect("recover the backup KEK");
    let unmaced = so.audit().take_unmaced();
    drop(so);
    let hsm = open_hsm(kms, Role::User).await;
    let store = open_store(kms).await;
    let renewal = renew_lost_system_keys(hsm.clone(), &store, &actor("operator"), file)
        .await
        .unwrap();
    let mac = if file.is_some() {
        "kms/audit-mac: restored from the backup"
    } else {
        "kms/audit-mac: lost with the old token; new version 2"
    };
    assert_eq!(
        renewal.done,
        [
            mac,
            "kms/audit-signing: lost with the old token; new version 2"
        ]
    );
    let svc = KeyService::open(hsm, store, KeyPolicy::builtin(), "test")
        .await
        .expect("the service opens on the new token");
    svc.audit().countersign(unmaced).await.unwrap();
    renewal.countersign(&svc).await.unwrap();
    svc
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_km1_backup_restores_onto_a_brand_new_token_with_the_same_kcvs_and_answers() {
    let mut kms = TestKms::new().await;
    populate(&kms).await;
    let (mac_before, derived_before) = known_answers(kms.svc()).await;
    let (shares, kek_kcv) = backup_kek(&mut kms, 2, 3).await;
    let before = kcvs(kms.svc()).await;
    let file = kms
        .svc()
        .backup(&actor("alice"), &name(KEK))
        .await
        .expect("backup");
    assert_eq!(file.kek.kcv, kek_kcv);
    // Every live version of a backed-up usage, nothing else.
    let mut names: Vec<_> = file
        .entries
        .iter()
        .map(|e| format!("{}/{}/{}", e.tenant, e.name, e.version))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "issuer-a/data/1",
            "issuer-a/data/2",
            "issuer-a/hmac/1",
            "issuer-a/imk-ac/1",
            "issuer-a/kek/1",
            "issuer-a/kmc-3des/1",
            "issuer-a/kmc-aes/1",
            "issuer-a/kmc/1",
            "issuer-a/mac/1",
            "issuer-a/sd-enc/1",
            // The KMS's own audit MAC key, so the trail verifies after a loss.
            "kms/audit-mac/1",
        ]
    );
    assert!(file.skipped.is_empty(), "{:?}", file.skipped);
    for e in &file.entries {
        if e.algorithm != Algorithm::HmacSha256.as_str() {
            assert_eq!(
                before[&format!("{}/{}/{}", e.tenant, e.name, e.version)],
                e.kcv
            );
        }
    }
    let text = file.to_json().unwrap();
    let backup_path = kms.token.dir.path().join("backup.json");
    std::fs::write(&backup_path, &text).unwrap();

    // The KEK the custodians' shares rebuild opens the file's entries (so
    // the file holds the real keys, wrapped), and no key is in it in clear.
    let kek_value = shares::combine(&parse(&shares[1..])).unwrap();
    let wrapped_kmc = file.entries.iter().find(|e| e.name == "kmc").unwrap();
    let kmc = aes_key_unwrap_pad(
        kek_value.as_bytes(),
        &hex::decode(&wrapped_kmc.wrapped).unwrap(),
    )
    .unwrap();
    assert!(same_des_key(&kmc, &KMC));

    // The token is lost.
    kms.close();
    replace_token(&kms);

    // M-1 shares are refused and leave nothing on the token.
    let refused_unmaced = {
        let so = TestKms::service(&kms.token, &kms.db_url, Role::SecurityOfficer).await;
        let e = so
            .recover_backup_kek(&actor("so1"), &name(KEK), parse(&shares[..1]), None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Invalid(_) | ServiceError::Refused(_)),
            "{e}"
        );
        assert_eq!(so.hsm().object_count().unwrap(), 0);
        so.audit().take_unmaced()
    };
    let parsed = BackupFile::from_json(&text).unwrap();
    let svc = recover(
        &kms,
        &[shares[0].clone(), shares[2].clone()],
        &kek_kcv,
        Some(&parsed),
    )
    .await;
    let report = svc
        .restore(&actor("alice"), &parsed)
        .await
        .expect("restore");
    // All but the audit MAC key, restored before the service opened.
    assert_eq!(report.restored.len(), file.entries.len() - 1);
    assert_eq!(report.present.len(), 1);
    svc.audit().countersign(refused_unmaced).await.unwrap();

    // Every record written before the token was lost still has a MAC the
    // (restored) audit key verifies.
    let records = svc
        .store()
        .audit_search(&kms::store::AuditFilter::default())
        .await
        .unwrap();
    let verdicts = svc.audit().check_macs(records).await.unwrap();
    assert!(verdicts.len() > 50, "{}", verdicts.len());
    let bad: Vec<_> = verdicts.iter().filter(|(_, ok)| !ok).collect();
    assert!(bad.is_empty(), "{bad:?}");

    // The same check values, read back from the token, and the same answers.
    let after = kcvs(&svc).await;
    for e in &file.entries {
        let key = format!("{}/{}/{}", e.tenant, e.name, e.version);
        if e.algorithm != Algorithm::HmacSha256.as_str() {
            assert_eq!(after[&key], before[&key], "{key}");
        }
    }
    let (mac_after, derived_after) = known_answers(&svc).await;
    assert_eq!(mac_after, mac_before);
    assert_eq!(derived_after, derived_before);

    // Restored keys carry the attributes their usage gives: sensitive,
    // extractable (backed up) only with wrap-with-trusted, never trusted.
    for e in &file.entries {
        let rec = svc.get(&tenant(&e.tenant), &name(&e.name)).await.unwrap();
        let v = rec.version(e.version).unwrap();
        for a in svc.hsm().attributes(v.object_id).unwrap() {
            assert!(
                a.sensitive && a.extractable && a.wrap_with_trusted,
                "{e:?}: {a:?}"
            );
            assert!(!a.trusted, "{e:?}");
        }
    }

    // A second restore finds everything present and changes nothing.
    let again = svc
        .restore(&actor("alice"), &BackupFile::from_json(&text).unwrap())
        .await
        .unwrap();
    assert!(again.restored.is_empty());
    assert_eq!(again.present.len(), file.entries.len());

    // Audited: the backup (with its digest), the recovery, the restore.
    let trail = svc
        .store()
        .audit_search(&kms::store::AuditFilter {
            action: Some("backup.*".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let find = |action: &str| {
        trail
            .iter()
            .filter(|r| r.event.action == action)
            .map(|r| r.event.clone())
            .collect::<Vec<_>>()
    };
    assert!(find("backup.kek-create")
        .iter()
        .any(|e| e.outcome == Some(kms::audit::Outcome::Success)));
    assert!(find("backup.file")
        .iter()
        .any(|e| e.details.get("digest") == Some(&file.digest)));
    let recoveries = find("backup.kek-recover");
    assert!(recoveries
        .iter()
        .any(|e| e.outcome == Some(kms::audit::Outcome::Refused)
            || e.outcome == Some(kms::audit::Outcome::Failure)));
    assert!(recoveries
        .iter()
        .any(|e| e.outcome == Some(kms::audit::Outcome::Success)));
    let restore = find("backup.restore");
    let ok = restore
        .iter()
        .find(|e| e.outcome == Some(kms::audit::Outcome::Success))
        .unwrap();
    assert_eq!(ok.keys.len(), file.entries.len() - 1);

    // No key, share or KEK value in clear in the file or the database.
    let mut secrets: Vec<Vec<u8>> = vec![
        KMC.to_vec(),
        IMK_AC.to_vec(),
        SD_ENC.to_vec(),
        MAC_KEY.to_vec(),
        kek_value.as_bytes().to_vec(),
    ];
    for s in parse(&shares) {
        secrets.push(s.as_bytes().to_vec());
    }
    let forbidden: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    drop(svc);
    let found = find_secrets_in_sqlite(&kms.db_path, &forbidden);
    assert!(found.is_empty(), "{found:?}");
    let file_bytes = std::fs::read(&backup_path).unwrap();
    for s in &secrets {
        for (how, enc) in encodings(s) {
            assert!(
                !file_bytes.windows(enc.len()).any(|w| w == enc.as_slice()),
                "a secret in the backup file ({how})"
            );
        }
    }
    for t in &shares {
        assert!(!String::from_utf8_lossy(&file_bytes).contains(t.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_tampered_backup_is_refused_and_nothing_is_restored() {
    let mut kms = TestKms::new().await;
    populate(&kms).await;
    let (shares, kek_kcv) = backup_kek(&mut kms, 2, 2).await;
    let file = kms.svc().backup(&actor("alice"), &name(KEK)).await.unwrap();
    let text = file.to_json().unwrap();
    kms.close();
    replace_token(&kms);
    let svc = recover(&kms, &shares, &kek_kcv, Some(&file)).await;
    let objects = svc.hsm().object_count().unwrap();

    // An edited file is refused by its digest.
    let kcv = &file.entries[0].kcv;
    let edited = text.replacen(kcv.as_str(), "000000", 1);
    assert!(BackupFile::from_json(&edited).is_err());
    let mut forged = file.clone();
    forged.entries[0].exportable = !forged.entries[0].exportable;
    let e = svc.restore(&actor("alice"), &forged).await.unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");

    // A forger who recomputes the digest gains nothing: two wrapped values
    // of the same algorithm swapped are caught by their check values, and
    // the keys restored before the mismatch are destroyed again.
    let mut swapped = file.clone();
    let tdes: Vec<usize> = swapped
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.algorithm == Algorithm::Tdes2.as_str())
        .map(|(i, _)| i)
        .collect();
    assert!(tdes.len() >= 2);
    let w0 = swapped.entries[tdes[0]].wrapped.clone();
    swapped.entries[tdes[0]].wrapped = swapped.entries[tdes[1]].wrapped.clone();
    swapped.entries[tdes[1]].wrapped = w0;
    // Put the swapped entries last, so others are restored first.
    let a = swapped.entries.remove(tdes[1]);
    let b = swapped.entries.remove(tdes[0]);
    swapped.entries.push(b);
    swapped.entries.push(a);
    swapped.digest = digest(&swapped);
    let e = svc.restore(&actor("alice"), &swapped).await.unwrap_err();
    assert!(e.to_string().contains("check value"), "{e}");
    assert_eq!(
        svc.hsm().object_count().unwrap(),
        objects,
        "no partial restore"
    );

    // The honest file still restores everything.
    let report = svc.restore(&actor("alice"), &file).await.unwrap();
    assert_eq!(report.restored.len(), file.entries.len() - 1);
}

fn digest(f: &BackupFile) -> String {
    use sha2::Digest;
    let blank = BackupFile {
        digest: String::new(),
        ..f.clone()
    };
    hex::encode_upper(sha2::Sha256::digest(serde_json::to_vec(&blank).unwrap()))
}

/// A backed-up key that is not exportable is wrapped only by the backup;
/// the export path keeps refusing it even under a trusted KEK. A restore
/// before the KEK is recovered, or by the wrong login, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn km2_backed_up_key_is_still_not_exportable_and_restore_needs_the_recovered_kek() {
    let mut kms = TestKms::new().await;
    kms.trusted_kek("issuer-a", "transport", Algorithm::Aes128, &[0x5A; 16])
        .await;
    kms.import(
        "issuer-a",
        "kmc",
        Algorithm::Tdes2,
        KeyUsage::SdKmc,
        false,
        &KMC,
    )
    .await;
    let (shares, kek_kcv) = backup_kek(&mut kms, 2, 3).await;
    let e = export_approved(kms.svc(), "issuer-a", "kmc", "transport", None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");

    let file = kms.svc().backup(&actor("alice"), &name(KEK)).await.unwrap();
    // The trusted transport KEK is not in the backup: trust is re-made by
    // its ceremony. (The other entry is the KMS's audit MAC key.)
    assert_eq!(file.entries.len(), 2);
    assert_eq!(file.skipped.len(), 1, "{:?}", file.skipped);
    assert_eq!(file.skipped[0].name, "transport");
    // The security officer's login cannot make a backup (it cannot see the
    // keys), nor the user's create a backup KEK, even approved.
    let so1 = kms_e2e::people::person("so1").session(kms.svc()).await;
    let req = kms
        .svc()
        .request(
            &so1,
            kms::service::Operation::BackupKek {
                name: "other".into(),
                threshold: 2,
                shares: 3,
            },
        )
        .await
        .unwrap();
    kms_e2e::people::person("bob")
        .approve(kms.svc(), &req.id)
        .await
        .unwrap();
    let e = kms
        .svc()
        .execute_backup_kek(&so1, &req.id)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");

    kms.close();
    replace_token(&kms);
    // The user login, on the new token, before the KEK is recovered.
    let hsm = open_hsm(&kms, Role::User).await;
    let store = open_store(&kms).await;
    let renewal = renew_lost_system_keys(hsm.clone(), &store, &actor("operator"), None)
        .await
        .unwrap();
    assert_eq!(renewal.done.len(), 2);
    let svc = KeyService::open(hsm, store, KeyPolicy::builtin(), "test")
        .await
        .unwrap();
    renewal.countersign(&svc).await.unwrap();
    let e = svc.restore(&actor("alice"), &file).await.unwrap_err();
    assert!(e.to_string().contains("kek-recover"), "{e}");
    drop(svc);

    let so = TestKms::service(&kms.token, &kms.db_url, Role::SecurityOfficer).await;
    // Shares of another split are refused too.
    let other = kms::crypto::UnsealSecret::from_bytes(
        &[7u8; 31].iter().chain(&[8u8]).copied().collect::<Vec<_>>(),
    )
    .unwrap();
    let foreign = shares::split(&other, 2, 2).unwrap();
    let mixed = vec![
        Share::parse(&shares[0]).unwrap(),
        foreign.into_iter().next().unwrap(),
    ];
    assert!(so
        .recover_backup_kek(&actor("so1"), &name(KEK), mixed, None)
        .await
        .is_err());
    // A backup file of another KEK is refused before any share is used.
    assert!(so
        .recover_backup_kek(
            &actor("so1"),
            &name(KEK),
            parse(&shares[..2]),
            Some("000000")
        )
        .await
        .is_err());
    so.recover_backup_kek(
        &actor("so1"),
        &name(KEK),
        parse(&shares[1..]),
        Some(&kek_kcv),
    )
    .await
    .unwrap();
    // Once is enough.
    assert!(so
        .recover_backup_kek(&actor("so1"), &name(KEK), parse(&shares[..2]), None)
        .await
        .is_err());
    drop(so);
    let svc = TestKms::service(&kms.token, &kms.db_url, Role::User).await;
    let report = svc.restore(&actor("alice"), &file).await.unwrap();
    assert_eq!(report.restored.len(), 1);
    // Still not exportable after the restore.
    let e = export_approved(&svc, "issuer-a", "kmc", "transport", None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");
}
