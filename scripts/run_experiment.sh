#!/usr/bin/env bash
# Train -> decode -> score -> results.json for one paper-table cell (python -m nola.run).
# usage: bash scripts/run_experiment.sh TASK ADAPTER [hydra overrides...]
#   TASK: e2e | webnlg | dart     ADAPTER: nola | lora | lora_r1 | ft
# The cell is conf/experiment/TASK/<ADAPTER>_gpt2m.yaml (LoRA r=1: lora_gpt2m_r1); rerunning resumes.
# Example: bash scripts/run_experiment.sh e2e nola train.device=cuda paths.runs_dir=/scratch/runs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3

if [[ $# -lt 2 ]]; then
  echo "usage: bash scripts/run_experiment.sh TASK ADAPTER [hydra overrides...]" >&2
  exit 2
fi
task=$1 adapter=$2
shift 2
case $adapter in
  nola) cell=nola_gpt2m ;;
  lora) cell=lora_gpt2m ;;
  lora_r1) cell=lora_gpt2m_r1 ;;
  ft) cell=ft_gpt2m ;;
  *) echo "error: unknown adapter '$adapter'; use nola, lora, lora_r1 or ft" >&2; exit 2 ;;
esac
if [[ ! -f conf/experiment/$task/$cell.yaml ]]; then
  available=$(cd conf/experiment && ls "$task"/*.yaml 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ' || true)
  echo "error: no experiment config conf/experiment/$task/$cell.yaml (the paper has no such cell here); available: ${available:-none}" >&2
  exit 2
fi
exec "$PY" -m nola.run "experiment=$task/$cell" "$@"
