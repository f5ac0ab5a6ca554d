//! Delivery streams (placeholder).
