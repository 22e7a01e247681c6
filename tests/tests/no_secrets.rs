//! Invariant 1 / KM-2: after a full tour of the key layer with known keys,
//! no key value, component, derived key or PIN appears anywhere in the
//! database (cells, free pages, WAL), in any common encoding.

use kms::derivation::{parse_psn, Kdd, Pan};
use kms::model::{Algorithm, KeyUsage, Transition};
use kms::service::SdDiversification;
use kms_e2e::fixture::{actor, destroy_approved, export_approved, name, tenant, TestKms};
use kms_e2e::scan::{find_secrets_in_sqlite, suspicious_values_in_sqlite};
use kms_e2e::vectors::KnownAnswers;

#[test]
fn inv1_km2_no_key_material_or_pin_in_the_database() {
    let v = KnownAnswers::load().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let (db, pins) = rt.block_on(async {
        let mut kms = TestKms::new().await;
        let transport = [0x6Bu8; 16];
        secrets.push(transport.to_vec());
        kms.trusted_kek("issuer-a", "transport", Algorithm::Aes128, &transport)
            .await;
        for (i, k) in v.kcv.iter().enumerate() {
            let fam = if k.kcv_tdes.is_some() {
                kms::model::KeyFamily::Tdes
            } else {
                kms::model::KeyFamily::Aes
            };
            let alg = Algorithm::secret(fam, k.key.len()).unwrap();
            kms.import(
                "issuer-a",
                &format!("k{i}"),
                alg,
                KeyUsage::Data,
                true,
                &k.key,
            )
            .await;
            secrets.push(k.key.clone());
            secrets.extend(k.components.iter().cloned());
        }
        for (i, d) in v.sd_diversification.iter().enumerate() {
            let (alg, method) = if d.kmc.len() == 16 && i % 2 == 0 {
                (Algorithm::Tdes2, SdDiversification::EmvCps11)
            } else {
                (Algorithm::Aes128, SdDiversification::Kdf3)
            };
            kms.import(
                "issuer-a",
                &format!("kmc{i}"),
                alg,
                KeyUsage::SdKmc,
                false,
                &d.kmc,
            )
            .await;
            kms.svc()
                .sd_static_keys(
                    &actor("provisioner"),
                    &tenant("issuer-a"),
                    &name(&format!("kmc{i}")),
                    method,
                    &Kdd::parse_hex(&hex::encode(d.kdd)).unwrap(),
                    &name("transport"),
                )
                .await
                .unwrap();
            secrets.extend([d.kmc.clone(), d.enc.clone(), d.mac.clone(), d.dek.clone()]);
        }
        for (i, e) in v.emv_option_a.iter().enumerate() {
            kms.import(
                "issuer-a",
                &format!("imk{i}"),
                Algorithm::Tdes2,
                KeyUsage::ImkAc,
                false,
                &e.imk,
            )
            .await;
            kms.svc()
                .emv_card_key(
                    &actor("provisioner"),
                    &tenant("issuer-a"),
                    &name(&format!("imk{i}")),
                    &Pan::parse(&e.pan).unwrap(),
                    parse_psn(&e.psn).unwrap(),
                    &name("transport"),
                )
                .await
                .unwrap();
            secrets.extend([e.imk.to_vec(), e.icc_mk.to_vec()]);
        }
        let svc = kms.svc();
        export_approved(svc, "issuer-a", "k0", "transport", None)
            .await
            .unwrap();
        svc.rotate(
            &actor("alice"),
            &tenant("issuer-a"),
            &name("k1"),
            Some("test"),
        )
        .await
        .unwrap();
        svc.transition(
            &actor("alice"),
            &tenant("issuer-a"),
            &name("k2"),
            None,
            Transition::Deactivate,
            None,
        )
        .await
        .unwrap();
        destroy_approved(svc, "issuer-a", "k2", 1).await.unwrap();
        svc.reconcile(kms::service::ReconcileMode::Repair)
            .await
            .unwrap();
        let pins = (kms.token.user_pin.clone(), kms.token.so_pin.clone());
        let db = kms.db_path.clone();
        kms.close();
        // Keep the token directory (and so the database) alive past the runtime.
        std::mem::forget(kms);
        (db, pins)
    });
    drop(rt);
    secrets.push(pins.0.into_bytes());
    secrets.push(pins.1.into_bytes());
    let forbidden: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    let found = find_secrets_in_sqlite(&db, &forbidden);
    assert!(found.is_empty(), "secrets in the database: {found:#?}");
    let suspicious = suspicious_values_in_sqlite(&db);
    assert!(
        suspicious.is_empty(),
        "values that look like key material: {suspicious:#?}"
    );
}
