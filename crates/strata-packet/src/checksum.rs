//! Internet checksums: full computation and RFC 1624 incremental updates.
