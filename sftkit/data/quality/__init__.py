"""Data quality: statistics and plots (`sftkit data stats`), cleaning (`data clean`, the `clean_*` keys),
category balance and curriculum order (applied in data preparation) and self-instruct generation
(`data generate`).

Modules: `text` (normalised text, n-grams, language), `clean` (duplicates, leaks, filters), `judge` and
`endpoint` (the LLM judge over any OpenAI-compatible API), `columns` (source columns by dataset and row),
`balance`, `curriculum`, `apply` (the steps inside `prepare_data`), `cleaned` (writing cleaned datasets),
`report` (statistics and plots), `generate` (self-instruct).
"""
