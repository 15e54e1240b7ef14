//! Real registry servers for tests (being written).
