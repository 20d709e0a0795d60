"""`make bench` (`python -m nola.bench`): speed and memory against the alternatives a user would pick.

Sections: `adapter_step` (one adapted q/v projection: LoRA, NOLA cached/regenerating, the NOLA
reference algorithm), `training` (our GPT-2 vs transformers + peft, and FLOP utilisation),
`decode` (beam search vs transformers `generate()`), `gpu` (GPT-2 M/L in bf16 and the projected
paper run; CUDA only). `report` writes eval/results/bench.{json,md}.
"""
