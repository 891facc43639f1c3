//! Helpers built on the client: [`rpc`], request/response over MQTT v5.

pub mod rpc;
