//! A bounded pool of PKCS#11 sessions.
//!
//! `cryptoki::Session` is `Send` but not `Sync`, and concurrent use of one
//! session is undefined behaviour (rust-cryptoki #260). Each operation takes
//! one session exclusively and returns it on drop. Callers block when all
//! sessions are busy, so this must run on blocking threads, never on the
//! async runtime's workers (the service layer uses `spawn_blocking`).

use super::HsmError;
use cryptoki::session::Session;
use std::ops::Deref;
use std::sync::{Condvar, Mutex};

pub(crate) struct SessionPool {
    state: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

struct PoolState {
    idle: Vec<Session>,
    open: usize,
}

pub(crate) struct PooledSession<'a> {
    session: Option<Session>,
    pool: &'a SessionPool,
}

impl SessionPool {
    pub(crate) fn new(first: Session, max: usize) -> Self {
        Self {
            state: Mutex::new(PoolState {
                idle: vec![first],
                open: 1,
            }),
            returned: Condvar::new(),
            max: max.max(1),
        }
    }

    /// Take a session, opening a new one with `open` while under the limit.
    pub(crate) fn get(
        &self,
        open: impl Fn() -> Result<Session, HsmError>,
    ) -> Result<PooledSession<'_>, HsmError> {
        let mut st = self.state.lock().map_err(|_| HsmError::PoolClosed)?;
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(PooledSession {
                    session: Some(s),
                    pool: self,
                });
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match open() {
                    Ok(s) => Ok(PooledSession {
                        session: Some(s),
                        pool: self,
                    }),
                    Err(e) => {
                        if let Ok(mut st) = self.state.lock() {
                            st.open -= 1;
                        }
                        Err(e)
                    }
                };
            }
            st = self.returned.wait(st).map_err(|_| HsmError::PoolClosed)?;
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.state.lock().map(|s| s.open).unwrap_or(0)
    }
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Present from construction until drop.
        match &self.session {
            Some(s) => s,
            None => unreachable!("pooled session used after return"),
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut st)) = (self.session.take(), self.pool.state.lock()) {
            st.idle.push(s);
            self.pool.returned.notify_one();
        }
    }
}
