# Sourced by the scripts that build packages: the packagers, from crates.io,
# at the versions the package metadata was written for.
CARGO_DEB_VERSION=3.6.4
CARGO_RPM_VERSION=0.21.1

install_packagers() {
  command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
  command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm --version "$CARGO_RPM_VERSION"
  command -v rpm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q rpm >/dev/null
}
