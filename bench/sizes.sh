#!/usr/bin/env bash
# The static binaries' sizes for both architectures (scripts/build-static builds them),
# and what the migration lint adds to entrypoint, written to the "sizes" section of
# bench/RESULTS.md.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
"$ROOT/scripts/build-static" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "### Static binaries (\`bench/sizes.sh\`)"
  echo
  echo "Stripped, statically linked musl builds as shipped (entrypoint and healthcheck: \`small\` profile; backup: \`release\`). ARM64 is cross-compiled with cargo-zigbuild and runs under qemu-user in the tests."
  echo
  echo "| binary | x86_64 | aarch64 |"
  echo "|---|---:|---:|"
  for b in entrypoint backup healthcheck; do
    x=$(stat -c %s "$STATIC_DIR/$b"); a=$(stat -c %s "$STATIC_DIR/aarch64/$b")
    printf '| %s | %d KiB | %d KiB |\n' "$b" $((x / 1024)) $((a / 1024))
  done
  echo
  # The migration lint's share (squawk's SQL parser): entrypoint once more without
  # its `lint` feature, x86_64 only (target/static keeps the shipped build).
  cargo build -q --locked --target "$MUSL_TARGET" --profile small -p entrypoint --no-default-features
  with=$(stat -c %s "$STATIC_DIR/entrypoint")
  without=$(stat -c %s "$ROOT/target/$MUSL_TARGET/small/entrypoint")
  printf 'The migration lint (`lint` feature, on by default) adds %d KiB to entrypoint: %d KiB without it (`--no-default-features`, x86_64).\n' \
    $(((with - without) / 1024)) $((without / 1024))
  echo
  machine_line
  echo "Run: \`bench/sizes.sh\`."
} >"$work/section.md"
write_section sizes "$work/section.md"
sed -n '/sizes:start/,/sizes:end/p' "$RESULTS"
