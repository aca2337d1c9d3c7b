-- Witnesses' cosignatures of checkpoints: one C2SP cosignature/v1 line per
-- checkpoint and witness key, as the witness returned it.
CREATE TABLE cosignatures (
    size    BIGINT NOT NULL,
    witness TEXT   NOT NULL,
    vkey    TEXT   NOT NULL,
    line    TEXT   NOT NULL,
    at_ms   BIGINT NOT NULL,
    PRIMARY KEY (size, vkey)
);
CREATE INDEX cosignatures_by_key ON cosignatures (vkey, size);
