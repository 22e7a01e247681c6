//! First contact with a real token: every algorithm generates, the known AES
//! key wrap answers come out of the token.

use kms::hsm::{Hsm, KeyRef, KeySpec, Role, Trust, WrapAlg};
use kms::model::{Algorithm, KeyUsage, ObjectId};
use kms_e2e::token::TestToken;

fn spec(alg: Algorithm, usage: KeyUsage, exportable: bool) -> KeySpec {
    KeySpec { algorithm: alg, usage, exportable, object_id: ObjectId::random(), label: "t".into(), persistent: true }
}

#[test]
fn km1_every_algorithm_generates_in_the_token() {
    let t = TestToken::new();
    let hsm = t.open();
    for (alg, usage) in [
        (Algorithm::Aes128, KeyUsage::Kek),
        (Algorithm::Aes192, KeyUsage::Data),
        (Algorithm::Aes256, KeyUsage::Mac),
        (Algorithm::Tdes2, KeyUsage::SdKmc),
        (Algorithm::Tdes3, KeyUsage::Kek),
        (Algorithm::Rsa2048, KeyUsage::Signing),
        (Algorithm::EcP256, KeyUsage::Signing),
    ] {
        let s = spec(alg, usage, false);
        let k = hsm.generate(&s, Trust::Normal).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(k.kcv.is_some(), alg.is_secret(), "{alg}");
        let attrs = hsm.attributes(s.object_id).unwrap();
        for a in &attrs {
            if a.class != "public-key" {
                assert!(a.sensitive && !a.extractable, "{alg}: {a:?}");
            }
        }
    }
}

#[test]
fn aes_key_wrap_known_answer_through_a_trusted_kek() {
    let t = TestToken::new();
    let kek_id = ObjectId::random();
    {
        let so = Hsm::open(&t.config(Role::SecurityOfficer)).unwrap();
        let mut s = spec(Algorithm::Aes128, KeyUsage::TransportKek, false);
        s.object_id = kek_id;
        so.import_clear(&s, Trust::TrustedBySecurityOfficer, &hex::decode("9463BAC5ED2CACD7555457852C7A06A7").unwrap()).unwrap();
    }
    let hsm = t.open();
    let s = spec(Algorithm::Aes128, KeyUsage::Data, true);
    hsm.import_clear(&s, Trust::Normal, &hex::decode("165CB0F192ADE0F161F26A0499D8FD63").unwrap()).unwrap();
    let kek = KeyRef { object_id: kek_id, algorithm: Algorithm::Aes128 };
    let key = KeyRef { object_id: s.object_id, algorithm: Algorithm::Aes128 };
    let kw = hsm.wrap(&kek, &key, WrapAlg::AesKw).unwrap();
    assert_eq!(hex::encode_upper(kw), "A8A7CFF882FD6B27BDBC531369E0A6690996546F7817C5C4");
    let kwp = hsm.wrap(&kek, &key, WrapAlg::AesKwp).unwrap();
    assert_eq!(hex::encode_upper(kwp), "5318828E0EB552A3796B11E9D07DC0C4E8EC6276E4129D12");
}
