#!/usr/bin/env bash
# Lays out an official reference repository in the git-ignored .upstream/<name> for side-by-side benchmarks.
# Its code is read and run beside ours, never committed. Usage: benchmarks/fetch_upstream.sh FusionReID [GIT_DIR]
set -euo pipefail
name=${1:?name}
top=$(git rev-parse --show-toplevel)
declare -A REPOS=([FusionReID]="https://github.com/924973292/FusionReID"
  [neuropictor]="https://github.com/jingyanghuo/neuropictor"
  [CronusVLA]="https://github.com/InternRobotics/CronusVLA"
  [UniPic]="https://github.com/SkyworkAI/UniPic")
src=${2:-}
dest="$top/.upstream/$name"
rm -rf "$dest" && mkdir -p "$dest"
if [ -n "$src" ]; then  # a local mirror (bare git dir)
  # code only (a mirror may lack its large binary assets)
  git --git-dir="$src" ls-tree -r --name-only HEAD | grep -E '\.(py|yml|yaml|txt|sh|md)$' | while read -r f; do
    mkdir -p "$dest/$(dirname "$f")" && git --git-dir="$src" show "HEAD:$f" > "$dest/$f"; done
else
  git clone --depth 1 "${REPOS[$name]}" "$dest"
fi
rm -rf "$dest/assets" "$dest/.git"
echo "$dest"
