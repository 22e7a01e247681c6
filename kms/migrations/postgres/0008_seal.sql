-- The seal (issue 5): the token's user PIN is derived from an unseal secret
-- split into M-of-N Shamir shares held by custodians (kms/src/seal). Nothing
-- of the secret or of a share is stored: only what lets a presented share be
-- recognised (its index and check value) and the combined secret be
-- confirmed (its check value), per generation. Each initialization, share
-- rotation and re-key adds a generation; the highest is in force, so the
-- shares of an older one are refused. Rows are never updated or deleted.

CREATE TABLE seal_generations (
    generation     BIGINT NOT NULL PRIMARY KEY CHECK (generation >= 1),
    -- What made it: 'initialize' (generation 1), 'rotate' (same secret, new
    -- split) or 'rekey' (new secret, new token PIN).
    kind           TEXT    NOT NULL CHECK (kind IN ('initialize', 'rotate', 'rekey')),
    threshold      BIGINT NOT NULL CHECK (threshold >= 2),
    shares         BIGINT NOT NULL CHECK (shares >= threshold AND shares <= 255),
    -- crypto::shares::SplitId, 8 Crockford base32 characters.
    split_id       TEXT    NOT NULL CHECK (length(split_id) = 8),
    -- crypto::shares::CheckValue of the whole unseal secret, 6 hex digits
    -- (3 bytes of a domain-separated SHA-256: a fingerprint, not the secret).
    whole_check    TEXT    NOT NULL CHECK (length(whole_check) = 6),
    created_at     TEXT    NOT NULL,
    created_by     TEXT    NOT NULL,
    CHECK ((generation = 1) = (kind = 'initialize'))
);

CREATE TABLE seal_shares (
    generation     BIGINT NOT NULL REFERENCES seal_generations (generation),
    share_index    BIGINT NOT NULL CHECK (share_index BETWEEN 1 AND 255),
    -- crypto::shares::CheckValue of the share, 6 hex digits.
    share_check    TEXT    NOT NULL CHECK (length(share_check) = 6),
    PRIMARY KEY (generation, share_index)
);
