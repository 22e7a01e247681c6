-- The people of key ceremonies (issue 5): custodians, security officers and
-- operators, each bound to a client certificate and a PIN or passphrase.
-- Requirements AUTH-PIN-LEN, AUTH-PIN-WEAK, AUTH-PIN-LOCK, TSM-AC-1, TSM-AC-5.
--
-- No PIN is ever stored: `pin_hash` holds an Argon2id PHC string, and the
-- CHECK refuses anything else, so a PIN passed by mistake fails loudly.
-- Failed logins are counted, and the 5th consecutive one locks, in one
-- UPDATE (store/custodians.rs), so concurrent attempts on several KMS nodes
-- cannot exceed the limit; the lock is a column, so it survives restarts
-- and holds on every node until a security officer clears it.
-- A person's row is never deleted: removal sets `removed_at`, and a name or
-- a certificate fingerprint, once used, stays theirs.

CREATE TABLE custodians (
    name                  TEXT    NOT NULL PRIMARY KEY,
    role                  TEXT    NOT NULL CHECK (role IN ('custodian', 'security-officer', 'operator')),
    -- SHA-256 of the person's client certificate, 64 upper-case hex digits.
    cert_sha256           TEXT    UNIQUE CHECK (cert_sha256 IS NULL OR length(cert_sha256) = 64),
    pin_hash              TEXT    NOT NULL CHECK (substr(pin_hash, 1, 10) = '$argon2id$'),
    -- The PIN given at enrolment must be changed at first use (TSM-AC-1).
    must_change_pin       INTEGER NOT NULL CHECK (must_change_pin IN (0, 1)),
    failed_attempts       INTEGER NOT NULL DEFAULT 0 CHECK (failed_attempts BETWEEN 0 AND 5),
    locked_at             TEXT,
    locked_reason         TEXT,
    -- TSM-AC-5, canonical text of model::LoginWindow
    -- ("Mon-Fri 08:00-18:00 +08:00"); NULL: any time.
    login_window          TEXT,
    idle_timeout_seconds  INTEGER NOT NULL CHECK (idle_timeout_seconds > 0),
    enrolled_at           TEXT    NOT NULL,
    enrolled_by           TEXT    NOT NULL,
    -- 1 for the one person enrolled alone, before anyone else existed; every
    -- later enrolment is a dual-control request, named here.
    bootstrap             INTEGER NOT NULL CHECK (bootstrap IN (0, 1)),
    enrolment_request     TEXT,
    pin_changed_at        TEXT,
    last_login_at         TEXT,
    removed_at            TEXT,
    removed_by            TEXT,
    CHECK ((bootstrap = 1) = (enrolment_request IS NULL)),
    CHECK ((locked_at IS NULL) = (locked_reason IS NULL))
) STRICT;

-- At most one bootstrap enrolment, ever: two nodes bootstrapping an empty
-- database at once cannot both succeed.
CREATE UNIQUE INDEX custodians_one_bootstrap ON custodians (bootstrap) WHERE bootstrap = 1;
