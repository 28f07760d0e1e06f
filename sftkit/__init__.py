"""sftkit: config-driven supervised fine-tuning of LLMs on top of TRL, PEFT and transformers."""

__version__ = "0.1.0"
