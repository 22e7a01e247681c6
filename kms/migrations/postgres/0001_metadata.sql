-- Key metadata only. No column can hold a key value, a PIN or a key component:
-- key material lives in the HSM and nowhere else. The length checks on
-- object_id and kcv make an accidental key value in those columns fail loudly.
--
-- Timestamps are RFC 3339 text in UTC, not TIMESTAMPTZ, because the sqlx Any
-- driver has no date type and both backends must store the same bytes.
-- Integers are BIGINT because the store binds i64 everywhere.

CREATE TABLE keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    usage       TEXT    NOT NULL,
    exportable  BOOLEAN NOT NULL,
    created_at  TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    UNIQUE (tenant, name)
);

-- No ON DELETE CASCADE: a key with versions can never be deleted, so its
-- tombstones (and their KCVs) survive for ever.
CREATE TABLE key_versions (
    key_id      TEXT    NOT NULL REFERENCES keys (id),
    version     BIGINT  NOT NULL CHECK (version >= 1),
    object_id   TEXT    NOT NULL UNIQUE CHECK (length(object_id) = 32),
    state       TEXT    NOT NULL,
    kcv         TEXT    CHECK (kcv IS NULL OR length(kcv) <= 10),
    presence    TEXT    NOT NULL
                CHECK (presence IN ('pending', 'present', 'destroying', 'tombstone')),
    activate_at TEXT,
    expire_at   TEXT,
    trusted     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (key_id, version)
);

-- Events cascade only because the one way a key row is deleted is abandoning
-- a creation whose HSM object never came to exist.
CREATE TABLE key_events (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      TEXT    NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    version     BIGINT,
    at          TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    from_state  TEXT,
    to_state    TEXT,
    reason      TEXT
);

CREATE INDEX key_events_by_key ON key_events (key_id, id);
