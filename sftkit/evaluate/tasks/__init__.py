"""sftkit's own lm-eval tasks (YAML + JSONL), offline; `sftkit eval --tasks sftkit_mc,sftkit_gen`."""
