-- The audit trail (TSM-AC-2). Records are appended under the lock of the
-- single audit_head row, so the chain stays linear with many writers and
-- with several KMS nodes on one database. `body` is the record exactly as
-- exported (JSON); the other columns are copies for searching. Nothing here
-- is secret: records never hold key material, PINs or full PANs.

CREATE TABLE audit_records (
    seq         BIGINT NOT NULL PRIMARY KEY,
    at          TEXT NOT NULL,
    node        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    tenant      TEXT,
    request_id  TEXT,
    body        TEXT NOT NULL,
    prev        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    mac         TEXT NOT NULL
);

CREATE INDEX audit_records_at ON audit_records (at);
CREATE INDEX audit_records_actor ON audit_records (actor);
CREATE INDEX audit_records_action ON audit_records (action);
CREATE INDEX audit_records_request ON audit_records (request_id);

CREATE TABLE audit_head (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);

INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_checkpoints (
    seq        BIGINT NOT NULL PRIMARY KEY,
    hash       TEXT NOT NULL,
    at         TEXT NOT NULL,
    node       TEXT NOT NULL,
    signature  TEXT NOT NULL
);
