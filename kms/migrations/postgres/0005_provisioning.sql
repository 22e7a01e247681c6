-- State of the provisioning API that must survive restarts and be shared by
-- every KMS node on one database. Each check-and-set on these tables is one
-- SQL statement (INSERT ... ON CONFLICT, conditional UPDATE), so two nodes
-- racing on the same row cannot both win. Nothing here is secret: no key
-- material, no full PAN. Integers are BIGINT because the store binds i64.

-- Replay protection (REPLAY-1): a request id is accepted once per principal.
-- `seen_at` is unix seconds; rows older than the accepted timestamp window
-- are purged, after which the timestamp check alone refuses a replay.
CREATE TABLE replay_cache (
    principal   TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    seen_at     BIGINT  NOT NULL,
    PRIMARY KEY (principal, request_id)
);

CREATE INDEX replay_cache_seen_at ON replay_cache (seen_at);

-- The last SCP02 sequence counter seen per card (REPLAY-1): a session whose
-- counter is not strictly above it is a replay and is refused. The counter
-- is the card's 2-byte value.
CREATE TABLE scp02_counters (
    tenant      TEXT    NOT NULL,
    card        TEXT    NOT NULL,
    counter     BIGINT  NOT NULL CHECK (counter BETWEEN 0 AND 65535),
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (tenant, card)
);

-- Card challenges already used (REPLAY-1): a card that presents the same
-- challenge twice is replaying an earlier exchange.
CREATE TABLE card_challenges (
    tenant      TEXT    NOT NULL,
    card        TEXT    NOT NULL,
    challenge   TEXT    NOT NULL,
    seen_at     TEXT    NOT NULL,
    PRIMARY KEY (tenant, card, challenge)
);

-- Which card (PAN HMAC and PSN) a security domain on a secure element is
-- bound to (TSM-DATA-1), so an SD is never personalised for two cards.
-- Active bindings only: releasing one deletes its row, and the audit trail
-- keeps the history. The PAN is held only as an HMAC and a masked form.
CREATE TABLE sd_bindings (
    tenant      TEXT    NOT NULL,
    se_id       TEXT    NOT NULL,
    sd_aid      TEXT    NOT NULL,
    pan_hmac    TEXT    NOT NULL,
    pan_masked  TEXT    NOT NULL,
    psn         BIGINT  NOT NULL CHECK (psn BETWEEN 0 AND 255),
    bound_at    TEXT    NOT NULL,
    bound_by    TEXT    NOT NULL,
    PRIMARY KEY (tenant, se_id, sd_aid)
);
