#!/usr/bin/env bash
# The simulator's named regression mutants (issue 27): each is a bug the simulator must keep
# catching, put back into a copy of the tree; the simulator must then fail within the default
# 500 seeds.
#
#   bash tests/sim/mutants.sh [lww|write-tracker ...]     (default: all)
#
# A script and not a test: the simulator is an integration test, which links the library as
# users get it (no cfg(test)), so an in-process switch would be a mutation hook in product
# code. Each mutant is applied by exact text replacement to a copy of the tree (the script
# fails if the text is not found, so a refactor cannot make it test nothing), built in
# target/mutants/ (the first build takes minutes; later ones rebuild ringkv only), and run
# with `cargo test --test simulation seeds`. Prints the first failing seed and its
# violation, or "SURVIVED". Exit 1 if a mutant marked `must` survives. Not run by CI.
#
# Knobs: RINGKV_SIM_SEEDS (500), RINGKV_SIM_FIRST (0).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$ROOT/target/mutants
export CARGO_TARGET_DIR=$WORK/target
export RINGKV_SIM_SEEDS=${RINGKV_SIM_SEEDS:-500}

# name|must (1: must be caught) |file|text|replacement (python string literals)
MUTANTS=(
  # VersionSet::merge keeps the other side's version when two are concurrent:
  # last-writer-wins. Caught since the checker judged end states.
  "lww|1|src/version/mod.rs|'                // Siblings, or (only with forged histories) each superseding the other.\n                _ => {}'|'                _ => {\n                    self.versions[0] = theirs.clone();\n                    return true;\n                }'"
  # WriteTracker::acknowledged counts fallbacks as homes even when the homes can make W: the
  # stale read CI caught in a rolling restart. Not yet caught by the sound rules (see
  # benches/README.md, "Simulator checks against known mutants").
  "write-tracker|0|src/quorum.rs|'        if self.homes_possible() >= self.w {\n            self.homes.successes()\n        } else {\n            self.homes.successes() + self.fallbacks.successes()\n        }'|'        self.homes.successes() + self.fallbacks.successes()'"
)

wanted=("$@")
failed=0
for m in "${MUTANTS[@]}"; do
  IFS='|' read -r name must file text replacement <<<"$m"
  if [ "${#wanted[@]}" -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  tree=$WORK/$name
  rm -rf "$tree"; mkdir -p "$tree"
  (cd "$ROOT" && cp -r Cargo.toml Cargo.lock src tests benches "$tree/")
  python3 - "$tree/$file" "$text" "$replacement" <<'EOF'
import ast, sys
path, text, replacement = sys.argv[1], ast.literal_eval(sys.argv[2]), ast.literal_eval(sys.argv[3])
src = open(path).read()
if src.count(text) != 1:
    sys.exit(f"{path}: the mutant's text is not there exactly once; update tests/sim/mutants.sh")
open(path, "w").write(src.replace(text, replacement))
EOF
  echo "== $name ($file): building and running $RINGKV_SIM_SEEDS seeds" >&2
  start=$(date +%s)
  if out=$(cd "$tree" && cargo test --quiet --test simulation seeds 2>&1); then
    echo "$name: SURVIVED $RINGKV_SIM_SEEDS seeds ($(( $(date +%s) - start )) s)"
    [ "$must" = 1 ] && failed=1
  else
    first=$(grep -m1 -o 'seed [0-9]* failed' <<<"$out" || true)
    if [ -z "$first" ]; then
      echo "$out" | tail -20 >&2
      echo "$name: the build or the test broke, not a seed" >&2
      failed=1
      continue
    fi
    count=$(grep -m1 -o '^[0-9]* of [0-9]* seeds failed' <<<"$out" || true)
    echo "$name: CAUGHT: $count; first: $first ($(( $(date +%s) - start )) s)"
    grep -m1 -A1 "$first" <<<"$out" | sed -n 2p | cut -c1-400
  fi
done
exit $failed
