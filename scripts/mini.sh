#!/usr/bin/env bash
# The offline mini reproduction (README "Mini reproduction"): prepare the data (from a local
# mirror when DATA_MIRROR=dir is given), then pretrain, adapt, decode, score and write
# eval/results/mini.md + eval/results/mini_params_vs_bleu.png (python -m nola.mini).
# usage: bash scripts/mini.sh [DATA_MIRROR=dir] [nola.mini options] [hydra overrides...]
# Rerunning resumes: prepared data, the pretrained base (.cache/mini-base) and finished runs are reused.
set -euo pipefail
started=$(date +%s)
mirror=
args=()
for arg in "$@"; do
  case $arg in
    DATA_MIRROR=*) mirror=$(realpath -m -- "${arg#DATA_MIRROR=}") ;;
    *) args+=("$arg") ;;
  esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3

"$PY" -m nola.data.prepare --data-dir data ${mirror:+--mirror "$mirror"} --quiet > /dev/null
"$PY" -m nola.mini --started-at "$started" ${args[@]+"${args[@]}"}
echo "mini reproduction finished in $(( $(date +%s) - started )) s; see eval/results/mini.md" >&2
