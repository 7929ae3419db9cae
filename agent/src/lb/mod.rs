//! The `lb` role: an HA control-plane load balancer (HAProxy + keepalived driven by the agent).
//!
//! Entry points for the agent binary are documented as they land: [`settings::LbSettings`] is
//! built from the schema's flat values with [`settings::LbSettings::from_flat`].

pub mod settings;

pub use settings::LbSettings;
