-- Issue 5: quorum approvals signed by each approver, the founding of the
-- people, and the adopted policy.
--
-- Each approval keeps the approver's ECDSA P-256 signature over
-- "KMS-APPROVAL-V1\n{request}\n{digest}\n{approver}" and the DER client
-- certificate it verifies under (both hex), so who agreed to what can be
-- proved later; the same values are in the request.approve audit record.
-- Approvals made before this migration have neither.
ALTER TABLE approvals ADD COLUMN signature TEXT CHECK (signature IS NULL OR length(signature) BETWEEN 16 AND 256);
ALTER TABLE approvals ADD COLUMN approver_cert TEXT CHECK (approver_cert IS NULL OR length(approver_cert) <= 16384);

-- Facts about the installation that are set once or change only by a
-- decision: `first-person` (the one enrolled alone before anyone else; the
-- primary key admits one, so concurrent bootstraps on several nodes cannot
-- both win), `founding-closed` (after it nobody is enrolled alone, ever),
-- `policy` (the SHA-256 of the adopted keys.toml) and `policy-approved`
-- (a digest approved by an executed ChangePolicy request, not yet adopted).
CREATE TABLE kms_state (
    name     TEXT NOT NULL PRIMARY KEY CHECK (name IN ('first-person', 'founding-closed', 'policy', 'policy-approved')),
    fact     TEXT NOT NULL,
    set_at   TEXT NOT NULL,
    set_by   TEXT NOT NULL,
    request  TEXT
);

-- The first person is now guarded by kms_state; people enrolled alone
-- during the founding are bootstrap rows too.
DROP INDEX custodians_one_bootstrap;
INSERT INTO kms_state (name, fact, set_at, set_by)
    SELECT 'first-person', name, enrolled_at, enrolled_by FROM custodians WHERE bootstrap;
-- An installation that already enrolled people under dual control has
-- finished its founding.
INSERT INTO kms_state (name, fact, set_at, set_by)
    SELECT 'founding-closed', 'closed', MIN(enrolled_at), 'migration' FROM custodians WHERE NOT bootstrap HAVING COUNT(*) > 0;
