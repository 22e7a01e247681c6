-- Retention: old segments of the audit chain are moved to archive files
-- (verified before deletion). The chain in the database then starts after
-- the last archived record and links to its hash.
CREATE TABLE audit_archives (
    through_seq  BIGINT NOT NULL PRIMARY KEY,
    first_seq    BIGINT NOT NULL,
    last_hash    TEXT NOT NULL,
    at           TEXT NOT NULL,
    location     TEXT NOT NULL,
    records      BIGINT NOT NULL
);
