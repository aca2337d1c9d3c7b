-- The auditor console on a large log.
--
-- Searches are newest first by index with equality filters, so each filter
-- column gets an index on (column, idx): a filtered page is a short range
-- read in index order, however rare the value, and a deep page starts
-- where the previous one ended. New entries go to the end of each value's
-- range, so these indexes are appended to, not written at random.
CREATE INDEX audit_entries_publisher ON audit_entries (publisher, idx);
CREATE INDEX audit_entries_recipient ON audit_entries (recipient, idx);
CREATE INDEX audit_entries_kind ON audit_entries (kind, idx);
CREATE INDEX audit_entries_rule ON audit_entries (rule_id, idx);
CREATE INDEX audit_entries_legal_basis ON audit_entries (legal_basis, idx);
CREATE INDEX audit_entries_alert_type ON audit_entries (alert_type, idx);
CREATE INDEX audit_entries_topic ON audit_entries (topic, idx);

-- Entries per day, kind, publisher, recipient and legal basis: the
-- overview's counts, kept in the transaction that appends the entries.
-- A day is a day of Swedish winter time, (at_ms + 3600000) / 86400000,
-- as the overview counts them; '' stands for an empty column.
CREATE TABLE audit_day_counts (
    day          BIGINT NOT NULL,
    kind         TEXT   NOT NULL,
    publisher    TEXT   NOT NULL,
    recipient    TEXT   NOT NULL,
    legal_basis  TEXT   NOT NULL,
    n            BIGINT NOT NULL,
    PRIMARY KEY (day, kind, publisher, recipient, legal_basis)
);
INSERT INTO audit_day_counts (day, kind, publisher, recipient, legal_basis, n)
SELECT (at_ms + 3600000) / 86400000, kind, COALESCE(publisher, ''), COALESCE(recipient, ''),
       COALESCE(legal_basis, ''), COUNT(*)
FROM audit_entries
GROUP BY (at_ms + 3600000) / 86400000, kind, COALESCE(publisher, ''), COALESCE(recipient, ''),
         COALESCE(legal_basis, '');
