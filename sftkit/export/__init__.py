"""The export stage: a trained model as a GGUF file for llama.cpp, or as an Ollama model, verified.

Modules: `recipe` (export(): the steps and the output rules), `gguf_file` (architecture metadata and
tensors under llama.cpp's names), `vocab` (the tokenizer in llama.cpp's terms), `ollama` (the Modelfile)
and `verify` (llama.cpp loads the file and must compute what transformers computes).
"""

from sftkit.export.recipe import FORMATS, export
from sftkit.export.gguf_file import OUTTYPES

__all__ = ["FORMATS", "OUTTYPES", "export"]
