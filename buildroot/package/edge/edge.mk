################################################################################
#
# edge
#
################################################################################

# The version of the edge release tarball (`git archive` of the release tag,
# published at BR2_PACKAGE_EDGE_SITE). Bump it together with a new line in
# edge.hash: the hash covers the tarball after Buildroot vendored the crates
# into it, so it is known only once Buildroot has vendored that version
# (docs/buildroot.md, "Releasing a new edge version").
EDGE_VERSION = 0.1.0
EDGE_SOURCE = edge-$(EDGE_VERSION).tar.gz
EDGE_SITE = $(call qstrip,$(BR2_PACKAGE_EDGE_SITE))
EDGE_LICENSE = Apache-2.0 or MIT

# The repository is a Cargo workspace whose root manifest is virtual;
# `cargo install` needs the manifest of the package that owns the binary.
# Vendoring still covers the whole workspace, through its one Cargo.lock.
EDGE_SUBDIR = appliance
EDGE_CARGO_BUILD_OPTS = --bin edge

EDGE_RUST_TARGET_ENV = $(subst -,_,$(RUSTC_TARGET_NAME))

# The repository's .cargo/config.toml names Debian's aarch64-linux-gnu-gcc as
# the C compiler of the target, for developer builds. Buildroot replaces that
# file when it vendors a release tarball, but not in an EDGE_OVERRIDE_SRCDIR
# build, so point aws-lc's build at Buildroot's own cross compiler here.
# aws-lc builds with the cc crate alone; keep it from picking a host cmake.
# A release tarball has no .git for build.rs to ask, so the version names
# the revision (`edge --version` prints "edge 0.1.0 (v0.1.0)"); git is also
# stopped at the package directory so it never finds Buildroot's own
# repository when the output directory sits inside a Buildroot checkout.
EDGE_CARGO_ENV = \
	CC_$(EDGE_RUST_TARGET_ENV)="$(TARGET_CC)" \
	AR_$(EDGE_RUST_TARGET_ENV)="$(TARGET_AR)" \
	AWS_LC_SYS_CMAKE_BUILDER=0 \
	EDGE_GIT_REV="v$(EDGE_VERSION)" \
	GIT_CEILING_DIRECTORIES="$(EDGE_DIR)"

# Buildroot derives cargo's release profile from the global optimisation
# and LTO choices. The edge binary is measured (bench/, docs/benchmarks.md)
# with the workspace's own release profile; ship that binary, not a
# differently optimised one.
EDGE_CARGO_ENV += \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1

# A developer's checkout given as EDGE_OVERRIDE_SRCDIR carries build output
# and the QEMU rig's cache; neither belongs in the package build directory.
EDGE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /.rig

$(eval $(cargo-package))
