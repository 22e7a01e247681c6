-- Key metadata only. No column can hold a key value, a PIN or a key component:
-- key material lives in the HSM and nowhere else. The length checks on
-- object_id and kcv make an accidental key value in those columns fail loudly.
--
-- Timestamps are RFC 3339 text in UTC so that both backends store the same
-- bytes and the Any driver (which has no date type) can read them.
-- STRICT makes SQLite refuse values of the wrong storage class.

CREATE TABLE keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    usage       TEXT    NOT NULL,
    exportable  INTEGER NOT NULL CHECK (exportable IN (0, 1)),
    created_at  TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    UNIQUE (tenant, name)
) STRICT;

-- No ON DELETE CASCADE: a key with versions can never be deleted, so its
-- tombstones (and their KCVs) survive for ever.
CREATE TABLE key_versions (
    key_id      TEXT    NOT NULL REFERENCES keys (id),
    version     INTEGER NOT NULL CHECK (version >= 1),
    object_id   TEXT    NOT NULL UNIQUE CHECK (length(object_id) = 32),
    state       TEXT    NOT NULL,
    kcv         TEXT    CHECK (kcv IS NULL OR length(kcv) <= 10),
    presence    TEXT    NOT NULL
                CHECK (presence IN ('pending', 'present', 'destroying', 'tombstone')),
    activate_at TEXT,
    expire_at   TEXT,
    trusted     INTEGER NOT NULL DEFAULT 0 CHECK (trusted IN (0, 1)),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (key_id, version)
) STRICT;

-- Events cascade only because the one way a key row is deleted is abandoning
-- a creation whose HSM object never came to exist.
CREATE TABLE key_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id      TEXT    NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    version     INTEGER,
    at          TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    from_state  TEXT,
    to_state    TEXT,
    reason      TEXT
) STRICT;

CREATE INDEX key_events_by_key ON key_events (key_id, id);
