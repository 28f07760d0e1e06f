"""The library side of `sftkit data stats`, `data clean` and `data generate` (the CLI only parses)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sftkit.data.inspect import prepare_for_cli
from sftkit.data.quality import cleaned, report
from sftkit.data.quality.generate import (
    GenerateSettings,
    check_out,
    generate,
    read_seeds,
)

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def stats(cfg: SftConfig, out: Path, overwrite: bool = False) -> dict:
    """Writes `out/data_stats.json` and the PNG plots for the config's data as it trains; prints the summary."""
    report.check_stats_out(out, overwrite)
    _, _, data = prepare_for_cli(cfg)
    written = report.write_data_stats(cfg, data, out)
    for line in report.summary_lines(written):
        print(line)
    print(f"wrote {out}/: {report.STATS_FILE}, {', '.join(report.PLOTS)}")
    return written


def clean(cfg: SftConfig, out: Path, overwrite: bool = False) -> dict:
    """Writes the cleaned datasets, their registry and the removal report to `out`; prints the summary."""
    cleaned.check_clean_out(cfg, out, overwrite)
    tokenizer = None
    if cfg.clean_min_reply_tokens is not None or cfg.clean_max_reply_tokens is not None:
        from sftkit.data.tokenizer import base_tokenizer

        tokenizer = base_tokenizer(cfg)
    written = cleaned.clean_datasets(cfg, out, tokenizer)
    for line in cleaned.summary_lines(written, out):
        print(line)
    return written


def generate_rows(seeds: Path, out: Path, settings: GenerateSettings, name: str | None = None) -> None:
    """Self-instruct rows from the seed file into `out` (resuming it), with the registry entry; prints the summary."""
    check_out(seeds, out, name or out.stem)
    result = generate(read_seeds(seeds), out, settings, name)
    print(result.summary_line(out))
    print(f"registered as {name or out.stem!r} in {out.parent / 'dataset_info.json'}")
