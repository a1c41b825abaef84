#!/usr/bin/env bash
# Compile time the derive adds to a crate of 50 components.
#
# Generates two crates under target/compile-time/: `derived` (50 structs with
# #[derive(Component)], each with a start and a stop method, two timeouts, a `Dep` field and a
# `close` field; C_i depends on C_(i/2), a tree as deep as a real service's) and `by_hand` (the same 50 components with hand-written `Component` impls), both
# depending on lifecycle-core. With their dependencies built once, hyperfine times an incremental
# rebuild of each crate after touching its source, in the same run. A second measurement times a
# clean build of lifecycle-core with and without its `macros` feature: the one-time cost of the
# proc-macro crate and its dependencies.
#
# Usage: benches/compile-time.sh [runs]   (needs hyperfine: apt-get install hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
root=$PWD
out=$root/target/compile-time
mkdir -p "$out"

write_crate() { # name, body-generator
  local name=$1 dir=$out/$1
  mkdir -p "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$name"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
lifecycle-core = { path = "$root/lifecycle-core" }
tokio-util = "0.7"

[workspace]
TOML
  "$2" > "$dir/src/lib.rs"
}

derived() {
  echo 'use lifecycle_core::{BoxError, CancellationToken, Component, Context, Dep};'
  echo '#[derive(Component)] pub struct C0;'
  for i in $(seq 1 50); do
    cat <<RS
#[derive(Component)]
#[component(start = open, stop = flush, start_timeout = "5s", stop_timeout = "250ms")]
pub struct C$i {
    pub previous: Dep<C$((i / 2))>,
    #[component(close)]
    pub token: CancellationToken,
}
impl C$i {
    async fn open(&self, ctx: &Context) -> Result<(), BoxError> { let _ = ctx.name(); Ok(()) }
    async fn flush(&self) -> Result<(), BoxError> { Ok(()) }
}
RS
  done
}

by_hand() {
  echo 'use lifecycle_core::{BoxError, CancellationToken, Close, Component, ComponentId, ComponentOptions, Context, Dep, Dependency};'
  echo 'use std::time::Duration;'
  echo 'pub struct C0; impl Component for C0 {}'
  for i in $(seq 1 50); do
    cat <<RS
pub struct C$i {
    pub previous: Dep<C$((i / 2))>,
    pub token: CancellationToken,
}
impl C$i {
    async fn open(&self, ctx: &Context) -> Result<(), BoxError> { let _ = ctx.name(); Ok(()) }
    async fn flush(&self) -> Result<(), BoxError> { Ok(()) }
}
impl Component for C$i {
    fn name(&self) -> ComponentId { ComponentId::of_type::<Self>() }
    fn dependencies(&self) -> Vec<Dependency> { vec![self.previous.dependency()] }
    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().start_timeout(Duration::from_secs(5)).stop_timeout(Duration::from_millis(250))
    }
    async fn start(&self, ctx: &Context) -> Result<(), BoxError> { self.open(ctx).await }
    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        let flushed = self.flush().await;
        let closed = self.token.close().await;
        flushed.and(closed)
    }
}
RS
  done
}

write_crate derived derived
write_crate by_hand by_hand
for name in derived by_hand; do
  (cd "$out/$name" && CARGO_TARGET_DIR=$out/target-$name cargo build --quiet)
done

echo "## incremental rebuild of a 50-component crate ($runs runs each)"
hyperfine --warmup 2 --runs "$runs" --style basic --export-markdown "$out/rebuild.md" \
  --prepare "touch $out/by_hand/src/lib.rs" -n "hand-written impls" \
  "cd $out/by_hand && CARGO_TARGET_DIR=$out/target-by_hand cargo build --quiet" \
  --prepare "touch $out/derived/src/lib.rs" -n "#[derive(Component)]" \
  "cd $out/derived && CARGO_TARGET_DIR=$out/target-derived cargo build --quiet"
cat "$out/rebuild.md"

echo "## clean build of lifecycle-core and its dependencies (3 runs each)"
hyperfine --runs 3 --style basic --export-markdown "$out/clean.md" \
  --prepare "rm -rf $out/target-core" -n "lifecycle-core without macros" \
  "CARGO_TARGET_DIR=$out/target-core cargo build --quiet -p lifecycle-core --no-default-features" \
  --prepare "rm -rf $out/target-core" -n "lifecycle-core with macros (default)" \
  "CARGO_TARGET_DIR=$out/target-core cargo build --quiet -p lifecycle-core"
cat "$out/clean.md"
