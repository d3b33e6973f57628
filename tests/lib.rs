//! Integration-test crate for VRSky; the tests live in `integration/`.
