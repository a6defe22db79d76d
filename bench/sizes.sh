#!/usr/bin/env bash
# The static binaries' sizes for both architectures (scripts/build-static builds them),
# written to the "sizes" section of bench/RESULTS.md.
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
  machine_line
  echo "Run: \`bench/sizes.sh\`."
} >"$work/section.md"
write_section sizes "$work/section.md"
sed -n '/sizes:start/,/sizes:end/p' "$RESULTS"
