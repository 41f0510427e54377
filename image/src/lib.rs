//! The firmware image: systemd units, the default configuration (`etc/appliance.toml`, embedded
//! by the appliance as its default), and the firmware bundle's format (`bundle`: the archive
//! `image/build.sh` makes and the updater verifies and unpacks into a slot).

pub mod bundle;
