"""The offline mini reproduction: `nola.mini.reproduction` (the stages), `python -m nola.mini` (the
command), `nola.mini.mixed` (one mixed batch of the three tasks' adapters, `python -m nola.mini_mixed`)."""
