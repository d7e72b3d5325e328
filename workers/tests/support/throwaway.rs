//! Throwaway Kafka brokers and PostgreSQL servers for tests that stop and restart them
//! (filled in by the failure tests).
