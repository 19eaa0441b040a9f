//! Zero-copy checked header views.
