//! Invariant 2 (DEVELOPERS.md), KM-2: every key object is read back from the
//! token through PKCS#11 and its attributes checked; wrapping is refused
//! wherever the attributes say so; no key both wraps and decrypts. A key is
//! extractable exactly when it is exportable or its usage is backed up, and
//! then always sensitive and wrap-with-trusted.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use kms::hsm::{DeriveAlg, KeySpec, WrapAlg};
use kms::model::{Algorithm, KeyUsage, ObjectId};
use kms::service::{KeyService, ServiceError};
use kms_e2e::fixture::{actor, create_req, export_approved, name, tenant, TestKms};
use std::collections::HashMap;

const KEK_VALUE: [u8; 16] = [0x11; 16];

/// Each object we made, and whether it may be extractable (exportable, or
/// a secret key whose usage the policy backs up).
async fn populate(kms: &mut TestKms) -> HashMap<ObjectId, bool> {
    let mut rec = kms
        .trusted_kek("t1", "trusted-kek", Algorithm::Aes256, &[0x5A; 32])
        .await;
    let mut exportable = HashMap::new();
    exportable.insert(rec.current().unwrap().object_id, false);
    // The KMS's audit MAC key is in every backup (the trail must verify
    // after a token loss); its checkpoint signing key never leaves.
    let own_mac = kms
        .svc()
        .get(&tenant("kms"), &name("audit-mac"))
        .await
        .unwrap();
    exportable.insert(own_mac.current().unwrap().object_id, true);
    let policy = kms.svc().policy().clone();
    let mut n = 0;
    for usage in KeyUsage::ALL {
        for alg in Algorithm::ALL {
            if !usage.allows(alg) || matches!(alg, Algorithm::Rsa3072 | Algorithm::Rsa4096) {
                continue;
            }
            for exp in [false, true] {
                if exp && (!policy.may_export(usage) || !alg.is_secret()) {
                    continue;
                }
                n += 1;
                rec = kms
                    .svc()
                    .create(
                        &actor("alice"),
                        create_req("t1", &format!("k{n}"), alg, usage, exp),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{usage} {alg}: {e}"));
                let backed_up = policy.backs_up(usage) && alg.is_secret();
                exportable.insert(rec.current().unwrap().object_id, exp || backed_up);
            }
        }
    }
    // A derived token key, and an unwrapped one.
    let hsm = kms.svc().hsm().clone();
    let kmc = kms
        .svc()
        .create(
            &actor("alice"),
            create_req("t1", "kmc", Algorithm::Tdes2, KeyUsage::SdKmc, false),
        )
        .await
        .unwrap();
    // A KMC is never exportable but is backed up.
    exportable.insert(kmc.current().unwrap().object_id, true);
    let base = KeyService::key_ref(&kmc, kmc.current().unwrap()).unwrap();
    let derived = KeySpec {
        algorithm: Algorithm::Tdes2,
        usage: KeyUsage::SdStaticEnc,
        exportable: false,
        object_id: ObjectId::random(),
        label: "derived".into(),
        persistent: true,
    };
    hsm.derive(&base, &DeriveAlg::TdesEcb(vec![1; 16]), &derived)
        .unwrap();
    exportable.insert(derived.object_id, false);
    exportable
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_invariant2_every_key_object_read_back_from_the_token() {
    let mut kms = TestKms::new().await;
    let exportable = populate(&mut kms).await;
    let hsm = kms.svc().hsm().clone();
    let objects = hsm.list_objects().unwrap();
    assert!(objects.len() >= exportable.len());
    let mut checked = 0;
    for o in objects {
        let id = o.object_id.expect("all objects are ours");
        for a in hsm.attributes(id).unwrap() {
            if a.class == "public-key" {
                assert!(!a.encrypt || !a.wrap, "{o:?}: {a:?}");
                continue;
            }
            checked += 1;
            assert!(a.sensitive, "{o:?} is not sensitive: {a:?}");
            // Objects not in the map (the audit signing key) never are.
            assert_eq!(
                a.extractable,
                exportable.get(&id).copied().unwrap_or(false),
                "{o:?}: extractable iff exportable or backed up"
            );
            if a.extractable {
                assert!(
                    a.wrap_with_trusted,
                    "{o:?} extractable without wrap-with-trusted"
                );
            }
            assert!(
                !((a.wrap || a.unwrap) && (a.encrypt || a.decrypt)),
                "{o:?} both wraps and encrypts: {a:?}"
            );
        }
    }
    assert!(checked >= exportable.len(), "checked {checked}");
}

/// A key neither exportable nor backed up (here the KMS's kind of audit
/// MAC key) cannot be wrapped by any key, trusted or not. A backed-up key
/// that is not exportable can be wrapped by a trusted KEK only (that is
/// what the backup KEK does), and the export path still refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn km2_non_exportable_key_cannot_be_wrapped_by_any_key() {
    let mut kms = TestKms::new().await;
    kms.trusted_kek("t1", "trusted", Algorithm::Aes128, &KEK_VALUE)
        .await;
    let svc = kms.svc();
    assert!(!svc.policy().backs_up(KeyUsage::Audit));
    assert!(svc.policy().backs_up(KeyUsage::Data));
    let untrusted = svc
        .create(
            &actor("a"),
            create_req("t1", "untrusted", Algorithm::Aes128, KeyUsage::Kek, false),
        )
        .await
        .unwrap();
    let never = svc
        .create(
            &actor("a"),
            create_req("t1", "never", Algorithm::HmacSha256, KeyUsage::Audit, false),
        )
        .await
        .unwrap();
    let secret = svc
        .create(
            &actor("a"),
            create_req("t1", "secret", Algorithm::Aes128, KeyUsage::Data, false),
        )
        .await
        .unwrap();
    let exp = svc
        .create(
            &actor("a"),
            create_req("t1", "exp", Algorithm::Aes128, KeyUsage::Data, true),
        )
        .await
        .unwrap();
    let trusted = svc.get(&tenant("t1"), &name("trusted")).await.unwrap();
    let r = |k: &kms::store::KeyRecord| KeyService::key_ref(k, k.current().unwrap()).unwrap();
    let hsm = svc.hsm();
    for kek in [&trusted, &untrusted] {
        for alg in [WrapAlg::AesKw, WrapAlg::AesKwp] {
            let e = hsm.wrap(&r(kek), &r(&never), alg).unwrap_err();
            assert!(matches!(e, kms::hsm::HsmError::Refused { .. }), "{e}");
        }
    }
    // Backed up and exportable alike: only a trusted KEK may wrap them.
    for key in [&secret, &exp] {
        assert!(hsm.wrap(&r(&trusted), &r(key), WrapAlg::AesKwp).is_ok());
        let e = hsm
            .wrap(&r(&untrusted), &r(key), WrapAlg::AesKwp)
            .unwrap_err();
        assert!(matches!(e, kms::hsm::HsmError::Refused { .. }), "{e}");
    }
    // And the service refuses to even ask for a non-exportable key, backed
    // up or not.
    for key in ["secret", "never"] {
        let e = export_approved(svc, "t1", key, "trusted", None)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Refused(_)), "{key}: {e}");
    }
}

