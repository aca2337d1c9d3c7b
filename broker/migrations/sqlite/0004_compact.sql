-- A compact layout: less written per alert, keys that append.
--
-- Nothing is stored twice any more. The alert keeps its envelope without
-- field values (evidence) and the field values apart (personal data, NULL
-- once purged); the complete envelope is the two joined. The receipt and
-- the share stamps are rebuilt from the audit entries they were made from,
-- so only the broker's signatures over them are stored. A delivery is
-- rebuilt from the alert's field values and its share's entry. The Merkle
-- tree is stored as runs of consecutive hashes, not a row per hash.
--
-- The tables are renamed here and their rows converted by the broker right
-- after (`store::upgrade`), in one transaction that drops the old tables.

ALTER TABLE alerts RENAME TO v3_alerts;
ALTER TABLE deliveries RENAME TO v3_deliveries;
ALTER TABLE acks RENAME TO v3_acks;
ALTER TABLE ack_messages RENAME TO v3_ack_messages;
ALTER TABLE tree_hashes RENAME TO v3_tree_hashes;
DROP INDEX deliveries_unacked;

CREATE TABLE alerts (
    publisher          TEXT    NOT NULL,
    alert_id           TEXT    NOT NULL,
    envelope_hash      TEXT    NOT NULL,
    alert_type         TEXT    NOT NULL,
    topic              TEXT    NOT NULL,
    issued_at_ms       BIGINT  NOT NULL,
    received_at_ms     BIGINT  NOT NULL,
    policy_version     TEXT    NOT NULL,
    -- Header, digests and signature only: no field values, kept for evidence.
    signed_envelope    BLOB    NOT NULL,
    -- The field values as disclosed (personal data), each length-prefixed;
    -- NULL once purged by retention.
    disclosures        BLOB,
    -- The alert's share and denial entries are [first_idx, first_idx + entries):
    -- the receipt lists exactly them.
    first_idx          BIGINT  NOT NULL,
    entries            BIGINT  NOT NULL,
    -- The broker's signature over the receipt (rebuilt from the entries).
    receipt_key_id     TEXT    NOT NULL,
    receipt_signature  BLOB    NOT NULL,
    PRIMARY KEY (publisher, alert_id)
);

-- Shares, by their audit entry (append-ordered). The payload is rebuilt
-- from the alert's field values and the share's entry; only the broker's
-- signature over the stamp is stored. The indexes on unacknowledged shares
-- hold only the queue still waiting, not the history.
CREATE TABLE deliveries (
    audit_idx        INTEGER PRIMARY KEY,
    recipient        TEXT    NOT NULL,
    share_id         TEXT    NOT NULL,
    created_at_ms    BIGINT  NOT NULL,
    -- The broker's signature over the share stamp (rebuilt from the entry);
    -- NULL only for shares purged before this layout, whose stamp was not kept.
    stamp_key_id     TEXT,
    stamp_signature  BLOB,
    -- When the recipient acknowledged it (the acknowledgement's entry
    -- names the share).
    acked_at_ms      BIGINT
);
CREATE INDEX deliveries_unacked ON deliveries (recipient, created_at_ms, audit_idx) WHERE acked_at_ms IS NULL;
CREATE INDEX deliveries_unacked_share ON deliveries (recipient, share_id) WHERE acked_at_ms IS NULL;

-- The recipients' signed acknowledgements (evidence of receipt), once per
-- message and batch, by the first acknowledgement entry it produced.
CREATE TABLE ack_messages (
    first_idx  INTEGER PRIMARY KEY,
    message    BLOB NOT NULL
);
INSERT INTO ack_messages (first_idx, message)
SELECT MIN(k.ack_audit_idx), m.message
FROM v3_ack_messages m JOIN v3_acks k ON k.message_hash = m.message_hash
GROUP BY m.message_hash, m.message;
DROP TABLE v3_acks;
DROP TABLE v3_ack_messages;

-- The Merkle tree (RFC 6962, tlog stored-hash numbering): each row holds
-- the consecutive hashes first_idx, first_idx + 1, … (32 bytes each), at
-- most 32 of them; a commit appends its new hashes as a few rows.
CREATE TABLE tree_hashes (
    first_idx  INTEGER PRIMARY KEY,
    hashes     BLOB NOT NULL
);

-- The subject index in one B-tree (no separate row store).
CREATE TABLE audit_subjects_v4 (
    subject_hash  TEXT   NOT NULL,
    idx           BIGINT NOT NULL,
    PRIMARY KEY (subject_hash, idx)
) WITHOUT ROWID;
INSERT INTO audit_subjects_v4 (subject_hash, idx) SELECT subject_hash, idx FROM audit_subjects;
DROP TABLE audit_subjects;
ALTER TABLE audit_subjects_v4 RENAME TO audit_subjects;
