//! Direct C_DeriveKey calls for the *_ENCRYPT_DATA mechanisms that the
//! `cryptoki` crate does not offer (CKM_DES3_ECB_ENCRYPT_DATA,
//! CKM_DES3_CBC_ENCRYPT_DATA, CKM_AES_ECB_ENCRYPT_DATA; see
//! shared/design/hsm-notes.md). PKCS#11 v2.40 §2.40 "Miscellaneous simple key
//! derivation mechanisms".
//!
//! This is the only `unsafe` in the project outside `cryptoki` itself. It
//! loads the same module file again with `dlopen`, which returns the library
//! already loaded by `cryptoki` (same function table, same token state), and
//! calls C_DeriveKey on a session and key that `cryptoki` opened.
#![allow(unsafe_code)]

use super::error::{from_raw_rv, HsmError};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CKM_AES_CBC_ENCRYPT_DATA, CKM_AES_ECB_ENCRYPT_DATA, CKM_DES3_CBC_ENCRYPT_DATA,
    CKM_DES3_ECB_ENCRYPT_DATA, CKR_OK, CK_AES_CBC_ENCRYPT_DATA_PARAMS, CK_ATTRIBUTE,
    CK_DES_CBC_ENCRYPT_DATA_PARAMS, CK_FUNCTION_LIST_PTR, CK_KEY_DERIVATION_STRING_DATA,
    CK_MECHANISM, CK_OBJECT_HANDLE, CK_RV, CK_ULONG,
};
use std::ffi::c_void;

/// Derivation by encrypting data under the base key, inside the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeriveAlg {
    /// New key = TDES-ECB(base, data); data a multiple of 8 bytes.
    TdesEcb(Vec<u8>),
    /// New key = TDES-CBC(base, iv, data).
    TdesCbc { iv: [u8; 8], data: Vec<u8> },
    /// New key = AES-ECB(base, data); data a multiple of 16 bytes.
    AesEcb(Vec<u8>),
    /// New key = AES-CBC(base, iv, data).
    AesCbc { iv: [u8; 16], data: Vec<u8> },
}

type GetFunctionList = unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV;

/// The module's function table, kept alive with the library handle.
pub(crate) struct RawModule {
    // Held so the function table below stays mapped.
    _lib: libloading::Library,
    functions: CK_FUNCTION_LIST_PTR,
}

// SAFETY: the function list is an immutable table of C function pointers
// owned by the loaded module; PKCS#11 requires modules initialized with
// CKF_OS_LOCKING_OK (as cryptoki does) to be callable from any thread.
unsafe impl Send for RawModule {}
unsafe impl Sync for RawModule {}

impl RawModule {
    pub(crate) fn load(path: &str) -> Result<Self, HsmError> {
        let module_err = |detail: String| HsmError::Module {
            path: path.to_owned(),
            detail,
        };
        // SAFETY: loading a PKCS#11 module that cryptoki has already loaded
        // and initialized from the same path; its initializers have run.
        let lib =
            unsafe { libloading::Library::new(path) }.map_err(|e| module_err(e.to_string()))?;
        let mut functions: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11
        // module, and writes one pointer to the out-parameter.
        let rv = unsafe {
            let get: libloading::Symbol<GetFunctionList> = lib
                .get(b"C_GetFunctionList\0")
                .map_err(|e| module_err(e.to_string()))?;
            get(&mut functions)
        };
        if rv != CKR_OK || functions.is_null() {
            return Err(module_err(format!("C_GetFunctionList returned {rv:#x}")));
        }
        Ok(Self {
            _lib: lib,
            functions,
        })
    }

    /// C_DeriveKey with an *_ENCRYPT_DATA mechanism. The template comes from
    /// `templates.rs`, so the derived key is sensitive like every other key.
    pub(crate) fn derive(
        &self,
        session: &Session,
        base: ObjectHandle,
        how: &DeriveAlg,
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        // The parameter structs point into `data`; both live until the call returns.
        let mut data: Vec<u8> = match how {
            DeriveAlg::TdesEcb(d) | DeriveAlg::AesEcb(d) => d.clone(),
            DeriveAlg::TdesCbc { data, .. } | DeriveAlg::AesCbc { data, .. } => data.clone(),
        };
        let block = if matches!(how, DeriveAlg::AesEcb(_) | DeriveAlg::AesCbc { .. }) {
            16
        } else {
            8
        };
        if data.is_empty() || data.len() % block != 0 {
            return Err(HsmError::invalid(format!(
                "derivation data must be a non-empty multiple of {block} bytes"
            )));
        }
        let len = data.len() as CK_ULONG;
        let mut string_param = CK_KEY_DERIVATION_STRING_DATA {
            pData: data.as_mut_ptr(),
            ulLen: len,
        };
        let mut cbc_param = CK_DES_CBC_ENCRYPT_DATA_PARAMS {
            iv: [0; 8],
            pData: data.as_mut_ptr(),
            length: len,
        };
        let mut aes_cbc_param = CK_AES_CBC_ENCRYPT_DATA_PARAMS {
            iv: [0; 16],
            pData: data.as_mut_ptr(),
            length: len,
        };
        let mut mechanism = match how {
            DeriveAlg::TdesEcb(_) | DeriveAlg::AesEcb(_) => CK_MECHANISM {
                mechanism: if block == 16 {
                    CKM_AES_ECB_ENCRYPT_DATA
                } else {
                    CKM_DES3_ECB_ENCRYPT_DATA
                },
                pParameter: &mut string_param as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
            },
            DeriveAlg::TdesCbc { iv, .. } => {
                cbc_param.iv = *iv;
                CK_MECHANISM {
                    mechanism: CKM_DES3_CBC_ENCRYPT_DATA,
                    pParameter: &mut cbc_param as *mut _ as *mut c_void,
                    ulParameterLen: std::mem::size_of::<CK_DES_CBC_ENCRYPT_DATA_PARAMS>()
                        as CK_ULONG,
                }
            }
            DeriveAlg::AesCbc { iv, .. } => {
                aes_cbc_param.iv = *iv;
                CK_MECHANISM {
                    mechanism: CKM_AES_CBC_ENCRYPT_DATA,
                    pParameter: &mut aes_cbc_param as *mut _ as *mut c_void,
                    ulParameterLen: std::mem::size_of::<CK_AES_CBC_ENCRYPT_DATA_PARAMS>()
                        as CK_ULONG,
                }
            }
        };
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: `functions` is the module's valid function table (checked
        // non-null at load). The mechanism, its parameter struct, the data it
        // points to and the attribute array (pointing into `template`) all
        // outlive this call; the session and base handles come from cryptoki
        // objects of the same module, and the session is used by this thread
        // alone (the pool hands it out exclusively).
        let rv = unsafe {
            let derive = (*self.functions)
                .C_DeriveKey
                .ok_or_else(|| HsmError::Module {
                    path: String::new(),
                    detail: "module has no C_DeriveKey".into(),
                })?;
            derive(
                session.handle(),
                &mut mechanism,
                base.handle(),
                attrs.as_mut_ptr(),
                attrs.len() as CK_ULONG,
                &mut handle,
            )
        };
        zeroize::Zeroize::zeroize(&mut data);
        if rv != CKR_OK {
            return Err(from_raw_rv("C_DeriveKey", rv));
        }
        // SAFETY: `handle` was just returned by C_DeriveKey on this token.
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }
}
