-- Several nodes on one database: a share whose recipient has no connection
-- on the node that recorded it waits here until the node that holds the
-- recipient claims it (ARCHITECTURE.md, "Delivery across nodes"). Rows are
-- written in the batch's transaction and deleted when claimed; the share
-- itself stays in `deliveries` until it is acknowledged.
CREATE TABLE delivery_handoffs (
    audit_idx BIGINT PRIMARY KEY,
    recipient TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX delivery_handoffs_by_recipient ON delivery_handoffs (recipient, audit_idx);
