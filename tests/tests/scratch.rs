use kms::hsm::{DeriveAlg, KeyRef, KeySpec, Trust};
use kms::model::{Algorithm, KeyUsage, ObjectId};
use kms_e2e::token::TestToken;
#[test]
fn scratch() {
    let t = TestToken::new();
    let hsm = t.open();
    let imk = KeySpec { algorithm: Algorithm::Tdes2, usage: KeyUsage::ImkAc, exportable: false, object_id: ObjectId::random(), label: "x".into(), persistent: true };
    let c = hsm.import_clear(&imk, Trust::Normal, &hex::decode("A132437515D0625E20A234B60BBF6823").unwrap()).unwrap();
    eprintln!("imk kcv {:?}", c.kcv.map(hex::encode));
    let data = hex::decode("0474992488322060FB8B66DB77CDDF9F").unwrap();
    for (alg, usage) in [(Algorithm::Tdes2, KeyUsage::Data), (Algorithm::Tdes3, KeyUsage::Data)] {
        let mut d = imk.clone(); d.object_id = ObjectId::random(); d.usage = usage; d.algorithm = alg;
        let dd = if alg == Algorithm::Tdes3 { [data.clone(), data[..8].to_vec()].concat() } else { data.clone() };
        match hsm.derive(&KeyRef { object_id: imk.object_id, algorithm: Algorithm::Tdes2 }, &DeriveAlg::TdesEcb(dd), &d) {
            Ok(k) => eprintln!("{alg} derived kcv {:?} attrs {:?}", k.kcv.map(hex::encode), hsm.attributes(d.object_id).unwrap()[0].check_value.clone().map(hex::encode)),
            Err(e) => eprintln!("{alg} err {e}"),
        }
    }
}
