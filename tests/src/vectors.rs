//! The known answers in `shared/vectors/known-answers.json`, from an
//! independent reference implementation, typed.
//!
//! The file lives outside the repository (`<repo>/../shared` in CI,
//! `/work/shared` on the development machines), so it is found at run time:
//! `KMS_VECTORS` if set, otherwise the first `shared/vectors/known-answers.json`
//! in this crate's directory or any directory above it.

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

/// Relative to a directory that contains `shared/`.
const RELATIVE: &str = "shared/vectors/known-answers.json";
const FILE_NAME: &str = "known-answers.json";

#[derive(Debug, Clone, Deserialize)]
pub struct KnownAnswers {
    pub kcv: Vec<KcvVector>,
    pub sd_diversification: Vec<SdDiversification>,
    pub scp02: Vec<Scp02Vector>,
    pub scp03: Vec<Scp03Vector>,
    pub emv_option_a: Vec<EmvOptionA>,
    pub aes_key_wrap: Vec<AesKeyWrap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorAlg {
    Tdes,
    Aes,
}

/// A key, its three XOR components and its check values.
#[derive(Debug, Clone, Deserialize)]
pub struct KcvVector {
    pub alg: VectorAlg,
    #[serde(deserialize_with = "hex")]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "hex_list")]
    pub components: Vec<Vec<u8>>,
    #[serde(default, deserialize_with = "hex_opt")]
    pub kcv_tdes: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "hex_opt")]
    pub kcv_aes_cmac: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "hex_opt")]
    pub kcv_aes_gp: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SdMethod {
    /// EMV CPS 1.1 §5.4.2, 2-key TDES KMC.
    #[serde(rename = "emv-cps11")]
    EmvCps11,
    /// GlobalPlatformPro's "kdf3": the SCP03 CMAC KDF over the KDD, AES KMC.
    #[serde(rename = "kdf3")]
    Kdf3,
}

/// Security Domain static keys diversified from a master key (KMC).
#[derive(Debug, Clone, Deserialize)]
pub struct SdDiversification {
    pub method: SdMethod,
    #[serde(deserialize_with = "hex")]
    pub kmc: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub kdd: [u8; 10],
    #[serde(deserialize_with = "hex")]
    pub enc: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub mac: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub dek: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Scp02Vector {
    #[serde(deserialize_with = "hex")]
    pub k_enc: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub k_mac: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub k_dek: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub sequence_counter: [u8; 2],
    #[serde(deserialize_with = "hex")]
    pub host_challenge: [u8; 8],
    #[serde(deserialize_with = "hex")]
    pub card_challenge: [u8; 6],
    #[serde(deserialize_with = "hex")]
    pub s_enc: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub s_mac: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub s_rmac: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub s_dek: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub card_cryptogram: [u8; 8],
    #[serde(deserialize_with = "hex")]
    pub host_cryptogram: [u8; 8],
}

/// Static keys are AES-128 or AES-256; session keys have the same length.
#[derive(Debug, Clone, Deserialize)]
pub struct Scp03Vector {
    #[serde(deserialize_with = "hex")]
    pub k_enc: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub k_mac: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub host_challenge: [u8; 8],
    #[serde(deserialize_with = "hex")]
    pub card_challenge: [u8; 8],
    #[serde(deserialize_with = "hex")]
    pub s_enc: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub s_mac: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub s_rmac: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub card_cryptogram: [u8; 8],
    #[serde(deserialize_with = "hex")]
    pub host_cryptogram: [u8; 8],
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmvOptionA {
    #[serde(deserialize_with = "hex")]
    pub imk: [u8; 16],
    pub pan: String,
    pub psn: String,
    #[serde(deserialize_with = "hex")]
    pub icc_mk: [u8; 16],
    #[serde(deserialize_with = "hex")]
    pub kcv_tdes: [u8; 3],
}

#[derive(Debug, Clone, Deserialize)]
pub struct AesKeyWrap {
    #[serde(deserialize_with = "hex")]
    pub kek: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub rfc3394: Vec<u8>,
    #[serde(deserialize_with = "hex")]
    pub rfc5649: Vec<u8>,
}

impl KnownAnswers {
    /// Finds and reads the known answers; see the module documentation.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_from(&path()?)
    }

    pub fn load_from(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading known answers from {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing known answers in {}", path.display()))
    }
}

/// Where the known answers are.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(v) = std::env::var_os("KMS_VECTORS") {
        let p = PathBuf::from(v);
        let p = if p.is_dir() { p.join(FILE_NAME) } else { p };
        if !p.is_file() {
            bail!("KMS_VECTORS points to {}, which is not a file", p.display());
        }
        return Ok(p);
    }
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Walking up also covers `<repo>/../shared`: the repository's parent is
    // one of the ancestors.
    let tried: Vec<PathBuf> = start.ancestors().map(|d| d.join(RELATIVE)).collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "no {RELATIVE} above {}; set KMS_VECTORS to the file. Tried: {}",
            start.display(),
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn hex<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<Vec<u8>>,
{
    let s = String::deserialize(d)?;
    decode(&s)
}

fn hex_opt<'de, D>(d: D) -> Result<Option<Vec<u8>>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<String>::deserialize(d)?
        .map(|s| decode(&s))
        .transpose()
}

fn hex_list<'de, D>(d: D) -> Result<Vec<Vec<u8>>, D::Error>
where
    D: Deserializer<'de>,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| decode(s))
        .collect()
}

fn decode<E: serde::de::Error, T: TryFrom<Vec<u8>>>(s: &str) -> Result<T, E> {
    let v = ::hex::decode(s).map_err(|e| E::custom(format!("{s:?} is not hex: {e}")))?;
    let n = v.len();
    T::try_from(v).map_err(|_| E::custom(format!("{s:?} has the wrong length ({n} bytes)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_answers_load_and_every_section_has_entries() -> anyhow::Result<()> {
        let v = KnownAnswers::load()?;
        assert!(!v.kcv.is_empty());
        assert!(v
            .sd_diversification
            .iter()
            .any(|e| e.method == SdMethod::EmvCps11));
        assert!(v
            .sd_diversification
            .iter()
            .any(|e| e.method == SdMethod::Kdf3));
        assert!(!v.scp02.is_empty());
        assert!(!v.scp03.is_empty());
        assert!(!v.emv_option_a.is_empty());
        assert!(!v.aes_key_wrap.is_empty());
        for e in &v.kcv {
            assert_eq!(e.components.len(), 3);
            match e.alg {
                VectorAlg::Tdes => assert!(e.kcv_tdes.is_some()),
                VectorAlg::Aes => assert!(e.kcv_aes_cmac.is_some() && e.kcv_aes_gp.is_some()),
            }
        }
        Ok(())
    }

    #[test]
    fn wrong_lengths_are_parse_errors() {
        let e = serde_json::from_str::<EmvOptionA>(
            r#"{"imk":"00","pan":"1","psn":"0","icc_mk":"00","kcv_tdes":"000000"}"#,
        );
        assert!(e.is_err());
    }
}
