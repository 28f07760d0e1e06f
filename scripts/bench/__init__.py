"""The race (issue 26): sftkit against LLaMA-Factory, `trl sft` and axolotl on the same YAML and real models.

Seams: `models` (the GGUFs de-quantized once into HF folders every contestant loads), `workloads` (one
LLaMA-Factory YAML per workload, the held-out split, the mappings to TRL's and axolotl's formats), `probe`
(runs inside each contestant's own process: one step counter for all), one module per contestant
(`sftkit_run`, `llamafactory_run`, `trl_run`, `axolotl_run`), `harness` (the interleaved run, peak RSS of
the process tree), `evaluator` (one scorer for every saved adapter) and `report` (table, targets, JSON).
"""
