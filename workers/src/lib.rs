//! Workers of the outbox system: producer, relay, consumer and load-test runner.
