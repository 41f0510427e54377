//! The firmware image: systemd units, the default configuration (`etc/appliance.toml`, embedded
//! by the appliance as its default), and later the signed bundle.
