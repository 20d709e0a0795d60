#!/usr/bin/env bash
# GPT-2 M on E2E: train -> decode -> score -> results.json (make e2e-nola, make e2e-lora, ...).
# usage: bash scripts/e2e.sh ADAPTER [hydra overrides...]   ADAPTER: nola | lora | lora_r1 | ft
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_experiment.sh" e2e "$@"
