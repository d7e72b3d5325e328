//! The outbox operator: custom resource types and their reconcilers.
