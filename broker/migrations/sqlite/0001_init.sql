-- Samverkan store, SQLite dialect. Times are milliseconds since the epoch.

-- Accepted alerts: idempotency by (publisher, alert_id), the receipt to
-- resend for duplicates, and the alert itself.
CREATE TABLE alerts (
    publisher        TEXT    NOT NULL,
    alert_id         TEXT    NOT NULL,
    envelope_hash    TEXT    NOT NULL,
    alert_type       TEXT    NOT NULL,
    topic            TEXT    NOT NULL,
    issued_at_ms     BIGINT  NOT NULL,
    received_at_ms   BIGINT  NOT NULL,
    policy_version   TEXT    NOT NULL,
    -- Header, digests and signature only: no field values, kept for evidence.
    signed_envelope  BLOB    NOT NULL,
    -- The complete envelope (personal data); NULL once purged by retention.
    content          BLOB,
    receipt          BLOB    NOT NULL,
    PRIMARY KEY (publisher, alert_id)
);

-- The audit log: one row per entry, in order; leaf_hash covers every column.
CREATE TABLE audit_entries (
    idx                  BIGINT PRIMARY KEY,
    kind                 TEXT   NOT NULL,
    at_ms                BIGINT NOT NULL,
    alert_id             TEXT,
    publisher            TEXT,
    recipient            TEXT,
    topic                TEXT,
    alert_type           TEXT,
    rule_id              TEXT,
    legal_basis          TEXT,
    purpose              TEXT,
    fields               TEXT   NOT NULL,
    disclosed_digest     TEXT,
    envelope_hash        TEXT,
    signature  TEXT,
    policy_version       TEXT,
    share_id             TEXT,
    reason_code          TEXT,
    reason               TEXT,
    subject_hashes       TEXT   NOT NULL,
    leaf_hash            BLOB   NOT NULL
);
CREATE INDEX audit_entries_alert ON audit_entries (alert_id);
CREATE INDEX audit_entries_at ON audit_entries (at_ms);

-- The Merkle tree over the entries' leaf hashes (RFC 6962), one row per
-- stored hash in the tlog numbering (leaves and completed interior nodes),
-- so proofs are read by index and appending never rereads the log.
CREATE TABLE tree_hashes (
    idx   BIGINT PRIMARY KEY,
    hash  BLOB   NOT NULL
);

-- Signed tree heads: C2SP checkpoints signed by the broker's key.
CREATE TABLE checkpoints (
    size     BIGINT PRIMARY KEY,
    root     BLOB   NOT NULL,
    at_ms    BIGINT NOT NULL,
    note     TEXT   NOT NULL
);

-- Keyed hashes of the persons and companies entries are about (never the
-- identifiers themselves), for subject access requests.
CREATE TABLE audit_subjects (
    subject_hash  TEXT   NOT NULL,
    idx           BIGINT NOT NULL,
    PRIMARY KEY (subject_hash, idx)
);

-- Shares waiting for (or acknowledged by) their recipient.
CREATE TABLE deliveries (
    share_id        TEXT    PRIMARY KEY,
    recipient       TEXT    NOT NULL,
    alert_id        TEXT    NOT NULL,
    publisher       TEXT    NOT NULL,
    alert_type      TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    audit_idx       BIGINT  NOT NULL,
    -- The signed delivery message (personal data); NULL once purged.
    payload         BLOB,
    created_at_ms   BIGINT  NOT NULL,
    -- Set when the recipient acknowledged it (see acks).
    acked_at_ms     BIGINT
);
CREATE INDEX deliveries_unacked ON deliveries (recipient, created_at_ms) WHERE acked_at_ms IS NULL;

-- Acknowledgements of receipt: which signed message acknowledged which share.
CREATE TABLE acks (
    share_id       TEXT   PRIMARY KEY,
    recipient      TEXT   NOT NULL,
    acked_at_ms    BIGINT NOT NULL,
    ack_audit_idx  BIGINT NOT NULL,
    message_hash   TEXT   NOT NULL
);

-- The recipients' signed acknowledgements (evidence of receipt), once each.
CREATE TABLE ack_messages (
    message_hash  TEXT PRIMARY KEY,
    message       BLOB NOT NULL
);

-- The text of every policy version ever loaded, so a share can be explained later.
CREATE TABLE policy_versions (
    version        TEXT    PRIMARY KEY,
    first_loaded_ms BIGINT NOT NULL,
    files          TEXT    NOT NULL
);
