"""`python -m sftkit.config` prints the config reference table (docs/config.md)."""

from sftkit.config.docs import reference_markdown

if __name__ == "__main__":  # `python -m sftkit.config` prints docs/config.md's reference table
    print(reference_markdown())
