"""The config schema: one YAML file, flat keys, LLaMA-Factory's names where the setting is the same.

Every field is documented exactly once, here. That text is the `sftkit keys` reference, docs/config.md's
config table and the comments in the shipped `configs/*.yaml` (tests keep all three in sync).

Submodules: `schema` (constants, the `SftConfig` model, the cross-field checks), `loading` (load_config,
validate_config), `docs` (field_docs, reference_markdown, commented_yaml, dump_resolved), `environment`
(check_environment: the packages the settings need on this machine), `llamafactory` (the LLaMA-Factory
keys sftkit does not take, each with its message).
"""

from sftkit.config.docs import commented_yaml, dump_resolved, field_docs, reference_markdown
from sftkit.config.environment import check_environment, check_prequantized, environment_notes, machine_problems
from sftkit.config.llamafactory import UNSUPPORTED_LLAMAFACTORY_KEYS, config_notes
from sftkit.config.loading import load_config, load_config_text, validate_config
from sftkit.config.schema import GROUPS, SftConfig

__all__ = [
    "GROUPS",
    "UNSUPPORTED_LLAMAFACTORY_KEYS",
    "SftConfig",
    "check_environment",
    "check_prequantized",
    "config_notes",
    "environment_notes",
    "commented_yaml",
    "dump_resolved",
    "field_docs",
    "load_config",
    "load_config_text",
    "machine_problems",
    "reference_markdown",
    "validate_config",
]
