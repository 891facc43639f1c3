//! The team rule for mosquitto tests: skip with a notice when it is missing, fail when
//! PAHO_REQUIRE_MOSQUITTO=1. One test in its own binary, because it changes the process's
//! environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paho_testserver::mosquitto;

#[test]
fn missing_mosquitto_skips_or_fails_as_required() {
    // `$MOSQUITTO` pointing nowhere makes mosquitto "missing" whatever is installed.
    std::env::set_var("MOSQUITTO", "/nonexistent/mosquitto");
    assert_eq!(mosquitto::binary(), None);

    std::env::remove_var(mosquitto::REQUIRE_ENV);
    assert!(mosquitto::require().is_none(), "skip when not required");

    std::env::set_var(mosquitto::REQUIRE_ENV, "1");
    let failed = std::panic::catch_unwind(mosquitto::require);
    let message = failed
        .err()
        .and_then(|p| p.downcast_ref::<String>().cloned())
        .unwrap();
    assert!(message.contains("PAHO_REQUIRE_MOSQUITTO"), "{message}");

    std::env::set_var(mosquitto::REQUIRE_ENV, "0");
    assert!(mosquitto::require().is_none(), "only 1 means required");
}