/// Outside our API, straight through PKCS#11: a KEK cannot decrypt (so a
/// wrapped blob cannot be opened with it), a data key cannot wrap, and the
/// flags cannot be changed afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn km2_no_key_can_both_wrap_and_decrypt() {
    let mut kms = TestKms::new().await;
    let svc = kms.svc().clone();
    let kek = svc
        .create(
            &actor("a"),
            create_req("t1", "kek", Algorithm::Aes128, KeyUsage::Kek, false),
        )
        .await
        .unwrap();
    let data = svc
        .create(
            &actor("a"),
            create_req("t1", "data", Algorithm::Aes128, KeyUsage::Data, true),
        )
        .await
        .unwrap();
    let tdes_kek = svc
        .create(
            &actor("a"),
            create_req("t1", "tkek", Algorithm::Tdes3, KeyUsage::Kek, false),
        )
        .await
        .unwrap();
    let ids: Vec<_> = [&kek, &data, &tdes_kek]
        .iter()
        .map(|k| k.current().unwrap().object_id)
        .collect();
    let pin = kms.token.user_pin.clone();
    drop(svc);
    kms.close();

    let p = Pkcs11::new(kms_e2e::token::module_path()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_initialized_token().unwrap()[0];
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&pin.as_str().into())).unwrap();
    let find = |id: &ObjectId| {
        s.find_objects(&[
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Class(ObjectClass::SECRET_KEY),
        ])
        .unwrap()[0]
    };
    let (kek_h, data_h, tkek_h) = (find(&ids[0]), find(&ids[1]), find(&ids[2]));
    assert!(
        s.decrypt(&Mechanism::AesEcb, kek_h, &[0u8; 16]).is_err(),
        "a KEK decrypted"
    );
    assert!(
        s.encrypt(&Mechanism::AesEcb, kek_h, &[0u8; 16]).is_err(),
        "a KEK encrypted"
    );
    assert!(
        s.decrypt(&Mechanism::Des3Ecb, tkek_h, &[0u8; 8]).is_err(),
        "a TDES KEK decrypted"
    );
    assert!(
        s.wrap_key(&Mechanism::AesKeyWrap, data_h, kek_h).is_err(),
        "a data key wrapped"
    );
    assert!(
        s.update_attributes(kek_h, &[Attribute::Decrypt(true)])
            .is_err(),
        "a KEK was given CKA_DECRYPT"
    );
    let v = s.get_attributes(kek_h, &[AttributeType::Value]);
    assert!(
        !matches!(v.as_deref(), Ok([Attribute::Value(x)]) if !x.is_empty()),
        "a KEK value was read"
    );
}
