"""`python -m sftkit.config` prints the README's reference table."""

from sftkit.config.docs import reference_markdown

if __name__ == "__main__":  # `python -m sftkit.config` prints the README's reference table
    print(reference_markdown())
