#!/usr/bin/env bash
# GPT-2 M on DART: train -> decode -> score -> results.json (make dart-nola, make dart-lora, ...).
# usage: bash scripts/dart.sh ADAPTER [hydra overrides...]   ADAPTER: nola | lora | lora_r1 | ft
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_experiment.sh" dart "$@"
