-- Dual control (invariant 3): a sensitive operation is first requested, then
-- approved by other people, then executed once by its requester.
-- The operation is stored in canonical JSON with its SHA-256 digest; an
-- approval records the digest the approver agreed to, so it cannot be
-- replayed for any other operation. A request runs at most once: it goes
-- open -> executing before the operation and executed or failed after it.

CREATE TABLE approval_requests (
    id            TEXT NOT NULL PRIMARY KEY,
    operation     TEXT NOT NULL,
    digest        TEXT NOT NULL CHECK (length(digest) = 64),
    requested_by  TEXT NOT NULL,
    requested_at  TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'executing', 'executed', 'failed', 'cancelled')),
    closed_at     TEXT
) STRICT;

CREATE TABLE approvals (
    request_id  TEXT NOT NULL REFERENCES approval_requests (id),
    approver    TEXT NOT NULL,
    digest      TEXT NOT NULL CHECK (length(digest) = 64),
    at          TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
) STRICT;
